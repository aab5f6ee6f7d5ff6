"""`load(path)`: detect the layout of a FER dataset and read it, with a cache."""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

import numpy as np

from ..fileio import write_atomically
from .faceset import PACK_MAGIC, DataError, FaceSet
from .fer2013 import read_fer2013_csv

#: 2: FaceSets record ``icml_rows`` and ``notes`` (entries without them are re-read).
CACHE_VERSION = 2


def cache_dir() -> Path:
    """``$FERKIT_CACHE``, else ``$XDG_CACHE_HOME/ferkit``, else ``~/.cache/ferkit``."""
    if os.environ.get("FERKIT_CACHE"):
        return Path(os.environ["FERKIT_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "ferkit"


def _is_pack(path: Path) -> bool:
    with open(path, "rb") as f:
        head = f.read(6)
    if head != b"\xfd7zXZ\x00":
        return False
    # An .xz may also be a compressed CSV: a pack's payload is a zip (npz) archive.
    import lzma

    with lzma.open(path, "rb") as f:
        return f.read(2) == b"PK"


def _cache_key(path: Path, kwargs: dict) -> str:
    st = path.stat()
    ident = json.dumps(
        [CACHE_VERSION, str(path.resolve()), st.st_size, st.st_mtime_ns, kwargs], sort_keys=True
    )
    return hashlib.sha1(ident.encode()).hexdigest()[:20]


def _read_cached(path: Path, key: str) -> FaceSet | None:
    file = cache_dir() / f"{key}.npz"
    if not file.exists():
        return None
    try:
        with np.load(file, allow_pickle=False) as z:
            return FaceSet.from_arrays(z, str(path))
    except (OSError, ValueError, KeyError):
        return None  # a damaged cache entry is rebuilt


def _write_cache(faces: FaceSet, key: str) -> None:
    folder = cache_dir()
    try:
        arrays = faces.to_arrays()
        write_atomically(folder / f"{key}.npz", lambda tmp: np.savez(tmp, **arrays))
    except OSError as exc:  # a read-only home must not stop the read
        print(f"ferkit: cache not written to {folder} ({exc})", file=sys.stderr)


def load_csv(path: str | os.PathLike, *, skip_bad: bool = False, cache: bool = True) -> FaceSet:
    """One FER2013-style CSV, through the cache; skipped rows are in ``info["skipped"]``."""
    path = Path(path)
    key = _cache_key(path, {"skip_bad": skip_bad})
    if cache and (hit := _read_cached(path, key)) is not None:
        return hit
    faces = read_fer2013_csv(path, skip_bad=skip_bad)
    if cache:
        _write_cache(faces, key)
    return faces


def _other_rank() -> bool:
    """True in the processes of a multi-process run (torchrun) other than the first: every
    process reads the data, one reports on it."""
    return os.environ.get("RANK", "0") not in ("", "0")


def _report(faces: FaceSet, key: str, prefix: str, file) -> None:
    """Print each message of ``faces.info[key]`` after ``prefix``; to stderr (the default)
    once per run, by the first process."""
    if file is None and _other_rank():
        return
    for message in faces.info.get(key, []):
        print(f"ferkit: {prefix}{message}", file=file or sys.stderr)


def report_skipped(faces: FaceSet, file=None) -> None:
    """Print each row or image a ``skip_bad`` read left out (on every load, cached or not)."""
    _report(faces, "skipped", "skipped ", file)


def report_notes(faces: FaceSet, file=None) -> None:
    """Print the reader's one-line notes (``info["notes"]``: ignored files, class names)."""
    _report(faces, "notes", "note: ", file)


def load(path: str | os.PathLike, *, skip_bad: bool = False, cache: bool = True) -> FaceSet:
    """Read a FER dataset from `path`, whatever its layout.

    Accepted: a ferkit pack; FER2013 CSVs (``fer2013.csv`` plain/.gz/.xz,
    ``icml_face_data.csv``); a folder holding one of those or the other layouts that
    `ferkit.data.folders` reads. Parsed CSVs and image folders are cached (see `cache_dir`),
    keyed by path, size and modification time, never written beside the data. With
    ``skip_bad`` every row or image left out is printed to stderr (and in ``info["skipped"]``).
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file or folder")
    if path.is_dir():
        from .folders import load_folder

        faces = load_folder(path, skip_bad=skip_bad, cache=cache)
    elif _is_pack(path):
        return FaceSet.from_pack(path)
    else:
        faces = load_csv(path, skip_bad=skip_bad, cache=cache)
    report_notes(faces)
    report_skipped(faces)
    return faces


def faces_from(data: str | os.PathLike | FaceSet) -> tuple[FaceSet, str, Path]:
    """``(faces, name, folder)`` of a dataset path (read with `load`) or a `FaceSet` (as it
    is): the name messages and reports give it, and the folder a FER+ votes file named
    without a folder is looked for beside (the working folder for a FaceSet)."""
    if isinstance(data, FaceSet):
        return data, data_label(data), Path(".")
    if isinstance(data, (str, os.PathLike)):
        return load(data), data_label(data), Path(data)
    raise TypeError(f"data must be a dataset path or a FaceSet, not {type(data).__name__}")


def data_label(data: str | os.PathLike | FaceSet) -> str:
    """What messages and reports call a dataset: its path, or a FaceSet's source."""
    return (data.source or "<FaceSet>") if isinstance(data, FaceSet) else str(data)


__all__ = [
    "PACK_MAGIC",
    "cache_dir",
    "data_label",
    "faces_from",
    "load",
    "load_csv",
    "report_notes",
    "report_skipped",
]
