"""Validation accuracy of several training runs against wall time and epochs, one PNG.

    PYTHONPATH=src python scripts/plot_runs.py docs/gpu-runs/*.metrics.jsonl \
        --out docs/gpu-runs/validation-curves.png [--title TEXT]

Each input is a run's ``metrics.jsonl`` (one JSON object per epoch, as `ferkit train`
writes it); a run is named by its file name without ``.metrics.jsonl``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ferkit.metrics import _pyplot, _save


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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("logs", nargs="+", type=Path)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--title", default="Validation accuracy (selection split) per run")
    args = ap.parse_args()
    plt = _pyplot()
    fig, (by_time, by_epoch) = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    for path in args.logs:
        rows = read_log(path)
        name = path.name.removesuffix(".metrics.jsonl").removesuffix(".jsonl")
        acc = [100 * r["val_acc"] for r in rows]
        line, = by_time.plot([r.get("elapsed_s", 0) / 60 for r in rows], acc, label=name)
        by_epoch.plot([r.get("epoch", i) for i, r in enumerate(rows, 1)], acc,
                      color=line.get_color(), label=name)
    by_time.set_xlabel("wall time (minutes)")
    by_epoch.set_xlabel("epoch")
    by_time.set_ylabel("validation accuracy (%)")
    for ax in (by_time, by_epoch):
        ax.grid(alpha=0.3)
    by_epoch.legend(loc="lower right")
    fig.suptitle(args.title)
    fig.tight_layout()
    print(_save(fig, args.out))


if __name__ == "__main__":
    main()
