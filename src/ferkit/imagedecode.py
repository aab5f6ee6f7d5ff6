"""Decoding: any image PIL reads, or a numpy array, as the uint8 pixels ferkit works on.

One path for `ferkit.recognize` (photos, and the crops `Recognizer.classify` takes) and
`ferkit.data.folders` (image-folder datasets), so that training and evaluation see a file as
recognition sees it. Needs numpy and Pillow, and OpenCV for `to_gray` of colour; not torch
(the data layer imports this module).

- Every PIL mode becomes 8-bit gray (``L``) or ``RGB`` (`pil_to_8bit`): the EXIF orientation
  is applied (`decode_pil`); 16-bit and other integer data is scaled by the bit depth it uses
  (`array_to_uint8`); palette images become RGB; transparent parts are composited over
  white; CMYK, YCbCr, LAB, HSV become RGB.
- Colour becomes gray by ITU-R 601 luma with OpenCV's rounding (`to_gray`), as
  `ferkit.faces.crop_face` makes every face crop gray.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageOps

#: The version of what this module makes of a file: bump it when a change decodes some file
#: differently, so that dataset reads cached with the old decoding are read again
#: (`ferkit.data.folders` puts it in its cache keys). 2: image folders decoded here, as
#: `ferkit.Recognizer` decodes (EXIF orientation, 16-bit depth, alpha over white, luma).
DECODING_VERSION = 2

#: Default longest side of a decoded image (`decode_pil`'s ``max_side``).
MAX_SIDE = 4096
ORIENTATION_TAG = 0x0112

#: Float pixels are 0..1; values down to ``FLOAT_RANGE[0]`` and up to ``FLOAT_RANGE[1]`` are
#: clipped to it, values beyond are refused as another scale. The margin is what resampling
#: leaves: a bicubic resize (OpenCV's, a = -0.75) of 0..1 data overshoots to 1.45 and -0.45
#: at worst (two-dimensional, on a checkerboard-like pattern); 0..255 data or data
#: normalised to -1..1, clipped instead, would become a blank or half-blank image.
FLOAT_RANGE = (-0.5, 1.5)


class ImageError(ValueError):
    """An input that is not a readable image; the message names it."""


def array_to_uint8(arr: np.ndarray) -> np.ndarray:
    """uint8 pixels of the same shape from any supported dtype (uint8 is returned as it is).

    bool: 0 or 255. float: 0..1 (`FLOAT_RANGE` says what is clipped and what refused; NaN is
    0). Integers: 0..255 as they are; where a value exceeds 255 (or the dtype is uint16) by
    the bit depth used, 8, 10, 12 or 16 bits: the smallest that holds the largest colour
    value (an alpha channel, often full scale, does not count). An `ImageError` says what
    else is wrong.
    """
    if arr.dtype == np.uint8:
        return arr
    if arr.dtype == np.bool_:
        return arr.astype(np.uint8) * 255
    if np.issubdtype(arr.dtype, np.floating):
        arr = np.nan_to_num(arr.astype(np.float32, copy=False))
        low, high = FLOAT_RANGE
        if arr.size and (arr.max() > high or arr.min() < low):
            raise ImageError(
                f"float image values must be in 0..1 (these span {arr.min():g}..{arr.max():g}; "
                f"{low:g}..{high:g}, resampling overshoot, is clipped to 0..1); divide 0..255 "
                "values by 255, or pass uint8"
            )
        return np.clip(arr * 255.0 + 0.5, 0, 255).astype(np.uint8)
    if np.issubdtype(arr.dtype, np.integer):
        if arr.dtype == np.uint16 or (arr.size and arr.max() > 255):
            arr = np.clip(arr, 0, 65535).astype(np.uint16)
            # 16-bit files and arrays often hold 10- or 12-bit data (scientific and medical
            # cameras), or 8-bit values: scaled by 256 they would be near black (0..15).
            colour = arr[..., :3] if arr.ndim == 3 and arr.shape[2] == 4 else arr
            top = int(colour.max()) if colour.size else 0
            shift = next(bits for bits in (8, 10, 12, 16) if top < 1 << bits) - 8
            return (arr >> shift).astype(np.uint8)
        return np.clip(arr, 0, 255).astype(np.uint8)
    raise ImageError(f"unsupported image array dtype {arr.dtype}")


def float_file_to_uint8(arr: np.ndarray) -> np.ndarray:
    """uint8 pixels of a float image read from a file (PIL mode ``F``: PFM, float TIFF),
    whose files say nothing of their range: values up to 1 are 0..1 (PFM's convention), up
    to 255 are 0..255, each with `FLOAT_RANGE`'s margin for resampling overshoot (clipped;
    whole numbers over 255 are no overshoot); larger ones are integer levels of the bit
    depth they use (as 16-bit files are read).
    NaN is 0; values below the margin (data normalised to -1..1, say) are an `ImageError`,
    as for arrays."""
    arr = np.nan_to_num(np.asarray(arr, dtype=np.float32), nan=0.0, posinf=65535.0)
    low, high = FLOAT_RANGE
    top = float(arr.max()) if arr.size else 0.0
    whole = top > 255.0 and bool(np.all(arr == np.rint(arr)))  # levels, e.g. 10-bit 0..380
    scale = 1.0 if top <= high else 255.0 if top <= 255.0 * high and not whole else None
    if arr.size and float(arr.min()) < low * (scale or 255.0):
        raise ImageError(
            f"float image values span {arr.min():g}..{top:g}: expected 0..1, 0..255 or "
            "integer levels, not negative values"
        )
    if scale is not None:
        return np.clip(arr * (255.0 / scale) + 0.5, 0, 255).astype(np.uint8)
    return array_to_uint8(np.clip(np.rint(arr), 0, 65535).astype(np.uint16))


def rgba_over_white(rgba: np.ndarray) -> np.ndarray:
    """uint8 H x W x 3 of a uint8 H x W x 4 array, composited over white by its alpha."""
    alpha = rgba[:, :, 3:].astype(np.float32) / 255.0
    return np.rint(rgba[:, :, :3] * alpha + 255.0 * (1 - alpha)).astype(np.uint8)


def _over_white(rgba: Image.Image) -> Image.Image:
    out = Image.new("RGB", rgba.size, (255, 255, 255))
    out.paste(rgba.convert("RGB"), mask=rgba.getchannel("A"))
    return out


def pil_to_8bit(img: Image.Image) -> Image.Image:
    """An ``L`` or ``RGB`` copy of any PIL mode (``L`` and ``RGB`` images as they are):
    integer modes scaled by `array_to_uint8`, ``F`` by the range its values use (`float_file_to_uint8`),
    alpha and palette transparency composited over white, other modes (CMYK, YCbCr, ...)
    converted to RGB."""
    mode = img.mode
    if mode in ("L", "RGB"):
        return img
    if mode == "1":
        return img.convert("L")
    if mode == "F":
        return Image.fromarray(float_file_to_uint8(np.asarray(img)))
    if mode.startswith("I"):
        return Image.fromarray(array_to_uint8(np.asarray(img)))
    if mode == "P" and "transparency" not in img.info:
        return img.convert("RGB")
    if mode in ("RGBA", "LA", "PA", "P", "RGBa", "La"):
        return _over_white(img.convert("RGBA"))
    return img.convert("RGB")  # CMYK, YCbCr, LAB, HSV, RGBX


def shrunk_size(width: int, height: int, max_side: int) -> tuple[int, int]:
    """(width, height) scaled so that the longer side is at most ``max_side``."""
    s = min(1.0, max_side / max(width, height))
    return max(1, round(width * s)), max(1, round(height * s))


def decode_pil(
    img: Image.Image, max_side: int | None = MAX_SIDE, owned: bool = False
) -> tuple[np.ndarray, tuple[int, int]]:
    """(pixels, full size) of a PIL image: uint8 H x W gray or H x W x 3 RGB (`pil_to_8bit`)
    turned by its EXIF orientation, and the (width, height) of the whole oriented image.

    An image whose longer side exceeds ``max_side`` (None: no limit) is shrunk (box filter;
    a JPEG not yet loaded is decoded at 1/2, 1/4 or 1/8 scale first). ``owned`` images may
    be changed in place. PIL's errors (OSError, ValueError, ...) pass through.
    """
    orientation = img.getexif().get(ORIENTATION_TAG, 1)
    full = img.size[::-1] if orientation in (5, 6, 7, 8) else img.size
    too_big = max_side is not None and max(img.size) > max_side
    if owned and too_big and img.format == "JPEG":
        img.draft(None, shrunk_size(*img.size, max_side))  # decode at 1/2, 1/4 or 1/8 scale
    if orientation in range(2, 9):
        if owned:
            ImageOps.exif_transpose(img, in_place=True)
        else:
            img = ImageOps.exif_transpose(img)
    img = pil_to_8bit(img)
    if max_side is not None and max(img.size) > max_side:
        img = img.resize(shrunk_size(*img.size, max_side), Image.Resampling.BOX, reducing_gap=3.0)
    return np.asarray(img), full


def to_gray(pixels: np.ndarray) -> np.ndarray:
    """uint8 H x W gray from uint8 H x W gray (returned as it is) or H x W x 3 RGB: ITU-R 601
    luma, computed by OpenCV as `ferkit.faces.to_gray` computes it for every face crop."""
    if pixels.ndim == 2:
        return pixels
    try:
        import cv2
    except ImportError as exc:
        raise ImportError(
            "colour images need OpenCV: pip install 'opencv-python-headless>=4.8,<5'"
        ) from exc
    return cv2.cvtColor(np.ascontiguousarray(pixels), cv2.COLOR_RGB2GRAY)


def resize(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """Area averaging when shrinking (no aliasing), bilinear when enlarging."""
    h, w = image.shape[:2]
    if (w, h) == (width, height):
        return image
    import cv2
    shrink = width < w or height < h
    return cv2.resize(
        np.ascontiguousarray(image),
        (width, height),
        interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR,
    )


__all__ = [
    "DECODING_VERSION",
    "FLOAT_RANGE",
    "MAX_SIDE",
    "ImageError",
    "array_to_uint8",
    "decode_pil",
    "pil_to_8bit",
    "resize",
    "rgba_over_white",
    "shrunk_size",
    "to_gray",
]
