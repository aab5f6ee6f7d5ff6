"""`FaceSet`: the in-memory form every reader produces and every consumer takes."""

from __future__ import annotations

import io
import json
import lzma
import numbers
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..fileio import write_atomically

FER2013_CLASSES: tuple[str, ...] = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
SPLITS: tuple[str, ...] = ("Training", "PublicTest", "PrivateTest")
IMAGE_SIZE = 48
#: File extensions read as images (folder datasets, `ferkit predict` on folders).
IMAGE_EXTENSIONS = frozenset(
    ".jpg .jpeg .jpe .jfif .png .bmp .gif .tif .tiff .webp .ppm .pgm .pbm .pnm".split()
)
PACK_MAGIC = "ferkit-pack-1"
#: The image codec of the packs `FaceSet.save_pack` writes (see `med_encode`).
PACK_IMAGE_CODEC = "med1"


class DataError(ValueError):
    """Bad or unreadable input data; the message names the file, row or path."""


@dataclass
class FaceSet:
    """Gray 48 x 48 face images with labels and the split of each row.

    - ``images``: uint8, N x 48 x 48.
    - ``labels``: int64, N; class indices 0..C-1 (C = ``len(class_names)``), -1 where a row
      has no label (e.g. Kaggle's test.csv).
    - ``splits``: N strings (``Training``, ``PublicTest``, ``PrivateTest``, or a folder's own
      split names such as ``validation``).
    - ``index``: int64, N; the row number in the original file (0..N-1 where it has none).
    - ``soft_labels``: optional float32 N x C target distributions (FER+ votes).

    Anything else is a `DataError` when the FaceSet is made, naming the array, its shape and,
    for labels, the first bad value and its index: images of another dtype or size, labels
    that are not one class index per image (an N x 1 column, N x C one-hot rows, fractions
    such as 0.9; whole numbers in a float array are taken), splits that are not N names.
    - ``source``: where it came from; ``info``: reader notes (md5, layout, warnings, and
      ``notes``: one-line remarks `ferkit.data.load` prints).

    ``info["icml_rows"]`` (see `icml_rows`) says that ``index`` is the row number in the ICML
    ``fer2013.csv``, which FER+ joins on; packs and the cache keep it. A FaceSet built without
    an ``index`` never has it: its rows are numbered 0..N-1, whatever the info says.
    """

    images: np.ndarray
    labels: np.ndarray
    splits: np.ndarray
    class_names: tuple[str, ...] = FER2013_CLASSES
    index: np.ndarray | None = None
    soft_labels: np.ndarray | None = None
    source: str = ""
    info: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.class_names = tuple(self.class_names)
        self.images = _checked_images(self.images)
        n = len(self.images)
        self.labels = _checked_labels(self.labels, n, self.class_names)
        self.splits = _checked_rows("splits", self.splits, n, "split names", dtype=str)
        if self.index is None:
            self.index = np.arange(n, dtype=np.int64)
            # rows renumbered (e.g. a subset rebuilt without its index): no longer ICML rows
            if self.info.get("icml_rows"):
                self.info = {k: v for k, v in self.info.items() if k != "icml_rows"}
        else:
            index = _checked_rows("index", self.index, n, "row numbers")
            whole = index.dtype.kind in "iu" or (
                index.dtype.kind == "f" and bool(np.isfinite(index).all())
                and bool((index == np.round(index)).all()))  # [] is float64 to numpy
            if not whole:
                raise DataError(f"index must be N integer row numbers, got {index.dtype}")
            self.index = index.astype(np.int64, copy=False)
        if self.soft_labels is not None:
            soft = np.asarray(self.soft_labels)
            if soft.shape != (n, len(self.class_names)) or soft.dtype.kind not in "fiu":
                raise DataError(
                    f"soft_labels must be N x {len(self.class_names)} numbers (one "
                    f"distribution per image), got {soft.dtype} {soft.shape}"
                )
            self.soft_labels = soft.astype(np.float32, copy=False)

    def __len__(self) -> int:
        return len(self.images)

    def __repr__(self) -> str:
        counts = {s: int((self.splits == s).sum()) for s in self.split_names}
        return f"FaceSet({len(self)} images, splits={counts}, classes={list(self.class_names)})"

    @property
    def icml_rows(self) -> bool:
        """Whether ``index`` is the row number in the ICML ``fer2013.csv`` (what FER+ joins
        on): true for the FER2013 CSVs, Kaggle's train.csv + test.csv and packs of them; false
        for image folders, which do not keep the rows, and for FaceSets built by hand."""
        return bool(self.info.get("icml_rows"))

    @property
    def split_names(self) -> list[str]:
        """Split names present, in the canonical order first, then others alphabetically."""
        present = set(np.unique(self.splits).tolist())
        return [s for s in SPLITS if s in present] + sorted(present - set(SPLITS))

    def select(self, mask_or_indices: np.ndarray) -> FaceSet:
        """The rows picked by a boolean mask or an index array, as a new FaceSet."""
        sel = np.asarray(mask_or_indices)
        return FaceSet(
            images=self.images[sel],
            labels=self.labels[sel],
            splits=self.splits[sel],
            class_names=self.class_names,
            index=self.index[sel],
            soft_labels=None if self.soft_labels is None else self.soft_labels[sel],
            source=self.source,
            info=dict(self.info),
        )

    def subset(self, splits: str | Sequence[str]) -> FaceSet:
        """Only the rows of the named split(s); an unknown split name is an error."""
        names = [splits] if isinstance(splits, str) else list(splits)
        if not names:  # an empty selection is a mistake (e.g. --splits ""), not 0 rows
            raise DataError(f"{self.source or 'data'}: no split named; it has {self.split_names}")
        missing = [s for s in names if s not in self.split_names]
        if missing:
            raise DataError(
                f"{self.source or 'data'}: no split {missing}; it has {self.split_names}"
            )
        return self.select(np.isin(self.splits, names))

    def class_counts(self) -> dict[str, int]:
        counts = np.bincount(self.labels[self.labels >= 0], minlength=len(self.class_names))
        return {name: int(c) for name, c in zip(self.class_names, counts, strict=True)}

    # ---- the .npz form ----

    def to_arrays(self, **meta) -> dict[str, np.ndarray]:
        """The arrays of the .npz form (shared by packs and the cache); `meta` adds keys."""
        meta = {"class_names": list(self.class_names), "info": self.info, **meta}
        arrays = {
            "images": self.images,
            "labels": self.labels,
            "splits": self.splits,
            "index": self.index,
            "meta": np.array(json.dumps(meta)),
        }
        if self.soft_labels is not None:
            arrays["soft_labels"] = self.soft_labels.astype(np.float32)
        return arrays

    @classmethod
    def from_arrays(cls, z, source: str, images: np.ndarray | None = None) -> FaceSet:
        """Inverse of `to_arrays` (`z`: an opened .npz); `images`, if given, replaces z's."""
        meta = json.loads(str(z["meta"]))
        return cls(
            images=z["images"] if images is None else images,
            labels=z["labels"],
            splits=z["splits"],
            class_names=tuple(meta["class_names"]),
            index=z["index"],
            soft_labels=z["soft_labels"] if "soft_labels" in z.files else None,
            source=source,
            info=meta.get("info", {}),
        )

    # ---- compact pack file (for carrying to a training machine) ----

    def save_pack(self, path: str | os.PathLike, preset: int = 9) -> Path:
        """Write a compact, lossless pack that `FaceSet.load` reads; returns the path.

        A pack is an xz file holding an .npz (`to_arrays`, magic `PACK_MAGIC`) in which the
        images are deduplicated and predicted: ``image_residuals`` holds each distinct image
        once, as `med_encode` residuals, and ``image_rows`` (int32, N) the distinct image of
        each row; the meta records ``"image_codec": "med1"`` and ``"image_dedup": true``. The
        xz stream is LZMA2 at `preset` | extreme with lc=4, lp=0, pb=0 (on FER2013 about 10%
        smaller than the plain images through a delta filter, the format before codecs).
        """
        path = Path(path)
        unique, rows = _dedup(self.images)
        arrays = self.to_arrays(
            # the file name only: a pack must not carry the paths of the machine that made it
            magic=PACK_MAGIC, source=Path(self.source).name,
            image_codec=PACK_IMAGE_CODEC, image_dedup=True,
        )
        del arrays["images"]
        arrays["image_residuals"] = med_encode(unique)
        arrays["image_rows"] = rows
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        # literals coded in the context of the previous residual (lc=4): the residuals are
        # bytes, so no position bits (lp=pb=0); a delta filter only hurts residuals
        filters = [{
            "id": lzma.FILTER_LZMA2, "preset": preset | lzma.PRESET_EXTREME,
            "lc": 4, "lp": 0, "pb": 0,
        }]
        packed = lzma.compress(buf.getvalue(), format=lzma.FORMAT_XZ, filters=filters)
        return write_atomically(path, lambda tmp: tmp.write_bytes(packed))

    @classmethod
    def from_pack(cls, path: str | os.PathLike) -> FaceSet:
        """Read a pack of `save_pack`, or of ferkit before image codecs (plain ``images``)."""
        path = Path(path)
        try:
            raw = lzma.decompress(path.read_bytes())
            with np.load(io.BytesIO(raw), allow_pickle=False) as z:
                meta = json.loads(str(z["meta"]))
                if meta.get("magic") != PACK_MAGIC:
                    raise DataError(f"not a ferkit pack (magic {meta.get('magic')!r})")
                codec = meta.get("image_codec")
                if codec is None:  # written before image codecs: the images as they are
                    faces = cls.from_arrays(z, str(path))
                elif codec == PACK_IMAGE_CODEC:
                    images = med_decode(z["image_residuals"])
                    rows = z["image_rows"]  # save_pack always deduplicates
                    if rows.ndim != 1 or rows.dtype.kind not in "iu" or (
                        len(rows) and not 0 <= rows.min() <= rows.max() < len(images)
                    ):
                        raise ValueError(f"image_rows do not index the {len(images)} images")
                    faces = cls.from_arrays(z, str(path), images=images[rows])
                else:
                    raise DataError(
                        f"pack image codec {codec!r} unknown to this ferkit "
                        f"(it reads {PACK_IMAGE_CODEC!r}); update ferkit"
                    )
        except (lzma.LZMAError, OSError, KeyError, ValueError) as exc:
            if isinstance(exc, DataError):  # ours and FaceSet's checks, with the file
                raise DataError(f"{path}: {exc}") from None
            raise DataError(f"{path}: unreadable ferkit pack ({exc})") from None
        faces.info["packed_from"] = Path(meta.get("source", "")).name
        if "icml_rows" not in faces.info:  # a pack from before the flag: its layout tells
            faces.info["icml_rows"] = _legacy_icml_rows(faces.info)
        return faces

    @classmethod
    def load(cls, path: str | os.PathLike, **kwargs) -> FaceSet:
        """Read any supported layout (see `ferkit.data.load`)."""
        from .readers import load

        return load(path, **kwargs)


def _as_array(name: str, value) -> np.ndarray:
    try:
        return np.asarray(value)
    except (ValueError, TypeError) as exc:  # e.g. a ragged list
        raise DataError(f"{name}: not an array ({exc})") from None


def _checked_images(images) -> np.ndarray:
    """`images` as uint8 N x 48 x 48, or a DataError saying what they are instead."""
    arr = _as_array("images", images)
    if arr.dtype == np.uint8 and arr.shape[1:] == (IMAGE_SIZE, IMAGE_SIZE) and arr.ndim == 3:
        return arr
    hint = ""
    if arr.dtype != np.uint8 and arr.dtype.kind in "fiub":
        hint = "; gray values 0..255: scale them to that range and use .astype(np.uint8)"
    elif arr.ndim == 4:
        hint = "; gray images only: one channel, N x 48 x 48 (e.g. a colour image's luma)"
    elif arr.ndim == 3:
        hint = "; resize them to 48 x 48 (ferkit.data.folders.read_image reads any image file)"
    raise DataError(
        f"images must be uint8 N x 48 x 48, got {arr.dtype} {arr.shape}{hint}"
    )


def _checked_rows(name: str, value, n: int, what: str, dtype=None) -> np.ndarray:
    """`value` as a 1-D array of `n` rows (one per image), else a DataError."""
    arr = _as_array(name, value) if dtype is None else np.asarray(value, dtype=dtype)
    if arr.ndim != 1:
        hint = ""
        if arr.ndim == 0:
            hint = " (one for each image: repeat a single value, e.g. [value] * N)"
        elif arr.ndim == 2 and arr.shape[1] == 1:
            hint = " (a column: flatten it, e.g. .ravel())"
        raise DataError(f"{name} must be 1-D, N {what}, got shape {arr.shape}{hint}")
    if len(arr) != n:
        raise DataError(f"{name} has {len(arr)} rows, images {n}")
    return arr


def _checked_labels(labels, n: int, class_names: tuple[str, ...]) -> np.ndarray:
    """`labels` as int64 N class indices in -1..C-1, else a DataError naming the first bad one."""
    k = len(class_names)
    arr = _as_array("labels", labels)
    if arr.ndim == 2 and arr.shape[1] == k and k > 1:
        raise DataError(
            f"labels must be 1-D, N class indices, got shape {arr.shape}: one row of {k} "
            "values per image (one-hot or votes)? give the class indices (e.g. "
            "labels.argmax(axis=1)) and any distributions as soft_labels"
        )
    arr = _checked_rows("labels", arr, n, "class indices")
    if arr.dtype.kind == "O":  # e.g. a list mixing numbers and None
        values = arr.tolist()
        first = next((i for i, v in enumerate(values)
                      if not isinstance(v, numbers.Real) or isinstance(v, bool | np.bool_)),
                     None)
        if first is not None:
            raise DataError(
                f"labels must be integer class indices; label {values[first]!r} at index "
                f"{first} is not a number"
            )
        arr = np.array(values, dtype=np.float64)
    if arr.dtype.kind == "f":
        with np.errstate(invalid="ignore"):
            bad = np.flatnonzero(~np.isfinite(arr) | (arr != np.round(arr)))
        if len(bad):
            i = int(bad[0])
            raise DataError(
                f"labels must be integer class indices; label {arr[i].item()!r} at index {i} is "
                "not a whole number (fractions are not rounded: give the class of each image)"
            )
    elif arr.dtype.kind not in "iu":
        example = f" such as {arr[0].item()!r}" if len(arr) else ""
        raise DataError(
            f"labels must be integer class indices 0..{k - 1} (-1: no label), got "
            f"{arr.dtype}{example}"
            + (f"; map names to indices by class_names {list(class_names)}"
               if arr.dtype.kind in "US" else "")
        )
    bad = np.flatnonzero((arr < -1) | (arr >= k))
    if len(bad):
        i = int(bad[0])
        value = arr[i].item()
        raise DataError(
            f"label {int(value) if float(value).is_integer() else value} at index {i} is out "
            f"of range: labels are 0..{k - 1} for the {k} classes, or -1 for a row without "
            "a label"
        )
    return arr.astype(np.int64, copy=False)


def _legacy_icml_rows(info: dict) -> bool:
    """Whether a pack written before ``info["icml_rows"]`` existed kept the ICML rows: those
    of the CSV layouts did (their readers numbered the rows as in the file), others did not."""
    layout = info.get("layout")
    if layout in ("fer2013-csv", "icml_face_data-csv", "kaggle-train-test-csv"):
        return True
    # any other CSV column order: rows as in the file when it had its own Usage column
    return layout == "csv" and "usage" in [str(c).lower() for c in info.get("columns", [])]


# ---- the pack's image codec ----


def _dedup(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(unique, rows)``: the distinct images in order of first appearance and, for each
    image, the int32 row of its copy in ``unique`` (``images == unique[rows]``)."""
    n = len(images)
    flat = np.ascontiguousarray(images).reshape(n, int(np.prod(images.shape[1:])))
    if n == 0 or flat.shape[1] == 0:
        return images[:n], np.arange(n, dtype=np.int32)
    keys = flat.view(np.dtype((np.void, flat.shape[1]))).reshape(n)
    _, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
    order = np.argsort(first)  # distinct images by first appearance
    rank = np.empty(len(order), dtype=np.int32)
    rank[order] = np.arange(len(order), dtype=np.int32)
    return images[first[order]], rank[inverse.reshape(n)]


def med_encode(images: np.ndarray) -> np.ndarray:
    """Codec ``med1``: uint8 N x H x W images to uint8 prediction residuals (lossless).

    Each pixel is predicted by the LOCO-I / JPEG-LS median edge detector from its left (a),
    upper (b) and upper-left (c) neighbours: ``min(a, b)`` if ``c >= max(a, b)``,
    ``max(a, b)`` if ``c <= min(a, b)``, else ``a + b - c``; along the top row by the left
    pixel, down the left column by the upper one, the first pixel by 0. The residual
    ``(pixel - prediction) mod 256``, read as a signed byte r, is stored zigzagged
    (``2r`` for r >= 0, ``-2r - 1`` below) so that small errors of either sign are small bytes.
    """
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 3:
        raise ValueError(f"med_encode takes uint8 N x H x W images, got {images.dtype} {images.shape}")
    out = np.empty(images.shape, dtype=np.uint8)
    if images.size == 0:
        return out
    for start in range(0, len(images), 4096):  # in chunks: bounded int16 temporaries
        x = images[start:start + 4096].astype(np.int16)
        pred = np.zeros_like(x)
        pred[:, 0, 1:] = x[:, 0, :-1]
        pred[:, 1:, 0] = x[:, :-1, 0]
        a, b, c = x[:, 1:, :-1], x[:, :-1, 1:], x[:, :-1, :-1]
        # the median edge detector is a + b - c clipped to [min(a, b), max(a, b)]
        pred[:, 1:, 1:] = np.clip(a + b - c, np.minimum(a, b), np.maximum(a, b))
        r = ((x - pred) & 255).astype(np.uint8).view(np.int8).astype(np.int16)
        out[start:start + 4096] = np.where(r >= 0, 2 * r, -2 * r - 1)
    return out


def med_decode(residuals: np.ndarray) -> np.ndarray:
    """Inverse of `med_encode`: uint8 N x H x W residuals to the images.

    Vectorised over the images: a loop over the pixel positions, each step on all N images.
    """
    residuals = np.asarray(residuals)
    if residuals.dtype != np.uint8 or residuals.ndim != 3:
        raise ValueError(
            f"med1 residuals must be uint8 N x H x W, got {residuals.dtype} {residuals.shape}"
        )
    n, h, w = residuals.shape
    # un-zigzag to (pixel - prediction) mod 256, laid out H x W x N: each pixel position
    # of all the images is one contiguous vector
    z = np.ascontiguousarray(residuals.transpose(1, 2, 0))
    r = np.where(z & 1, 255 - (z >> 1), z >> 1).astype(np.uint8, copy=False)
    del z
    out = np.empty((h, w, n), dtype=np.uint8)
    if h and w:
        # the top row and the left column are running sums (mod 256) of their residuals
        np.cumsum(r[0], axis=0, dtype=np.uint8, out=out[0])
        np.cumsum(r[:, 0], axis=0, dtype=np.uint8, out=out[:, 0])
    lo, hi, p = (np.empty(n, dtype=np.int16) for _ in range(3))
    for y in range(1, h):
        up = out[y - 1].astype(np.int16)  # W x N
        grad = up[1:] - up[:-1]  # b - c at each x >= 1
        ry = r[y].astype(np.int16)
        a = out[y, 0].astype(np.int16)
        for x in range(1, w):
            b = up[x]
            np.minimum(a, b, out=lo)
            np.maximum(a, b, out=hi)
            np.add(a, grad[x - 1], out=p)
            np.clip(p, lo, hi, out=p)
            p += ry[x]
            p &= 255
            a, p = p, a  # p (this pixel) becomes the next left; reuse a's buffer
            out[y, x] = a
    return np.ascontiguousarray(out.transpose(2, 0, 1))
