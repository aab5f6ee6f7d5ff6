"""FER+ (Barsoum et al., 2016): ten-annotator re-labelling of the FER2013 images.

``fer2013new.csv`` has one row per FER2013 row, in the same order, with the columns
``Usage, Image name, neutral, happiness, surprise, sadness, anger, disgust, fear, contempt,
unknown, NF``. It is joined to the images by ROW INDEX: a few image names repeat and the
non-face rows have none. It may be gzip/xz/bz2-compressed (``fer2013new.csv.gz``). Only data
whose ``index`` is the ICML file's row number (`FaceSet.icml_rows`) can be joined.
"""

from __future__ import annotations

import csv
import io
import lzma
import os
from pathlib import Path

import numpy as np

from .faceset import DataError, FaceSet
from .fer2013 import COMPRESSED_OPENERS

FERPLUS_CLASSES: tuple[str, ...] = (
    "neutral", "happiness", "surprise", "sadness", "anger", "disgust", "fear", "contempt",
)
VOTE_COLUMNS = (*FERPLUS_CLASSES, "unknown", "NF")
#: Why the majority rule drops a row (``info["ferplus_dropped_by_split"]``).
DROP_REASONS = ("no majority", "unknown", "not a face")
ROW_SOURCES = (
    "the original fer2013.csv (or icml_face_data.csv, Kaggle's train.csv + test.csv, or a "
    "ferkit pack made from one of them)"
)


def read_ferplus_votes(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """The N x 10 vote counts and the N Usage strings of ``fer2013new.csv`` (or .gz/.xz/.bz2)."""
    path = Path(path)
    opener = COMPRESSED_OPENERS.get(path.suffix.lower(), open)
    try:
        with opener(path, "rb") as f:
            text = f.read().decode("utf-8-sig")
        rows = list(csv.reader(io.StringIO(text, newline="")))
    except (OSError, EOFError, lzma.LZMAError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read FER+ votes ({exc})") from None
    if not rows:
        raise DataError(f"{path}: empty file, expected the FER+ header")
    header = [h.strip() for h in rows[0]]
    missing = [c for c in ("Usage", *VOTE_COLUMNS) if c not in header]
    if missing:
        raise DataError(f"{path}: FER+ columns {missing} missing from header {header}")
    cols = [header.index(c) for c in VOTE_COLUMNS]
    use = header.index("Usage")
    votes = np.zeros((len(rows) - 1, len(VOTE_COLUMNS)), dtype=np.float32)
    usage = []
    for i, row in enumerate(rows[1:]):
        try:
            votes[i] = [int(row[c]) for c in cols]
        except (ValueError, IndexError):
            raise DataError(
                f"{path}, line {i + 2}: expected integer votes in {list(VOTE_COLUMNS)}"
            ) from None
        usage.append(row[use].strip())
    return votes, np.array(usage)


def without_outliers(votes: np.ndarray) -> np.ndarray:
    """The votes without single ones: the FER+ reference code takes a class that one
    annotator chose for an outlier, for its majority rule and its probability targets."""
    return np.where(votes <= 1, 0, votes)


def drop_reasons(votes: np.ndarray) -> np.ndarray:
    """For each row, why `majority_targets` drops it (a `DROP_REASONS` entry), or "" where
    it keeps it: the majority rule itself."""
    v = without_outliers(votes)
    top = v.argmax(axis=1)
    majority = v.max(axis=1) > 0.5 * v.sum(axis=1)
    n = len(FERPLUS_CLASSES)
    return np.select(
        [~majority, top == n, top == n + 1], list(DROP_REASONS), default=""
    )


def majority_targets(votes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The FER+ paper's majority-vote rule, as in its reference code (``ferplus.py``).

    Votes of a single annotator are dropped as outliers; a row keeps the label with more
    than half of the remaining votes; rows without such a majority, or whose majority is
    unknown / not-a-face, are dropped. Returns ``(labels, keep)`` (labels of dropped rows -1).
    """
    keep = drop_reasons(votes) == ""
    top = without_outliers(votes).argmax(axis=1)
    return np.where(keep, top, -1), keep


def joined_votes(faces: FaceSet, votes_csv: str | Path) -> np.ndarray:
    """The N x 10 vote counts (`VOTE_COLUMNS`) of each of ``faces``' rows, joined by their
    original row index, after checking that the file's Usage agrees with their splits."""
    if not faces.icml_rows:
        raise DataError(_not_icml_rows(faces, votes_csv))
    votes, usage = read_ferplus_votes(votes_csv)
    file_rows = faces.info.get("file_rows")
    if file_rows is not None and file_rows != len(votes):
        # e.g. a CSV of some of the rows (with their Usage): numbered 0..K-1, not as in the
        # ICML file, and a sample of Training rows would even pass the Usage check
        raise DataError(
            f"{votes_csv}: {len(votes)} rows, but {faces.source or 'the data'} was read from a "
            f"file of {file_rows} rows: FER+ joins only to the whole ICML file, row for row. "
            f"Use {ROW_SOURCES}"
        )
    if faces.index.max(initial=-1) >= len(votes):
        raise DataError(
            f"{votes_csv}: {len(votes)} rows, but the images go up to row {faces.index.max()}: "
            "is this the fer2013new.csv of the same FER2013 file?"
        )
    rows = faces.index
    known = np.isin(faces.splits, ("Training", "PublicTest", "PrivateTest"))
    if np.any(usage[rows][known] != faces.splits[known]):
        raise DataError(f"{votes_csv}: Usage disagrees with the images' splits; rows misaligned")
    return votes[rows]


def _not_icml_rows(faces: FaceSet, votes_csv: str | Path) -> str:
    """Why FER+ cannot be joined to `faces`, and what to use instead."""
    layout = faces.info.get("layout") or ""
    if "folders" in layout:
        # the split sizes of an ICML image-folder copy match, so the Usage check would pass
        why = (
            f"image folders ({layout}) do not keep those row numbers: ferkit numbers their "
            "images by split and class (and the <n> of the public copies' PublicTest_<n>.jpg "
            "is not the row either)"
        )
    else:
        why = (
            f"this data{f' ({layout})' if layout else ''} is not known to keep them (built or "
            "subset without its original index, or read from a layout that has none)"
        )
    return (
        f"{faces.source or 'data'}: FER+ votes ({Path(votes_csv).name}) are joined to FER2013 "
        f"by the row number of the ICML fer2013.csv, and {why}; joining anyway would give "
        f"wrong labels silently. Use {ROW_SOURCES}"
    )


def load_ferplus(faces: FaceSet, votes_csv: str | Path) -> FaceSet:
    """FER+ labels for the FER2013 `faces`, joined by their original row index.

    Returns the rows the majority rule keeps, with 8 classes (contempt included),
    ``labels`` the majority label and ``soft_labels`` the vote distribution over the 8
    emotions after the outlier (single-vote) removal. (The FER+ reference code's
    cross-entropy mode further keeps at most the three top emotions; ferkit keeps them all.)
    """
    votes = joined_votes(faces, votes_csv)
    labels, keep = majority_targets(votes)
    emotion_votes = without_outliers(votes)[:, : len(FERPLUS_CLASSES)]
    soft = emotion_votes / np.maximum(emotion_votes.sum(axis=1, keepdims=True), 1)
    out = faces.select(keep)
    out.labels = labels[keep]
    out.soft_labels = soft[keep].astype(np.float32)
    out.class_names = FERPLUS_CLASSES
    reasons = drop_reasons(votes)
    out.info = {
        **faces.info,
        "ferplus": str(votes_csv),
        "ferplus_dropped": int((~keep).sum()),
        # for `ferkit data check --ferplus`: what the majority rule left out, per split
        "ferplus_dropped_by_split": {
            split: {r: int((reasons[faces.splits == split] == r).sum()) for r in DROP_REASONS}
            for split in faces.split_names
        },
    }
    return out


def find_ferplus_votes(name: str | os.PathLike, data: str | os.PathLike) -> Path:
    """The FER+ votes file: `name` as given, else, for a bare file name (no folder in it),
    beside the data (in it, if a folder, or in its ``fer2013`` folder).

    Where none of those is there, a compressed copy in the same places is taken
    (``fer2013new.csv.gz``, or .xz / .lzma / .bz2), in the same order. A path with a folder
    in it (``typo/fer2013new.csv``, or an absolute one) is looked for there only: where it is
    not there, a DataError names it (not a file of the same name elsewhere).
    """
    votes, data = Path(name), Path(data)
    explicit = votes.is_absolute() or votes.parent != Path(".")
    if explicit or votes.exists():
        places = [votes]
    else:
        places = [votes] + [
            folder / votes.name for folder in (data, data / "fer2013", data.parent)
            if folder.is_dir()
        ]
    suffixes = [""] if votes.suffix.lower() in COMPRESSED_OPENERS else ["", *COMPRESSED_OPENERS]
    for suffix in suffixes:
        for place in places:
            if (path := place.with_name(place.name + suffix)).exists():
                return path
    if explicit:
        raise DataError(f"FER+ votes {votes}: no such file (ferplus_csv / --ferplus; a bare file "
                        "name, such as fer2013new.csv, is also looked for beside the data)")
    raise DataError(
        f"FER+ votes {votes.name} not found beside {data}: give its path (ferplus_csv / --ferplus)"
    )
