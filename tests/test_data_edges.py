"""Edges of the data layer found in review: `data pack --out` over its input, images in
sub-folders of class folders, FaceSet's checks of labels / images / splits, CSVs without a
header, and Kaggle's train.csv + test.csv (the split note, selecting without labels).

All data here is synthetic, written in tmp_path.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ferkit.data import DataError, FaceSet, load, read_fer2013_csv
from ferkit.data.check import check_report, format_check

pytestmark = pytest.mark.usefixtures("ferkit_cache")

USAGES = ["Training", "Training", "Training", "PublicTest", "PublicTest", "PrivateTest"]


def save_png(path: Path, img: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(img).save(path)
    return path


@pytest.fixture
def icml_csv(tmp_path, make_images, write_csv):
    """A 6-row FER2013 CSV: tmp_path/data/fer2013.csv."""
    rows = [[i % 7, img, use] for i, (img, use) in enumerate(zip(make_images(6), USAGES,
                                                                  strict=True))]
    return write_csv(tmp_path / "data" / "fer2013.csv", "emotion,pixels,Usage", rows)


# ---- data pack --out: never over its input, never a folder ----


def _no_work(monkeypatch):
    """Make reading or packing fail the test: a refused --out is refused before either."""
    import ferkit.data

    monkeypatch.setattr(ferkit.data, "load", lambda *a, **k: pytest.fail("data was read"))
    monkeypatch.setattr(FaceSet, "save_pack", lambda *a, **k: pytest.fail("pack was written"))


@pytest.mark.parametrize("how", ["same", "symlink", "hardlink"])
def test_pack_refuses_out_that_is_its_input(icml_csv, tmp_path, capsys, monkeypatch, how):
    from ferkit.cli import main

    before = icml_csv.read_bytes()
    out = {"same": icml_csv, "symlink": tmp_path / "link.csv", "hardlink": tmp_path / "hard.csv"}[how]
    if how == "symlink":
        out.symlink_to(icml_csv)
    elif how == "hardlink":
        os.link(icml_csv, out)
    _no_work(monkeypatch)
    assert main(["data", "pack", str(icml_csv), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"--out {out} would replace {icml_csv}" in err
    assert icml_csv.read_bytes() == before  # the dataset is as it was


def test_pack_refuses_out_that_is_a_file_of_its_input_folder(icml_csv, tmp_path, capsys,
                                                              monkeypatch, make_images, write_csv):
    from ferkit.cli import main

    folder = icml_csv.parent
    before = icml_csv.read_bytes()
    os.link(icml_csv, tmp_path / "hard.csv")
    for out in (icml_csv, tmp_path / "hard.csv"):
        with monkeypatch.context() as m:
            _no_work(m)
            assert main(["data", "pack", str(folder), "--out", str(out)]) == 2
        assert f"would replace {icml_csv}" in capsys.readouterr().err
    assert icml_csv.read_bytes() == before
    # Kaggle's two files, and the images of class folders, are inputs too
    kaggle = tmp_path / "kaggle"
    write_csv(kaggle / "train.csv", "emotion,pixels", [[0, make_images(1)[0]]])
    write_csv(kaggle / "test.csv", "pixels", [[make_images(1)[0]], [make_images(1)[0]]])
    faces = tmp_path / "faces"
    image = save_png(faces / "happy" / "deeper" / "1.png", make_images(1)[0])
    save_png(faces / "sad" / "2.png", make_images(1)[0])
    for data, out in ((kaggle, kaggle / "test.csv"), (faces, image)):
        with monkeypatch.context() as m:
            _no_work(m)
            assert main(["data", "pack", str(data), "--out", str(out)]) == 2
        assert f"would replace {out}" in capsys.readouterr().err
    # a pack beside the data is no input: written, and written again over itself
    pack = folder / "fer2013.fkpack"
    for _ in range(2):
        assert main(["data", "pack", str(folder), "--out", str(pack)]) == 0
        assert f"into {pack}" in capsys.readouterr().out
    assert len(load(pack)) == 5 and icml_csv.read_bytes() == before


def test_pack_refuses_a_folder_out_before_any_work(icml_csv, tmp_path, capsys, monkeypatch):
    from ferkit.cli import main

    out = tmp_path / "packs"
    out.mkdir()
    _no_work(monkeypatch)
    assert main(["data", "pack", str(icml_csv), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"--out {out} is a folder; give the file to write" in err
    assert ".tmp" not in err and list(out.iterdir()) == []


def test_dataset_files_names_what_a_read_reads(icml_csv, tmp_path, make_images):
    from ferkit.data.folders import dataset_files

    assert dataset_files(icml_csv) == [icml_csv]
    assert dataset_files(icml_csv.parent) == [icml_csv]
    root = tmp_path / "faces"
    paths = [save_png(root / n, img) for n, img in
             zip(["happy/1.png", "happy/s/2.png", "sad/3.png"], make_images(3), strict=True)]
    (root / "sad" / "notes.txt").write_text("not an image")
    assert dataset_files(root) == paths
    with pytest.raises(DataError, match="no FER2013 data found"):
        dataset_files(icml_csv.parent.parent / "faces" / "happy" / "s")


# ---- class folders: images in sub-folders are of the class (as in ImageFolder) ----


def test_images_in_sub_folders_of_class_folders(tmp_path, make_images, capsys):
    imgs = make_images(5)
    root = tmp_path / "nested"
    names = ["happy/a.png", "happy/session2/b.png", "happy/session2/c.png",
             "sad/session1/d.png", "sad/e.png"]
    for name, img in zip(names, imgs, strict=True):
        save_png(root / name, img)
    (root / "happy" / "empty").mkdir()  # a folder is no ignored file
    (root / "sad" / "session1" / "info.txt").write_text("not an image")
    for _ in range(2):  # read, then from the cache
        faces = load(root)
        assert faces.labels.tolist() == [3, 3, 3, 4, 4]
        # each folder's files, then its sub-folders: a, session2/{b,c}; e, session1/d
        np.testing.assert_array_equal(faces.images, imgs[[0, 1, 2, 4, 3]])
        assert faces.info["ignored"] == [str(root / "sad" / "session1" / "info.txt")]
        err = capsys.readouterr().err
        assert "ignored 1 non-image file(s)" in err and "session2" not in err
        assert "empty" not in err


def test_sub_folders_through_links_and_loops(tmp_path, make_images):
    imgs = make_images(3)
    root = tmp_path / "faces"
    save_png(root / "happy" / "1.png", imgs[0])
    save_png(root / "sad" / "2.png", imgs[1])
    save_png(tmp_path / "elsewhere" / "3.png", imgs[2])
    (root / "sad" / "more").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    (root / "happy" / "loop").symlink_to(root / "happy", target_is_directory=True)
    faces = load(root)  # the loop is not followed round again
    assert faces.labels.tolist() == [3, 4, 4]
    np.testing.assert_array_equal(faces.images, imgs)


def test_links_elsewhere_in_the_dataset_are_not_followed(tmp_path, make_images):
    """A link to a folder read already (latest -> v1), to another class's folder or file,
    above, or to nothing is not followed: each image once, with its own class; a note."""
    imgs = make_images(3)
    root = tmp_path / "faces"
    save_png(root / "happy" / "v1" / "1.png", imgs[0])
    save_png(root / "happy" / "v1" / "2.png", imgs[1])
    save_png(root / "sad" / "3.png", imgs[2])
    (root / "happy" / "latest").symlink_to("v1", target_is_directory=True)
    (root / "sad" / "also").symlink_to("../happy", target_is_directory=True)
    (root / "sad" / "up").symlink_to("..", target_is_directory=True)
    (root / "happy" / "v1" / "stolen.png").symlink_to("../../sad/3.png")
    (root / "happy" / "v1" / "gone.png").symlink_to("nowhere.png")
    faces = load(root, cache=False)
    assert faces.labels.tolist() == [3, 3, 4]
    np.testing.assert_array_equal(faces.images, imgs)
    (note,) = faces.info["notes"]
    assert note.startswith(f"{root}: did not follow 5 link(s)")
    for link in ("latest", "stolen.png", "gone.png -> nowhere.png (missing)"):
        assert link in note


def test_a_chain_of_links_is_walked_once(tmp_path, make_images):
    """Folders that each link twice to the next: every real folder is walked once (not
    2 ** depth times)."""
    root = tmp_path / "faces"
    save_png(root / "sad" / "0.png", make_images(1)[0])
    chain = [tmp_path / "chain" / f"c{i}" for i in range(20)]
    save_png(chain[-1] / "end.png", make_images(1)[0])
    for a, b in zip(chain, chain[1:], strict=False):
        a.mkdir(parents=True, exist_ok=True)
        (a / "x").symlink_to(b, target_is_directory=True)
        (a / "y").symlink_to(b, target_is_directory=True)
    (root / "happy").mkdir()
    (root / "happy" / "start").symlink_to(chain[0], target_is_directory=True)
    faces = load(root, cache=False)
    assert faces.labels.tolist() == [3, 4]


def test_two_class_folders_that_are_one_are_refused(tmp_path, make_images):
    root = tmp_path / "faces"
    save_png(root / "happy" / "1.png", make_images(1)[0])
    (root / "sad").symlink_to(root / "happy", target_is_directory=True)
    with pytest.raises(DataError, match="are the same folder"):
        load(root, cache=False)


def test_a_class_folder_of_two_splits_is_refused(tmp_path, make_images):
    """train/happy a link to test/happy: test images would be trained on."""
    root = tmp_path / "splits"
    save_png(root / "test" / "happy" / "PublicTest_1.png", make_images(1)[0])
    save_png(root / "train" / "sad" / "1.png", make_images(1)[0])
    (root / "train" / "happy").symlink_to(root / "test" / "happy", target_is_directory=True)
    with pytest.raises(DataError, match="read already for another split"):
        load(root, cache=False)


def test_order_does_not_depend_on_the_listing(tmp_path, make_images):
    """Names that natural order cannot tell apart (01 / 1, A / a) are ordered by name."""
    from ferkit.data.folders import _natural

    names = ["a.png", "A.png", "1.png", "01.png", "10.png", "2.png"]
    assert sorted(names, key=_natural) == sorted(reversed(names), key=_natural)
    assert sorted(names, key=_natural)[:2] == ["01.png", "1.png"]


def test_sub_folders_in_split_folders_and_own_classes(tmp_path, make_images):
    imgs = make_images(4)
    root = tmp_path / "splits"
    save_png(root / "train" / "happy" / "s1" / "Training_1.png", imgs[0])
    save_png(root / "test" / "sad" / "s2" / "PrivateTest_2.png", imgs[1])
    save_png(root / "test" / "sad" / "s2" / "PublicTest_3.png", imgs[2])
    faces = load(root)
    assert faces.splits.tolist() == ["Training", "PublicTest", "PrivateTest"]
    assert faces.labels.tolist() == [3, 4, 4]
    # the test/ rule holds in sub-folders too: the split is in the file name
    bad = save_png(root / "test" / "sad" / "s2" / "img_4.png", imgs[3])
    with pytest.raises(DataError, match=rf"{bad.name}: a test/ image name must start with"):
        load(root)
    own = tmp_path / "own"
    save_png(own / "calm" / "day1" / "1.png", imgs[0])
    save_png(own / "tense" / "2.png", imgs[1])
    faces = load(own)
    assert faces.class_names == ("calm", "tense") and faces.labels.tolist() == [0, 1]


# ---- FaceSet: labels, images and splits as documented, or a clear error ----


IMAGES = np.zeros((3, 48, 48), np.uint8)


@pytest.mark.parametrize(
    ("labels", "message"),
    [
        ([[0], [1], [2]], r"labels must be 1-D, N class indices, got shape \(3, 1\)"),
        (np.eye(7)[[0, 3, 6]], r"shape \(3, 7\).*one-hot.*argmax"),
        ([0.0, 0.9, 2.7], r"label 0\.9 at index 1 is not a whole number"),
        ([0, float("nan"), 1], r"label nan at index 1 is not a whole number"),
        ([0, 1, 7], r"label 7 at index 2 is out of range: labels are 0\.\.6"),
        ([0, -2, 1], r"label -2 at index 1 is out of range"),
        ([0.0, 1.0, 9.0], r"label 9 at index 2 is out of range"),
        ([0, 1], r"labels has 2 rows, images 3"),
        (["happy", "sad", "fear"], r"integer class indices.*'happy'.*class_names"),
        ([True, False, True], r"integer class indices.*bool"),
        (np.array([0, None, 1], dtype=object), r"label None at index 1 is not a number"),
    ],
)
def test_faceset_refuses_bad_labels(labels, message):
    with pytest.raises(DataError, match=message):
        FaceSet(IMAGES, labels, ["Training"] * 3)


def test_faceset_takes_whole_numbers_and_unlabelled_rows():
    faces = FaceSet(IMAGES, np.array([0.0, -1.0, 6.0]), ["Training"] * 3)
    assert faces.labels.tolist() == [0, -1, 6] and faces.labels.dtype == np.int64
    faces = FaceSet(IMAGES, np.uint8([0, 1, 2]), ["a"] * 3, class_names=["x", "y", "z"])
    assert faces.labels.dtype == np.int64
    with pytest.raises(DataError, match=r"label 3 at index 0 is out of range: labels are 0\.\.2"):
        FaceSet(IMAGES, [3, 0, 0], ["a"] * 3, class_names=["x", "y", "z"])
    # numpy integers among Python objects are numbers; an empty set's [] index is fine
    mixed = FaceSet(IMAGES, np.array([0, 1, np.int64(2)], dtype=object), ["a"] * 3)
    assert mixed.labels.tolist() == [0, 1, 2]
    empty = FaceSet(np.zeros((0, 48, 48), np.uint8), [], [], index=[])
    assert len(empty) == 0 and empty.index.dtype == np.int64
    assert FaceSet(IMAGES, [0, 1, 2], ["a"] * 3, index=[0.0, 1.0, 5.0]).index.tolist() == [0, 1, 5]


@pytest.mark.parametrize(
    ("images", "message"),
    [
        (np.zeros((3, 48, 48)), r"uint8 N x 48 x 48, got float64 \(3, 48, 48\).*astype"),
        (np.zeros((3, 48, 48, 3), np.uint8), r"got uint8 \(3, 48, 48, 3\); gray images only"),
        (np.zeros((3, 64, 64), np.uint8), r"got uint8 \(3, 64, 64\); resize"),
        (np.zeros(3, np.uint8), r"got uint8 \(3,\)"),
        ([np.zeros((48, 48)), np.zeros((4, 4)), 1], r"images: not an array"),
    ],
)
def test_faceset_refuses_bad_images(images, message):
    with pytest.raises(DataError, match=message):
        FaceSet(images, [0, 1, 2], ["Training"] * 3)


@pytest.mark.parametrize(
    ("splits", "index", "message"),
    [
        ("Training", None, r"splits must be 1-D.*shape \(\).*repeat"),
        ([["Training"]] * 3, None, r"splits must be 1-D.*shape \(3, 1\)"),
        (["Training"] * 2, None, r"splits has 2 rows, images 3"),
        (["Training"] * 3, [0.5, 1, 2], r"index must be N integer row numbers, got float64"),
        (["Training"] * 3, [[0, 1, 2]], r"index must be 1-D"),
    ],
)
def test_faceset_refuses_bad_splits_and_index(splits, index, message):
    with pytest.raises(DataError, match=message):
        FaceSet(IMAGES, [0, 1, 2], splits, index=index)


def test_faceset_soft_labels_are_checked_and_float32():
    with pytest.raises(DataError, match=r"soft_labels must be N x 7 .*got float64 \(3, 8\)"):
        FaceSet(IMAGES, [0, 1, 2], ["a"] * 3, soft_labels=np.zeros((3, 8)))
    faces = FaceSet(IMAGES, [0, 1, 2], ["a"] * 3, soft_labels=np.full((3, 7), 1 / 7))
    assert faces.soft_labels.dtype == np.float32


# ---- CSVs without a header ----


def test_csv_without_header_says_so_briefly(tmp_path, make_images, write_csv):
    imgs = make_images(3)
    rows = [[i, img, "Training"] for i, img in enumerate(imgs)]
    path = write_csv(tmp_path / "fer2013.csv", "0,1 2 3 4 5 6 7 8 9 10 11,Training", rows)
    with pytest.raises(DataError) as info:
        load(path)
    message = str(info.value)
    assert "the first line looks like a data row" in message
    assert "needs a header line" in message and "emotion,pixels,Usage" in message
    assert len(message) < 400
    # Kaggle's test.csv without its header: the same, in the folder layout
    kaggle = tmp_path / "kaggle"
    write_csv(kaggle / "train.csv", "emotion,pixels", [[0, imgs[0]]])
    pixels = " ".join(map(str, imgs[1].ravel().tolist()))
    write_csv(kaggle / "test.csv", pixels, [[imgs[2]]])
    with pytest.raises(DataError, match=r"test\.csv: the first line looks like a data row") as info:
        load(kaggle)
    assert len(str(info.value)) < 400


def test_long_headers_are_cut_in_messages(tmp_path, make_images, write_csv):
    header = "emotion," + ",".join(f"a_rather_long_column_name_{i}" for i in range(300))
    path = write_csv(tmp_path / "wide.csv", header, [])
    with pytest.raises(DataError, match=r"no 'pixels' column in header .*\(301 fields\)") as info:
        read_fer2013_csv(path)
    assert len(str(info.value)) < 300
    header = "emotion,pixels,Usage," + ",".join(f"extra_{i}" for i in range(300))
    path = write_csv(tmp_path / "rows.csv", header, [[0, make_images(1)[0], "Training"]])
    with pytest.raises(DataError, match=r"line 2: expected 303 fields .*got 3") as info:
        read_fer2013_csv(path)
    assert len(str(info.value)) < 300


# ---- Kaggle train.csv + test.csv ----


def _kaggle(folder: Path, write_csv, make_images, n_test: int, labels: bool = False) -> Path:
    train = [[i % 7, img] for i, img in enumerate(make_images(28, seed=1))]
    write_csv(folder / "train.csv", "emotion,pixels", train)
    test = make_images(n_test, seed=2)
    if labels:
        write_csv(folder / "test.csv", "emotion,pixels", [[i % 7, img] for i, img in
                                                          enumerate(test)])
    else:
        write_csv(folder / "test.csv", "pixels", [[img] for img in test])
    return folder


def test_kaggle_split_assumption_is_a_note(tmp_path, make_images, write_csv, capsys):
    from ferkit.cli import main

    root = _kaggle(tmp_path / "kaggle", write_csv, make_images, 7)
    for _ in range(2):  # read, then from the cache
        faces = load(root)
        (note,) = faces.info["notes"]
        assert note == f"{root}: {faces.info['split_assumption']}"
        err = capsys.readouterr().err
        assert f"ferkit: note: {note}" in err
    assert "first 3 rows are taken as PublicTest and the other 4 as PrivateTest" in note
    assert "no emotion column, so its labels are unknown (-1)" in note
    assert "ODD row count" in note
    assert check_report(faces)["notes"] == [note]
    assert f"note: {note}" in format_check(check_report(faces))
    assert main(["data", "check", str(root)]) == 0
    assert f"note: {note}" in capsys.readouterr().out
    assert main(["data", "check", str(root), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["notes"] == [note]


def test_kaggle_note_names_the_folder_as_given_also_from_the_cache(
    tmp_path, make_images, write_csv, monkeypatch
):
    root = _kaggle(tmp_path / "kaggle", write_csv, make_images, 6)
    load(root)  # cached under the absolute path
    monkeypatch.chdir(tmp_path)
    (note,) = load("kaggle").info["notes"]
    assert note.startswith("kaggle: test.csv has no Usage column")


def test_kaggle_note_says_labels_were_read(tmp_path, make_images, write_csv):
    root = _kaggle(tmp_path / "kaggle", write_csv, make_images, 6, labels=True)
    faces = load(root)
    (note,) = faces.info["notes"]
    assert "its labels are read from its emotion column" in note
    assert "unknown" not in note and "ODD" not in note
    assert faces.labels[faces.splits != "Training"].tolist() == [0, 1, 2, 3, 4, 5]


def test_kaggle_without_test_labels_selects_on_held_out_training(tmp_path, make_images,
                                                                 write_csv):
    from ferkit.recipe import Recipe
    from ferkit.train import load_data

    root = _kaggle(tmp_path / "kaggle", write_csv, make_images, 54)
    with pytest.raises(DataError, match=r"validation split \['PublicTest'\] is unlabelled.*"
                       r"--set val_fraction=0\.1"):
        load_data(Recipe(), root)
    train, val, name = load_data(Recipe(val_fraction=0.25), root)
    assert name == "25% of Training (held out)"
    assert (len(train), len(val)) == (21, 7)  # one of each class's 4
    for part in (train, val):  # never a test split, and every row labelled
        assert set(part.splits.tolist()) == {"Training"} and (part.labels >= 0).all()
    assert not set(train.index.tolist()) & set(val.index.tolist())
    # test.csv with labels: its first half is the validation split, as before
    labelled = _kaggle(tmp_path / "labelled", write_csv, make_images, 6, labels=True)
    train, val, name = load_data(Recipe(val_fraction=0.25), labelled)
    assert name == "PublicTest" and len(val) == 3 and len(train) == 28


def test_a_pack_of_data_that_cannot_be_read_leaves_no_folders(tmp_path, capsys):
    from ferkit.cli import main

    (tmp_path / "kept").mkdir()
    for out in (tmp_path / "new" / "sub" / "p.fkpack", tmp_path / "new" / ".." / "kept" / "p.fkpack"):
        assert main(["data", "pack", str(tmp_path / "nosuch.csv"), "--out", str(out)]) == 2
        assert "nosuch.csv" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kept"]
