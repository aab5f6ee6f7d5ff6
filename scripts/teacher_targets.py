"""Soft targets from a teacher model, for distillation (`targets: soft`).

    PYTHONPATH=src python scripts/teacher_targets.py .pack/fer2013-train-val.fkpack \
        --teacher mba_cnn-fer2013 --tta ten-crop --hard 0.5 --out .pack/fer2013-distill.fkpack

Writes a pack of the same rows whose ``soft_labels`` are, for the training split(s),
``hard * one-hot(label) + (1 - hard) * teacher probabilities`` (the teacher scores each
training face with TTA: its averaged views are what a single-crop student learns from), and
one-hot labels elsewhere (validation scores hard labels; no teacher output of any other
split is written). Train on it with ``--set targets=soft``. PrivateTest rows are refused:
pack Training and PublicTest only (``ferkit data pack ... --splits Training,PublicTest``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from ferkit.argtypes import TTA_MODES
from ferkit.data import DataError, load
from ferkit.evaluate import predict_probs
from ferkit.fileio import no_folders_left_on_failure, output_file
from ferkit.weights import load_model


def teacher_targets(faces, teacher, tta: str = "ten-crop", hard: float = 0.5,
                    splits: tuple[str, ...] = ("Training",), backend: str = "torch",
                    progress: bool = False) -> tuple[np.ndarray, float]:
    """float32 N x C soft targets for ``faces`` (see the module's description), and the
    share of the ``splits`` rows whose label is the teacher's own top class."""
    if not 0.0 <= hard <= 1.0:
        raise ValueError(f"hard {hard}: expected a weight in [0, 1]")
    model, meta = teacher
    if list(meta["class_names"]) != list(faces.class_names):
        raise DataError(f"the teacher's classes {list(meta['class_names'])} differ from the "
                        f"data's {list(faces.class_names)}")
    labels = np.asarray(faces.labels)
    if (labels < 0).any():
        raise DataError("the data has unlabelled rows: a soft target needs each row's label")
    targets = np.eye(len(faces.class_names), dtype=np.float32)[labels]
    rows = np.flatnonzero(np.isin(faces.splits, splits))
    if not len(rows):
        raise DataError(f"the data has no {', '.join(splits)} rows")
    if backend == "onnx":
        from ferkit.export import onnx_backend

        model, _ = onnx_backend((model, meta))
    probs = predict_probs(model, faces.images[rows], tta=tta, progress=progress)
    targets[rows] = hard * targets[rows] + (1.0 - hard) * probs.astype(np.float32)
    return targets, float((probs.argmax(1) == labels[rows]).mean())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data", help="a dataset without PrivateTest (e.g. a Training+PublicTest pack)")
    ap.add_argument("--teacher", default="mba_cnn-fer2013",
                    help="shipped weights name or checkpoint (default: mba_cnn-fer2013)")
    ap.add_argument("--tta", default="ten-crop", choices=TTA_MODES)
    ap.add_argument("--hard", type=float, default=0.5,
                    help="weight of the hard label in each target (default 0.5)")
    ap.add_argument("--splits", default="Training", help="splits given teacher targets")
    ap.add_argument("--backend", default="torch", choices=("torch", "onnx"))
    ap.add_argument("--out", required=True, help="the pack to write (.fkpack)")
    args = ap.parse_args(argv)
    try:
        with no_folders_left_on_failure(files=[args.out]):
            out = output_file(args.out, "--out", [args.data])
            faces = load(args.data)
            if "PrivateTest" in set(faces.splits.tolist()):
                raise DataError(f"{args.data} holds PrivateTest rows: the test split stays out of "
                                "training data; pack Training and PublicTest only")
            splits = tuple(s.strip() for s in args.splits.split(","))
            targets, agree = teacher_targets(faces, load_model(args.teacher), args.tta, args.hard,
                                             splits, args.backend, progress=sys.stderr.isatty())
    except (DataError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    faces.soft_labels = targets
    faces.info = {**faces.info, "soft_labels": f"teacher {Path(str(args.teacher)).name}, TTA "
                  f"{args.tta}, hard weight {args.hard:g}, splits {', '.join(splits)}"}
    faces.save_pack(out)
    print(f"wrote {out}: {len(faces):,} rows; the teacher ({args.tta}) agrees with the label "
          f"on {100 * agree:.2f}% of the {', '.join(splits)} rows")
    return 0


if __name__ == "__main__":
    sys.exit(main())
