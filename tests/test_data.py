"""Tests for ferkit.data: every layout, the cache, packs, FER+, bad input, and the data check.

All data here is synthetic, written in tmp_path. The ``realdata`` tests read the user's own
FER2013 copy from ``$FERKIT_DATA`` (the folder holding ``fer2013/``) and skip without it.
"""

from __future__ import annotations

import gzip
import io
import json
import lzma
import os
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ferkit.data import (
    FER2013_CLASSES,
    FERPLUS_CLASSES,
    DataError,
    FaceSet,
    folders,
    load,
    load_ferplus,
    read_fer2013_csv,
    readers,
)
from ferkit.data.check import check_report, format_check, warn_if_resplit
from ferkit.data.faceset import PACK_MAGIC, med_decode, med_encode
from ferkit.data.ferplus import VOTE_COLUMNS, majority_targets
from ferkit.train import find_ferplus_votes

pytestmark = pytest.mark.usefixtures("ferkit_cache")

USAGES = ["Training", "Training", "Training", "PublicTest", "PublicTest", "PrivateTest"]
LABELS = [0, 3, 6, 2, 5, 1]


def listing(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def save_png(path: Path, img: Image.Image | np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    (Image.fromarray(img) if isinstance(img, np.ndarray) else img).save(path)
    return path


@pytest.fixture
def icml(tmp_path, make_images, write_csv):
    """``icml(name)``: a 6-row FER2013 CSV at tmp_path/name; returns (path, images)."""

    def make(name: str = "fer2013.csv", folder: Path | None = None):
        images = make_images(len(LABELS))
        rows = [[lab, img, use] for lab, img, use in zip(LABELS, images, USAGES, strict=True)]
        path = write_csv((folder or tmp_path) / name, "emotion,pixels,Usage", rows)
        return path, images

    return make


def assert_rows(faces: FaceSet, images, labels=LABELS, splits=USAGES) -> None:
    np.testing.assert_array_equal(faces.images, images)
    assert faces.labels.tolist() == list(labels)
    assert faces.splits.tolist() == list(splits)


# ---- CSV layouts ----


@pytest.mark.parametrize("suffix", ["", ".gz", ".xz"])
def test_fer2013_csv_plain_and_compressed(icml, tmp_path, suffix):
    path, images = icml("fer2013.csv" + suffix)
    faces = load(path)
    assert_rows(faces, images)
    assert faces.index.tolist() == list(range(6))
    assert faces.info["layout"] == "fer2013-csv"
    assert faces.info["canonical"] is False  # synthetic, so not the ICML file's md5
    assert faces.icml_rows  # FER+ joins on its index
    # the folder holding it reads the same
    from_folder = load(tmp_path)
    assert_rows(from_folder, images)
    assert from_folder.info["folder"] == str(tmp_path)


def test_fer2013_subfolder_is_found(icml, tmp_path):
    _, images = icml("fer2013.csv.gz", folder=tmp_path / "fer2013")
    assert_rows(load(tmp_path), images)


def test_icml_face_data_csv(tmp_path, make_images, write_csv):
    images = make_images(6)
    rows = [
        [f" {lab}", f" {use}", img] for lab, img, use in zip(LABELS, images, USAGES, strict=True)
    ]
    write_csv(tmp_path / "icml_face_data.csv", "emotion, Usage, pixels", rows)
    faces = load(tmp_path)
    assert_rows(faces, images)
    assert faces.info["layout"] == "icml_face_data-csv"
    assert faces.icml_rows


def test_kaggle_train_and_test_csv(tmp_path, make_images, write_csv):
    train_imgs, test_imgs = make_images(4, seed=1), make_images(6, seed=2)
    write_csv(
        tmp_path / "train.csv",
        '"emotion","pixels"',
        [[lab, img] for lab, img in zip([0, 1, 2, 6], train_imgs, strict=True)],
        crlf=True,
        quote=True,
    )
    write_csv(
        tmp_path / "test.csv", '"pixels"', [[img] for img in test_imgs], crlf=True, quote=True
    )
    faces = load(tmp_path)
    np.testing.assert_array_equal(faces.images, np.concatenate([train_imgs, test_imgs]))
    assert faces.labels.tolist() == [0, 1, 2, 6] + [-1] * 6
    assert faces.splits.tolist() == ["Training"] * 4 + ["PublicTest"] * 3 + ["PrivateTest"] * 3
    assert faces.index.tolist() == list(range(10))  # the ICML row numbers, for FER+
    assert faces.icml_rows and faces.info["file_rows"] == 10
    assert faces.info["layout"] == "kaggle-train-test-csv"
    assert "first 3 rows are taken as PublicTest" in faces.info["split_assumption"]
    assert faces.info["canonical"] is None


def test_kaggle_needs_both_files(tmp_path, make_images, write_csv):
    write_csv(tmp_path / "train.csv", "emotion,pixels", [[0, make_images(1)[0]]])
    with pytest.raises(DataError, match="train.csv but not test.csv"):
        load(tmp_path)
    with pytest.raises(DataError, match="no 'Usage' column.*pass the folder"):
        load(tmp_path / "train.csv")


# ---- image-folder layouts ----


def test_image_folders_train_test(tmp_path, make_images):
    imgs = make_images(5, smooth=True)
    save_png(tmp_path / "train/angry/Training_10.png", imgs[0])
    save_png(tmp_path / "train/happy/Training_2.png", imgs[1])
    for i, name in [(2, "test/sad/PrivateTest_7.jpg"), (3, "test/sad/PublicTest_8.jpg")]:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(imgs[i]).save(tmp_path / name, quality=95)
    save_png(tmp_path / "test/neutral/PublicTest_1.png", imgs[4])
    faces = load(tmp_path)
    assert faces.info["layout"] == "image-folders-train-test"
    assert faces.info["canonical"] is None
    assert faces.splits.tolist() == [
        "Training",
        "Training",
        "PublicTest",
        "PublicTest",
        "PrivateTest",
    ]
    assert faces.labels.tolist() == [0, 3, 4, 6, 4]  # by split, then class
    np.testing.assert_array_equal(faces.images[[0, 1, 3]], imgs[[0, 1, 4]])  # PNG: exact
    jpeg_error = np.abs(faces.images[[2, 4]].astype(int) - imgs[[3, 2]].astype(int))
    assert jpeg_error.mean() < 2  # JPEG q95 of smooth images: nearly exact


def test_test_image_without_prefix(tmp_path, make_images, capsys):
    imgs = make_images(3)
    save_png(tmp_path / "train/fear/a.png", imgs[0])
    save_png(tmp_path / "test/fear/PublicTest_1.png", imgs[1])
    bad = save_png(tmp_path / "test/fear/img_2.png", imgs[2])
    with pytest.raises(DataError, match=r"img_2\.png: a test/ image name must start with"):
        load(tmp_path)
    faces = load(tmp_path, skip_bad=True)
    assert faces.splits.tolist() == ["Training", "PublicTest"]
    assert len(faces.info["skipped"]) == 1 and str(bad) in faces.info["skipped"][0]
    assert str(bad) in capsys.readouterr().err


def test_train_validation_folders_warn(tmp_path, make_images, capsys):
    imgs = make_images(3)
    save_png(tmp_path / "train/surprise/1.png", imgs[0])
    save_png(tmp_path / "train/disgust/2.png", imgs[1])
    save_png(tmp_path / "validation/happy/3.png", imgs[2])
    faces = load(tmp_path)
    assert faces.info["layout"] == "image-folders-train-validation"
    assert faces.splits.tolist() == ["Training", "Training", "validation"]
    assert faces.labels.tolist() == [1, 5, 3]
    assert "re-split" in faces.info["resplit_warning"]
    assert "PrivateTest" in faces.info["resplit_warning"]
    message = warn_if_resplit(faces, "validation")
    assert message and "re-split" in message and message in capsys.readouterr().err
    assert warn_if_resplit(faces, "Training") is None
    assert warn_if_resplit(faces, ["Training", "validation"], quiet=True) == message
    assert capsys.readouterr().err == ""


def test_generic_class_folders_aliases_and_modes(tmp_path, make_images):
    g = make_images(7)
    save_png(tmp_path / "Anger/l.png", g[0])
    save_png(tmp_path / "disgusted/rgb.png", np.stack([g[1]] * 3, axis=-1))
    rgba = np.dstack([g[2], g[2], g[2], np.full((48, 48), 128, np.uint8)])
    save_png(tmp_path / "fearful/rgba.png", rgba)
    pal = Image.fromarray(g[3], mode="L").convert("P")
    pal.putpalette([v for i in range(256) for v in (i, i, i)])
    save_png(tmp_path / "happiness/palette.png", pal)
    save_png(tmp_path / "sadness/16bit.png", Image.fromarray(g[4].astype(np.uint16) * 257))
    smooth = make_images(1, smooth=True)[0]
    save_png(tmp_path / "surprised/big.png", np.kron(smooth, np.ones((2, 2), np.uint8)))
    save_png(tmp_path / "neutral/n.png", g[6])
    (tmp_path / "neutral/notes.txt").write_text("not an image")
    faces = load(tmp_path)
    assert faces.info["layout"] == "class-folders"
    assert set(faces.splits.tolist()) == {"all"}
    assert faces.labels.tolist() == [0, 1, 2, 3, 4, 5, 6]
    np.testing.assert_array_equal(faces.images[[0, 1, 3, 4]], g[[0, 1, 3, 4]])
    np.testing.assert_array_equal(faces.images[6], g[6])
    # half-transparent: over white, as recognition reads it (the alpha is not dropped)
    from ferkit.recognize import as_face_crops, load_image

    over_white = as_face_crops([load_image(tmp_path / "fearful/rgba.png").pixels])[0]
    np.testing.assert_array_equal(faces.images[2], over_white)
    assert faces.images[2].astype(int).min() >= 127
    assert np.abs(faces.images[5].astype(int) - smooth).mean() < 2  # 96x96 -> 48x48 bilinear
    assert any("notes.txt" in p for p in faces.info["ignored"])
    assert "all" in warn_if_resplit(faces, "all", quiet=True)


def test_unknown_class_folder_in_split_folders(tmp_path, make_images):
    save_png(tmp_path / "train/happy/1.png", make_images(1)[0])
    save_png(tmp_path / "train/smiling/1.png", make_images(1)[0])
    save_png(tmp_path / "test/happy/PublicTest_1.png", make_images(1)[0])
    with pytest.raises(DataError, match=r"unknown class folder.*'smiling'.*angry \(anger\)"):
        load(tmp_path)


def test_unreadable_images(tmp_path, make_images, capsys):
    imgs = make_images(2)
    save_png(tmp_path / "happy/good.png", imgs[0])
    (tmp_path / "sad").mkdir()
    (tmp_path / "sad/text.jpg").write_text("this is not a JPEG")
    png = save_png(tmp_path / "sad/whole.png", imgs[1]).read_bytes()
    (tmp_path / "sad/truncated.png").write_bytes(png[: len(png) // 2])
    with pytest.raises(DataError, match=r"text\.jpg: unreadable image"):
        load(tmp_path)
    faces = load(tmp_path, skip_bad=True)
    assert faces.labels.tolist() == [3, 4]
    skipped = faces.info["skipped"]
    assert len(skipped) == 2
    assert any("text.jpg" in s for s in skipped) and any("truncated.png" in s for s in skipped)
    err = capsys.readouterr().err
    assert "text.jpg" in err and "truncated.png" in err


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        (lambda p: None, "empty folder"),
        (lambda p: (p / "happy").mkdir(), "no images"),
        (lambda p: (p / "readme.md").write_text("hi"), "no FER2013 data found"),
        (lambda p: (p / "train").mkdir(), "no test/ or validation/"),
        (lambda p: (p / "images").mkdir(), r"one folder 'images'.*two or more classes"),
        (lambda p: [(p / n).mkdir() for n in ("test", "validation")], "but no train/"),
    ],
)
def test_folder_without_data(tmp_path, setup, message):
    setup(tmp_path)
    with pytest.raises(DataError, match=message):
        load(tmp_path)


@pytest.mark.parametrize(
    "names", [["calm", "contempt", "happy"], ["Zebra", "angry", "calm", "sad"], ["a", "b"]]
)
def test_class_folders_own_classes(tmp_path, make_images, capsys, names):
    imgs = make_images(2 * len(names))
    for i, name in enumerate(names[::-1]):  # the order they are made in does not matter
        save_png(tmp_path / name / f"{i}.png", imgs[2 * i])
        save_png(tmp_path / name / f"{i}b.png", imgs[2 * i + 1])
    for _ in range(2):  # the note comes on a cache hit too, once a load
        faces = load(tmp_path)
        assert faces.class_names == tuple(sorted(names))  # as torchvision's ImageFolder
        assert faces.labels.tolist() == [k for k in range(len(names)) for _ in range(2)]
        assert set(faces.splits.tolist()) == {"all"}
        err = capsys.readouterr().err
        assert err.count("ferkit: note:") == 1 and "not FER2013 classes" in err
        assert str(sorted(names)) in err
    for i, name in enumerate(names[::-1]):
        row = sorted(names).index(name) * 2
        np.testing.assert_array_equal(faces.images[row : row + 2], imgs[2 * i : 2 * i + 2])
    assert check_report(faces)["class_names"] == sorted(names)


def test_class_folders_all_fer2013_keep_the_fer2013_classes(tmp_path, make_images, capsys):
    imgs = make_images(3)
    for i, name in enumerate(["sadness", "Happy", "surprise"]):  # aliases and case too
        save_png(tmp_path / name / f"{i}.png", imgs[i])
    faces = load(tmp_path)
    assert faces.class_names == FER2013_CLASSES  # all 7, so the shipped weights' head fits
    assert faces.labels.tolist() == [3, 4, 5]
    assert capsys.readouterr().err == ""


def test_ignored_files_are_reported(tmp_path, make_images, capsys):
    imgs = make_images(2)
    save_png(tmp_path / "train/happy/Training_1.png", imgs[0])
    save_png(tmp_path / "test/sad/PublicTest_2.png", imgs[1])
    junk = ["train/happy/a.txt", "train/happy/b.csv", "test/sad/c.json", "test/sad/d.md"]
    for name in junk:
        (tmp_path / name).write_text("not an image")
    (tmp_path / "train/happy/.DS_Store").write_text("hidden files are not reported")
    for _ in range(2):  # also from the cache
        faces = load(tmp_path)
        err = capsys.readouterr().err
        assert err.count("\n") == 1  # one line for all four
        assert "ignored 4 non-image file(s)" in err and ", ..." in err
        assert str(tmp_path / junk[2]) in err and "DS_Store" not in err
    report = check_report(faces)
    assert report["ignored_files"] == 4
    assert sorted(report["examples"]["ignored_files"]) == sorted(str(tmp_path / j) for j in junk)
    assert "non-image files ignored: 4" in format_check(report)


# ---- pack and cache ----


def test_pack_round_trip(icml, tmp_path, make_images):
    path, _ = icml()
    faces = load(path)
    faces.soft_labels = (
        np.random.default_rng(0).dirichlet(np.ones(7), len(faces)).astype(np.float32)
    )
    pack = faces.save_pack(tmp_path / "data.pack", preset=1)
    back = load(pack)
    for name in ("images", "labels", "splits", "index", "soft_labels"):
        np.testing.assert_array_equal(getattr(back, name), getattr(faces, name))
        assert getattr(back, name).dtype == getattr(faces, name).dtype
    assert back.class_names == faces.class_names
    assert back.info["packed_from"] == path.name  # the name only: no machine paths in packs


def faces_of(images: np.ndarray, soft: bool = False) -> FaceSet:
    n = len(images)
    rng = np.random.default_rng(1)
    return FaceSet(
        images=images, labels=np.arange(n) % 7, splits=np.array(["Training", "PublicTest"] * n)[:n],
        index=np.arange(n) * 3 + 5, source="/somewhere/fer2013.csv",
        soft_labels=rng.dirichlet(np.ones(7), n).astype(np.float32) if soft else None,
    )


def pack_arrays(pack: Path) -> dict:
    """The arrays inside a pack file, as stored."""
    with np.load(io.BytesIO(lzma.decompress(pack.read_bytes()))) as z:
        return {k: z[k] for k in z.files}


def save_old_pack(faces: FaceSet, path: Path) -> Path:
    """A pack as ferkit wrote it before image codecs: the images plain, delta + LZMA2."""
    buf = io.BytesIO()
    np.savez(buf, **faces.to_arrays(magic=PACK_MAGIC, source=Path(faces.source).name))
    filters = [
        {"id": lzma.FILTER_DELTA, "dist": 1},
        {"id": lzma.FILTER_LZMA2, "preset": 9 | lzma.PRESET_EXTREME},
    ]
    path.write_bytes(lzma.compress(buf.getvalue(), format=lzma.FORMAT_XZ, filters=filters))
    return path


def face_like(n: int, seed: int = 0) -> np.ndarray:
    """Smooth images with some sensor noise: a gradient, a bright oval, a dark band."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:48, 0:48] / 47.0
    out = []
    for _ in range(n):
        a, b, c = rng.uniform(-60, 60, size=3)
        cx, cy, r = rng.uniform(0.35, 0.65), rng.uniform(0.35, 0.65), rng.uniform(0.25, 0.4)
        oval = np.exp(-((x - cx) ** 2 + ((y - cy) / 1.3) ** 2) / r**2)
        band = np.exp(-((y - cy + 0.1) ** 2) / 0.003)
        img = 90 + a * x + b * y + c * x * y + 80 * oval - 40 * band + rng.normal(0, 1, (48, 48))
        out.append(np.clip(img, 0, 255))
    return np.rint(np.stack(out)).astype(np.uint8)


def distinct_constants(n: int) -> np.ndarray:
    return np.repeat(np.array([0, 255, 1, 128, 127, 254])[:n], 48 * 48).reshape(-1, 48, 48)


@pytest.mark.parametrize("kind", ["noise", "constant", "duplicates", "none", "one"])
def test_pack_codec_round_trip(tmp_path, make_images, kind):
    images = {
        "noise": make_images(40, seed=3),
        "constant": distinct_constants(6).astype(np.uint8),
        "duplicates": make_images(12, seed=4)[[0, 1, 0, 2, 2, 2, 11, 1, 0, 5]],
        "none": make_images(0),
        "one": make_images(1, seed=5),
    }[kind]
    faces = faces_of(images, soft=True)
    pack = faces.save_pack(tmp_path / "data.pack", preset=1)
    back = load(pack)
    for name in ("images", "labels", "splits", "index", "soft_labels"):
        np.testing.assert_array_equal(getattr(back, name), getattr(faces, name))
        assert getattr(back, name).dtype == getattr(faces, name).dtype
        assert getattr(back, name).shape == getattr(faces, name).shape
    assert back.info["packed_from"] == "fer2013.csv"
    stored = pack_arrays(pack)
    meta = json.loads(str(stored["meta"]))
    assert meta["image_codec"] == "med1" and meta["image_dedup"] is True
    assert "images" not in stored and stored["image_rows"].dtype == np.int32
    distinct = len(np.unique(images.reshape(len(images), 48 * 48), axis=0))
    assert len(stored["image_residuals"]) == distinct  # each image once (4 of 10 above)


@pytest.mark.parametrize("shape", [(0, 48, 48), (1, 1, 1), (3, 1, 9), (3, 9, 1), (5, 7, 11), (2, 0, 4)])
def test_med_codec_any_size(shape):
    images = np.random.default_rng(sum(shape)).integers(0, 256, shape, dtype=np.uint8)
    residuals = med_encode(images)
    assert residuals.dtype == np.uint8 and residuals.shape == shape
    back = med_decode(residuals)
    np.testing.assert_array_equal(back, images)
    assert back.dtype == np.uint8 and back.shape == shape


def test_med_codec_predicts():
    y, x = np.mgrid[0:6, 0:8]
    plane = (100 + 2 * x - y).astype(np.uint8)  # slopes of opposite signs: c between a and b
    ramp = (100 + 2 * x + y).astype(np.uint8)  # both rising: MED takes max(a, b), off by 1
    images = np.stack([plane, 255 - plane, ramp])
    residuals = med_encode(images)
    # inside, the plane is predicted exactly; along the top row and the left column the
    # residuals are the slopes (+2, -1 zigzagged to 4, 1; -2, +1 to 3, 2); the first pixel
    # is predicted by 0 (100 is 200 zigzagged, 155 = -101 mod 256 is 201)
    np.testing.assert_array_equal(residuals[:2, 1:, 1:], 0)
    np.testing.assert_array_equal(residuals[2, 1:, 1:], 2)
    assert residuals[0, 0, 1:].tolist() == [4] * 7 and residuals[0, 1:, 0].tolist() == [1] * 5
    assert residuals[1, 0, 1:].tolist() == [3] * 7 and residuals[1, 1:, 0].tolist() == [2] * 5
    assert residuals[:, 0, 0].tolist() == [200, 201, 200]
    np.testing.assert_array_equal(med_decode(residuals), images)


def test_old_format_pack_still_loads(tmp_path, make_images):
    faces = faces_of(make_images(9, seed=6), soft=True)
    pack = save_old_pack(faces, tmp_path / "old.fkpack")
    assert "image_codec" not in json.loads(str(pack_arrays(pack)["meta"]))
    back = load(pack)
    for name in ("images", "labels", "splits", "index", "soft_labels"):
        np.testing.assert_array_equal(getattr(back, name), getattr(faces, name))
        assert getattr(back, name).dtype == getattr(faces, name).dtype
    assert back.info["packed_from"] == "fer2013.csv"


def test_pack_smaller_than_old_format(tmp_path):
    images = face_like(200)
    images = np.concatenate([images, images[:10]])  # some exact duplicates, as in FER2013
    faces = faces_of(images)
    old = save_old_pack(faces, tmp_path / "old.fkpack").stat().st_size
    new = faces.save_pack(tmp_path / "new.fkpack").stat().st_size
    assert new < 0.96 * old, (new, old)  # about 7% smaller here; real faces gain 10%
    np.testing.assert_array_equal(load(tmp_path / "new.fkpack").images, images)


def test_bad_pack_names_the_file(tmp_path, make_images):
    faces = faces_of(make_images(3))
    arrays = pack_arrays(faces.save_pack(tmp_path / "data.pack", preset=1))

    def repack(name: str, **changes) -> Path:
        buf = io.BytesIO()
        np.savez(buf, **{**arrays, **changes})
        (path := tmp_path / name).write_bytes(lzma.compress(buf.getvalue()))
        return path

    meta = json.loads(str(arrays["meta"]))
    newer = repack("newer.pack", meta=np.array(json.dumps({**meta, "image_codec": "med9"})))
    with pytest.raises(DataError, match=r"newer\.pack: pack image codec 'med9' unknown"):
        load(newer)
    with pytest.raises(DataError, match=r"rows\.pack: unreadable ferkit pack .*image_rows"):
        load(repack("rows.pack", image_rows=np.array([0, 3, 1], dtype=np.int32)))
    with pytest.raises(DataError, match=r"gone\.pack: unreadable ferkit pack"):
        load(repack("gone.pack", image_residuals=np.zeros((3, 48), np.uint8)))
    with pytest.raises(DataError, match=r"small\.pack: images must be uint8 N x 48 x 48"):
        load(repack("small.pack", image_residuals=np.zeros((3, 8, 8), np.uint8)))
    (trunc := tmp_path / "trunc.pack").write_bytes((tmp_path / "data.pack").read_bytes()[:-40])
    with pytest.raises(DataError, match=r"trunc\.pack"):
        FaceSet.from_pack(trunc)


def test_csv_cache(icml, tmp_path, ferkit_cache, monkeypatch):
    path, images = icml("fer2013.csv.gz", folder=tmp_path / "data")
    before = listing(path.parent)
    load(path)
    assert len(list(ferkit_cache.glob("*.npz"))) == 1  # in $FERKIT_CACHE ...
    assert listing(path.parent) == before  # ... and nothing beside the data

    def broken(*args, **kwargs):
        raise AssertionError("parser called")

    monkeypatch.setattr(readers, "read_fer2013_csv", broken)
    assert_rows(load(path), images)  # from the cache
    with pytest.raises(AssertionError, match="parser called"):
        load(path, cache=False)
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 10**9))  # a changed file is re-read
    with pytest.raises(AssertionError, match="parser called"):
        load(path)


def test_folder_cache(tmp_path, make_images, ferkit_cache, monkeypatch):
    imgs = make_images(3)
    for i, cls in enumerate(["angry", "fear", "sad"]):
        save_png(tmp_path / "data" / cls / f"{i}.png", imgs[i])
    before = listing(tmp_path / "data")
    first = load(tmp_path / "data")
    assert listing(tmp_path / "data") == before and list(ferkit_cache.glob("*.npz"))

    def broken(path):
        raise AssertionError("image reader called")

    monkeypatch.setattr(folders, "read_image", broken)
    np.testing.assert_array_equal(load(tmp_path / "data").images, first.images)
    save_png(tmp_path / "data/happy/3.png", imgs[0])  # a new file invalidates the entry
    with pytest.raises(AssertionError, match="image reader called"):
        load(tmp_path / "data")


def test_skipped_rows_reported_on_cache_hits_too(icml, tmp_path, write_csv, make_images, capsys):
    rows = [[0, make_images(1)[0], "Training"], [9, make_images(1)[0], "Training"]]
    path = write_csv(tmp_path / "fer2013.csv", "emotion,pixels,Usage", rows)
    for _ in range(2):
        assert len(load(path, skip_bad=True)) == 1
        assert "line 3: emotion '9'" in capsys.readouterr().err


# ---- bad input ----

GOOD = " ".join(["7"] * 2304)
BAD_ROWS = [
    (["0", " ".join(["7"] * 2303), "Training"], "expected 2304 pixel values (48x48), got 2303"),
    (["0", " ".join(["7"] * 2303 + ["1.5"]), "Training"], "pixel value '1.5' is not an integer"),
    (["0", " ".join(["7"] * 2303 + ["256"]), "Training"], "pixel value 256 outside 0..255"),
    (["7", GOOD, "Training"], "emotion '7' is not an integer in 0..6"),
    (["x", GOOD, "Training"], "emotion 'x' is not an integer in 0..6"),
    (["\u00b2", GOOD, "Training"], "emotion '\u00b2' is not an integer in 0..6"),
    (["0", " ".join(["7"] * 2303 + ["9" * 30]), "Training"], f"pixel value {'9' * 30} outside"),
    (["0", GOOD, "Validation"], "Usage 'Validation' is not one of"),
    (["0", GOOD], "expected 3 fields"),
]


@pytest.mark.parametrize(("row", "message"), BAD_ROWS)
def test_bad_row(tmp_path, write_csv, row, message):
    good = ["3", GOOD, "PublicTest"]
    path = write_csv(tmp_path / "fer2013.csv", "emotion,pixels,Usage", [good, row, good])
    with pytest.raises(DataError) as err:
        load(path)
    assert str(err.value).startswith(f"{path}, line 3: ") and message in str(err.value)
    faces = load(path, skip_bad=True)
    assert faces.index.tolist() == [0, 2] and faces.labels.tolist() == [3, 3]
    assert len(faces.info["skipped"]) == 1 and message in faces.info["skipped"][0]


def test_skip_bad_reports_every_bad_row(tmp_path, write_csv, capsys):
    rows = [row for row, _ in BAD_ROWS] + [["1", GOOD, "PrivateTest"]]
    path = write_csv(tmp_path / "fer2013.csv", "emotion,pixels,Usage", rows)
    faces = read_fer2013_csv(path, skip_bad=True)
    assert len(faces) == 1 and faces.splits.tolist() == ["PrivateTest"]
    assert len(faces.info["skipped"]) == len(BAD_ROWS)
    for (_, message), reported in zip(BAD_ROWS, faces.info["skipped"], strict=True):
        assert message in reported
    load(path, skip_bad=True)
    assert capsys.readouterr().err.count("ferkit: skipped") == len(BAD_ROWS)


@pytest.mark.parametrize(
    ("header", "rows", "message"),
    [
        ("emotion,Usage", [["0", "Training"]], "no 'pixels' column"),
        ("emotion,pixels", [["0", GOOD]], "no 'Usage' column"),
        (None, [], "empty file"),
        ("emotion,pixels,Usage", [], "no data rows"),
    ],
)
def test_bad_file(tmp_path, write_csv, header, rows, message):
    path = tmp_path / "fer2013.csv"
    if header is None:
        path.write_bytes(b"")
    else:
        write_csv(path, header, rows)
    with pytest.raises(DataError, match=message):
        load(path, skip_bad=True)


def test_missing_path(tmp_path):
    with pytest.raises(DataError, match="no such file or folder"):
        load(tmp_path / "nope.csv")


# ---- FER+ ----


def votes_row(**counts) -> list[int]:
    return [counts.get(c, 0) for c in VOTE_COLUMNS]


FERPLUS_CASES = [  # votes, expected label (-1: dropped)
    (votes_row(neutral=8, happiness=1, surprise=1), 0),  # single votes dropped as outliers
    (votes_row(happiness=5, neutral=1, surprise=1, sadness=1, anger=1, fear=1), 1),  # 5 of 5
    (votes_row(neutral=4, happiness=3, sadness=3), -1),  # no majority (4 of 10)
    (votes_row(neutral=5, happiness=5), -1),  # tie: 5 is not more than half of 10
    (votes_row(neutral=3, happiness=3, surprise=1, anger=1, fear=1, sadness=1), -1),  # tie
    (votes_row(unknown=6, neutral=4), -1),  # unknown majority
    (votes_row(NF=10), -1),  # not a face
    (votes_row(contempt=6, anger=4), 7),  # contempt is the 8th class
    (votes_row(neutral=1, happiness=1, surprise=1, sadness=1, anger=1, fear=1, disgust=1), -1),
    (votes_row(fear=6, surprise=2, unknown=2), 6),  # 6 of 10
]


def icml_rows_faces(images: np.ndarray, usage: list[str]) -> FaceSet:
    """A FaceSet as a reader of the ICML file gives it: rows 0..N-1, ``icml_rows``."""
    n = len(images)
    return FaceSet(
        images=images, labels=np.zeros(n), splits=np.array(usage), index=np.arange(n),
        info={"icml_rows": True},
    )


def test_ferplus_majority_rule(tmp_path, make_images, write_csv):
    votes = np.array([v for v, _ in FERPLUS_CASES], dtype=np.float32)
    expected = [lab for _, lab in FERPLUS_CASES]
    labels, keep = majority_targets(votes)
    assert labels.tolist() == expected and keep.tolist() == [e >= 0 for e in expected]

    n = len(FERPLUS_CASES)
    usage = (["Training"] * 6 + ["PublicTest"] * 2 + ["PrivateTest"] * 2)[:n]
    faces = icml_rows_faces(make_images(n), usage)
    header = "Usage,Image name," + ",".join(VOTE_COLUMNS)
    rows = [
        [u, f"fer{i:07d}.png", *v]
        for i, (u, (v, _)) in enumerate(zip(usage, FERPLUS_CASES, strict=True))
    ]
    votes_csv = write_csv(tmp_path / "fer2013new.csv", header, rows)
    plus = load_ferplus(faces, votes_csv)
    assert plus.class_names == FERPLUS_CLASSES and len(FERPLUS_CLASSES) == 8
    assert plus.labels.tolist() == [e for e in expected if e >= 0]
    assert plus.index.tolist() == [i for i, e in enumerate(expected) if e >= 0]
    assert plus.info["ferplus_dropped"] == expected.count(-1)
    np.testing.assert_allclose(plus.soft_labels.sum(axis=1), 1.0, rtol=1e-6)
    assert plus.soft_labels.shape == (len(plus), 8)
    assert plus.soft_labels[plus.labels == 7][0, 7] == pytest.approx(0.6)

    # joined by the original row index, also after rows were dropped
    sub = load_ferplus(faces.select(np.array([7, 9])), votes_csv)
    assert sub.labels.tolist() == [7, 6] and sub.index.tolist() == [7, 9]

    wrong = [
        [("PublicTest" if i == 0 else u), *r[1:]]
        for i, (u, r) in enumerate(zip(usage, rows, strict=True))
    ]
    with pytest.raises(DataError, match="Usage disagrees"):
        load_ferplus(faces, write_csv(tmp_path / "wrong.csv", header, wrong))


def test_ferplus_votes_gzipped(tmp_path, make_images, write_csv, icml):
    usage = ["Training"] * 3
    faces = icml_rows_faces(make_images(3), usage)
    header = "Usage,Image name," + ",".join(VOTE_COLUMNS)
    rows = [[u, f"fer{i:07d}.png", *([0] * i + [10] + [0] * (9 - i))] for i, u in enumerate(usage)]
    data = tmp_path / "data"
    pack = faces.save_pack(data / "train.fkpack", preset=1)
    gz = write_csv(data / "fer2013new.csv.gz", header, rows)
    assert gzip.decompress(gz.read_bytes()).startswith(b"Usage,")
    # looked for as fer2013new.csv beside the pack: the .gz is taken
    assert find_ferplus_votes("fer2013new.csv", pack) == gz
    assert find_ferplus_votes(data / "fer2013new.csv", pack) == gz  # an absolute path too
    plus = load_ferplus(load(pack), find_ferplus_votes("fer2013new.csv", pack))
    assert plus.labels.tolist() == [0, 1, 2]
    # the plain file, where there is one, comes first
    plain = write_csv(data / "fer2013new.csv", header, rows)
    assert find_ferplus_votes("fer2013new.csv", pack) == plain
    assert find_ferplus_votes("fer2013new.csv.gz", pack) == gz
    with pytest.raises(DataError, match="fer2013new.csv not found beside"):
        find_ferplus_votes("fer2013new.csv", tmp_path / "elsewhere" / "x.fkpack")
    (data / "bad.csv.gz").write_bytes(b"not gzip")
    with pytest.raises(DataError, match=r"bad\.csv\.gz: cannot read FER\+ votes"):
        load_ferplus(faces, data / "bad.csv.gz")


SHUFFLED_LABELS = [6, 0, 3, 5, 2, 1]  # not in class order within a split, as in FER2013


def write_votes(write_csv, path: Path, usage: list[str], votes: list[list[int]]) -> Path:
    header = "Usage,Image name," + ",".join(VOTE_COLUMNS)
    rows = [[u, f"fer{i:07d}.png", *v] for i, (u, v) in enumerate(zip(usage, votes, strict=True))]
    return write_csv(path, header, rows)


@pytest.fixture
def icml_and_folders(tmp_path, make_images, write_csv):
    """The same 6 images as an ICML CSV, as train/ + test/ image folders, and FER+ votes
    giving row i the FER+ class i; returns (csv, folders, votes)."""
    images = make_images(6)
    rows = [[lab, img, u] for lab, img, u in zip(SHUFFLED_LABELS, images, USAGES, strict=True)]
    csv = write_csv(tmp_path / "csv/fer2013.csv", "emotion,pixels,Usage", rows)
    folders = tmp_path / "folders"
    for i, (lab, img, use) in enumerate(zip(SHUFFLED_LABELS, images, USAGES, strict=True)):
        top = "train" if use == "Training" else "test"
        save_png(folders / top / FER2013_CLASSES[lab] / f"{use}_{i}.png", img)
    votes = [[10 if k == i else 0 for k in range(len(VOTE_COLUMNS))] for i in range(6)]
    return csv, folders, write_votes(write_csv, tmp_path / "fer2013new.csv", USAGES, votes)


def test_ferplus_refused_where_rows_are_not_icml(icml_and_folders, tmp_path):
    csv, folders, votes = icml_and_folders
    assert load_ferplus(load(csv), votes).labels.tolist() == [0, 1, 2, 3, 4, 5]
    # The folder copy has the same split sizes, so the Usage check alone passed, and its rows
    # (sorted by split and class) got the votes of other images: refused, saying why.
    faces = load(folders)
    message = r"image folders \(image-folders-train-test\).*Use the original fer2013\.csv"
    with pytest.raises(DataError, match=message):
        load_ferplus(faces, votes)
    assert not faces.icml_rows and faces.index.tolist() == list(range(6))
    with pytest.raises(DataError, match=message):  # a pack of the folders too
        load_ferplus(load(faces.save_pack(tmp_path / "folders.fkpack", preset=1)), votes)
    # rows rebuilt without their index are renumbered 0..N-1: refused too
    icml = load(csv).subset("PublicTest")
    lost = FaceSet(images=icml.images, labels=icml.labels, splits=icml.splits, info=icml.info)
    with pytest.raises(DataError, match=r"not known to keep them.*original fer2013\.csv"):
        load_ferplus(lost, votes)
    with pytest.raises(DataError, match="not known to keep them"):  # built by hand
        load_ferplus(FaceSet(icml.images, icml.labels, icml.splits, index=icml.index), votes)
    assert load_ferplus(icml, votes).labels.tolist() == [3, 4]  # the subset keeps its rows


def test_ferplus_refused_on_a_csv_of_some_rows(icml_and_folders, tmp_path, write_csv):
    csv, _, votes = icml_and_folders
    # a user's sample of Training rows, Usage kept: renumbered 0..1, and the Usage check passes
    lines = csv.read_text().splitlines()
    sample = tmp_path / "sample/fer2013.csv"
    sample.parent.mkdir()
    sample.write_text("\n".join([lines[0], lines[3], lines[1]]) + "\n")
    faces = load(sample)
    with pytest.raises(DataError, match=r"file of 2 rows: FER\+ joins only to the whole ICML"):
        load_ferplus(faces, votes)
    assert faces.info["file_rows"] == 2 and load(csv).info["file_rows"] == 6
    # blank lines at the end are not rows
    csv.write_text(csv.read_text() + "\n\n")
    assert load(csv).info["file_rows"] == 6 and len(load_ferplus(load(csv), votes)) == 6


def test_ferplus_joins_packs_of_the_csv(icml_and_folders, tmp_path, capsys):
    from ferkit.cli import main

    csv, folders, votes = icml_and_folders
    pack = tmp_path / "train.fkpack"  # the device workflow: pack, then join FER+ to the pack
    argv = ["data", "pack", str(csv), "--splits", "Training,PublicTest", "--out", str(pack)]
    assert main(argv) == 0
    plus = load_ferplus(load(pack), votes)
    assert plus.labels.tolist() == [0, 1, 2, 3, 4] and plus.index.tolist() == [0, 1, 2, 3, 4]
    # packs written before the icml_rows flag: their layout says whether they kept the rows
    for source, joins in ((csv, True), (folders, False)):
        faces = load(source)
        faces.info.pop("icml_rows")
        old = load(save_old_pack(faces, tmp_path / f"old-{source.name}.fkpack"))
        assert old.icml_rows is joins
    assert load_ferplus(load(tmp_path / "old-fer2013.csv.fkpack"), votes).labels.tolist() == [
        0, 1, 2, 3, 4, 5
    ]


def test_ferplus_votes_file_recognised_and_checked(icml_and_folders, tmp_path, write_csv, capsys,
                                                   monkeypatch):
    from ferkit.cli import main

    csv, folders, _ = icml_and_folders
    votes = write_votes(write_csv, tmp_path / "votes/fer2013new.csv", USAGES, [
        votes_row(neutral=10), votes_row(happiness=8, sadness=2), votes_row(unknown=7, fear=3),
        votes_row(NF=10), votes_row(neutral=4, happiness=3, sadness=3), votes_row(contempt=6),
    ])
    assert main(["data", "check", str(votes)]) == 2
    err = capsys.readouterr().err
    assert "a FER+ votes file" in err and "no 'pixels' column" not in err
    assert f"ferkit data check fer2013.csv --ferplus {votes.name}" in err

    assert main(["data", "check", str(csv), "--ferplus", str(votes), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["class_names"] == list(FERPLUS_CLASSES)
    assert report["splits"]["Training"]["total"] == 2
    assert report["splits"]["Training"]["classes"]["happiness"] == 1
    assert report["splits"]["PrivateTest"]["classes"]["contempt"] == 1
    assert "PublicTest" not in report["splits"]  # both its rows dropped
    assert report["ferplus"]["dropped"] == 3
    assert report["ferplus"]["dropped_by_split"] == {
        "Training": {"no majority": 0, "unknown": 1, "not a face": 0},
        "PublicTest": {"no majority": 1, "unknown": 0, "not a face": 1},
        "PrivateTest": {"no majority": 0, "unknown": 0, "not a face": 0},
    }
    assert main(["data", "check", str(csv), "--ferplus", str(votes)]) == 0
    text = capsys.readouterr().out
    assert text.splitlines()[3].split() == ["split", "total", *FERPLUS_CLASSES]
    assert "FER+ majority labels from" in text and "3 rows dropped" in text
    assert "  PublicTest: 2 (no majority 1, unknown 0, not a face 1)" in text
    assert main(["data", "check", str(folders), "--ferplus", str(votes)]) == 2
    assert "image folders" in capsys.readouterr().err
    # a bare name is looked for beside the data, as eval and training look for it
    import shutil

    shutil.copy(votes, csv.parent / "fer2013new.csv")
    monkeypatch.chdir(tmp_path / "votes")
    (tmp_path / "votes" / "fer2013new.csv").unlink()
    assert main(["data", "check", str(csv), "--ferplus", "fer2013new.csv"]) == 0
    assert "FER+ majority labels from" in capsys.readouterr().out


# ---- data check ----


def test_check_report_counts(make_images):
    a, b, c, d = make_images(4)
    zeros, grey = np.zeros((48, 48), np.uint8), np.full((48, 48), 128, np.uint8)
    rows = [  # image, label, split
        (a, 0, "Training"),
        (a, 0, "Training"),
        (a, 1, "Training"),  # a: conflicting labels 0/1/5
        (b, 2, "Training"),
        (b, 2, "PublicTest"),  # b: PublicTest row also in Training
        (c, 3, "PublicTest"),
        (c, -1, "PrivateTest"),  # c: -1 ignored, no conflict; PrivateTest row also in PublicTest
        (d, 4, "PrivateTest"),
        (zeros, 6, "Training"),
        (grey, 6, "PrivateTest"),
        (a, 5, "PrivateTest"),  # PrivateTest row also in Training
        (b, 2, "validation"),  # another split name comes last
    ]
    faces = FaceSet(
        images=np.stack([r[0] for r in rows]),
        labels=np.array([r[1] for r in rows]),
        splits=np.array([r[2] for r in rows]),
        info={"layout": "test", "canonical": None},
    )
    report = check_report(faces)
    json.dumps(report)  # JSON-able
    assert report["num_images"] == 12
    assert report["layout"] == "test" and report["canonical_md5"] is None
    assert list(report["splits"]) == ["Training", "PublicTest", "PrivateTest", "validation"]
    assert report["splits"]["Training"] == {
        "total": 5,
        "classes": dict(zip(FER2013_CLASSES, [2, 1, 1, 0, 0, 0, 1], strict=True)),
    }
    assert report["splits"]["PrivateTest"]["total"] == 4
    assert report["splits"]["PrivateTest"]["unlabeled"] == 1
    assert report["splits"]["PrivateTest"]["classes"]["surprise"] == 1
    assert report["distinct_images"] == 6
    assert report["duplicate_groups"] == 3  # a x4, b x3, c x2
    assert report["duplicate_extra_copies"] == 3 + 2 + 1
    assert report["conflicting_label_groups"] == 1
    assert report["cross_split_overlap"] == {
        "Training": {},
        "PublicTest": {"Training": 1},
        "PrivateTest": {"Training": 1, "PublicTest": 1},
        "validation": {"Training": 1, "PublicTest": 1, "PrivateTest": 0},
    }
    assert report["constant_images"] == 2
    assert report["examples"]["constant_images"] == [8, 9]
    assert report["examples"]["conflicting_label_groups"] == [[[0, 0], [1, 0], [2, 1], [10, 5]]]

    text = format_check(report)
    for line in [
        "exact duplicates: 3 groups of 2+ identical images, 6 extra copies",
        "conflicting labels: 1",
        "constant images (all pixels equal): 2",
        "PrivateTest rows also in PublicTest: 1",
    ]:
        assert line in text
    assert text.splitlines()[3].split() == ["split", "total", *FER2013_CLASSES, "unlabeled"]
    assert "Training" in text and "all" in text
    assert report["skipped"] == [] and report["ignored_files"] == 0 and report["notes"] == []


def test_check_skip_bad_json_lists_the_skipped(tmp_path, write_csv, make_images, capsys):
    from ferkit.cli import main

    rows = [[0, make_images(1)[0], "Training"], [9, make_images(1)[0], "Training"]]
    path = write_csv(tmp_path / "csv/fer2013.csv", "emotion,pixels,Usage", rows)
    assert main(["data", "check", str(path), "--skip-bad", "--json"]) == 0
    captured = capsys.readouterr()
    assert "line 3: emotion '9'" in captured.err  # still on stderr as it happens
    assert json.loads(captured.out)["skipped"] == [
        {"file": str(path), "line": 3, "reason": "emotion '9' is not an integer in 0..6"}
    ]
    assert main(["data", "check", str(path), "--skip-bad"]) == 0
    out = capsys.readouterr().out
    assert "skipped as malformed (--skip-bad): 1" in out and f"{path}, line 3: emotion" in out

    save_png(tmp_path / "images/happy/good.png", make_images(1)[0])
    (tmp_path / "images/sad").mkdir()
    (bad := tmp_path / "images/sad/bad.jpg").write_text("not a JPEG")
    assert main(["data", "check", str(tmp_path / "images"), "--skip-bad", "--json"]) == 0
    (entry,) = json.loads(capsys.readouterr().out)["skipped"]
    assert entry["file"] == str(bad) and entry["reason"].startswith("unreadable image")
    assert "line" not in entry


@pytest.mark.parametrize("splits", ["", " , ", ","])
def test_pack_refuses_no_splits(icml, tmp_path, capsys, splits):
    from ferkit.cli import main

    path, _ = icml()
    out = tmp_path / "empty.fkpack"
    assert main(["data", "pack", str(path), "--splits", splits, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "names no split" in err and "it has Training,PublicTest,PrivateTest" in err
    assert not out.exists()
    with pytest.raises(DataError, match="no split named"):
        load(path).subset([])
    assert main(["data", "pack", str(path), "--splits", "Validation", "--out", str(out)]) == 2
    assert "no split ['Validation']" in capsys.readouterr().err and not out.exists()


# ---- real data (the user's own copy; never in the repo) ----

README_COUNTS = {  # the published FER2013 split table: total, then the 7 classes
    "Training": (28709, [3995, 436, 4097, 7215, 4830, 3171, 4965]),
    "PublicTest": (3589, [467, 56, 496, 895, 653, 415, 607]),
    "PrivateTest": (3589, [491, 55, 528, 879, 594, 416, 626]),
}


@pytest.fixture(scope="module")
def real_root() -> Path:
    root = os.environ.get("FERKIT_DATA")
    if not root:
        pytest.skip("FERKIT_DATA is not set (the folder holding fer2013/fer2013.csv.gz)")
    return Path(root)


@pytest.fixture(scope="module")
def real_faces(real_root) -> FaceSet:
    return load(real_root, cache=False)  # the folder finds fer2013/fer2013.csv.gz


@pytest.mark.realdata
def test_real_counts_and_md5(real_faces):
    assert real_faces.info["canonical"] is True
    assert real_faces.info["layout"] == "fer2013-csv"
    assert len(real_faces) == 35887
    for split, (total, counts) in README_COUNTS.items():
        part = real_faces.subset(split)
        assert len(part) == total
        assert list(part.class_counts().values()) == counts
    assert real_faces.index.tolist() == list(range(35887))


@pytest.mark.realdata
def test_real_ferplus(real_faces, real_root):
    plus = load_ferplus(real_faces, real_root / "fer2013" / "fer2013new.csv")  # checks Usage
    assert plus.class_names == FERPLUS_CLASSES and plus.soft_labels.shape == (len(plus), 8)
    assert set(np.unique(plus.labels).tolist()) == set(range(8))
    assert 30000 < len(plus) < 35887
    np.testing.assert_allclose(plus.soft_labels.sum(axis=1), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(plus.splits, real_faces.splits[plus.index])
    by_split = plus.info["ferplus_dropped_by_split"]
    assert sum(sum(d.values()) for d in by_split.values()) == plus.info["ferplus_dropped"]
    assert by_split["Training"]["not a face"] > 0  # the 173 nameless rows are non-faces
    with pytest.raises(DataError, match="a FER\\+ votes file.*--ferplus"):
        load(real_root / "fer2013" / "fer2013new.csv")
    print(f"\nFER+ majority: {len(plus)} kept, {plus.info['ferplus_dropped']} dropped")


@pytest.mark.realdata
def test_real_check_report(real_faces):
    start = time.perf_counter()
    report = check_report(real_faces)
    seconds = time.perf_counter() - start
    assert seconds < 60
    assert report["canonical_md5"] is True
    assert {s: e["total"] for s, e in report["splits"].items()} == {
        s: total for s, (total, _) in README_COUNTS.items()
    }
    overlap = report["cross_split_overlap"]
    assert overlap["PublicTest"]["Training"] > 0 and overlap["PrivateTest"]["Training"] > 0
    assert report["duplicate_groups"] > 0 and report["conflicting_label_groups"] > 0
    print(f"\ncheck_report in {seconds:.2f} s\n{format_check(report)}")


def test_reader_notes_are_printed_by_the_first_process_only(monkeypatch, capsys):
    """Under torchrun every process reads the data; its notes appear once, not per process."""
    from ferkit.data.readers import report_notes, report_skipped

    faces = FaceSet(np.zeros((1, 48, 48), np.uint8), np.zeros(1, np.int64), np.array(["all"]))
    faces.info.update(notes=["classes are the folder names"], skipped=["row 3: bad pixels"])
    for rank, shown in (("1", False), ("0", True), ("", True)):
        monkeypatch.setenv("RANK", rank)
        report_notes(faces)
        report_skipped(faces)
        err = capsys.readouterr().err
        assert ("note: classes are the folder names" in err) is shown, rank
        assert ("skipped row 3: bad pixels" in err) is shown, rank
