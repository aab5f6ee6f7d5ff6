"""Readers for the FER2013 CSV layouts.

- ICML 2013 ``fer2013.csv`` (``emotion,pixels,Usage``), plain, ``.gz`` or ``.xz``.
- ``icml_face_data.csv`` (``emotion, Usage, pixels``: same data, other column order, spaces).
- Kaggle ``train.csv`` (``emotion,pixels``: the Training rows) and ``test.csv`` (``pixels``
  only: PublicTest then PrivateTest rows, no labels).
"""

from __future__ import annotations

import bz2
import csv
import gzip
import hashlib
import lzma
import re
import warnings
from pathlib import Path

import numpy as np

from .faceset import FER2013_CLASSES, IMAGE_SIZE, SPLITS, DataError, FaceSet

#: md5 of the original, decompressed ICML ``fer2013.csv`` (the one torchvision checks).
FER2013_MD5 = "f8428a1edbd21e88f42c73edd2a14f95"
FER2013_URL_HINT = (
    "FER2013 comes from the ICML 2013 'Challenges in Representation Learning: Facial "
    "Expression Recognition' challenge on Kaggle (fer2013.tar.gz holds fer2013.csv)"
)
NUM_PIXELS = IMAGE_SIZE * IMAGE_SIZE
#: How a compressed data file may end (``fer2013.csv.gz``, ``fer2013new.csv.xz``), with its
#: opener; anything else is read as it is.
COMPRESSED_OPENERS = {".gz": gzip.open, ".xz": lzma.open, ".lzma": lzma.open, ".bz2": bz2.open}
#: Columns (lower case) that only a FER+ votes file (``fer2013new.csv``) has.
FERPLUS_MARKERS = frozenset({"contempt", "unknown", "nf"})
#: How many characters of a CSV header (or of one of its fields) messages show.
HEADER_SHOWN = 120
FIELD_SHOWN = 30
#: A field of whitespace-separated integers, ten or more: pixel values, not a column name.
_PIXEL_FIELD = re.compile(r"\s*[0-9]+(?:\s+[0-9]+){9,}\s*")


def shown_header(header: list[str]) -> str:
    """A CSV header as messages show it: each field and the whole cut to a readable length
    (a data row taken for the header would otherwise print thousands of pixel values)."""
    fields = [f if len(f) <= FIELD_SHOWN else f[: FIELD_SHOWN - 3] + "..." for f in header]
    text = repr(fields)
    if len(text) <= HEADER_SHOWN:
        return text
    return text[: HEADER_SHOWN - 4] + f"...] ({len(header)} fields)"


def _looks_like_data(header: list[str]) -> bool:
    """Whether a CSV's first line is a data row rather than a header: a field of pixel values,
    or only numbers and split names (e.g. ``0,...,Training``)."""
    fields = [f.strip() for f in header]
    if any(_PIXEL_FIELD.fullmatch(f) for f in fields):
        return True
    return any(f.isdigit() for f in fields) and all(f.isdigit() or f in SPLITS for f in fields)


def read_text(path: Path) -> tuple[str, str]:
    """The decompressed text of a (possibly .gz/.xz/.bz2) file and the md5 of its bytes."""
    opener = COMPRESSED_OPENERS.get(path.suffix.lower(), open)
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        raise DataError(f"{path}: no such file. {FER2013_URL_HINT}") from None
    except (OSError, EOFError, lzma.LZMAError) as exc:
        raise DataError(f"{path}: cannot read ({exc})") from None
    md5 = hashlib.md5(raw).hexdigest()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not a UTF-8 text CSV ({exc})") from None
    return text, md5


def parse_pixels(text: str, where: str) -> np.ndarray:
    """2304 space-separated integers in 0..255 -> uint8 48 x 48; `where` names the row."""
    # Fast path (about 5x faster than converting the tokens): any text numpy cannot read to
    # its end warns (DeprecationWarning, later ValueError) and takes the checked path below.
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", DeprecationWarning)
            values = np.fromstring(text, dtype=np.int64, sep=" ")
        if values.size == NUM_PIXELS and values.min() >= 0 and values.max() <= 255:
            return values.astype(np.uint8).reshape(IMAGE_SIZE, IMAGE_SIZE)
    except (DeprecationWarning, ValueError):
        pass
    tokens = text.split()
    if len(tokens) != NUM_PIXELS:
        raise DataError(f"{where}: expected {NUM_PIXELS} pixel values (48x48), got {len(tokens)}")
    # Only malformed rows get here, so plain Python is fast enough (and never overflows).
    bad = next((t for t in tokens if not re.fullmatch(r"[+-]?[0-9]+", t)), None)
    if bad is not None:
        raise DataError(f"{where}: pixel value {bad!r} is not an integer")
    ints = [int(t) for t in tokens]
    bad = next((v for v in ints if not 0 <= v <= 255), None)
    if bad is not None:
        raise DataError(f"{where}: pixel value {bad} outside 0..255")
    values = np.array(ints, dtype=np.int64)
    return values.astype(np.uint8).reshape(IMAGE_SIZE, IMAGE_SIZE)


def read_fer2013_csv(
    path: str | Path, skip_bad: bool = False, default_split: str | None = None
) -> FaceSet:
    """Read a FER2013-style CSV with any of the columns ``emotion``, ``pixels``, ``Usage``.

    Without a ``Usage`` column every row gets ``default_split`` (required then). Without an
    ``emotion`` column labels are -1. With ``skip_bad`` a malformed row is reported in
    ``info["skipped"]`` (and by the caller) instead of stopping the read.
    """
    path = Path(path)
    text, md5 = read_text(path)
    # A list of lines (endings kept, so quoted newlines survive) reads ~2x faster than StringIO.
    reader = csv.reader(text.splitlines(keepends=True))
    header = next(reader, None)
    if header is None or not any(h.strip() for h in header):
        raise DataError(f"{path}: empty file, expected a CSV header such as emotion,pixels,Usage")
    columns = {h.strip().lower(): i for i, h in enumerate(header)}
    if "pixels" not in columns and FERPLUS_MARKERS <= columns.keys():
        # a common mix-up: the FER+ file has no images, it labels fer2013.csv's rows
        raise DataError(
            f"{path}: a FER+ votes file (fer2013new.csv: 10 annotators' votes for each row of "
            "the ICML fer2013.csv), not images: join it to the original fer2013.csv by row "
            f"number, e.g. `ferkit data check fer2013.csv --ferplus {path.name}` (per-split "
            "FER+ class table), or ferplus_csv in a recipe / --ferplus for eval"
        )
    if "pixels" not in columns and _looks_like_data(header):
        raise DataError(
            f"{path}: the first line looks like a data row ({shown_header(header)}), not a "
            "header: the CSV needs a header line naming its columns, e.g. emotion,pixels,Usage "
            "(Kaggle's train.csv: emotion,pixels; its test.csv: pixels)"
        )
    if "pixels" not in columns:
        raise DataError(f"{path}: no 'pixels' column in header {shown_header(header)}")
    has_usage = "usage" in columns
    if not has_usage and default_split is None:
        raise DataError(
            f"{path}: no 'Usage' column in header {shown_header(header)} (for Kaggle's "
            "train.csv + test.csv, pass the folder holding both)"
        )
    col_pix, col_lab, col_use = columns["pixels"], columns.get("emotion"), columns.get("usage")
    width = len(header)

    images, labels, splits, index, skipped = [], [], [], [], []
    last_row = 1  # the last non-blank line: blank lines at the end are not rows
    for row_no, row in enumerate(reader, start=2):  # line 1 is the header
        if not row or (len(row) == 1 and not row[0].strip()):
            continue
        last_row = row_no
        where = f"{path}, line {row_no}"
        try:
            if len(row) != width:
                raise DataError(
                    f"{where}: expected {width} fields {shown_header(header)}, got {len(row)}"
                )
            img = parse_pixels(row[col_pix], where)
            label = -1
            if col_lab is not None:
                field = row[col_lab].strip()
                if not (field.isascii() and field.isdigit()) or int(field) >= len(FER2013_CLASSES):
                    raise DataError(f"{where}: emotion {field!r} is not an integer in 0..6")
                label = int(field)
            split = default_split
            if col_use is not None:
                split = row[col_use].strip()
                if split not in SPLITS:
                    raise DataError(f"{where}: Usage {split!r} is not one of {list(SPLITS)}")
        except DataError as exc:
            if not skip_bad:
                raise
            skipped.append(str(exc))
            continue
        images.append(img)
        labels.append(label)
        splits.append(split)
        index.append(row_no - 2)
    if not images:
        raise DataError(f"{path}: no data rows" + (f" ({len(skipped)} skipped)" if skipped else ""))
    order = [h.strip().lower() for h in header]
    layout = {
        ("emotion", "pixels", "usage"): "fer2013-csv",
        ("emotion", "usage", "pixels"): "icml_face_data-csv",
    }.get(tuple(order), "csv")
    info = {
        "layout": layout,
        "columns": [h.strip() for h in header],
        "md5": md5,
        "canonical": md5 == FER2013_MD5,
        # with its own Usage column a CSV is taken for the ICML file, row for row (FER+'s
        # Usage check catches most reordered copies); without one (Kaggle's test.csv) the
        # caller numbers the rows
        "icml_rows": has_usage,
        # rows in the file, good or not: FER+ joins only to a file of all of its rows
        "file_rows": last_row - 1,
    }
    if skipped:
        info["skipped"] = skipped
    return FaceSet(
        images=np.stack(images),
        labels=np.array(labels),
        splits=np.array(splits),
        index=np.array(index),
        source=str(path),
        info=info,
    )
