"""Face detection behind one small interface, and THE crop that turns a face into model input.

A detector is anything with ``detect(image) -> list[Detection]`` where ``image`` is a uint8
H x W x 3 RGB or H x W gray array; `get_detector(name)` builds one from the registry
(`list_detectors()`). Boxes are ``(x, y, w, h)`` integer pixels of the image passed in.

`crop_face` is the one preprocessing step from a detected box to a 48 x 48 gray face, and
`faces_to_tensor` the one step from crops to a model batch (through `ferkit.augment.normalize`),
so training, evaluation and deployment see faces the same way.
"""

from __future__ import annotations

import copy
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from .augment import normalize
from .imagedecode import resize, to_gray  # noqa: F401 (ferkit.faces names them too)

#: Default crop margin: the square crop's side is ``(1 + margin)`` times the box's longer side.
DEFAULT_MARGIN = 0.2
FACE_SIZE = 48

Point = tuple[float, float]


@dataclass(frozen=True)
class Detection:
    """One detected face.

    ``score``: the detector's confidence, larger is surer; its scale depends on the backend
    (``haar``: the number of merged neighbour windows; ``blazeface``: a probability;
    ``none``: None).
    ``landmarks``: (x, y) keypoints in image pixels, or None; when present, the first two
    are the two eye centres.
    """

    box: tuple[int, int, int, int]
    score: float | None
    landmarks: tuple[Point, ...] | None = None


class FaceDetector:
    """Interface of a face detector backend."""

    name: str = ""
    #: Crop margin that makes this detector's boxes give FER2013-like crops (see `crop_face`).
    crop_margin: float = DEFAULT_MARGIN

    def detect(self, image: np.ndarray) -> list[Detection]:
        """Faces in a uint8 H x W x 3 RGB or H x W gray image."""
        raise NotImplementedError

    def clone(self) -> FaceDetector:
        """A detector with the same options that another thread may use at the same time
        (default: a shallow copy, for detectors whose state is read-only)."""
        return copy.copy(self)


def _import_cv2():
    try:
        import cv2
    except ImportError as exc:
        raise ImportError(
            "face detection needs OpenCV: pip install 'opencv-python-headless>=4.8,<5'"
        ) from exc
    return cv2


class HaarDetector(FaceDetector):
    """OpenCV's Viola-Jones frontal-face cascade (shipped with opencv-python 4.x).

    Images whose longer side exceeds ``max_side`` are searched on an area-downscaled copy
    (faces smaller than about ``min_size * longer side / max_side`` pixels are then missed)
    and the boxes are mapped back. ``threads`` pins OpenCV's thread pool (a process-wide
    setting) before each search; the cascade's parallel scales slow a busy machine down more
    than they help.
    """

    name = "haar"

    def __init__(
        self,
        cascade: str = "haarcascade_frontalface_default.xml",
        scale_factor: float = 1.1,
        min_neighbors: int = 5,
        min_size: int = 30,
        max_side: int = 1024,
        threads: int = 1,
    ) -> None:
        cv2 = _import_cv2()
        if not hasattr(cv2, "CascadeClassifier"):
            raise ImportError(
                f"OpenCV {cv2.__version__} has no CascadeClassifier (removed in 5.x): "
                "pip install 'opencv-python-headless>=4.8,<5'"
            )
        path = cascade if os.path.isfile(cascade) else os.path.join(cv2.data.haarcascades, cascade)
        self._options = dict(cascade=cascade, scale_factor=scale_factor,
                             min_neighbors=min_neighbors, min_size=min_size, max_side=max_side,
                             threads=threads)
        self._cascade = cv2.CascadeClassifier(path)
        if self._cascade.empty():
            raise ValueError(f"{path}: OpenCV could not load this Haar cascade")
        self.scale_factor = scale_factor
        self.min_neighbors = min_neighbors
        self.min_size = min_size
        self.max_side = max_side
        self.threads = threads

    def clone(self) -> HaarDetector:
        # OpenCV's cascade is not thread-safe: a new one with the same options
        return HaarDetector(**self._options)

    def detect(self, image: np.ndarray) -> list[Detection]:
        cv2 = _import_cv2()
        gray = to_gray(image)
        h, w = gray.shape
        scale = min(1.0, self.max_side / max(h, w))
        small = resize(gray, max(1, round(w * scale)), max(1, round(h * scale)))
        sy, sx = h / small.shape[0], w / small.shape[1]
        cv2.setNumThreads(self.threads)
        boxes, neighbours = self._cascade.detectMultiScale2(
            small,
            scaleFactor=self.scale_factor,
            minNeighbors=self.min_neighbors,
            minSize=(self.min_size, self.min_size),
        )
        out = []
        for (bx, by, bw, bh), n in zip(
            np.reshape(boxes, (-1, 4)), np.ravel(neighbours), strict=True
        ):
            x0, y0 = max(0, round(bx * sx)), max(0, round(by * sy))
            x1, y1 = min(w, round((bx + bw) * sx)), min(h, round((by + bh) * sy))
            out.append(Detection(box=(x0, y0, x1 - x0, y1 - y0), score=float(n)))
        return out


class WholeImageDetector(FaceDetector):
    """No detection: the whole image is one face, for images that are already face crops
    (FER2013-style 48 x 48 faces, another detector's output). `Recognizer` stretches the
    whole image to the model's square, as `Recognizer.classify` and image-folder datasets
    read a crop (with a margin: around the stretched square); ``score`` is None."""

    name = "none"
    crop_margin = 0.0

    def detect(self, image: np.ndarray) -> list[Detection]:
        h, w = image.shape[:2]
        return [Detection(box=(0, 0, w, h), score=None)] if h and w else []


_DETECTORS: dict[str, Callable[..., FaceDetector]] = {
    "haar": HaarDetector, "none": WholeImageDetector,
}


def register_detector(name: str, factory: Callable[..., FaceDetector]) -> None:
    """Make ``get_detector(name, **options)`` build detectors with ``factory(**options)``."""
    if name in _DETECTORS:
        raise ValueError(f"detector {name!r} is already registered")
    _DETECTORS[name] = factory


def list_detectors() -> list[str]:
    return sorted(_DETECTORS)


def get_detector(name: str | FaceDetector = "blazeface", **options) -> FaceDetector:
    """A detector by registry name (a `FaceDetector` instance is returned as it is)."""
    if isinstance(name, FaceDetector):
        return name
    try:
        factory = _DETECTORS[name]
    except KeyError:
        raise ValueError(
            f"unknown face detector {name!r}; available: {', '.join(list_detectors())}"
        ) from None
    return factory(**options)


def _blazeface(**options) -> FaceDetector:
    """`ferkit.blazeface.BlazeFaceDetector`, imported on first use (it loads its weights)."""
    from .blazeface import BlazeFaceDetector

    return BlazeFaceDetector(**options)


register_detector("blazeface", _blazeface)


class FallbackDetector(FaceDetector):
    """``primary``'s faces; where it finds none in an image, ``fallback``'s.

    For images where the primary detector misses faces the fallback finds, e.g. BlazeFace
    (few false positives, but it misses low-resolution, tightly cropped faces) backed by the
    Haar cascade (finds more of those, with more false positives). The fallback's boxes are
    rescaled about their centres so that the primary's ``crop_margin`` gives the crop the
    fallback's own margin would: one margin serves both.
    """

    def __init__(self, primary: FaceDetector, fallback: FaceDetector) -> None:
        self.primary, self.fallback = primary, fallback
        self.name = f"{primary.name}+{fallback.name}"

    @property
    def crop_margin(self) -> float:  # one margin serves both: the primary's
        return self.primary.crop_margin

    def clone(self) -> FallbackDetector:
        return FallbackDetector(self.primary.clone(), self.fallback.clone())

    def detect(self, image: np.ndarray) -> list[Detection]:
        found = self.primary.detect(image)
        if found:
            return found
        h, w = image.shape[:2]
        grow = (1 + self.fallback.crop_margin) / (1 + self.primary.crop_margin)
        out = []
        for d in self.fallback.detect(image):
            x, y, bw, bh = d.box
            cx, cy = x + bw / 2, y + bh / 2
            x0, y0 = max(0, round(cx - grow * bw / 2)), max(0, round(cy - grow * bh / 2))
            x1, y1 = min(w, round(cx + grow * bw / 2)), min(h, round(cy + grow * bh / 2))
            if x1 > x0 and y1 > y0:
                out.append(Detection((x0, y0, x1 - x0, y1 - y0), d.score, d.landmarks))
        return out


register_detector(
    "blazeface+haar",
    lambda threads=1, **options: FallbackDetector(
        _blazeface(threads=threads, **options), HaarDetector(threads=threads)
    ),
)


def square_region(
    box: Sequence[float], margin: float = DEFAULT_MARGIN
) -> tuple[float, float, float]:
    """Centre x, centre y and side of the square crop around ``box`` (x, y, w, h)."""
    x, y, w, h = box
    return x + w / 2, y + h / 2, max(w, h) * (1 + margin)


def _crop_square(image: np.ndarray, cx: float, cy: float, side: int) -> tuple[np.ndarray, int, int]:
    """The side x side patch centred at (cx, cy), edge pixels repeated beyond the border."""
    h, w = image.shape[:2]
    x0, y0 = round(cx - side / 2), round(cy - side / 2)
    if x0 >= 0 and y0 >= 0 and x0 + side <= w and y0 + side <= h:
        return image[y0 : y0 + side, x0 : x0 + side], x0, y0
    rows = np.clip(np.arange(y0, y0 + side), 0, h - 1)
    cols = np.clip(np.arange(x0, x0 + side), 0, w - 1)
    return image[np.ix_(rows, cols)], x0, y0


def crop_face(
    image: np.ndarray,
    box: Sequence[float],
    margin: float = DEFAULT_MARGIN,
    size: int = FACE_SIZE,
    eyes: Sequence[Point] | None = None,
) -> np.ndarray:
    """The model's view of a face: uint8 ``size`` x ``size`` gray.

    The crop is the square around the centre of ``box`` (x, y, w, h) whose side is
    ``(1 + margin)`` times the box's longer side; parts beyond the image border repeat the
    edge pixels; it is converted to gray and resized (area averaging when shrinking,
    bilinear when enlarging). With ``eyes`` (two (x, y) eye centres), the face is also
    rotated about the crop centre so that the eyes are level.
    """
    cx, cy, side = square_region(box, margin)
    if eyes is None:
        patch, _, _ = _crop_square(image, cx, cy, max(1, round(side)))
        return resize(to_gray(patch), size, size)
    cv2 = _import_cv2()
    (ax, ay), (bx, by) = sorted(eyes[:2])
    angle = math.degrees(math.atan2(by - ay, bx - ax))
    # a patch at about the output's resolution, wide enough for any rotation of the square
    big = math.ceil(size * math.sqrt(2)) + 2
    big_side = max(1, round(side * big / size))
    patch, x0, y0 = _crop_square(image, cx, cy, big_side)
    patch = resize(to_gray(patch), big, big)
    f = big / big_side  # patch pixels per image pixel
    centre = ((cx - x0) * f - 0.5, (cy - y0) * f - 0.5)
    m = cv2.getRotationMatrix2D(centre, angle, size / (side * f))
    m[:, 2] += np.array([size / 2 - 0.5, size / 2 - 0.5]) - np.array(centre)
    return cv2.warpAffine(
        patch, m, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE
    )


def faces_to_tensor(
    crops: Sequence[np.ndarray] | np.ndarray, size: int = FACE_SIZE
) -> torch.Tensor:
    """uint8 crops (N x size x size, or a list of them) -> normalised float N x 1 x size x size."""
    if len(crops) == 0:
        return torch.empty((0, 1, size, size))
    return normalize(torch.from_numpy(np.ascontiguousarray(np.stack(list(crops)))))
