"""`Recognizer`: photos in, faces with expression scores out.

Inputs (`load_image`): a path or binary file object, a PIL image, or a numpy array (H x W
gray; H x W x 3 RGB by default or BGR with ``color="bgr"``, as OpenCV gives; H x W x 4 with
alpha; uint8, uint16, other integers up to 16 bits, bool, or float in 0..1 (-0.5..1.5,
resampling overshoot, is clipped to 0..1; float beyond that is refused); 16-bit data whose
largest colour value fits 12, 10 or 8 bits is taken as 12-, 10- or 8-bit data).
Files honour their EXIF orientation, and every mode PIL reads (16-bit, palette, alpha,
CMYK, ...) becomes 8-bit gray or RGB; transparent parts are composited over white. The
decoding is `ferkit.imagedecode`'s, which image-folder datasets are read with too.

Large images: an image whose longer side exceeds ``max_side`` (default 4096) is shrunk once
on loading (JPEGs are decoded at reduced scale) and every later step works on that copy,
so memory stays bounded by it; boxes are always reported in the pixels of the full,
orientation-corrected image. Files of more than PIL's decompression-bomb limit, twice
``PIL.Image.MAX_IMAGE_PIXELS`` (about 179 megapixels by default), are refused with an
`ImageError`; raise ``PIL.Image.MAX_IMAGE_PIXELS`` to accept larger files. Arrays, already
in memory, have no such limit.
"""

from __future__ import annotations

import io
import math
import numbers
import os
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from torch import nn

from .argtypes import TTA_MODES
from .augment import PIXEL_MEAN, PIXEL_STD
from .faces import (
    DEFAULT_MARGIN,
    FACE_SIZE,
    FaceDetector,
    crop_face,
    get_detector,
    resize,
    to_gray,
)
from .imagedecode import (
    MAX_SIDE,
    ImageError,
    array_to_uint8,
    decode_pil,
    rgba_over_white,
    shrunk_size,
)

# Large images are fine here (shrunk on loading); only PIL's error limit applies. A filter
# set once: `warnings.catch_warnings` is not thread-safe and the service decodes in threads.
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)

# FER2013's Training faces: the median face has pixel mean 129.5 and standard deviation 53.6
# (0..255); 1 % have a standard deviation under 25. A crop of less contrast than that (a dark,
# washed-out or flat photo) is outside what the models saw, and they score it confidently
# wrong (PublicTest darkened x 0.1: 15.7 % correct); `lift_contrast` brings it back (62.0 %).
LOW_CONTRAST_STD = 25.0  # below: lifted, in part
FULL_LIFT_STD = 15.0  # at or below: lifted fully
TYPICAL_MEAN, TYPICAL_STD = 129.5, 53.6


@dataclass
class Face:
    """One recognised face; ``box`` is [x, y, w, h] in pixels of the input image."""

    box: list[int]
    landmarks: list[list[float]] | None
    scores: dict[str, float]
    label: str
    confidence: float
    detection_score: float | None = None

    def to_dict(self) -> dict:
        """Plain JSON-ready types."""
        return {
            "box": [int(v) for v in self.box],
            "label": self.label,
            "confidence": float(self.confidence),
            "scores": {k: float(v) for k, v in self.scores.items()},
            "landmarks": self.landmarks,
            "detection_score": self.detection_score,
        }


@dataclass
class LoadedImage:
    """A decoded image ready for detection: uint8 H x W gray or H x W x 3 RGB ``pixels``,
    and ``scale`` (x, y): full-image pixels per pixel of ``pixels`` (1 unless shrunk)."""

    pixels: np.ndarray
    scale: tuple[float, float]
    name: str


def _from_array(arr: np.ndarray, color: str, max_side: int) -> tuple[np.ndarray, tuple[int, int]]:
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if not (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] in (3, 4))) or 0 in arr.shape:
        raise ImageError(
            f"image array must be H x W, H x W x 3 or H x W x 4; got shape {arr.shape}"
        )
    h, w = arr.shape[:2]
    if max(h, w) > max_side:
        if arr.dtype != np.uint8:
            arr = array_to_uint8(arr)
        arr = resize(arr, *shrunk_size(w, h, max_side))
    arr = array_to_uint8(arr)
    if arr.ndim == 3:
        if color == "bgr":
            arr = arr[:, :, [2, 1, 0, 3][: arr.shape[2]]]
        if arr.shape[2] == 4:
            arr = rgba_over_white(arr)
    return np.ascontiguousarray(arr), (w, h)


def load_image(
    source: str | os.PathLike | io.IOBase | Image.Image | np.ndarray | LoadedImage,
    color: str = "rgb",
    max_side: int = MAX_SIDE,
    formats: tuple[str, ...] | None = None,
) -> LoadedImage:
    """Decode any supported input (see the module docstring) into a `LoadedImage`.

    ``color`` ("rgb" or "bgr") is the channel order of 3- and 4-channel numpy arrays only.
    ``formats`` limits the PIL decoders tried on files and streams (None: all).
    A file that is not a readable image raises `ImageError`; a missing one FileNotFoundError.
    """
    if isinstance(source, LoadedImage):
        return source
    if color not in ("rgb", "bgr"):
        raise ValueError(f"color must be 'rgb' or 'bgr', not {color!r}")
    if isinstance(source, np.ndarray):
        name = "<array>"
        pixels, full = _from_array(source, color, max_side)
    elif isinstance(source, Image.Image):
        name = getattr(source, "filename", "") or "<PIL image>"
        try:
            pixels, full = decode_pil(source, max_side, owned=False)
        except (OSError, ValueError, SyntaxError) as exc:
            raise ImageError(f"{name}: cannot read image ({exc})") from exc
    elif isinstance(source, (str, os.PathLike)) or hasattr(source, "read"):
        name = (
            str(source)
            if isinstance(source, (str, os.PathLike))
            else getattr(source, "name", "<stream>")
        )
        if isinstance(source, (str, os.PathLike)):
            path = Path(source)
            if not path.exists():
                raise FileNotFoundError(f"{name}: no such file")
            if path.is_dir():
                raise ImageError(f"{name}: a folder, not an image file")
            if path.is_file() and path.stat().st_size == 0:  # a pipe has no size
                raise ImageError(f"{name}: empty file (0 bytes), not an image")
        try:
            with Image.open(source, formats=formats) as img:
                pixels, full = decode_pil(img, max_side, owned=True)
        except Image.DecompressionBombError as exc:
            raise ImageError(
                f"{name}: image too large ({exc}); shrink it first, or from Python raise "
                "PIL.Image.MAX_IMAGE_PIXELS to accept it"
            ) from exc
        except Image.UnidentifiedImageError:
            raise ImageError(
                f"{name}: not an image PIL can read (expected JPEG, PNG, BMP, GIF, TIFF, WebP "
                "or another format PIL knows)"
            ) from None
        except Exception as exc:  # PIL raises many types for malformed files
            raise ImageError(f"{name}: cannot read image ({type(exc).__name__}: {exc})") from exc
    else:
        raise TypeError(f"unsupported image type {type(source).__name__}")
    h, w = pixels.shape[:2]
    return LoadedImage(pixels, (full[0] / w, full[1] / h), str(name))


def _chw_error(what: str, shape: tuple) -> ImageError:
    """The error for colour laid out channels first (C x H x W, or N x C x H x W)."""
    batch = len(shape) == 4
    return ImageError(
        f"{what}: shape {shape} is colour laid out channels first ({'N x ' * batch}C x H x W, "
        "as torch lays out images); colour crops are H x W x 3 (or x 4, alpha), a batch of "
        "them N x H x W x 3: move the channels last, e.g. numpy's "
        + ("crops.transpose(0, 2, 3, 1)" if batch else "crop.transpose(1, 2, 0)")
    )


def _one_crop(crop, i: int) -> tuple[np.ndarray, bool]:
    """An item of a list of crops: (pixels, decoded): a PIL image's uint8 gray or RGB pixels
    (decoded True), else the item as an H x W or H x W x C array."""
    if isinstance(crop, Image.Image):
        try:
            return decode_pil(crop, max_side=None)[0], True
        except (OSError, ValueError, SyntaxError) as exc:
            raise ImageError(f"crop {i}: cannot read image ({exc})") from exc
    c = np.asarray(crop)
    if c.ndim == 2 or (c.ndim == 3 and c.shape[2] in (1, 3, 4)):
        return c, False
    if c.ndim == 3 and c.shape[0] == 1:
        return c[0], False
    if c.ndim == 3 and c.shape[0] in (3, 4) and min(c.shape[1:]) > 4:
        raise _chw_error(f"crop {i}", c.shape)
    raise ImageError(
        f"crop {i}: expected H x W, 1 x H x W or H x W x 1/3/4 (or a PIL image); got "
        + (f"shape {c.shape}" if c.dtype != object else "objects")
    )


def as_face_crops(crops, size: int = FACE_SIZE, color: str = "rgb") -> np.ndarray:
    """uint8 N x size x size gray faces from the crops `Recognizer.classify` takes; an
    `ImageError` names the crop and what was expected otherwise.

    The layout is read from the number of dimensions and the last axis, never guessed from
    the other sizes:

    - a PIL image: one crop, decoded as `load_image` decodes a PIL image (EXIF orientation,
      any mode: 16-bit, palette, alpha over white, CMYK, ...); ``color`` does not apply;
    - 2-D, H x W: one gray crop;
    - 3-D whose last axis is 1, 3 or 4: one crop, H x W x 1 gray, H x W x 3 colour (RGB,
      or BGR with ``color="bgr"``), H x W x 4 colour with alpha (composited over white).
      So ``(4, 4, 3)`` is one 4 x 4 colour crop and ``(5, 48, 4)`` one 5 x 48 crop with
      alpha: a gray crop 1, 3 or 4 pixels wide is no face;
    - any other 3-D, N x H x W: N gray crops (1 x H x W: one). A colour crop laid out
      channels first (3 x H x W) is read so, as 3 gray crops: colour is H x W x 3;
    - 4-D: N x H x W x 1/3/4 (last axis first, as above) or N x 1 x H x W; N x 3 x H x W
      (channels first) is refused;
    - a list or tuple: one crop per item, each a PIL image, H x W, 1 x H x W or
      H x W x 1/3/4; an item 3 x H x W or 4 x H x W (H, W over 4) is refused as colour
      laid out channels first.

    Values are as `load_image` takes them (uint8, 16-bit, float in 0..1, bool, ...); each
    crop is made gray as `ferkit.faces.crop_face` does and resized to ``size``.
    """
    if color not in ("rgb", "bgr"):
        raise ValueError(f"color must be 'rgb' or 'bgr', not {color!r}")
    if isinstance(crops, (list, tuple)):
        if not crops:
            return np.zeros((0, size, size), dtype=np.uint8)
        items = [_one_crop(c, i) for i, c in enumerate(crops)]
    elif isinstance(crops, Image.Image):
        items = [_one_crop(crops, 0)]
    else:
        arr = np.asarray(crops)
        if arr.dtype == object or arr.ndim not in (2, 3, 4):
            raise ImageError(
                "crops must be one H x W crop or a batch: N x H x W, N x 1 x H x W or N x H x "
                f"W x 3/4; got {'shape ' + str(arr.shape) if arr.dtype != object else 'objects'}"
            )
        if arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] in (1, 3, 4)):
            arr = arr[None]  # one crop: gray H x W (or x 1), colour H x W x 3 (or x 4)
        elif arr.ndim == 4 and arr.shape[3] not in (1, 3, 4):
            if arr.shape[1] == 1:
                arr = arr[:, 0]
            elif arr.shape[1] in (3, 4) and min(arr.shape[2:]) > 4:
                raise _chw_error("crops", arr.shape)
            else:
                raise ImageError(
                    f"crops of shape {arr.shape}: a batch of colour crops is N x H x W x 3 (or "
                    "x 4), of gray ones N x H x W or N x 1 x H x W"
                )
        if arr.dtype == np.uint8 and arr.ndim == 3 and arr.shape[1:] == (size, size):
            return np.ascontiguousarray(arr)  # the common case: nothing to convert
        items = [(c, False) for c in arr]
    out = np.empty((len(items), size, size), dtype=np.uint8)
    for i, (crop, decoded) in enumerate(items):
        pixels = crop
        if not decoded:
            try:
                pixels, _ = _from_array(crop, color, max_side=max(crop.shape[:2]) or 1)
            except ImageError as exc:
                raise ImageError(f"crop {i}: {exc}") from None
        out[i] = resize(to_gray(pixels), size, size)
    return out


def lift_contrast(faces: np.ndarray, min_std: float = LOW_CONTRAST_STD,
                  full_std: float = FULL_LIFT_STD) -> np.ndarray:
    """uint8 N x H x W faces with low contrast (a dark, washed-out or flat crop) moved to
    FER2013's typical mean and standard deviation (129.5, 53.6); the others as they are.

    A face whose pixel standard deviation is ``full_std`` (15) or less is standardised to
    those values; between ``full_std`` and ``min_std`` (25) it is blended with its
    standardised self in proportion to how far below ``min_std`` it is; at ``min_std`` or
    more it is untouched. The blend keeps the result continuous in the input: a face whose
    contrast drifts across the threshold (a video as the light changes) is not flipped
    between two inputs. ``benchmarks/low_contrast.py`` measures what it gains and costs.
    """
    faces = np.asarray(faces)
    if faces.ndim != 3 or faces.dtype != np.uint8:
        raise ValueError(f"lift_contrast takes uint8 N x H x W faces, not {faces.dtype} "
                         f"{faces.shape}")
    if not 0 <= full_std < min_std:
        raise ValueError(f"need 0 <= full_std < min_std, not {full_std}, {min_std}")
    if not len(faces):
        return faces
    flat = faces.reshape(len(faces), -1).astype(np.float32)
    std = flat.std(1)
    weight = np.clip((min_std - std) / (min_std - full_std), 0, 1)
    low = weight > 0
    if not low.any():
        return faces
    out = faces.copy()
    x, w = flat[low], weight[low, None]
    z = (x - x.mean(1, keepdims=True)) / np.maximum(std[low, None], 1e-3)
    lifted = (1 - w) * x + w * (z * TYPICAL_STD + TYPICAL_MEAN)
    out[low] = np.clip(np.rint(lifted), 0, 255).astype(np.uint8).reshape(-1, *faces.shape[1:])
    return out


def _check_margin(margin) -> float:
    """``margin`` as a float: a finite real number over -1 (not a bool or a string)."""
    if (isinstance(margin, bool) or not isinstance(margin, numbers.Real)
            or not math.isfinite(margin) or not margin > -1):
        raise ValueError(f"margin must be a finite number > -1 (the crop's side is (1 + "
                         f"margin) x the face box's longer side), not {margin!r}")
    return float(margin)


def _check_count(name: str, value) -> int:
    """``value`` as an int: a whole number (an int type, not a bool or a float) of 1 or more."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be a whole number of at least 1, not {value!r}")
    return int(value)


def _resolve_model(model) -> tuple[nn.Module, dict]:
    from .weights import load_model

    if model is None:
        return load_model()
    if isinstance(model, (str, os.PathLike)):
        return load_model(model)
    if isinstance(model, tuple) and len(model) == 2 and isinstance(model[0], nn.Module):
        return model
    raise TypeError("model must be None, a weights name, a checkpoint path or (nn.Module, meta)")


class Recognizer:
    """Faces and their expressions in photos.

    ``model``: None (the shipped default weights), a shipped weights name, a checkpoint path,
    or ``(nn.Module, metadata)`` with ``metadata["class_names"]``. ``detector``: a name from
    `ferkit.faces.list_detectors()` or a `FaceDetector`. ``margin``: crop margin (default:
    the checkpoint's ``preprocessing.margin``, else the detector's ``crop_margin``). ``tta``: test-time views as in
    evaluation ("none", "flip", "ten-crop").

    ``auto_contrast``: faces of less contrast than nearly all of FER2013's (dark, washed-out
    or flat photos) are rescaled to its typical contrast first (`lift_contrast`); False
    classifies them as they are (as ``ferkit eval`` scores dataset images).

    ``max_side``: images are shrunk on loading to at most this many pixels on a side;
    ``batch_size``: faces per forward pass. The options are checked before anything loads,
    each a ValueError naming it: ``margin`` must be a finite number over -1, ``max_side``
    and ``batch_size`` whole numbers (int types) of at least 1, ``auto_contrast`` a bool.

    ``backend="onnx"`` runs the classifier with onnxruntime on the CPU (``pip install
    'ferkit[export]'``), with the same preprocessing, TTA and softmax as ``"torch"``:
    ``model`` may then also be an ``.onnx`` file written by `ferkit.export.export_onnx`;
    any other model is exported once into ferkit's cache folder. Its threads follow
    ``torch.get_num_threads()``.
    """

    def __init__(
        self,
        model=None,
        detector: str | FaceDetector = "blazeface",
        device: str = "auto",
        backend: str = "torch",
        margin: float | None = None,
        tta: str = "none",
        max_side: int = MAX_SIDE,
        batch_size: int = 128,
        auto_contrast: bool = True,
    ) -> None:
        if tta not in TTA_MODES:  # the options first: nothing loads for a wrong one
            raise ValueError(f"unknown tta {tta!r}; use one of {', '.join(TTA_MODES)}")
        batch_size = _check_count("batch_size", batch_size)
        max_side = _check_count("max_side", max_side)
        if margin is not None:
            _check_margin(margin)
        if not isinstance(auto_contrast, (bool, np.bool_)):  # "no" would be taken as True
            raise ValueError(f"auto_contrast must be True or False, not {auto_contrast!r}")
        self.detector = get_detector(detector)
        if backend == "onnx":
            from .export import onnx_backend

            if device not in ("auto", "cpu"):
                raise ValueError("backend='onnx' runs on the CPU; use device='cpu' or 'auto'")
            self.device = torch.device("cpu")
            self.model, self.meta = onnx_backend(model, threads=torch.get_num_threads())
        elif backend == "torch":
            from .train import resolve_device

            if isinstance(model, (str, os.PathLike)) and str(model).lower().endswith(".onnx"):
                raise ValueError(f"{model}: an ONNX file needs backend='onnx' (the commands' "
                                 "--backend onnx)")
            self.device = resolve_device(device)
            from .evaluate import channels_last_on

            self.model, self.meta = _resolve_model(model)
            # laid out once here: classification then never converts (or races) per call
            self.model = channels_last_on(self.model, self.device).eval()
        else:
            raise ValueError(f"unknown backend {backend!r}; use 'torch' or 'onnx'")
        self.backend = backend
        if "class_names" not in self.meta:
            raise ValueError("model metadata has no 'class_names'")
        self.class_names = [str(c) for c in self.meta["class_names"]]
        prep = self.meta.get("preprocessing", {})
        if (prep.get("mean", PIXEL_MEAN), prep.get("std", PIXEL_STD)) != (PIXEL_MEAN, PIXEL_STD):
            raise ValueError(
                f"model expects normalisation mean {prep['mean']}, std {prep['std']}; ferkit "
                f"uses {PIXEL_MEAN}, {PIXEL_STD}"
            )
        if not prep.get("gray", True):
            raise ValueError("model expects colour input; ferkit recognises gray faces")
        self.size = int(prep.get("size", FACE_SIZE))
        if backend == "torch" and isinstance(model, tuple):  # a loaded checkpoint fits itself
            from .models.info import check_class_names

            check_class_names(self.model, self.class_names, self.size)
        if margin is None:  # a checkpoint's margin is for detectors' boxes, not whole images
            margin = (self.detector.crop_margin if self.detector.name == "none"
                      else prep.get("margin", getattr(self.detector, "crop_margin", DEFAULT_MARGIN)))
        self.margin = _check_margin(margin)
        self.tta = tta
        self.max_side = max_side
        self.batch_size = batch_size
        self.auto_contrast = bool(auto_contrast)

    def prepare(self, crops, color: str = "rgb") -> np.ndarray:
        """The uint8 N x size x size gray faces the model sees for ``crops`` (what
        `classify` takes): converted, resized and, with ``auto_contrast``, low-contrast
        faces lifted."""
        faces = as_face_crops(crops, self.size, color)
        return lift_contrast(faces) if self.auto_contrast else faces

    def classify(self, crops, color: str = "rgb") -> np.ndarray:
        """Class probabilities (N x C) of face crops, each already cut around one face (no
        detection; as FER2013's images are).

        ``crops``: one crop (a PIL image, H x W gray, 1 x H x W, or H x W x 3 / x 4 colour)
        or a batch: N x H x W gray, N x 1 x H x W, N x H x W x 3 (RGB, or BGR with
        ``color="bgr"``) or x 4 (alpha over white), or a list of such crops; values as
        `predict` takes them (uint8, 16-bit, float in 0..1, ...). A 3-D array whose last
        axis is 1, 3 or 4 is one crop (H x W x C); any other is N gray crops, so a colour
        crop must be H x W x 3, not 3 x H x W (`as_face_crops` has the rules). PIL images
        are decoded as `predict` decodes them (EXIF orientation, CMYK, palette, alpha over
        white, 16-bit). Crops of another size than the model's (48 x 48) are resized to it;
        with ``auto_contrast``, low-contrast crops are lifted (`prepare`).
        """
        return self._probs(self.prepare(crops, color))

    def _probs(self, faces: np.ndarray) -> np.ndarray:
        """`classify` for faces `prepare` gave."""
        from .evaluate import predict_probs

        if len(faces) == 0:
            return np.zeros((0, len(self.class_names)), dtype=np.float32)
        return predict_probs(
            self.model, faces, tta=self.tta, batch_size=self.batch_size, device=self.device
        )

    def predict(self, image, color: str = "rgb") -> list[Face]:
        """Faces in one image (any input `load_image` takes), sorted left to right."""
        return self.predict_batch([image], color=color)[0]

    def predict_batch(self, images: Iterable, color: str = "rgb") -> list[list[Face]]:
        """`predict` for several images, with all their faces classified in one batch.

        All the images are decoded (each at most ``max_side`` pixels on a side) before the
        model runs, so pass large collections in chunks.
        """
        loaded = [load_image(im, color, self.max_side) for im in images]
        found, crops = zip(*(self.faces_in(im) for im in loaded), strict=True) if loaded else ((), ())
        probs = self.classify(np.concatenate([np.zeros((0, self.size, self.size), np.uint8),
                                              *crops]))
        out, i = [], 0
        for im, dets in zip(loaded, found, strict=True):
            faces = []
            for d in dets:
                faces.append(self._face(d, probs[i], im.scale))
                i += 1
            out.append(faces)
        return out

    def faces_in(self, loaded: LoadedImage) -> tuple[list, np.ndarray]:
        """The detector's faces in a `load_image` result, left to right, and their uint8
        crops (N x size x size, cut as every path cuts them: `ferkit.faces.crop_face`; with
        the ``none`` detector the whole image stretched to the square, as `classify` reads a
        crop)."""
        found = sorted(self.detector.detect(loaded.pixels), key=lambda d: (d.box[0], d.box[1]))
        crops = np.zeros((len(found), self.size, self.size), np.uint8)
        if self.detector.name == "none" and found:
            # a whole image that is a face crop: stretched to a square, as `classify` and
            # image-folder datasets read a crop (not padded: one view of a crop everywhere)
            gray = to_gray(loaded.pixels)
            if self.margin == 0:
                crops[0] = resize(gray, self.size, self.size)
            else:  # the margin around the stretched square, as around any face box
                side = max(gray.shape)
                crops[0] = crop_face(resize(gray, side, side), (0, 0, side, side), self.margin,
                                     self.size)
            return found, crops
        for k, d in enumerate(found):
            crops[k] = crop_face(loaded.pixels, d.box, self.margin, self.size,
                                 eyes=d.landmarks[:2] if d.landmarks else None)
        return found, crops

    def _face(self, det, probs: np.ndarray, scale: tuple[float, float]) -> Face:
        sx, sy = scale
        x, y, w, h = det.box
        box = [round(x * sx), round(y * sy), round(w * sx), round(h * sy)]
        landmarks = None
        if det.landmarks is not None:
            landmarks = [[float(px * sx), float(py * sy)] for px, py in det.landmarks]
        best = int(np.argmax(probs))
        return Face(
            box=box,
            landmarks=landmarks,
            scores={c: float(p) for c, p in zip(self.class_names, probs, strict=True)},
            label=self.class_names[best],
            confidence=float(probs[best]),
            detection_score=None if det.score is None else float(det.score),
        )


_PALETTE = [
    (230, 25, 75),
    (60, 180, 75),
    (255, 225, 25),
    (0, 130, 200),
    (245, 130, 48),
    (145, 30, 180),
    (70, 240, 240),
    (240, 50, 230),
    (210, 245, 60),
    (250, 190, 212),
]


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: one small bitmap font
        return ImageFont.load_default()


def draw_faces(
    image: LoadedImage | np.ndarray | Image.Image,
    faces: Sequence[Face],
    class_names: Sequence[str] = (),
) -> Image.Image:
    """An RGB copy of ``image`` with each face's box and "label 87%" drawn on it.

    ``faces`` carry full-image boxes; a `LoadedImage` maps them onto its (maybe shrunk)
    pixels. ``class_names`` fixes each label's colour.
    """
    if isinstance(image, LoadedImage):
        sx, sy = image.scale
        image = image.pixels
    else:
        sx = sy = 1.0
    canvas = (Image.fromarray(image) if isinstance(image, np.ndarray) else image).convert("RGB")
    draw = ImageDraw.Draw(canvas)
    line = max(2, round(max(canvas.size) / 400))
    for face in faces:
        x, y, w, h = face.box
        x0, y0, x1, y1 = x / sx, y / sy, (x + w) / sx, (y + h) / sy
        names = list(class_names)
        colour = _PALETTE[(names.index(face.label) if face.label in names else 0) % len(_PALETTE)]
        draw.rectangle([x0, y0, x1, y1], outline=colour, width=line)
        font = _font(int(np.clip(0.18 * (x1 - x0), 12, 96)))
        text = f"{face.label} {face.confidence:.0%}"
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        tw, th = right - left, bottom - top
        pad = max(2, th // 5)
        ty = y0 - th - 2 * pad if y0 - th - 2 * pad >= 0 else y0
        draw.rectangle([x0, ty, x0 + tw + 2 * pad, ty + th + 2 * pad], fill=colour)
        draw.text((x0 + pad - left, ty + pad - top), text, fill=(0, 0, 0), font=font)
    return canvas
