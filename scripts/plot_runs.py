"""Validation accuracy of several training runs against wall time and epochs, one PNG.

    PYTHONPATH=src python scripts/plot_runs.py docs/gpu-runs/*.metrics.jsonl \
        --out docs/gpu-runs/validation-curves.png [--title TEXT]

Each input is a run's ``metrics.jsonl`` (one JSON object per epoch, as `ferkit train`
writes it) or a run folder holding one; a run is named by its file name without
``.metrics.jsonl`` (or, for a file named ``metrics.jsonl``, by its folder). It also prints
a Markdown table per run: epochs, best validation accuracy and its epoch, the wall time at
which validation first reached ``--target`` (a fraction: the paper's 69.5% is the default
0.695), and the mean training images/s. ``--out`` without a suffix gets ``.png``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ferkit.metrics import _pyplot, _save, _series, _table


def log_file(path: Path) -> Path:
    """``path``, or ``path/metrics.jsonl`` for a run folder; one line for anything else."""
    if path.is_dir():
        if not (path / "metrics.jsonl").is_file():
            raise SystemExit(f"error: {path}: a folder without metrics.jsonl (not a run folder)")
        return path / "metrics.jsonl"
    if not path.exists():
        raise SystemExit(f"error: {path}: no such file or folder")
    return path


def read_log(path: Path) -> list[dict]:
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise SystemExit(f"error: {path}: unreadable ({exc})") from None
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise SystemExit(f"error: {path}:{number}: not a JSON object ({exc.msg})") from None
        if not isinstance(row, dict) or not isinstance(row.get("val_acc"), (int, float)):
            raise SystemExit(f"error: {path}:{number}: expected an object with a numeric val_acc")
        rows.append(row)
    if not rows:
        raise SystemExit(f"error: {path}: no epochs logged")
    return rows


def run_name(path: Path) -> str:
    if path.name == "metrics.jsonl":
        return path.parent.name
    return path.name.removesuffix(".metrics.jsonl").removesuffix(".jsonl")


def summary_row(name: str, rows: list[dict], target: float) -> list:
    best = max(rows, key=lambda r: r["val_acc"])
    reached = next((r for r in rows if r["val_acc"] >= target), None)
    to_target = (f"{reached['elapsed_s'] / 60:.1f} min (epoch {reached['epoch']})"
                 if reached and "elapsed_s" in reached else "not reached")
    rates = [r["images_per_s"] for r in rows if "images_per_s" in r]
    rate = f"{sum(rates) / len(rates):,.0f}" if rates else "-"
    best_text = f"{100 * best['val_acc']:.2f}% (epoch {best.get('epoch', '?')})"
    return [name, len(rows), best_text, to_target, rate]


def fraction(text: str) -> float:
    """``--target``: a fraction in (0, 1]; a percentage such as 69.5 is refused, not guessed."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(
            f"a fraction in (0, 1] (0.695 for 69.5%), not {text}")
    return value


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("logs", nargs="+", type=Path, help="metrics.jsonl files or run folders")
    ap.add_argument("--out", type=Path, required=True,
                    help="the PNG to write (.png is added to a name without a suffix)")
    ap.add_argument("--title", default="Validation accuracy (selection split) per run")
    ap.add_argument("--target", type=fraction, default=0.695,
                    help="validation accuracy whose first arrival is timed: a fraction in "
                         "(0, 1], e.g. 0.695 for 69.5%% (a percentage such as 69.5 is refused)")
    args = ap.parse_args(argv)
    logs = [log_file(path) for path in args.logs]
    runs = [(run_name(path), read_log(path)) for path in logs]  # all checked before plotting
    plt = _pyplot()
    formats = plt.gcf().canvas.get_supported_filetypes()
    plt.close("all")
    if args.out.suffix and args.out.suffix[1:].lower() not in formats:
        ap.error(f"--out {args.out}: a suffix matplotlib writes, e.g. .png ({', '.join(formats)})")
    fig, (by_time, by_epoch) = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    header = ["run", "epochs", "best validation", f"time to {100 * args.target:.1f}%",
              "train images/s"]
    table = []
    for name, rows in runs:
        table.append(summary_row(name, rows, args.target))
        epochs, acc = _series(rows, "val_acc")  # read_log: every row has val_acc
        acc = [100 * a for a in acc]
        line, = by_time.plot([r.get("elapsed_s", 0) / 60 for r in rows], acc, label=name)
        by_epoch.plot(epochs, acc, color=line.get_color(), label=name)
    by_time.set_xlabel("wall time (minutes)")
    by_epoch.set_xlabel("epoch")
    by_time.set_ylabel("validation accuracy (%)")
    for ax in (by_time, by_epoch):
        ax.grid(alpha=0.3)
    by_epoch.legend(loc="lower right")
    fig.suptitle(args.title)
    fig.tight_layout()
    print("\n".join(_table(header, table)))
    print(_save(fig, args.out))


if __name__ == "__main__":
    main()
