"""One decoding for every path (`ferkit.imagedecode`): image-folder datasets are read as
`Recognizer` reads photos, `classify` reads PIL crops as `predict` reads images, the crop
layouts `classify` takes, and the checks of `Recognizer`'s options."""

from __future__ import annotations

import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ferkit import imagedecode
from ferkit.data import folders, load
from ferkit.evaluate import predict_probs
from ferkit.faces import to_gray as crop_gray
from ferkit.recognize import ImageError, Recognizer, as_face_crops, load_image

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def rec(checkpoint) -> Recognizer:
    """What ``--detector none --no-auto-contrast`` feeds the model."""
    return Recognizer(model=str(checkpoint), detector="none", device="cpu", auto_contrast=False)


def colour(seed: int = 0, shape=(48, 48)) -> np.ndarray:
    """A random RGB image whose colours are not gray (so that luma rounding shows)."""
    return np.random.default_rng(seed).integers(0, 256, (*shape, 3), dtype=np.uint8)


def write(kind: str, path: Path) -> Path:
    """A file of one kind of pixels (48 x 48 but for "large" and "small")."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rgb = colour()
    if kind == "16-bit":  # 8-bit values in a 16-bit PNG: not near black
        face = np.random.default_rng(1).integers(60, 251, (48, 48))
        image = Image.fromarray(face.astype(np.uint16))
        assert image.mode.startswith("I;16")
    elif kind == "exif-jpeg":  # stored sideways, orientation 6: turned on reading
        image = Image.fromarray(rgb).transpose(Image.Transpose.ROTATE_90)
        exif = Image.Exif()
        exif[imagedecode.ORIENTATION_TAG] = 6
        path = path.with_suffix(".jpg")
        image.save(path, exif=exif, quality=95)
        return path
    elif kind == "rgba":  # transparent parts over white
        alpha = np.random.default_rng(2).integers(0, 256, (48, 48), dtype=np.uint8)
        image = Image.fromarray(np.dstack([rgb, alpha]))
    elif kind == "rgb":  # luma as the crops' (OpenCV's rounding, not PIL's "L")
        image = Image.fromarray(rgb)
    elif kind == "large":  # shrunk as classify shrinks a crop (area averaging)
        image = Image.fromarray(colour(3, (120, 90)))
    elif kind == "small":  # enlarged as classify enlarges one (bilinear)
        image = Image.fromarray(colour(4, (30, 40)))
    elif kind == "cmyk":
        image = Image.fromarray(rgb).convert("CMYK")
        path = path.with_suffix(".tif")
    elif kind == "palette-transparency":
        image = Image.fromarray(rgb).quantize(64)
        image.info["transparency"] = 3
    else:
        raise AssertionError(kind)
    path = path.with_suffix(path.suffix or ".png")
    image.save(path)
    return path


KINDS = ["16-bit", "exif-jpeg", "rgba", "rgb", "cmyk", "palette-transparency", "large",
         "small"]


@pytest.mark.parametrize("kind", KINDS)
def test_image_folders_are_read_as_recognition_reads_them(kind, rec, tmp_path, ferkit_cache):
    """Training and evaluation on image folders see what ``--detector none`` recognition
    sees: the same pixels, to the last grey level."""
    path = write(kind, tmp_path / "data" / "happy" / "face")
    faces = load(tmp_path / "data", cache=False)
    expected = rec.prepare([load_image(path).pixels])
    np.testing.assert_array_equal(faces.images, expected)
    if kind == "16-bit":  # its own values, not divided by 257 (near black)
        np.testing.assert_array_equal(faces.images[0], np.asarray(Image.open(path)))
    if kind == "exif-jpeg":  # turned: close to the upright original, not to the stored one
        upright = crop_gray(colour()).astype(int)
        assert np.abs(faces.images[0] - upright).mean() < 12
    if kind == "rgba":
        with Image.open(path) as im:
            assert (faces.images[0] >= crop_gray(np.asarray(im)[..., :3])).all()


def test_cached_folder_reads_of_another_decoding_are_read_again(
    tmp_path, make_images, ferkit_cache, monkeypatch
):
    images = make_images(2)
    for i, cls in enumerate(["angry", "sad"]):
        (tmp_path / "data" / cls).mkdir(parents=True)
        Image.fromarray(images[i]).save(tmp_path / "data" / cls / f"{i}.png")
    load(tmp_path / "data")  # cached
    calls = []
    reader = folders.read_image
    monkeypatch.setattr(folders, "read_image", lambda p: calls.append(p) or reader(p))
    load(tmp_path / "data")
    assert calls == []  # a cache hit
    monkeypatch.setattr(imagedecode, "DECODING_VERSION", imagedecode.DECODING_VERSION + 1)
    np.testing.assert_array_equal(load(tmp_path / "data").images, images[[0, 1]])
    assert len(calls) == 2  # decoded otherwise: not taken from the cache


def test_reading_an_image_folder_needs_no_torch(tmp_path):
    (tmp_path / "happy").mkdir()
    Image.fromarray(colour()).save(tmp_path / "happy" / "1.png")
    code = (
        "import sys, ferkit.data; "
        f"faces = ferkit.data.load({str(tmp_path)!r}, cache=False); "
        "print(len(faces), 'torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=REPO)
    assert out.stdout.split() == ["1", "False"]


# ---- crop layouts (classify, prepare, as_face_crops) ----


def test_a_colour_crop_is_one_crop_whatever_its_size(rec):
    """A 3-D array whose last axis is 1, 3 or 4 is one crop H x W x C: a small colour crop
    was read as a batch of gray crops 3 or 4 pixels wide."""
    small = colour(3, (4, 4))
    assert rec.classify(small).shape == (1, 7)
    np.testing.assert_array_equal(as_face_crops(small), as_face_crops([small]))
    np.testing.assert_array_equal(as_face_crops(small),
                                  as_face_crops(crop_gray(small)))  # its gray
    one = np.random.default_rng(4).integers(0, 256, (48, 48, 1), dtype=np.uint8)
    np.testing.assert_array_equal(as_face_crops(one), as_face_crops(one[..., 0]))
    rgba = np.random.default_rng(5).random((5, 48, 4))  # one 5 x 48 crop with alpha
    assert as_face_crops(rgba).shape == (1, 48, 48)
    np.testing.assert_array_equal(as_face_crops(rgba), as_face_crops([rgba]))


def test_gray_batches_keep_their_layout(rec):
    """N x H x W is N gray crops, 3 and 4 of them too (a photo with 3 faces gives 3 x 48 x
    48); 1 x H x W is one."""
    crops = np.random.default_rng(6).integers(0, 256, (4, 48, 48), dtype=np.uint8)
    for n in (1, 3, 4):
        np.testing.assert_array_equal(as_face_crops(crops[:n]), crops[:n])
    assert rec.classify(crops[:3]).shape == (3, 7)
    np.testing.assert_array_equal(as_face_crops(crops[:1, :20]),
                                  as_face_crops([crops[0, :20]]))


def test_colour_laid_out_channels_first_is_refused_where_it_is_certain():
    chw = np.moveaxis(colour(7), -1, 0)  # 3 x 48 x 48
    with pytest.raises(ImageError, match=r"crop 1: .*channels first.*H x W x 3"):
        as_face_crops([colour(7), chw])  # a list item is one crop
    with pytest.raises(ImageError, match=r"channels first.*transpose\(0, 2, 3, 1\)"):
        as_face_crops(np.stack([chw, chw]))  # N x 3 x H x W
    with pytest.raises(ImageError, match="crop 0: expected H x W"):
        as_face_crops([np.zeros((2, 48, 48))])


# ---- PIL crops ----


def test_pil_crops_are_decoded_as_predict_decodes_images(rec):
    """CMYK was read as RGBA, palette images as their indices, LA and F refused."""
    rgb = Image.fromarray(colour(8))
    expected = rec.prepare(np.asarray(rgb))
    for what, given in {"rgb": rgb, "cmyk": rgb.convert("CMYK"), "list": [rgb]}.items():
        np.testing.assert_array_equal(rec.prepare(given), expected, err_msg=what)
    palette = rgb.quantize(256)
    np.testing.assert_array_equal(rec.prepare(palette),
                                  rec.prepare(np.asarray(palette.convert("RGB"))))
    gray = rgb.convert("L")
    np.testing.assert_array_equal(rec.prepare(gray.convert("LA")), rec.prepare(gray))
    np.testing.assert_array_equal(rec.prepare(gray.convert("F")), rec.prepare(gray))
    deep = Image.fromarray(np.asarray(gray).astype(np.uint16) << 4)  # 12-bit data
    np.testing.assert_array_equal(rec.prepare(deep), rec.prepare(gray))
    for given in (rgb.convert("CMYK"), palette, [gray.convert("LA"), gray.convert("F")]):
        n = len(given) if isinstance(given, list) else 1
        assert rec.classify(given).shape == (n, 7)


def test_pil_crops_honour_their_exif_orientation(rec):
    upright = Image.fromarray(colour(9, (40, 48)))
    stored = upright.transpose(Image.Transpose.ROTATE_90)
    stored.getexif()[imagedecode.ORIENTATION_TAG] = 6  # "turn 90 degrees clockwise"
    np.testing.assert_array_equal(rec.prepare(stored), rec.prepare(np.asarray(upright)))


def test_read_only_arrays_and_pil_images_classify_without_warnings(rec):
    crops = np.random.default_rng(10).integers(0, 256, (3, 48, 48), dtype=np.uint8)
    read_only = crops.copy()
    read_only.flags.writeable = False
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        np.testing.assert_allclose(rec.classify(read_only), rec.classify(crops), atol=1e-6)
        rec.classify(Image.fromarray(crops[0]))
        predict_probs(rec.model, read_only)


def test_writable_faces_go_to_torch_without_a_copy(rec, monkeypatch):
    crops = np.random.default_rng(11).integers(0, 256, (5, 48, 48), dtype=np.uint8)
    seen = []
    as_tensor = torch.as_tensor
    monkeypatch.setattr(torch, "as_tensor", lambda x, **k: seen.append(x) or as_tensor(x, **k))
    predict_probs(rec.model, crops, batch_size=2)
    arrays = [x for x in seen if isinstance(x, np.ndarray)]
    assert arrays and all(np.shares_memory(x, crops) for x in arrays)


# ---- Recognizer's options and float input ----


@pytest.mark.parametrize(
    "kwargs,words",
    [
        ({"margin": float("inf")}, "margin must be a finite number"),
        ({"margin": float("nan")}, "margin must be a finite number"),
        ({"margin": "0.2"}, "margin"),
        ({"auto_contrast": "no"}, "auto_contrast must be True or False"),
        ({"auto_contrast": 1}, "auto_contrast must be True or False"),
        ({"batch_size": 2.5}, "batch_size must be a whole number"),
        ({"batch_size": float("inf")}, "batch_size"),
        ({"max_side": float("inf")}, "max_side must be a whole number"),
        ({"max_side": True}, "max_side"),
    ],
)
def test_recognizer_options_must_be_real_values(checkpoint, kwargs, words):
    with pytest.raises(ValueError, match=words):
        Recognizer(model=str(checkpoint), detector="none", device="cpu", **kwargs)


def test_float_pixels_outside_0_1_are_clipped_only_within_the_documented_margin():
    low, high = imagedecode.FLOAT_RANGE
    face = np.linspace(0, 1, 48 * 48, dtype=np.float32).reshape(48, 48)
    face[0, 0], face[0, 1] = low, high  # resampling overshoot: clipped
    pixels = load_image(face).pixels
    assert pixels[0, 0] == 0 and pixels[0, 1] == 255
    for beyond in (np.nextafter(np.float32(high), 2), np.nextafter(np.float32(low), -2)):
        face[0, 1] = beyond
        with pytest.raises(ImageError, match="0..1"):
            load_image(face)
    text = " ".join((REPO / "docs" / "recognition.md").read_text().split())
    assert f"float in 0..1 ({low:g}..{high:g}" in text  # the docs say the same margin


def test_float_image_files_are_read_by_the_range_their_values_use(tmp_path):
    """PIL's float mode (PFM, float TIFF): a PFM's 0..1 was read as 0..255 (near black), a
    TIFF of 16-bit levels refused with advice for Python callers."""
    ramp = np.linspace(0, 1, 48 * 48, dtype=np.float32).reshape(48, 48)
    want = np.clip(ramp * 255 + 0.5, 0, 255).astype(np.uint8)
    pfm = tmp_path / "face.pfm"  # little-endian gray PFM, rows bottom to top
    pfm.write_bytes(b"Pf\n48 48\n-1.0\n" + ramp[::-1].astype("<f4").tobytes())
    assert np.array_equal(load_image(pfm).pixels, want)
    for scale, levels in ((255.0, want), (4095.0, None), (65535.0, None)):
        tif = tmp_path / f"face-{scale:g}.tif"
        Image.fromarray(ramp * np.float32(scale), mode="F").save(tif)
        pixels = load_image(tif).pixels
        if levels is not None:
            assert np.abs(pixels.astype(int) - levels).max() <= 1
        else:  # integer levels of 12 or 16 bits: the full 8-bit range, in order
            assert pixels.min() == 0 and pixels.max() == 255
            assert (np.diff(pixels.ravel().astype(int)) >= 0).all()
    # a resampling overshoot over 255 is clipped, not read as 10-bit levels (4 x darker)
    over = ramp * np.float32(255.0)
    over[0, 0] = 255.6
    tif = tmp_path / "over.tif"
    Image.fromarray(over, mode="F").save(tif)
    clipped = want.copy()
    clipped[0, 0] = 255
    assert np.abs(load_image(tif).pixels.astype(int) - clipped).max() <= 1
    # whole numbers just over 255 are levels (9-10 bits), not an overshoot: not clipped
    levels = np.rint(ramp * np.float32(380.0))
    Image.fromarray(levels, mode="F").save(tif)
    pixels = load_image(tif).pixels
    assert (pixels == 255).mean() < 0.01 and pixels.max() == 95  # 380 >> 2
    # data normalised to -1..1 is refused, as the same array is
    Image.fromarray(ramp * 2 - 1, mode="F").save(tif)
    with pytest.raises(ImageError, match="not negative values"):
        load_image(tif)
