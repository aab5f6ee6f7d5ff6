"""Face detection, the face crop, `Recognizer` on photos and the ``predict`` command."""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ferkit import samples
from ferkit.augment import normalize
from ferkit.data.ferplus import FERPLUS_CLASSES
from ferkit.faces import (
    Detection,
    FaceDetector,
    FallbackDetector,
    crop_face,
    faces_to_tensor,
    get_detector,
    resize,
    square_region,
    to_gray,
)
from ferkit.models import create_model
from ferkit.predict_cli import add_parsers
from ferkit.recognize import (
    TYPICAL_MEAN,
    TYPICAL_STD,
    Face,
    ImageError,
    Recognizer,
    as_face_crops,
    lift_contrast,
    load_image,
)
from ferkit.weights import available_weights, load_model

CLASSES = ["angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"]


@pytest.fixture(scope="module")
def recognizer(checkpoint) -> Recognizer:
    return Recognizer(model=str(checkpoint), device="cpu")


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    with Image.open(samples.path("astronaut")) as img:
        return np.asarray(img.convert("RGB"))


def boxes(faces: list[Face]) -> list[list[int]]:
    return [f.box for f in faces]


def iou(a, b) -> float:
    ax1, ay1, bx1, by1 = a[0] + a[2], a[1] + a[3], b[0] + b[2], b[1] + b[3]
    iw = max(0, min(ax1, bx1) - max(a[0], b[0]))
    ih = max(0, min(ay1, by1) - max(a[1], b[1]))
    inter = iw * ih
    return inter / (a[2] * a[3] + b[2] * b[3] - inter)


# ---- crop_face ----


def ramp(h: int, w: int) -> np.ndarray:
    return (np.arange(h * w).reshape(h, w) % 251).astype(np.uint8)


def test_crop_face_is_the_square_around_the_box_enlarged_by_the_margin():
    img = ramp(100, 100)
    # box centre (50, 50), side 20 -> 30 with margin 0.5: rows/cols 35..64
    out = crop_face(img, (40, 40, 20, 20), margin=0.5, size=30)
    assert np.array_equal(out, img[35:65, 35:65])
    # a tall box: the square follows the longer side, centred on the box
    out = crop_face(img, (45, 30, 10, 40), margin=0.0, size=40)
    assert np.array_equal(out, img[30:70, 30:70])


def test_crop_face_pads_by_repeating_the_edge():
    img = ramp(60, 80)
    out = crop_face(img, (0, 0, 20, 20), margin=1.0, size=40)  # square -10..29
    assert np.array_equal(out[10:, 10:], img[:30, :30])
    assert np.array_equal(out[:10, 10:], np.repeat(img[:1, :30], 10, axis=0))
    assert np.array_equal(out[10:, :10], np.repeat(img[:30, :1], 10, axis=1))
    assert (out[:10, :10] == img[0, 0]).all()
    out = crop_face(img, (70, 50, 10, 10), margin=1.0, size=20)  # beyond bottom-right
    assert np.array_equal(out[:15, :15], img[45:, 65:])
    assert (out[15:, 15:] == img[-1, -1]).all()


def test_crop_face_output_is_gray_uint8_48x48(astronaut):
    for image in (astronaut, astronaut[:, :, 0]):
        for box in ((177, 66, 95, 95), (0, 0, 5, 5), (500, 500, 300, 100)):
            out = crop_face(image, box)
            assert out.shape == (48, 48) and out.dtype == np.uint8
    gray = np.asarray(Image.fromarray(astronaut).convert("L"))
    diff = crop_face(astronaut, (177, 66, 95, 95)).astype(int) - crop_face(gray, (177, 66, 95, 95))
    assert np.abs(diff).max() <= 1  # RGB input is converted to gray like PIL's "L"


def test_crop_face_levels_the_eyes():
    img = np.full((200, 200), 200, np.uint8)
    eyes = ((80, 90), (120, 110))  # tilted by atan(20/40) = 26.6 degrees
    for x, y in eyes:
        img[y - 3 : y + 4, x - 3 : x + 4] = 0
    out = crop_face(img, (60, 60, 80, 80), margin=0.0, size=80, eyes=eyes)
    dark = np.argwhere(out < 100)
    left, right = dark[dark[:, 1] < 40], dark[dark[:, 1] >= 40]
    assert len(left) and len(right)
    assert abs(left[:, 0].mean() - right[:, 0].mean()) < 1.5
    # eyes 44.7 px apart stay 44.7 px apart (scale 1) and centred about the crop centre
    assert abs((right[:, 1].mean() - left[:, 1].mean()) - 44.7) < 1.5
    assert abs(dark[:, 0].mean() - 39.5) < 1.5


def test_faces_to_tensor_uses_the_shared_normalisation():
    crops = [ramp(48, 48), 255 - ramp(48, 48)]
    x = faces_to_tensor(crops)
    assert x.shape == (2, 1, 48, 48) and x.dtype == torch.float32
    assert torch.equal(x, normalize(torch.from_numpy(np.stack(crops))))
    assert faces_to_tensor([]).shape == (0, 1, 48, 48)


# ---- detector ----


def test_haar_finds_the_sample_face(astronaut):
    found = get_detector("haar").detect(astronaut)
    assert len(found) == 1
    x, y, w, h = found[0].box
    assert 150 < x + w / 2 < 300 and 60 < y + h / 2 < 170 and 60 < w < 160
    assert found[0].landmarks is None and found[0].score > 0


def test_haar_maps_boxes_back_from_its_downscaled_search(astronaut):
    big = np.asarray(Image.fromarray(astronaut).resize((1536, 1536)))
    found = get_detector("haar", max_side=512).detect(big)
    ref = get_detector("haar").detect(astronaut)[0].box
    assert any(iou(d.box, [3 * v for v in ref]) > 0.7 for d in found)


class _Boxes(FaceDetector):
    """A fake detector: fixed boxes, and how often it was asked."""

    def __init__(self, boxes, margin=0.2):
        self.boxes, self.crop_margin, self.calls = boxes, margin, 0

    def detect(self, image):
        self.calls += 1
        return [Detection(tuple(b), 1.0) for b in self.boxes]


def test_fallback_detector_asks_the_fallback_only_when_the_primary_finds_nothing():
    image = np.zeros((100, 200), np.uint8)
    primary, fallback = _Boxes([(10, 10, 30, 30)], margin=0.06), _Boxes([(100, 40, 40, 20)])
    both = FallbackDetector(primary, fallback)
    assert [d.box for d in both.detect(image)] == [(10, 10, 30, 30)] and fallback.calls == 0
    primary.boxes = []
    (found,) = both.detect(image)
    assert fallback.calls == 1
    # rescaled about its centre (120, 50) by 1.2 / 1.06, so that the primary's margin gives
    # the crop the fallback's margin would have given
    cx, cy, side = square_region(found.box, both.crop_margin)
    assert (cx, cy) == pytest.approx((120, 50), abs=0.5)
    assert side == pytest.approx(40 * 1.2, abs=1.1)
    fallback.boxes = [(180, 0, 40, 40)]  # grown past the image: clipped to it
    (found,) = both.detect(image)
    assert found.box[0] + found.box[2] <= 200 and found.box[1] == 0
    twin = both.clone()
    assert twin.primary is not primary and twin.crop_margin == 0.06


def test_blazeface_backed_by_haar_is_registered(astronaut):
    detector = get_detector("blazeface+haar")
    assert detector.name == "blazeface+haar" and detector.crop_margin == pytest.approx(0.06)
    assert [d.box for d in detector.detect(astronaut)] == [
        d.box for d in get_detector("blazeface").detect(astronaut)
    ]


def test_unknown_detector_lists_the_available_ones():
    with pytest.raises(ValueError, match="haar"):
        get_detector("nope")


# ---- Recognizer inputs ----


def test_predict_sample_path(recognizer):
    faces = recognizer.predict(samples.path("astronaut"))
    assert len(faces) == 1
    face = faces[0]
    assert face.label in CLASSES and face.label == max(face.scores, key=face.scores.get)
    assert abs(sum(face.scores.values()) - 1) < 1e-4
    assert face.confidence == face.scores[face.label]
    json.dumps(face.to_dict())
    assert set(face.to_dict()) >= {"box", "label", "confidence", "scores"}


def test_all_input_kinds_give_the_same_faces(recognizer, astronaut):
    path = samples.path("astronaut")
    ref = recognizer.predict(path)
    gray = np.asarray(Image.fromarray(astronaut).convert("L"))
    with Image.open(path) as pil:
        variants = [
            recognizer.predict(str(path)),
            recognizer.predict(astronaut),
            recognizer.predict(np.ascontiguousarray(astronaut[:, :, ::-1]), color="bgr"),
            recognizer.predict(pil),
            recognizer.predict(io.BytesIO(path.read_bytes())),
        ]
        for faces in variants:
            assert boxes(faces) == boxes(ref)
            assert np.allclose(list(faces[0].scores.values()), list(ref[0].scores.values()))
    faces = recognizer.predict(gray)
    assert len(faces) == 1 and iou(faces[0].box, ref[0].box) > 0.9


def test_exif_orientation_is_applied(recognizer, astronaut, tmp_path):
    shown = Image.fromarray(astronaut[:400])  # 512 wide, 400 high as displayed
    stored = shown.transpose(Image.Transpose.ROTATE_90)  # how a camera held sideways stores it
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    path = tmp_path / "rotated.png"
    stored.save(path, exif=exif)
    loaded = load_image(path)
    assert loaded.pixels.shape[:2] == (400, 512)
    assert boxes(recognizer.predict(path)) == boxes(recognizer.predict(np.asarray(shown)))
    assert len(boxes(recognizer.predict(path))) == 1


def test_jpeg_exif_orientation_and_shrunk_decoding(checkpoint, astronaut, tmp_path):
    shown = Image.fromarray(astronaut).resize((2048, 2048))
    exif = Image.Exif()
    exif[0x0112] = 8
    path = tmp_path / "big.jpg"
    shown.transpose(Image.Transpose.ROTATE_270).save(path, exif=exif, quality=95)
    rec = Recognizer(model=str(checkpoint), device="cpu", max_side=700)
    loaded = load_image(path, max_side=700)
    assert max(loaded.pixels.shape) <= 700 and loaded.scale[0] == pytest.approx(2048 / 700, 0.01)
    ref = Recognizer(model=str(checkpoint), device="cpu").predict(astronaut)[0].box
    assert any(iou(f.box, [4 * v for v in ref]) > 0.7 for f in rec.predict(path))


@pytest.mark.parametrize("kind", ["uint16-array", "I;16-png", "rgba", "la", "palette", "cmyk"])
def test_other_pixel_formats(recognizer, astronaut, tmp_path, kind):
    ref = recognizer.predict(astronaut)[0].box
    gray = np.asarray(Image.fromarray(astronaut).convert("L"))
    rgba = np.dstack([astronaut, np.full(astronaut.shape[:2], 255, np.uint8)])
    if kind == "uint16-array":
        image = gray.astype(np.uint16) * 257
    elif kind == "I;16-png":
        image = tmp_path / "deep.png"
        Image.fromarray(gray.astype(np.uint16) * 257).save(image)
        assert Image.open(image).mode.startswith("I")
        assert np.array_equal(load_image(image).pixels, gray)
    elif kind == "rgba":
        image = tmp_path / "alpha.png"
        rgba[:50, :, 3] = 0  # a transparent strip becomes white
        Image.fromarray(rgba).save(image)
        assert (load_image(image).pixels[:50] == 255).all()
    elif kind == "la":
        image = Image.fromarray(gray).convert("LA")
    elif kind == "palette":
        image = tmp_path / "palette.gif"
        Image.fromarray(astronaut).quantize(256).save(image)
    else:
        image = tmp_path / "cmyk.tif"
        Image.fromarray(astronaut).convert("CMYK").save(image)
    loaded = load_image(image)
    assert loaded.pixels.dtype == np.uint8 and loaded.pixels.shape[:2] == (512, 512)
    faces = recognizer.predict(image)
    assert len(faces) == 1 and iou(faces[0].box, ref) > 0.8


def test_data_of_fewer_bits_in_16_bit_images_keeps_its_contrast(tmp_path, astronaut):
    """12- and 10-bit data (and 8-bit values) in 16-bit arrays and files are scaled by their
    own depth: shifted by 8 bits they were near black (0..15) and scored confidently wrong."""
    gray = np.asarray(Image.fromarray(astronaut).convert("L"))
    assert np.array_equal(load_image(gray.astype(np.uint16) * 257).pixels, gray)  # 16-bit
    for bits in (12, 10, 8):
        deep = gray.astype(np.uint16) << (bits - 8)
        assert np.array_equal(load_image(deep).pixels, gray), bits
        Image.fromarray(deep).save(tmp_path / f"{bits}.png")
        assert np.array_equal(load_image(tmp_path / f"{bits}.png").pixels, gray), bits
    assert np.array_equal(load_image(gray.astype(np.int32) << 4).pixels, gray)
    # the depth is 8, 10, 12 or 16 bits, not the image's own maximum: a dim 12-bit image
    # stays dim, and a full-scale alpha channel does not make 12-bit colour 16-bit
    dim = (gray // 2).astype(np.uint16) << 4  # 12-bit data, largest value below 2048
    assert np.array_equal(load_image(dim).pixels, gray // 2)
    alpha = np.dstack([np.repeat(gray[..., None].astype(np.uint16) << 4, 3, -1),
                       np.full(gray.shape, 65535, np.uint16)])
    assert np.array_equal(load_image(alpha).pixels, np.repeat(gray[..., None], 3, -1))


def test_bgra_array_and_float_array(recognizer, astronaut):
    ref = boxes(recognizer.predict(astronaut))
    bgra = np.dstack([astronaut[:, :, ::-1], np.full(astronaut.shape[:2], 255, np.uint8)])
    assert boxes(recognizer.predict(bgra, color="bgr")) == ref
    assert boxes(recognizer.predict(astronaut / 255.0)) == ref


@pytest.mark.parametrize("scale", [1.0, 2 / 255.0], ids=["0-255", "minus1-1"])
def test_float_arrays_on_another_scale_are_refused_not_clipped_blank(recognizer, astronaut, scale):
    pixels = astronaut.astype(np.float32) * scale
    if scale != 1.0:
        pixels -= 1.0  # normalised to -1..1
    with pytest.raises(ImageError, match="0..1"):
        recognizer.predict(pixels)


def test_recognizer_options_are_checked(checkpoint):
    for kwargs, words in [({"batch_size": 0}, "batch_size"), ({"margin": -1.5}, "margin"),
                          ({"tta": "twelve-crop"}, "tta"), ({"device": "gpu"}, "unknown device")]:
        with pytest.raises(ValueError, match=words):
            Recognizer(model=str(checkpoint), **{"device": "cpu", **kwargs})


def test_a_model_given_with_metadata_must_fit_its_class_names():
    model = create_model("mba_cnn", num_classes=7)
    with pytest.raises(ValueError, match=r"gives 7 class scores.*names 2 classes \(a, b\)"):
        Recognizer(model=(model, {"class_names": ["a", "b"]}), device="cpu")
    flat = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(10, 7))
    with pytest.raises(ValueError, match="does not take one 1 x 48 x 48 gray face"):
        Recognizer(model=(flat, {"class_names": CLASSES}), device="cpu")
    assert Recognizer(model=(model, {"class_names": CLASSES}), device="cpu").class_names == CLASSES


def test_whole_image_detector_classifies_ready_crops_as_evaluation_does(checkpoint):
    """``detector="none"``: a 48 x 48 crop goes to the model as it is, the same probabilities
    as `classify` on the crop (what evaluation feeds the model)."""
    crop = np.random.default_rng(0).integers(0, 256, (48, 48), dtype=np.uint8)
    rec = Recognizer(model=str(checkpoint), detector="none", device="cpu")
    (face,) = rec.predict(crop)
    assert face.box == [0, 0, 48, 48] and face.detection_score is None
    expected = rec.classify(crop[None])[0]
    assert [face.scores[c] for c in rec.class_names] == pytest.approx(expected.tolist(), abs=1e-6)
    # a larger, non-square image is stretched to the square, as `classify` and image-folder
    # datasets read it: one view of a crop everywhere (it was padded here before)
    wide = np.random.default_rng(1).integers(0, 256, (96, 116, 3), dtype=np.uint8)
    (face,) = rec.predict(wide)
    assert face.box == [0, 0, 116, 96]
    _, (crop,) = rec.faces_in(load_image(wide))
    assert np.array_equal(crop, resize(to_gray(wide), 48, 48))
    expected = rec.classify(wide)[0]
    assert [face.scores[c] for c in rec.class_names] == pytest.approx(expected.tolist(), abs=1e-6)
    # a margin is kept around the stretched square
    framed = Recognizer(model=str(checkpoint), detector="none", device="cpu", margin=0.5)
    (face,) = framed.predict(wide)
    assert face.box == [0, 0, 116, 96]
    smooth = np.dstack([np.add.outer(np.arange(96), np.arange(116)).astype(np.uint8)] * 3)
    _, (crop,) = framed.faces_in(load_image(smooth))
    # the middle two thirds of the crop are the whole image (margin 0.5: a square 1.5 times
    # its side, edges repeated), stretched: compare them with the image resized to that size
    inner = crop[8:40, 8:40].astype(int)
    assert np.abs(inner - resize(to_gray(smooth), 32, 32).astype(int)).max() <= 4
    assert np.array_equal(crop[:, 0], crop[:, 5]) and crop[0, 0] < 10  # edges repeated


def test_classify_takes_crops_as_predict_takes_images(recognizer):
    """uint8 and float 0..1, gray, 1-channel, RGB, BGR, lists and other sizes give the
    probabilities of the uint8 48 x 48 crops; what it cannot read is an error naming it."""
    rng = np.random.default_rng(1)
    crops = rng.integers(0, 256, (5, 48, 48), dtype=np.uint8)
    expected = recognizer.classify(crops)
    assert expected.shape == (5, 7)
    same = {
        "float 0..1": crops / 255.0,
        "float32": (crops / 255.0).astype(np.float32),
        "N x 1 x H x W": crops[:, None],
        "N x H x W x 1": crops[..., None],
        "RGB": np.repeat(crops[..., None], 3, axis=-1),
        "list": list(crops),
        "uint16": crops.astype(np.uint16) * 257,
        "tensor": torch.from_numpy(crops),
    }
    for what, given in same.items():
        np.testing.assert_allclose(recognizer.classify(given), expected, atol=1e-5, err_msg=what)
    np.testing.assert_allclose(recognizer.classify(crops[0]), expected[:1], atol=1e-5)
    one_colour = np.repeat(crops[0][..., None], 3, axis=-1)  # H x W x 3: one crop
    np.testing.assert_allclose(recognizer.classify(one_colour), expected[:1], atol=1e-5)
    colour = rng.integers(0, 256, (2, 48, 48, 3), dtype=np.uint8)
    np.testing.assert_allclose(
        recognizer.classify(colour[..., ::-1], color="bgr"), recognizer.classify(colour),
        atol=1e-5,
    )
    # a crop of another size is resized to the model's 48 x 48, as predict's crops are
    big = np.kron(crops, np.ones((1, 2, 2), np.uint8))
    np.testing.assert_allclose(recognizer.classify(big), expected, atol=0.02)
    assert recognizer.classify([]).shape == (0, 7)
    bad = {
        "float 0..255": (crops * 1.0, "crop 0: float image values must be in 0..1"),
        "5 channels": (np.zeros((2, 48, 48, 5)), r"N x H x W x 3"),
        "5 dimensions": (np.zeros((1, 2, 48, 48, 3)), "got shape"),
        "mixed list": ([crops[0], crops[:2]], "crop 1: expected H x W"),
    }
    for what, (given, words) in bad.items():
        with pytest.raises(ImageError, match=words):
            recognizer.classify(given)
            pytest.fail(what)


@pytest.mark.parametrize(
    "content",
    [b"", b"not an image at all", "random", "truncated"],
    ids=["empty", "text", "random-bytes", "truncated-jpeg"],
)
def test_unreadable_files_raise_image_error_naming_the_file(recognizer, tmp_path, content):
    if content == "random":
        content = b"\xff\xd8\xff\xe0" + np.random.default_rng(0).bytes(2000)
    elif content == "truncated":
        data = samples.path("astronaut").read_bytes()
        content = data[: len(data) // 2]
    path = tmp_path / "broken.jpg"
    path.write_bytes(content)
    with pytest.raises(ImageError, match="broken.jpg") as caught:
        recognizer.predict(path)
    assert issubclass(ImageError, ValueError)
    if content == b"":
        assert "empty file (0 bytes)" in str(caught.value)
    elif content == b"not an image at all":
        assert "not an image PIL can read (expected JPEG, PNG" in str(caught.value)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs named pipes")
def test_an_image_from_a_pipe(recognizer, astronaut, tmp_path):
    """`cat photo.jpg | ferkit predict /dev/stdin`: a pipe has no size to check."""
    import threading

    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    data = samples.path("astronaut").read_bytes()
    writer = threading.Thread(target=lambda: fifo.write_bytes(data))
    writer.start()
    try:
        faces = recognizer.predict(fifo)
    finally:
        writer.join(timeout=10)
    assert boxes(faces) == boxes(recognizer.predict(astronaut))


def test_missing_file_and_bad_array(recognizer, tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.png"):
        recognizer.predict(tmp_path / "missing.png")
    with pytest.raises(ImageError, match="shape"):
        recognizer.predict(np.zeros((10, 10, 2), np.uint8))


def test_decompression_bomb_is_refused(recognizer, tmp_path, monkeypatch):
    path = tmp_path / "bomb.png"
    Image.new("L", (200, 200)).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10_000)  # refuse beyond 20,000 pixels
    with pytest.raises(ImageError, match="bomb.png.*too large"):
        recognizer.predict(path)


def test_no_face_gives_an_empty_list(recognizer):
    assert recognizer.predict(np.full((240, 320, 3), 128, np.uint8)) == []
    assert recognizer.predict_batch([]) == []


def test_huge_image_is_shrunk_and_boxes_map_back(recognizer, astronaut):
    # the face must stay above the default detector's smallest size (about 1/10 of the side)
    huge = np.zeros((12000, 12000), np.uint8)
    face = np.asarray(Image.fromarray(astronaut).convert("L").resize((8192, 8192)))
    huge[2000:10192, 1000:9192] = face
    ref = recognizer.predict(astronaut)[0].box
    expected = [1000 + 16 * ref[0], 2000 + 16 * ref[1], 16 * ref[2], 16 * ref[3]]
    faces = recognizer.predict(huge)
    assert any(iou(f.box, expected) > 0.7 for f in faces)


def test_predict_batch_equals_predict(recognizer, astronaut):
    images = [astronaut, np.full((100, 100), 50, np.uint8), astronaut[:, ::-1]]
    batch = recognizer.predict_batch(images)
    assert [len(b) for b in batch] == [1, 0, 1]
    for image, faces in zip(images, batch, strict=True):
        single = recognizer.predict(image)
        assert boxes(single) == boxes(faces)
        for a, b in zip(single, faces, strict=True):
            assert np.allclose(list(a.scores.values()), list(b.scores.values()), atol=1e-5)


def test_faces_are_sorted_left_to_right(checkpoint):
    class Fixed(FaceDetector):
        def detect(self, image):
            return [
                Detection((60, 10, 20, 20), 1.0),
                Detection((5, 30, 20, 20), 1.0, ((10.0, 35.0), (20.0, 35.0))),
            ]

    rec = Recognizer(model=str(checkpoint), detector=Fixed(), device="cpu")
    faces = rec.predict(np.full((100, 100), 90, np.uint8))
    assert boxes(faces) == [[5, 30, 20, 20], [60, 10, 20, 20]]
    assert faces[0].landmarks == [[10.0, 35.0], [20.0, 35.0]]
    json.dumps([f.to_dict() for f in faces])


def test_model_arguments(checkpoint):
    model = create_model("mba_cnn", num_classes=3)
    rec = Recognizer(model=(model, {"class_names": ["a", "b", "c"]}), device="cpu")
    assert rec.class_names == ["a", "b", "c"]
    with pytest.raises(ValueError, match="'torch' or 'onnx'"):
        Recognizer(model=str(checkpoint), backend="tensorrt")
    with pytest.raises(FileNotFoundError, match="no-such-weights"):
        load_model("no-such-weights")


@pytest.mark.skipif(not available_weights(), reason="no shipped weights in src/ferkit/weights/ yet")
def test_shipped_default_weights():
    rec = Recognizer(device="cpu")
    faces = rec.predict(samples.path("astronaut"))
    assert len(faces) == 1 and faces[0].label == "happy"


@pytest.mark.skipif(not available_weights(), reason="no shipped weights in src/ferkit/weights/ yet")
def test_a_dark_photo_is_recognised_as_the_bright_one(astronaut):
    """The sample at a tenth of its brightness: the face's contrast is lifted to the
    training faces' before it is scored (without it the model calls the smile angry)."""
    dark = (astronaut * 0.1).astype(np.uint8)
    rec = Recognizer(device="cpu")
    (bright,) = rec.predict(astronaut)
    (face,) = rec.predict(dark)
    assert face.label == bright.label == "happy" and face.confidence > 0.6
    crop = as_face_crops(dark[100:200, 200:300])
    plain = Recognizer(device="cpu", auto_contrast=False)
    assert np.array_equal(plain.prepare(crop), crop)
    assert not np.array_equal(rec.prepare(crop), crop)
    assert np.allclose(rec.classify(crop), plain.classify(lift_contrast(crop)), atol=1e-6)


def test_lift_contrast_leaves_normal_faces_alone_and_lifts_low_ones():
    rng = np.random.default_rng(0)
    normal = rng.integers(0, 256, (3, 48, 48), dtype=np.uint8)  # std about 74
    faces = np.concatenate([normal, (normal[:1] * 0.1).astype(np.uint8),
                            np.full((1, 48, 48), 7, np.uint8)])
    out = lift_contrast(faces)
    assert out.dtype == np.uint8 and out.shape == faces.shape
    assert np.array_equal(out[:3], normal)
    lifted = out[3].astype(np.float64)
    assert lifted.mean() == pytest.approx(TYPICAL_MEAN, abs=1.5)
    assert lifted.std() == pytest.approx(TYPICAL_STD, abs=1.5)
    order = np.argsort(faces[3].ravel(), kind="stable")  # brighter stays brighter
    assert np.all(np.diff(lifted.ravel()[order]) >= 0)
    assert np.all(out[4] == round(TYPICAL_MEAN))  # a flat face: no NaN, mid gray
    assert lift_contrast(np.zeros((0, 48, 48), np.uint8)).shape == (0, 48, 48)
    # between 15 and 25 a face is moved in part: continuous across the threshold, so a face
    # whose contrast drifts over it (a video as the light changes) is not flipped
    base = normal[1].astype(np.float64)
    z = (base - base.mean()) / base.std()
    near = [np.clip(np.rint(128 + z * sd), 0, 255).astype(np.uint8) for sd in (24.8, 25.2, 20.0)]
    below, above, middle = lift_contrast(np.stack(near))
    assert np.array_equal(above, near[1])  # at or over 25: untouched
    assert np.abs(below.astype(int) - near[0]).mean() < 1.5  # just under: nearly untouched
    assert 20 + 5 < middle.std() < TYPICAL_STD - 5  # half way: half lifted
    with pytest.raises(ValueError, match="uint8 N x H x W"):
        lift_contrast(faces.astype(np.float32))


def test_auto_contrast_and_tta_options_reach_the_recognizer(checkpoint, capsys):
    from ferkit.predict_cli import recognizer_from_args

    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers()
    add_parsers(sub)
    cases = (([], True, "none"), (["--no-auto-contrast", "--tta", "flip"], False, "flip"),
             (["--tta", "ten-crop"], True, "ten-crop"))
    for flags, contrast, tta in cases:
        args = parser.parse_args(["predict", "x.jpg", "--model", str(checkpoint), *flags])
        rec = recognizer_from_args(args)
        assert (rec.auto_contrast, rec.tta) == (contrast, tta)
    with pytest.raises(SystemExit):
        parser.parse_args(["predict", "x.jpg", "--tta", "five-crop"])
    assert "invalid choice: 'five-crop'" in capsys.readouterr().err


@pytest.mark.skipif(
    "mba_cnn-ferplus" not in available_weights(), reason="no shipped FER+ weights"
)
def test_shipped_ferplus_weights_know_contempt():
    _, meta = load_model("mba_cnn-ferplus")
    assert tuple(meta["class_names"]) == FERPLUS_CLASSES
    rec = Recognizer(model="mba_cnn-ferplus", device="cpu")
    faces = rec.predict(samples.path("astronaut"))
    assert len(faces) == 1 and faces[0].label == "happiness"
    assert list(faces[0].scores) == list(FERPLUS_CLASSES)
    assert sum(faces[0].scores.values()) == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize("name", [n for n in available_weights() if n.startswith("mba_cnn")])
def test_shipped_weights_carry_their_test_numbers_and_no_machine_paths(name):
    _, meta = load_model(name)
    for tta in ("none", "flip", "ten-crop"):
        metrics = meta["test_metrics"][tta]
        assert metrics["split"] == "PrivateTest" and metrics["num_samples"] > 3000
        assert 0.0 < metrics["accuracy"] <= 1.0

    def strings(obj):
        if isinstance(obj, dict):
            for v in obj.values():
                yield from strings(v)
        elif isinstance(obj, list):
            for v in obj:
                yield from strings(v)
        elif isinstance(obj, str):
            yield obj

    paths = ("/", "~", "./", "../")
    assert not [s for s in strings(meta) if s.startswith(paths)]
    report = Path(__file__).resolve().parent.parent / "docs" / name / "privatetest.json"
    if report.exists():  # the model card's numbers, beside the shipped weights
        assert not [s for s in strings(json.loads(report.read_text())) if s.startswith(paths)]


# ---- the predict command ----


def run_cli(checkpoint: Path, *argv: str) -> int:
    """``ferkit predict ARGV`` with the test checkpoint on the CPU; the exit status."""
    parser = argparse.ArgumentParser(prog="ferkit")
    add_parsers(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["predict", *argv, "--model", str(checkpoint), "--device", "cpu"])
    return args.func(args)


def two_photos(folder: Path, face: np.ndarray) -> Path:
    """``folder`` with ``a.jpg`` (the face) and ``sub/b.png`` (it mirrored)."""
    (folder / "sub").mkdir(parents=True)
    Image.fromarray(face).save(folder / "a.jpg", quality=90)
    Image.fromarray(face[:, ::-1]).save(folder / "sub" / "b.png")
    return folder


@pytest.fixture
def photo_dir(tmp_path, astronaut) -> Path:
    folder = two_photos(tmp_path / "photos", astronaut)
    Image.new("RGB", (64, 48), (120, 120, 120)).save(folder / "sub" / "blank.png")
    (folder / "notes.txt").write_text("not an image")
    return folder


def test_cli_json_reports_a_bad_file_and_goes_on(checkpoint, photo_dir, tmp_path, capsys):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"garbage")
    code = run_cli(checkpoint, str(bad), str(photo_dir / "a.jpg"), "--json")
    out, err = capsys.readouterr()
    assert code == 1
    records = [json.loads(line) for line in out.splitlines()]
    assert [r["file"] for r in records] == [str(bad), str(photo_dir / "a.jpg")]
    assert records[0]["faces"] == [] and "bad.jpg" in records[0]["error"]
    assert records[1]["error"] is None and len(records[1]["faces"]) == 1
    face = records[1]["faces"][0]
    assert (
        len(face["box"]) == 4 and face["label"] in CLASSES and set(face["scores"]) == set(CLASSES)
    )
    assert "bad.jpg" in err


def test_cli_onnx_backend_gives_the_torch_scores(checkpoint, photo_dir, ferkit_cache, capsys):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    photo = str(photo_dir / "a.jpg")
    outputs = []
    for backend in ("torch", "onnx"):
        assert run_cli(checkpoint, photo, "--json", "--backend", backend) == 0
        outputs.append(json.loads(capsys.readouterr().out))
    (torch_face,), (onnx_face,) = (o["faces"] for o in outputs)
    assert onnx_face["box"] == torch_face["box"] and onnx_face["label"] == torch_face["label"]
    for name, p in torch_face["scores"].items():
        assert onnx_face["scores"][name] == pytest.approx(p, abs=1e-4)
    assert list((ferkit_cache / "onnx").glob("*.onnx"))  # exported once, into the cache


def test_cli_folder_recursion_table_and_annotate(checkpoint, photo_dir, tmp_path, capsys):
    out_dir = tmp_path / "annotated"
    code = run_cli(checkpoint, str(photo_dir), "--annotate", str(out_dir))
    out, _ = capsys.readouterr()
    assert code == 0
    assert "notes.txt" not in out and "no face found" in out
    lines = out.splitlines()
    assert lines[0].split()[:2] == ["file", "face"] and len(lines) == 4
    written = sorted(p.relative_to(out_dir).as_posix() for p in out_dir.rglob("*") if p.is_file())
    assert written == ["photos/a.jpg", "photos/sub/b.png", "photos/sub/blank.png"]
    with Image.open(out_dir / "photos" / "a.jpg") as img:
        assert img.size == (512, 512)


def test_cli_annotate_never_replaces_an_input(checkpoint, photo_dir, tmp_path, capsys):
    before = {p: p.read_bytes() for p in photo_dir.rglob("*") if p.is_file()}
    # the photos' own parent: photos/a.jpg's annotated copy would be photos/a.jpg itself
    with pytest.raises(ValueError, match="would replace the input"):
        run_cli(checkpoint, str(photo_dir), "--annotate", str(photo_dir.parent))
    with pytest.raises(ValueError, match="would replace the input"):
        run_cli(checkpoint, str(photo_dir / "a.jpg"), "--annotate", str(photo_dir))
    assert {p: p.read_bytes() for p in photo_dir.rglob("*") if p.is_file()} == before
    (tmp_path / "file").write_text("")
    with pytest.raises(ValueError, match="not a folder"):
        run_cli(checkpoint, str(photo_dir / "a.jpg"), "--annotate", str(tmp_path / "file"))


def test_cli_annotate_reports_where_each_copy_went(checkpoint, tmp_path, astronaut, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    Image.fromarray(astronaut).save(folder / "a.png")
    Image.fromarray(astronaut).save(folder / "a.gif")  # both want the name a.png
    out_dir = tmp_path / "out"
    assert run_cli(checkpoint, str(folder), "--json", "--annotate", str(out_dir)) == 0
    out, err = capsys.readouterr()
    written = {json.loads(line)["file"]: json.loads(line)["annotated"] for line in out.splitlines()}
    assert sorted(Path(p).name for p in written.values()) == ["a-2.png", "a.png"]
    assert all(Path(p).is_file() for p in written.values())
    assert "2 annotated image(s) written" in err


def test_cli_a_copy_that_cannot_be_written_is_one_error_row(checkpoint, photo_dir, tmp_path,
                                                            capsys):
    out_dir = tmp_path / "out"
    (out_dir / "a.jpg").mkdir(parents=True)  # a folder where the copy of a.jpg would go
    code = run_cli(checkpoint, str(photo_dir / "a.jpg"), "--csv", "--annotate", str(out_dir))
    out, err = capsys.readouterr()
    assert code == 1
    (row,) = csv.DictReader(io.StringIO(out))
    assert "cannot write the annotated image" in row["error"] and row["label"] == ""
    assert "cannot write the annotated image" in err


def test_cli_detector_none_tiles_and_threads(checkpoint, tmp_path, capsys):
    crops = tmp_path / "crops"
    crops.mkdir()
    for k in range(3):
        Image.fromarray(np.random.default_rng(k).integers(0, 256, (48, 48), dtype=np.uint8)).save(
            crops / f"{k}.png")
    threads = torch.get_num_threads()
    try:
        assert run_cli(checkpoint, str(crops), "--json", "--detector", "none", "--threads",
                       "1") == 0
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(threads)  # process-wide: the other tests keep theirs
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [len(r["faces"]) for r in records] == [1, 1, 1]
    assert records[0]["faces"][0]["box"] == [0, 0, 48, 48]
    with pytest.raises(ValueError, match="BlazeFace"):
        run_cli(checkpoint, str(crops), "--detector", "haar", "--tiles", "2")


def test_cli_small_faces_need_tiles(checkpoint, astronaut, tmp_path, capsys):
    """A face of 1/15 of a wide photo's side is below BlazeFace's whole-image reach;
    ``--tiles 2`` finds it."""
    canvas = np.full((600, 1600, 3), 255, np.uint8)
    canvas[200:307, 700:807] = np.asarray(Image.fromarray(astronaut[68:175, 173:280]))
    path = tmp_path / "group.png"
    Image.fromarray(canvas).save(path)
    counts = []
    for extra in ([], ["--tiles", "2"]):
        assert run_cli(checkpoint, str(path), "--json", *extra) == 0
        counts.append(len(json.loads(capsys.readouterr().out)["faces"]))
    assert counts == [0, 1]


def test_cli_csv_and_glob(checkpoint, photo_dir, capsys):
    code = run_cli(checkpoint, str(photo_dir / "**" / "*.png"), "--csv")
    out, _ = capsys.readouterr()
    assert code == 0
    rows = list(csv.DictReader(io.StringIO(out)))
    assert [Path(r["file"]).name for r in rows] == ["b.png", "blank.png"]
    assert rows[0]["face"] == "1" and rows[0]["label"] in CLASSES and rows[0]["error"] == ""
    assert rows[1]["face"] == "" and rows[1]["label"] == ""
    assert abs(sum(float(rows[0][c]) for c in CLASSES) - 1) < 1e-3


def test_cli_missing_path_and_unmatched_glob(checkpoint, tmp_path, capsys):
    code = run_cli(checkpoint, str(tmp_path / "nope.jpg"), str(tmp_path / "*.jpg"), "--json")
    out, _ = capsys.readouterr()
    assert code == 1
    records = [json.loads(line) for line in out.splitlines()]
    assert len(records) == 2 and all(r["error"] for r in records)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a CUDA GPU")
@pytest.mark.parametrize("device", ["cuda", "gpu"])
def test_cli_a_device_this_machine_lacks_is_a_one_line_error(device, capsys):
    from ferkit.cli import main

    assert main(["predict", "--sample", "--device", device]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ferkit: error:") and len(err.strip().splitlines()) == 1
    assert "Traceback" not in err and device in err


def test_a_run_folder_is_its_best_checkpoint(checkpoint, tmp_path):
    import shutil

    run = tmp_path / "run"
    run.mkdir()
    for suffix in (".safetensors", ".json"):
        shutil.copy(checkpoint.with_suffix(suffix), run / f"last{suffix}")
    with pytest.raises(FileNotFoundError, match="last"):  # names what the folder holds
        load_model(run)
    for suffix in (".safetensors", ".json"):
        shutil.copy(checkpoint.with_suffix(suffix), run / f"best{suffix}")
    model, meta = load_model(run)
    assert meta["class_names"] == load_model(checkpoint)[1]["class_names"]
