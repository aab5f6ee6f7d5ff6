"""BlazeFace: anchors, decoding, non-maximum suppression and the detector on real pixels."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from ferkit import samples
from ferkit.blazeface import (
    VARIANTS,
    BlazeFaceDetector,
    anchor_centres,
    decode,
    letterbox,
    load_network,
    non_max_suppression,
    tile_grid,
    torch_threads,
)
from ferkit.faces import get_detector, list_detectors
from ferkit.models import create_model
from ferkit.recognize import Recognizer

VARIANT_NAMES = sorted(VARIANTS)


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    with Image.open(samples.path("astronaut")) as img:
        return np.asarray(img.convert("RGB"))


@pytest.fixture(scope="module")
def haar_box(astronaut) -> tuple[int, int, int, int]:
    (found,) = get_detector("haar").detect(astronaut)
    return found.box


def iou(a, b) -> float:
    iw = max(0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    ih = max(0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    inter = iw * ih
    return inter / (a[2] * a[3] + b[2] * b[3] - inter)


def inside(point, box) -> bool:
    x, y, w, h = box
    return x <= point[0] <= x + w and y <= point[1] <= y + h


@pytest.mark.parametrize("variant", VARIANT_NAMES)
def test_one_anchor_per_network_output(variant):
    spec = VARIANTS[variant]
    anchors = anchor_centres(spec.input_size, spec.grids)
    with torch.inference_mode():
        boxes, logits = load_network(variant)(torch.zeros(1, 3, spec.input_size, spec.input_size))
    n = {"full_range": 2304, "short_range": 896}[variant]
    assert anchors.shape == (n, 2) and boxes.shape == (1, n, 16) and logits.shape == (1, n)
    assert anchors.min() > 0 and anchors.max() < 1


def test_anchors_run_row_by_row_and_repeat_per_cell():
    # short range: 16 x 16 cells with 2 anchors each, then 8 x 8 with 6 each
    anchors = anchor_centres(128, ((8, 2), (16, 6)))
    assert np.allclose(anchors[0], anchors[1]) and np.allclose(anchors[0], [0.5 / 16, 0.5 / 16])
    assert np.allclose(anchors[2], [1.5 / 16, 0.5 / 16])  # next cell: x moves first
    assert np.allclose(anchors[32], [0.5 / 16, 1.5 / 16])  # next row
    assert np.allclose(anchors[512:518], [0.5 / 8, 0.5 / 8])
    assert np.allclose(anchors[-1], [7.5 / 8, 7.5 / 8])


def test_decode_offsets_in_input_pixels_around_the_anchor():
    reg = np.zeros((1, 16), dtype=np.float32)
    reg[0, :4] = [19.2, -9.6, 38.4, 19.2]  # centre +0.1, -0.05; size 0.2 x 0.1 (of 192)
    reg[0, 4:6] = [-19.2, 0.0]  # first keypoint 0.1 left of the anchor
    boxes, points = decode(reg, np.array([[0.5, 0.5]], dtype=np.float32), 192)
    assert np.allclose(boxes, [[0.5, 0.4, 0.7, 0.5]])
    assert points.shape == (1, 6, 2)
    assert np.allclose(points[0, 0], [0.4, 0.5]) and np.allclose(points[0, 1:], 0.5)


def test_non_max_suppression_merges_overlapping_boxes_by_score():
    boxes = np.array(
        [[0, 0, 10, 10], [1, 0, 11, 10], [20, 20, 30, 30], [0, 0, 10, 10.5]], dtype=np.float32
    )
    scores = np.array([0.9, 0.6, 0.8, 0.3])
    points = np.arange(4 * 6 * 2, dtype=np.float32).reshape(4, 6, 2)
    faces = non_max_suppression(boxes, scores, points, iou_threshold=0.3)
    assert [s for _, s, _ in faces] == [0.9, 0.8]
    w = np.array([0.9, 0.6, 0.3]) / 1.8
    assert np.allclose(faces[0][0], w @ boxes[[0, 1, 3]])
    assert np.allclose(faces[0][2], np.tensordot(w, points[[0, 1, 3]], axes=1))
    assert np.allclose(faces[1][0], boxes[2]) and np.allclose(faces[1][2], points[2])
    plain = non_max_suppression(boxes, scores, points, iou_threshold=0.3, weighted=False)
    assert np.allclose(plain[0][0], boxes[0]) and np.allclose(plain[0][2], points[0])
    # a threshold above their overlap (IoU 9/11) keeps the two nearly equal boxes apart
    assert len(non_max_suppression(boxes[:2], scores[:2], iou_threshold=0.85)) == 2


def test_non_max_suppression_of_nothing_and_of_empty_boxes():
    assert non_max_suppression(np.zeros((0, 4)), np.zeros(0)) == []
    faces = non_max_suppression(np.zeros((2, 4)), np.array([0.7, 0.8]), weighted=False)
    assert [s for _, s, _ in faces] == [0.8, 0.7]


@pytest.mark.parametrize("variant", VARIANT_NAMES)
def test_finds_the_sample_face_where_haar_does_with_eyes_inside(astronaut, haar_box, variant):
    found = get_detector("blazeface", model=variant).detect(astronaut)
    assert len(found) == 1
    (face,) = found
    assert iou(face.box, haar_box) > 0.5
    assert 0.5 < face.score <= 1
    assert len(face.landmarks) == 6
    right_eye, left_eye = face.landmarks[:2]  # the person's: image left, then image right
    assert inside(right_eye, face.box) and inside(left_eye, face.box)
    assert right_eye[0] < left_eye[0] and abs(right_eye[1] - left_eye[1]) < face.box[3] / 4


def test_default_is_the_full_range_model():
    detector = get_detector("blazeface")
    assert isinstance(detector, BlazeFaceDetector) and detector.variant.input_size == 192
    assert "blazeface" in list_detectors()


@pytest.mark.parametrize("fill", [0, 128, 255])
def test_a_blank_image_has_no_face(fill):
    image = np.full((240, 320, 3), fill, dtype=np.uint8)
    assert get_detector("blazeface").detect(image) == []


def test_gray_input_finds_the_same_face(astronaut):
    detector = get_detector("blazeface")
    (rgb,) = detector.detect(astronaut)
    gray = np.asarray(Image.fromarray(astronaut).convert("L"))
    (face,) = detector.detect(gray)
    assert iou(face.box, rgb.box) > 0.8


def test_boxes_and_landmarks_map_back_through_the_letterbox(monkeypatch):
    """One anchor fires with a 19.2-pixel box (0.1 of the 192 input); a 200 x 100 image is
    letterboxed to 192 x 96 at y = 48, so the box lands at 1/0.96 scale, 48 rows up."""
    detector = BlazeFaceDetector(min_score=0.5)
    regressors = np.zeros((2304, 16), dtype=np.float32)
    logits = np.full(2304, -100.0, dtype=np.float32)
    cell = 24 * 48 + 12  # row 24, column 12: centre (50, 98) in input pixels
    regressors[cell, 2:4] = 19.2
    regressors[cell, 4:6] = [-10, -5]
    logits[cell] = 3.0
    monkeypatch.setattr(detector, "raw_outputs", lambda pixels: (regressors, logits))
    (face,) = detector.detect(np.zeros((100, 200, 3), dtype=np.uint8))
    assert face.box == (42, 42, 20, 20)
    assert face.score == pytest.approx(1 / (1 + np.exp(-3.0)))
    assert np.allclose(face.landmarks[0], (40 * 200 / 192, 45 * 100 / 96))
    assert np.allclose(face.landmarks[1:], (50 * 200 / 192, 50 * 100 / 96))


def test_a_face_pasted_into_a_wide_canvas_is_found_where_it_was_pasted(astronaut):
    detector = get_detector("blazeface")
    (ref,) = detector.detect(astronaut)
    canvas = np.full((560, 760, 3), 90, dtype=np.uint8)
    canvas[40:552, 200:712] = astronaut
    (face,) = detector.detect(canvas)
    x, y, w, h = ref.box
    assert iou(face.box, (x + 200, y + 40, w, h)) > 0.7
    (ex, ey), (fx, fy) = ref.landmarks[0], face.landmarks[0]
    assert abs(fx - ex - 200) < 0.1 * w and abs(fy - ey - 40) < 0.1 * h


def test_letterbox_centres_the_scaled_image():
    image = np.full((50, 100), 200, dtype=np.uint8)
    pixels, x0, y0, sx, sy = letterbox(image, 128)
    assert (
        pixels.shape == (128, 128, 3) and (x0, y0) == (0, 32) and (sx, sy) == (100 / 128, 50 / 64)
    )
    assert (pixels[32:96] == 200).all() and (pixels[:32] == 0).all() and (pixels[96:] == 0).all()


def test_small_images_work(astronaut):
    detector = get_detector("blazeface")
    for shape in [(48, 64, 3), (48, 64), (1, 1, 3)]:
        image = np.asarray(
            Image.fromarray(astronaut)
            .resize(shape[1::-1])
            .convert("RGB" if len(shape) == 3 else "L")
        )
        for d in detector.detect(image):
            x, y, w, h = d.box
            assert 0 <= x < x + w <= shape[1] and 0 <= y < y + h <= shape[0]


def test_tiles_overlap_by_half_and_cover_the_image():
    assert tile_grid(640, 480, 1) == []
    assert tile_grid(640, 480, 2) == [(x, y, 320) for y in (0, 160) for x in (0, 160, 320)]
    assert tile_grid(300, 100, 2) == [(0, 0, 150), (75, 0, 150), (150, 0, 150)]
    for w, h, n in [(640, 480, 3), (333, 777, 2), (101, 99, 4)]:
        covered = np.zeros((h, w), dtype=bool)
        for x, y, side in tile_grid(w, h, n):
            assert side == -(-max(w, h) // n) and x + side <= max(w, side)
            covered[y : y + side, x : x + side] = True
        assert covered.all()
    # tiny images: one-pixel tiles are none (the step of half a tile was 0: a crash)
    assert tile_grid(2, 2, 2) == tile_grid(1, 2, 2) == tile_grid(4, 4, 4) == []
    assert tile_grid(4, 4, 2) == [(x, y, 2) for y in (0, 1, 2) for x in (0, 1, 2)]
    for shape in [(1, 2, 3), (2, 1, 3), (4, 4, 3)]:
        assert get_detector("blazeface", tiles=4).detect(np.zeros(shape, np.uint8)) == []


def test_tiles_find_a_face_too_small_for_the_whole_image_pass(astronaut):
    photo = np.asarray(Image.fromarray(astronaut).resize((160, 160), Image.Resampling.BOX))
    canvas = np.full((480, 640, 3), 100, dtype=np.uint8)
    canvas[200:360, 300:460] = photo
    (ref,) = get_detector("blazeface").detect(astronaut)
    x, y, w, h = (v * 160 / 512 for v in ref.box)
    assert get_detector("blazeface").detect(canvas) == []
    (face,) = get_detector("blazeface", tiles=2).detect(canvas)
    assert iou(face.box, (x + 300, y + 200, w, h)) > 0.6


def test_the_detector_restores_torchs_thread_count(astronaut):
    before = torch.get_num_threads()
    with torch_threads(before + 1):
        assert torch.get_num_threads() == before + 1
        with torch_threads(5):  # the first caller's count holds while it is inside
            assert torch.get_num_threads() == before + 1
    assert torch.get_num_threads() == before
    get_detector("blazeface", threads=before + 1).detect(astronaut)
    assert torch.get_num_threads() == before


def test_unknown_model_is_refused():
    with pytest.raises(ValueError, match="full_range"):
        get_detector("blazeface", model="long_range")


def test_recognizer_aligns_faces_with_blazeface_eyes(astronaut, haar_box):
    torch.manual_seed(0)
    meta = {"class_names": ["a", "b", "c"], "preprocessing": {"size": 48}}
    model = (create_model("mba_cnn", num_classes=3).eval(), meta)
    (face,) = Recognizer(model=model, detector="blazeface", device="cpu").predict(astronaut)
    assert iou(face.box, haar_box) > 0.5 and len(face.landmarks) == 6
    assert face.label in meta["class_names"] and 0.5 < face.detection_score <= 1
