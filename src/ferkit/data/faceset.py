"""`FaceSet`: the in-memory form every reader produces and every consumer takes."""

from __future__ import annotations

import io
import json
import lzma
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

FER2013_CLASSES: tuple[str, ...] = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
SPLITS: tuple[str, ...] = ("Training", "PublicTest", "PrivateTest")
IMAGE_SIZE = 48
#: File extensions read as images (folder datasets, `ferkit predict` on folders).
IMAGE_EXTENSIONS = frozenset(
    ".jpg .jpeg .jpe .jfif .png .bmp .gif .tif .tiff .webp .ppm .pgm .pbm .pnm".split()
)
PACK_MAGIC = "ferkit-pack-1"


class DataError(ValueError):
    """Bad or unreadable input data; the message names the file, row or path."""


@dataclass
class FaceSet:
    """Gray 48 x 48 face images with labels and the split of each row.

    - ``images``: uint8, N x 48 x 48.
    - ``labels``: int64, N; -1 where a row has no label (e.g. Kaggle's test.csv).
    - ``splits``: N strings (``Training``, ``PublicTest``, ``PrivateTest``, or a folder's own
      split names such as ``validation``).
    - ``index``: int64, N; the row number in the original file (FER+ joins on it).
    - ``soft_labels``: optional float32 N x C target distributions (FER+ votes).
    - ``source``: where it came from; ``info``: reader notes (md5, layout, warnings).
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
        n = len(self.images)
        if self.images.dtype != np.uint8 or self.images.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE):
            raise DataError(
                f"images must be uint8 N x 48 x 48, got {self.images.dtype} {self.images.shape}"
            )
        self.labels = np.asarray(self.labels, dtype=np.int64)
        self.splits = np.asarray(self.splits, dtype=str)
        self.class_names = tuple(self.class_names)
        self.index = np.arange(n, dtype=np.int64) if self.index is None else np.asarray(
            self.index, dtype=np.int64
        )
        for name, arr in (("labels", self.labels), ("splits", self.splits), ("index", self.index)):
            if len(arr) != n:
                raise DataError(f"{name} has {len(arr)} rows, images {n}")
        if self.soft_labels is not None and self.soft_labels.shape != (n, len(self.class_names)):
            raise DataError(
                f"soft_labels must be N x {len(self.class_names)}, got {self.soft_labels.shape}"
            )
        if n and self.labels.min() < -1:
            raise DataError(f"label {self.labels.min()} is negative (-1 marks an unlabelled row)")
        if n and self.labels.max(initial=-1) >= len(self.class_names):
            raise DataError(f"label {self.labels.max()} out of range for {len(self.class_names)} classes")

    def __len__(self) -> int:
        return len(self.images)

    def __repr__(self) -> str:
        counts = {s: int((self.splits == s).sum()) for s in self.split_names}
        return f"FaceSet({len(self)} images, splits={counts}, classes={list(self.class_names)})"

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
    def from_arrays(cls, z, source: str) -> FaceSet:
        """Inverse of `to_arrays` (`z`: an opened .npz)."""
        meta = json.loads(str(z["meta"]))
        return cls(
            images=z["images"],
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
        """Write an lzma-compressed pack that `FaceSet.load` reads; returns the path."""
        path = Path(path)
        buf = io.BytesIO()
        # the file name only: a pack must not carry the paths of the machine that made it
        np.savez(buf, **self.to_arrays(magic=PACK_MAGIC, source=Path(self.source).name))
        filters = [
            {"id": lzma.FILTER_DELTA, "dist": 1},
            {"id": lzma.FILTER_LZMA2, "preset": preset | lzma.PRESET_EXTREME},
        ]
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_bytes(lzma.compress(buf.getvalue(), format=lzma.FORMAT_XZ, filters=filters))
        tmp.replace(path)
        return path

    @classmethod
    def from_pack(cls, path: str | os.PathLike) -> FaceSet:
        path = Path(path)
        try:
            raw = lzma.decompress(path.read_bytes())
            with np.load(io.BytesIO(raw), allow_pickle=False) as z:
                meta = json.loads(str(z["meta"]))
                if meta.get("magic") != PACK_MAGIC:
                    raise DataError(f"{path}: not a ferkit pack (magic {meta.get('magic')!r})")
                faces = cls.from_arrays(z, str(path))
        except (lzma.LZMAError, OSError, KeyError, ValueError) as exc:
            if isinstance(exc, DataError):
                raise
            raise DataError(f"{path}: unreadable ferkit pack ({exc})") from None
        faces.info["packed_from"] = Path(meta.get("source", "")).name
        return faces

    @classmethod
    def load(cls, path: str | os.PathLike, **kwargs) -> FaceSet:
        """Read any supported layout (see `ferkit.data.load`)."""
        from .readers import load

        return load(path, **kwargs)
