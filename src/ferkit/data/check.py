"""Data checks: per-split class counts, exact duplicates, label conflicts, split overlap.

`check_report` finds them (``ferkit data check PATH [--json]``); `format_check` prints them.
`warn_if_resplit` warns when a re-split folder dataset is evaluated as if it were the ICML
test set.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Sequence

import numpy as np

from .faceset import IMAGE_SIZE, SPLITS, FaceSet

#: How many example rows / groups a report lists (the counts are always complete).
MAX_EXAMPLES = 10
#: A reader's skip message: ``FILE, line N: REASON`` (a CSV row) or ``FILE: REASON`` (an image).
SKIPPED = re.compile(r"(?P<file>.+?)(?:, line (?P<line>\d+))?: (?P<reason>.+)", re.DOTALL)


def skipped_entries(messages: Sequence[str]) -> list[dict]:
    """``info["skipped"]`` as dicts: ``file``, ``line`` (CSV rows only) and ``reason``."""
    entries = []
    for message in messages:
        m = SKIPPED.fullmatch(message)
        if m is None:  # not a reader's message: keep it whole
            entries.append({"file": None, "reason": message})
            continue
        entry = {"file": m["file"], "reason": m["reason"]}
        if m["line"]:
            entry["line"] = int(m["line"])
        entries.append(entry)
    return entries


def _image_groups(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each image the id of its group of byte-identical images, and each group's size."""
    n = len(images)
    flat = np.ascontiguousarray(images).reshape(n, -1)
    rows = flat.view(np.dtype((np.void, flat.shape[1]))).ravel()
    _, inverse, counts = np.unique(rows, return_inverse=True, return_counts=True)
    return inverse.ravel(), counts


def check_report(faces: FaceSet) -> dict:
    """Counts and data problems of `faces`, as a JSON-able dict.

    Keys: ``num_images``; ``splits`` {split: {``total``, ``classes`` {name: count}, and
    ``unlabeled`` when some rows have label -1}}; ``distinct_images``; ``duplicate_groups``
    (groups of 2+ byte-identical images); ``duplicate_extra_copies`` (images beyond the first
    of each group); ``conflicting_label_groups`` (groups with 2+ different labels, -1
    ignored); ``cross_split_overlap`` {split: {earlier split: rows of split whose image is
    also in the earlier split}} in the order Training, PublicTest, PrivateTest, then other
    names; ``constant_images`` (all pixels equal); ``canonical_md5`` (bool, or None when not
    read from a CSV); ``layout``; plus ``source``, ``class_names`` and a few ``examples``
    (original row indices) of each problem. What the read left out: ``skipped`` (rows or
    images a ``skip_bad`` read dropped, see `skipped_entries`), ``ignored_files`` (non-image
    files in class folders; a few in ``examples``) and the reader's ``notes``. After
    `ferkit.data.load_ferplus`, ``ferplus`` {``votes``, ``dropped``, ``dropped_by_split``
    {split: {reason: rows}}}: the class table is then of the FER+ majority labels.
    """
    n = len(faces)
    names = list(faces.class_names)
    split_names = faces.split_names
    report: dict = {
        "source": faces.source,
        "layout": faces.info.get("layout"),
        "canonical_md5": faces.info.get("canonical"),
        "class_names": names,
        "num_images": n,
        "splits": {},
        "skipped": skipped_entries(faces.info.get("skipped", [])),
        "ignored_files": len(faces.info.get("ignored", [])),
        "notes": list(faces.info.get("notes", [])),
    }
    if "ferplus" in faces.info:
        report["ferplus"] = {
            "votes": faces.info["ferplus"],
            "dropped": faces.info.get("ferplus_dropped"),
            "dropped_by_split": faces.info.get("ferplus_dropped_by_split", {}),
        }
    for split in split_names:
        labels = faces.labels[faces.splits == split]
        counts = np.bincount(labels[labels >= 0], minlength=len(names))
        entry = {
            "total": len(labels),
            "classes": {c: int(k) for c, k in zip(names, counts, strict=True)},
        }
        if (labels < 0).any():
            entry["unlabeled"] = int((labels < 0).sum())
        report["splits"][split] = entry

    if n:
        group, sizes = _image_groups(faces.images)
    else:
        group, sizes = np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    num_groups = len(sizes)
    dup = sizes >= 2
    report["distinct_images"] = int(num_groups)
    report["duplicate_groups"] = int(dup.sum())
    report["duplicate_extra_copies"] = int((sizes[dup] - 1).sum())

    # groups with two or more different (known) labels
    labeled = faces.labels >= 0
    pairs = np.unique(np.stack([group[labeled], faces.labels[labeled]], axis=1), axis=0)
    labels_per_group = np.bincount(pairs[:, 0], minlength=num_groups) if len(pairs) else sizes * 0
    conflicting = np.flatnonzero(labels_per_group >= 2)
    report["conflicting_label_groups"] = int(len(conflicting))

    # rows of each split whose image also appears in an earlier split
    present = np.zeros((len(split_names), num_groups), dtype=bool)
    for i, split in enumerate(split_names):
        present[i, group[faces.splits == split]] = True
    overlap: dict = {}
    for i, split in enumerate(split_names):
        rows = group[faces.splits == split]
        overlap[split] = {split_names[j]: int(present[j, rows].sum()) for j in range(i)}
    report["cross_split_overlap"] = overlap

    flat = faces.images.reshape(n, IMAGE_SIZE * IMAGE_SIZE)
    constant = np.flatnonzero((flat == flat[:, :1]).all(axis=1)) if n else np.zeros(0, int)
    report["constant_images"] = int(len(constant))

    index = faces.index
    order = np.argsort(group, kind="stable")
    bounds = np.searchsorted(group[order], np.arange(num_groups + 1))

    def members(g: int) -> np.ndarray:  # row positions of group g
        return order[bounds[g] : bounds[g + 1]]

    report["examples"] = {
        "duplicate_groups": [
            index[members(g)].tolist() for g in np.flatnonzero(dup)[:MAX_EXAMPLES]
        ],
        "conflicting_label_groups": [
            [[int(index[r]), int(faces.labels[r])] for r in members(g)]
            for g in conflicting[:MAX_EXAMPLES]
        ],
        "constant_images": index[constant[:MAX_EXAMPLES]].tolist(),
        "ignored_files": list(faces.info.get("ignored", [])[:MAX_EXAMPLES]),
    }
    return report


def format_check(report: dict) -> str:
    """`check_report` as plain text: a table per split and class, then the problem counts."""
    names = report["class_names"]
    splits = report["splits"]
    canonical = {True: "yes", False: "no", None: "n/a (not read from an ICML-style CSV)"}[
        report.get("canonical_md5")
    ]
    lines = [
        f"source: {report.get('source') or '?'}",
        f"layout: {report.get('layout') or '?'}    canonical FER2013 md5: {canonical}",
        "",
    ]
    has_unlabeled = any("unlabeled" in s for s in splits.values())
    header = ["split", "total", *names] + (["unlabeled"] if has_unlabeled else [])
    table = [header]
    totals = np.zeros(len(names) + 1 + has_unlabeled, dtype=np.int64)
    for split, entry in splits.items():
        row = [entry["total"], *(entry["classes"][c] for c in names)]
        if has_unlabeled:
            row.append(entry.get("unlabeled", 0))
        totals += row
        table.append([split, *row])
    if len(splits) > 1:
        table.append(["all splits", *totals.tolist()])
    widths = [
        max(len(f"{r[i]:,}" if isinstance(r[i], int) else str(r[i])) for r in table)
        for i in range(len(header))
    ]
    for r in table:
        cells = [f"{v:,}" if isinstance(v, int) else str(v) for v in r]
        lines.append(
            "  ".join(
                c.ljust(w) if i == 0 else c.rjust(w)
                for i, (c, w) in enumerate(zip(cells, widths, strict=True))
            )
        )
    lines += [
        "",
        f"images: {report['num_images']:,}, distinct: {report['distinct_images']:,}",
        f"exact duplicates: {report['duplicate_groups']:,} groups of 2+ identical images, "
        f"{report['duplicate_extra_copies']:,} extra copies",
        f"duplicate groups with conflicting labels: {report['conflicting_label_groups']:,}",
        f"constant images (all pixels equal): {report['constant_images']:,}",
    ]
    overlaps = [
        f"{split} rows also in {earlier}: {k:,}"
        for split, d in report["cross_split_overlap"].items()
        for earlier, k in d.items()
    ]
    if overlaps:
        lines.append("cross-split overlap: " + "; ".join(overlaps))
    examples = report.get("examples", {})
    if examples.get("conflicting_label_groups"):
        shown = ", ".join(
            "[" + " ".join(f"{i}:{names[lab]}" for i, lab in g) + "]"
            for g in examples["conflicting_label_groups"][:3]
        )
        lines.append(f"  e.g. rows:labels {shown}")
    if examples.get("constant_images"):
        lines.append(f"  constant image rows, e.g. {examples['constant_images'][:MAX_EXAMPLES]}")
    lines += _left_out_lines(report)
    return "\n".join(lines)


def _left_out_lines(report: dict) -> list[str]:
    """What the read left out or remarked on (FER+ drops, skipped, ignored, notes)."""
    lines = []
    if "ferplus" in report:
        plus = report["ferplus"]
        lines.append(
            f"FER+ majority labels from {plus['votes']}: {plus['dropped'] or 0:,} rows dropped"
        )
        lines += [
            f"  {split}: {sum(d.values()):,} ("
            + ", ".join(f"{reason} {k:,}" for reason, k in d.items()) + ")"
            for split, d in plus["dropped_by_split"].items()
        ]
    if report.get("skipped"):
        lines.append(f"skipped as malformed (--skip-bad): {len(report['skipped']):,}")
        for e in report["skipped"][:MAX_EXAMPLES]:
            where = f"{e['file']}, line {e['line']}" if "line" in e else e["file"] or "?"
            lines.append(f"  {where}: {e['reason']}")
    if report.get("ignored_files"):
        shown = report.get("examples", {}).get("ignored_files", [])
        lines.append(f"non-image files ignored: {report['ignored_files']:,}")
        lines += [f"  {path}" for path in shown]
    lines += [f"note: {note}" for note in report.get("notes", [])]
    return lines


def warn_if_resplit(
    faces: FaceSet, split: str | Sequence[str], *, quiet: bool = False, file=None
) -> str | None:
    """The warning when `split` of `faces` is evaluated as if it were the ICML test set.

    A ``validation`` split (train/ + validation/ folders: a random re-split that mixes the ICML
    test images into training), ``all`` (class folders) or any other non-ICML split name is
    not the ICML PrivateTest: numbers on it are not comparable with published FER2013 results.
    Returns the message (also printed to `file`, default stderr, unless `quiet`), else None.
    """
    names = [split] if isinstance(split, str) else list(split)
    flagged = [s for s in names if s not in SPLITS]
    if not flagged:
        return None
    if "validation" in flagged and faces.info.get("resplit_warning"):
        reason = faces.info["resplit_warning"]
    elif "all" in flagged:
        reason = (
            "split 'all' is every image of a class-folder dataset, possibly including images "
            "a model was trained on; it is not the ICML PrivateTest, so its numbers are not "
            "comparable with published FER2013 results"
        )
    else:
        reason = (
            f"split {flagged[0]!r} is not an ICML FER2013 split (Training, PublicTest, "
            "PrivateTest), so its numbers are not comparable with published FER2013 results"
        )
    message = f"ferkit: WARNING: evaluating on {', '.join(flagged)} of {faces.source or 'this data'}: {reason}"
    if not quiet:
        print(message, file=file or sys.stderr)
    return message


__all__ = ["check_report", "format_check", "warn_if_resplit"]
