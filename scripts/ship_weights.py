"""Ship a trained checkpoint as the package's weights, with its test numbers.

    PYTHONPATH=src python scripts/ship_weights.py runs/cpu/best --data fer2013.csv.gz \
        --name mba_cnn-fer2013 [--ferplus fer2013new.csv]

Scores PrivateTest once per TTA mode (none, flip, ten-crop), writes
``src/ferkit/weights/NAME.safetensors`` (fp16) + ``NAME.json`` (metadata with the test
metrics), the confusion matrix and reliability PNGs under ``docs/NAME/`` and prints the
numbers as Markdown for the model card.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path, PureWindowsPath

import torch

from ferkit.checkpoint import load_checkpoint, save_checkpoint
from ferkit.data import DataError
from ferkit.evaluate import TTA_MODES, evaluate
from ferkit.metrics import plot_confusion_matrix, plot_reliability

ROOT = Path(__file__).resolve().parent.parent


def strip_paths(obj):
    """File names instead of paths (absolute or relative): shipped files must not carry a
    machine's paths.

    A string is taken for a path when it holds a path separator (``/`` or ``\\``) or starts
    with ``~``, and is not a URL; it is replaced by its last part (``.pack/fer2013new.csv``
    and ``runs/gpu/x/f.csv`` become ``fer2013new.csv`` and ``f.csv``). Plain names (a
    recipe, the shipped weights' name, a file name) have no separator and are kept.
    """
    if isinstance(obj, dict):
        return {k: strip_paths(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [strip_paths(v) for v in obj]
    if isinstance(obj, str) and "://" not in obj and (
        "/" in obj or "\\" in obj or obj.startswith("~")
    ):
        return PureWindowsPath(obj).name  # splits at both / and \\
    return obj


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint", help="the checkpoint to ship (e.g. runs/best/best-fp16)")
    ap.add_argument("--data", required=True, help="FER2013 csv(.gz), folder or pack")
    ap.add_argument("--name", required=True,
                    help="the weights' name (letters, digits, '.', '_', '-'), e.g. mba_cnn-fer2013")
    ap.add_argument("--ferplus", default=None, help="fer2013new.csv (FER+ weights)")
    ap.add_argument("--tta", nargs="+", default=list(TTA_MODES), choices=TTA_MODES,
                    help="TTA modes to score (none is always included)")
    args = ap.parse_args(argv)
    # every check before the scoring, which takes minutes
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", args.name):
        ap.error(f"--name {args.name!r}: use letters, digits, '.', '_' and '-' (no folders)")
    for option, path in (("--data", args.data), ("--ferplus", args.ferplus)):
        if path is not None and not Path(path).exists():
            ap.error(f"{option} {path}: no such file or folder")
    try:
        model, meta = load_checkpoint(args.checkpoint)
    except (FileNotFoundError, ValueError) as exc:
        ap.error(f"checkpoint {args.checkpoint}: {exc}")
    modes = ["none", *[m for m in args.tta if m != "none"]]

    try:
        reports = {
            tta: evaluate(args.checkpoint, args.data, "PrivateTest", tta, "cpu",
                          ferplus=args.ferplus, progress=False)
            for tta in modes
        }
    except DataError as exc:
        raise SystemExit(f"error: {exc}") from None
    meta["test_metrics"] = {
        tta: {k: r[k] for k in ("split", "num_samples", "accuracy", "macro_f1", "ece")}
        for tta, r in reports.items()
    }
    meta["test_metrics"]["per_class_single_crop"] = reports["none"]["per_class"]
    meta["shipped_from"] = Path(args.checkpoint).name
    meta = strip_paths(meta)
    out = ROOT / "src" / "ferkit" / "weights" / args.name
    save_checkpoint(model, out, meta, dtype=torch.float16)

    docs = ROOT / "docs" / args.name
    docs.mkdir(parents=True, exist_ok=True)
    single = reports["none"]
    plot_confusion_matrix(single, docs / "confusion-privatetest.png",
                          title=f"{args.name}: PrivateTest, single crop")
    plot_reliability(single, docs / "reliability-privatetest.png")
    (docs / "privatetest.json").write_text(json.dumps(strip_paths(reports), indent=2))

    # the shipped fp16 weights must score what the card says
    shipped = evaluate(out, args.data, "PrivateTest", "none", "cpu", ferplus=args.ferplus,
                       progress=False)
    print(f"fp16 shipped weights, single crop: {100 * shipped['accuracy']:.2f}%")
    print("| TTA | accuracy | macro-F1 | ECE |\n|---|---|---|---|")
    for tta, r in reports.items():
        print(f"| {tta} | {100 * r['accuracy']:.2f}% | {100 * r['macro_f1']:.2f}% | "
              f"{r['ece']:.3f} |")
    print("\n| class | precision | recall | F1 | support |\n|---|---|---|---|---|")
    for name, c in single["per_class"].items():
        print(f"| {name} | {c['precision']:.3f} | {c['recall']:.3f} | {c['f1']:.3f} | "
              f"{c['support']} |")


if __name__ == "__main__":
    main()
