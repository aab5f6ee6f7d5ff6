"""Validation accuracy of several training runs against wall time and epochs, one PNG.

    PYTHONPATH=src python scripts/plot_runs.py docs/gpu-runs/*.metrics.jsonl \
        --out docs/gpu-runs/validation-curves.png [--title TEXT]

Each input is a run's ``metrics.jsonl`` (one JSON object per epoch, as `ferkit train`
writes it); a run is named by its file name without ``.metrics.jsonl`` (or, for a file
named ``metrics.jsonl``, by its folder). It also prints a Markdown table per run: epochs,
best validation accuracy and its epoch, the wall time at which validation first reached
``--target`` (the paper's 69.5% by default), and the mean training images/s.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ferkit.metrics import _pyplot, _save, _series, _table


def read_log(path: Path) -> list[dict]:
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise SystemExit(f"{path}:{number}: not a JSON object ({exc.msg})") from None
        if not isinstance(row, dict) or "val_acc" not in row:
            raise SystemExit(f"{path}:{number}: expected an object with val_acc")
        rows.append(row)
    if not rows:
        raise SystemExit(f"{path}: no epochs logged")
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("logs", nargs="+", type=Path)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--title", default="Validation accuracy (selection split) per run")
    ap.add_argument("--target", type=float, default=0.695,
                    help="validation accuracy whose first arrival is timed (0..1)")
    args = ap.parse_args()
    plt = _pyplot()
    fig, (by_time, by_epoch) = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    header = ["run", "epochs", "best validation", f"time to {100 * args.target:.1f}%",
              "train images/s"]
    table = []
    for path in args.logs:
        rows = read_log(path)
        name = run_name(path)
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
