"""BlazeFace on non-square images: wide and tall (transposed) images are handled alike.

The letterbox, the anchors and the mapping of boxes back to the image treat x and y the same
way, so a face in a wide image and the same face in the transposed (tall) image are found
at the matching place. (The network itself is not symmetric: MediaPipe's full-range model
scores a face far below its documented size limit higher between black bars left and right
than between bars above and below; that is its weights, not this port, and is not tested.)
"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from ferkit import samples
from ferkit.blazeface import BlazeFaceDetector, letterbox


@pytest.fixture(scope="module")
def face_patch() -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """The sample photo's face with a margin, shrunk to 150 pixels, and the face's box in it."""
    with Image.open(samples.path("astronaut")) as img:
        photo = np.asarray(img.convert("RGB"))
    (ref,) = BlazeFaceDetector().detect(photo)
    x, y, w, h = ref.box
    m = w // 4
    crop = photo[y - m : y + h + m, x - m : x + w + m]
    side = 150
    k = side / crop.shape[0]
    patch = np.asarray(Image.fromarray(crop).resize((side, side), Image.Resampling.BOX))
    return patch, (round(m * k), round(m * k), round(w * k), round(h * k))


def iou(a, b) -> float:
    iw = max(0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    ih = max(0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    inter = iw * ih
    return inter / (a[2] * a[3] + b[2] * b[3] - inter)


def test_letterbox_of_the_transposed_image_is_the_transposed_letterbox():
    rng = np.random.default_rng(0)
    wide = rng.integers(0, 256, (400, 1100, 3), dtype=np.uint8)
    tall = np.ascontiguousarray(wide.transpose(1, 0, 2))
    pw, *gw = letterbox(wide, 192)
    pt, *gt = letterbox(tall, 192)
    assert gw == [0, 61, 1100 / 192, 400 / 70] and gt == [61, 0, 400 / 70, 1100 / 192]
    # OpenCV's area resampling may round a pixel differently along rows and columns
    assert np.abs(pw.transpose(1, 0, 2).astype(int) - pt).max() <= 1


def test_boxes_and_landmarks_map_back_alike_in_a_wide_and_a_tall_image(monkeypatch):
    """The same raw output, transposed (cell, centre, size and keypoints), gives the
    transposed detection: no axis is swapped, padded or scaled the wrong way."""
    detector = BlazeFaceDetector(min_score=0.5)
    row, col = 20, 31  # a cell inside the wide image's band (rows 15 to 32 of 48)

    def fake(r: int, c: int, transposed: bool):
        regressors = np.zeros((2304, 16), dtype=np.float32)
        logits = np.full(2304, -100.0, dtype=np.float32)
        values = np.array([3.0, -2.0, 24.0, 20.0, -6.0, -4.0, 5.0, -4.0, 0, 2, 0, 8, -9, 1, 9, 1])
        if transposed:
            values = values.reshape(8, 2)[:, ::-1].ravel()
        regressors[r * 48 + c] = values
        logits[r * 48 + c] = 2.0
        return lambda pixels: (regressors, logits)

    monkeypatch.setattr(detector, "raw_outputs", fake(row, col, False))
    (w,) = detector.detect(np.zeros((400, 1100, 3), dtype=np.uint8))
    monkeypatch.setattr(detector, "raw_outputs", fake(col, row, True))
    (t,) = detector.detect(np.zeros((1100, 400, 3), dtype=np.uint8))
    x, y, bw, bh = w.box
    assert t.box == (y, x, bh, bw)
    assert np.allclose(np.asarray(t.landmarks), np.asarray(w.landmarks)[:, ::-1])
    # and where it lands: centre (31.5 * 4 + 3, 20.5 * 4 - 2) in the input, 24 x 20 pixels
    sx, sy = 1100 / 192, 400 / 70
    assert x == pytest.approx((129 - 12) * sx, abs=1) and bw == pytest.approx(24 * sx, abs=1)
    assert y == pytest.approx((80 - 10 - 61) * sy, abs=1) and bh == pytest.approx(20 * sy, abs=1)


@pytest.mark.parametrize("where", [0.0, 0.5, 1.0])
def test_a_face_is_found_at_the_same_place_in_a_wide_image_and_its_transpose(face_patch, where):
    patch, (fx, fy, fw, fh) = face_patch  # a face of about 1/5 of the longer side
    side = patch.shape[0]
    wide = np.full((200, 550, 3), 128, dtype=np.uint8)
    tall = np.full((550, 200, 3), 128, dtype=np.uint8)
    along, across = round(where * (550 - side)), (200 - side) // 2
    wide[across : across + side, along : along + side] = patch
    tall[along : along + side, across : across + side] = patch
    detector = BlazeFaceDetector()
    found_wide, found_tall = detector.detect(wide), detector.detect(tall)
    assert len(found_wide) == len(found_tall) == 1
    assert iou(found_wide[0].box, (along + fx, across + fy, fw, fh)) >= 0.5
    assert iou(found_tall[0].box, (across + fx, along + fy, fw, fh)) >= 0.5
