"""`ferkit reproduce`: train recipes (over seeds), score PrivateTest once each, write one table.

A row of the table is a recipe; its numbers are the mean and sample standard deviation over
the seeds that trained it. Finished runs (from another machine, for instance) are scored
with `table_from_runs`; each run's PrivateTest scores are kept in the run folder
(``privatetest.json``, with the weights' sha256 and the data's md5 they belong to), so
adding seeds later scores only the new runs.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path

from .checkpoint import _file, read_metadata
from .data import DataError, load
from .evaluate import evaluate
from .fileio import write_atomically
from .models import create_model
from .models.info import count_macs, count_params
from .recipe import TEST_SPLIT, Recipe
from .train import describe_changes, fit, recipe_changes, saved_run
from .weights import best_checkpoint

#: Published test accuracies to print beside ours (single model), by (model, dataset).
PUBLISHED = {
    ("mba_cnn", "fer2013"): "69.49% (He 2023); 71.55% student reproduction on a Kaggle "
    "re-split that contains most test images: not comparable",
    ("mba_cnn", "ferplus"): "84.63% (He 2023)",
    ("vulpe_cnn", "fer2013"): "72.16% (Vulpe-Grigorasi & Grigore 2021, as claimed)",
    ("vgg_fer", "fer2013"): "73.28% (Khaireddin & Chen 2021, with ten-crop TTA)",
}

#: The paper's claims as (question, reference recipe, variant recipe): the variant removes
#: or replaces one thing of the reference.
CLAIMS = (
    ("Do the three branches help?", "paper", "mba_cnn_1branch"),
    ("Does CBAM attention help?", "paper", "mba_cnn_no_cbam"),
    ("Do depthwise separable convolutions cost accuracy (vs Conv2D)?", "paper", "mba_cnn_conv"),
    ("Does augmentation help?", "paper", "paper-noaug"),
)

SCORES_FILE = "privatetest.json"


def describe_augment(recipe: Recipe) -> str:
    cfg = recipe.augment_config
    parts = []
    if cfg.geometric:
        parts.append("flip/affine")
    if cfg.photometric:
        parts.append("photometric")
    if cfg.erasing:
        parts.append(f"erasing {cfg.erasing:g}")
    if cfg.mixup:
        parts.append("mixup")
    if cfg.cutmix:
        parts.append("cutmix")
    return ", ".join(parts) or "none"


def run_checkpoint(run: Path) -> Path:
    """The run's selected weights (`ferkit.weights.best_checkpoint`), which must be there."""
    best = best_checkpoint(run)
    if best is None:
        raise DataError(f"{run}: no best.safetensors or best-fp16.safetensors (not a finished "
                        "run?)")
    return best


def check_test_data(data: str | os.PathLike) -> str | None:
    """The md5 of `data`, which must hold a labelled PrivateTest to score: checked before any
    training or scoring (a Training+PublicTest pack fails here, not after hours)."""
    faces = load(data)
    if TEST_SPLIT not in faces.split_names:
        raise DataError(
            f"{data}: no {TEST_SPLIT} split to score (it has {faces.split_names}); give the "
            f"full dataset (e.g. fer2013.csv), not a pack of the training splits"
        )
    if (faces.labels[faces.splits == TEST_SPLIT] < 0).any():
        raise DataError(f"{data}: its {TEST_SPLIT} rows are unlabelled (a Kaggle test.csv?); "
                        "they cannot be scored")
    return faces.info.get("md5")


def split_label(val_split: str | list[str]) -> str:
    """A run's selection split as one string (a list of splits joined with +)."""
    return val_split if isinstance(val_split, str) else "+".join(val_split)


def finished_run(run: Path) -> tuple[dict, Path, dict]:
    """A finished run's summary, its selected checkpoint and that checkpoint's metadata."""
    if not run.is_dir():
        raise DataError(f"{run}: no such folder" if not run.exists() else
                        f"{run}: not a folder (give the run's folder)")
    summary_file = run / "summary.json"
    if not summary_file.exists():
        raise DataError(f"{run}: no summary.json (the run did not finish an epoch)")
    checkpoint = run_checkpoint(run)
    return json.loads(summary_file.read_text()), checkpoint, read_metadata(checkpoint)


def run_key(finished: tuple[dict, Path, dict]) -> tuple[str, str, int]:
    """``(recipe, selection split, seed)`` of a finished run (`finished_run`'s answer): one
    seed counts once per row."""
    summary, _, meta = finished
    recipe = meta["recipe"]
    val_split = summary.get("val_split", recipe.get("val_split"))
    return recipe.get("name"), split_label(val_split), recipe.get("seed")


def score_run(
    run: str | os.PathLike, data: str | os.PathLike, tta: str = "ten-crop",
    device: str = "auto", ferplus: str | None = None, backend: str = "torch",
    data_md5: str | None = None, finished: tuple[dict, Path, dict] | None = None,
) -> dict:
    """One finished run's row: PrivateTest single-crop and `tta`, scored once and kept.

    ``data_md5``: the dataset's md5 (`check_test_data` reads it once for a whole table);
    ``finished``: the run's `finished_run` answer, where the caller has it already."""
    run = Path(run)
    summary, checkpoint, meta = finished or finished_run(run)
    recipe = Recipe.from_dict(meta["recipe"])
    # kept scores count only for these very weights and this very dataset
    fingerprint = {
        "weights_sha256": hashlib.sha256(_file(checkpoint, ".safetensors").read_bytes())
        .hexdigest(),
        "data_md5": data_md5,
        "ferplus": Path(ferplus).name if ferplus else None,
        "backend": backend,
    }
    cache = run / SCORES_FILE
    kept = json.loads(cache.read_text()) if cache.exists() else {}
    scores = kept.get("scores", {}) if kept.get("fingerprint") == fingerprint else {}
    kept_modes = [mode for mode in dict.fromkeys(("none", tta)) if mode in scores]
    for mode in dict.fromkeys(("none", tta)):
        if mode not in scores:
            report = evaluate(checkpoint, data, "PrivateTest", mode, device, ferplus=ferplus,
                              backend=backend)
            scores[mode] = {"accuracy": report["accuracy"], "macro_f1": report["macro_f1"],
                            "num_samples": report["num_samples"]}
            text = json.dumps({"fingerprint": fingerprint, "scores": scores}, indent=2)
            write_atomically(cache, lambda tmp, text=text: tmp.write_text(text))
    print(f"ferkit reproduce: {run}: PrivateTest single-crop {100 * scores['none']['accuracy']:.2f}%"
          f", {tta} {100 * scores[tta]['accuracy']:.2f}%"
          + (f" (kept in {SCORES_FILE})" if len(kept_modes) == len({"none", tta}) else ""),
          file=sys.stderr, flush=True)
    return {
        "run": str(run),
        "recipe": recipe.name,
        "seed": recipe.seed,
        "model": recipe.model,
        "model_options": recipe.model_options,
        "dataset": recipe.dataset,
        "num_classes": len(meta["class_names"]),
        "augmentation": describe_augment(recipe),
        "val_acc": summary["best_val_acc"],
        "val_split": split_label(summary.get("val_split", recipe.val_split)),
        "test_acc": scores["none"]["accuracy"],
        "test_acc_tta": scores[tta]["accuracy"],
        "tta": tta,
        "backend": backend,
        "epochs_done": summary["epochs_done"],
        "epochs_recipe": recipe.epochs,
        "wall_minutes": summary["wall_seconds"] / 60,
        "device": summary["device"],
    }


def spread(values: Sequence[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (None for a single value)."""
    mean = statistics.fmean(values)
    return mean, statistics.stdev(values) if len(values) > 1 else None


def group_rows(rows: list[dict], overrides: Sequence[str] = ()) -> list[dict]:
    """One row per recipe and selection split, in first-seen order, with mean and spread over
    its seeds (runs of a recipe that selected on another split than PublicTest are a row of
    their own: their numbers are not the protocol's)."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for row in rows:
        groups.setdefault((row["recipe"], row.get("val_split", "PublicTest")), []).append(row)
    out = []
    for (name, val_split), runs in groups.items():
        seeds = [r["seed"] for r in runs]
        twice = sorted({s for s in seeds if seeds.count(s) > 1})
        if twice:
            dup = [r["run"] for r in runs if r["seed"] in twice]
            raise DataError(f"recipe {name}: seed(s) {twice} appear in more than one run "
                            f"({', '.join(dup)}): a seed must count once")
        first = runs[0]
        model = create_model(first["model"], num_classes=first["num_classes"],
                             **first["model_options"])
        epochs = sorted(r["epochs_done"] for r in runs)
        out.append({
            "recipe": name,
            "val_split": val_split,
            "overrides": list(overrides),
            "model": first["model"],
            "dataset": first["dataset"],
            "params": count_params(model),
            "gmacs": count_macs(model) / 1e9,
            "branches": getattr(model, "branches", "-"),
            "augmentation": first["augmentation"],
            "seeds": sorted(seeds),
            "epochs": (f"{epochs[0]}" if epochs[0] == epochs[-1] else f"{epochs[0]}-{epochs[-1]}")
            + f" of {first['epochs_recipe']}",
            "val_acc": spread([r["val_acc"] for r in runs]),
            "test_acc": spread([r["test_acc"] for r in runs]),
            "test_acc_tta": spread([r["test_acc_tta"] for r in runs]),
            "test_accs": [r["test_acc"] for r in runs],
            "tta": first["tta"],
            "backend": first["backend"],
            "wall_minutes": statistics.fmean(r["wall_minutes"] for r in runs),
            "device": ", ".join(sorted({r["device"] for r in runs})),
            # the paper's number only beside runs of its protocol (selected on PublicTest)
            "published": PUBLISHED.get((first["model"], first["dataset"]), "")
            if val_split == "PublicTest" else "",
        })
    return out


def percent(stat: tuple[float, float | None]) -> str:
    mean, sd = stat
    return f"{100 * mean:.2f}%" + (f" ± {100 * sd:.2f}" if sd is not None else "")


def claim_lines(groups: list[dict]) -> list[str]:
    """The paper's claims that the table can answer, in plain words."""
    by_name = {g["recipe"]: g for g in groups if g.get("val_split", "PublicTest") == "PublicTest"}
    lines = []
    for question, ref, variant in CLAIMS:
        if ref not in by_name or variant not in by_name:
            continue
        a, b = by_name[ref]["test_accs"], by_name[variant]["test_accs"]
        diff = statistics.fmean(a) - statistics.fmean(b)
        if len(a) > 1 and len(b) > 1:
            se = math.sqrt(statistics.variance(a) / len(a) + statistics.variance(b) / len(b))
            verdict = ("yes" if diff > 0 else "no: the variant is better") if abs(diff) > 2 * se \
                else "not shown: the difference is within twice its standard error"
            detail = f"{100 * diff:+.2f} points ± {100 * se:.2f} (standard error)"
        else:
            verdict = "not decided: one seed on a side gives no spread"
            detail = f"{100 * diff:+.2f} points"
        if by_name[ref].get("epochs") != by_name[variant].get("epochs"):
            verdict += (f" (but they trained for different epochs, {by_name[ref]['epochs']} vs "
                        f"{by_name[variant]['epochs']}: length and design are confounded)")
        lines.append(f"- {question} `{ref}` vs `{variant}`, PrivateTest single-crop: "
                     f"{detail}; {verdict}.")
    return lines


#: The paper's FER2013 PrivateTest accuracy, drawn as a line in the seeds plot.
PAPER_ACCURACY = 0.6949


def plot_seeds(groups: list[dict], path: Path) -> Path:
    """Each run's PrivateTest single-crop accuracy per recipe (dots), their mean (a short
    line) and, for FER2013 runs, the paper's 69.49% (dashed line)."""
    from .metrics import _pyplot, _save

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(1.2 + 1.1 * len(groups), 4))
    for i, g in enumerate(groups):
        accs = [100 * a for a in g["test_accs"]]
        ax.hlines(statistics.fmean(accs), i - 0.3, i + 0.3, color="#6b8fb5", linewidth=2.5)
        ax.scatter([i] * len(accs), accs, color="#08306b", zorder=3, s=18)
    top = max(max(g["test_accs"]) for g in groups) * 100
    if all(g["dataset"] == "fer2013" for g in groups):
        ax.axhline(100 * PAPER_ACCURACY, color="#b22222", linestyle="--", linewidth=1,
                   label="paper (He 2023): 69.49%")
        ax.legend(loc="lower right", fontsize=8)
        top = max(top, 100 * PAPER_ACCURACY)
    low = min(min(g["test_accs"]) for g in groups) * 100
    ax.set_ylim(max(low - 3, 0), min(top + 2, 100))
    ax.set_xlim(-0.6, len(groups) - 0.4)
    ax.set_xticks(range(len(groups)), [g["recipe"] for g in groups], rotation=30, ha="right")
    ax.set_ylabel("PrivateTest single-crop accuracy (%)")
    ax.set_title("One dot per seed, line = mean")
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)


def write_table(groups: list[dict], out: Path) -> Path:
    """``results.md`` (table and claims), ``results.json`` and, where matplotlib is
    installed, ``results.png`` (every seed's accuracy per recipe) in `out`."""
    out.mkdir(parents=True, exist_ok=True)
    tta = groups[0]["tta"] if groups else "ten-crop"
    # the selection column is named by the split the runs selected on; where rows differ,
    # each cell names its own
    splits = sorted({g.get("val_split", "PublicTest") for g in groups}) or ["PublicTest"]
    mixed = len(splits) > 1
    lines = [
        "| recipe | model | params | GMACs | branches | augmentation | seeds | epochs | "
        f"{'selection (split)' if mixed else f'{splits[0]} (select)'} | "
        f"PrivateTest single-crop | PrivateTest {tta} TTA | train (min/run) | device | "
        "published |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for g in groups:
        select = percent(g["val_acc"]) + (f" ({g.get('val_split', 'PublicTest')})" if mixed else "")
        lines.append(
            f"| {g['recipe']} | {g['model']} | {g['params']:,} | {g['gmacs']:.3f} | "
            f"{g['branches']} | {g['augmentation']} | {len(g['seeds'])} | {g['epochs']} | "
            f"{select} | {percent(g['test_acc'])} | {percent(g['test_acc_tta'])} "
            f"| {g['wall_minutes']:.1f} | {g['device']} | {g['published']} |"
        )
    backends = ", ".join(sorted({g["backend"] for g in groups}))
    lines += ["", "Mean ± sample standard deviation over the seeds; PrivateTest scored once "
              f"per run ({backends}), after selection on {' or '.join(splits)}."]
    overrides = sorted({o for g in groups for o in g.get("overrides", [])})
    if overrides:
        lines += ["", "Recipe keys set on the command line (every run): `--set "
                  f"{' '.join(overrides)}`."]
    claims = claim_lines(groups)
    if claims:
        lines += ["", "The paper's claims:", *claims]
    (out / "results.json").write_text(json.dumps(groups, indent=2))
    try:
        plot_seeds(groups, out / "results.png")
        lines += ["", "![PrivateTest accuracy of every seed per recipe](results.png)"]
    except ImportError as exc:
        print(f"ferkit reproduce: plot skipped ({exc})", file=sys.stderr)
    table = out / "results.md"
    table.write_text("\n".join(lines) + "\n")
    return table


def table_from_runs(
    runs: list[str | os.PathLike], data: str | os.PathLike, out: str | os.PathLike,
    tta: str = "ten-crop", device: str = "auto", ferplus: str | None = None,
    backend: str = "torch",
) -> Path:
    """Score finished run folders (each once) and write their table; a bad run is reported
    and left out, and so is a run whose recipe and seed an earlier folder already gave (a
    seed counts once)."""
    rows, md5, seen = [], check_test_data(data), {}
    for run in runs:
        try:
            finished = finished_run(Path(run))
            key = run_key(finished)  # before scoring: a clash costs no TTA pass
            if key in seen:
                print(f"ferkit reproduce: skipped {run}: recipe {key[0]} seed {key[2]} is "
                      f"already in the table from {seen[key]} (a seed counts once)",
                      file=sys.stderr)
                continue
            rows.append(score_run(run, data, tta, device, ferplus, backend, md5, finished))
            seen[key] = run
        except (DataError, OSError, KeyError, ValueError) as exc:
            print(f"ferkit reproduce: skipped {run}: {exc}", file=sys.stderr)
    if not rows:
        raise DataError("no finished run to tabulate")
    return write_table(group_rows(rows), Path(out))


def reproduce(
    recipes: list[str | os.PathLike],
    data: str | os.PathLike,
    out: str | os.PathLike,
    overrides: list[str] | None = None,
    device: str = "auto",
    max_minutes: float | None = None,
    ferplus: str | None = None,
    seeds: Sequence[int] | None = None,
    tta: str = "ten-crop",
    backend: str = "torch",
) -> Path:
    """Train each recipe (once per seed) into ``out/<name>[-s<seed>]``, score PrivateTest
    once per run, write ``results.md``. A finished run (with its summary.json) is not trained
    again; one cut short (a last.state.pt, or stopped by --max-minutes) resumes. A run
    folder that holds a run of other recipe keys (an earlier ``--set epochs=1``, say) is an
    error before anything trains: its numbers are not the recipe's."""
    out = Path(out)
    md5 = check_test_data(data)  # before hours of training, not after
    plan = []
    for path in recipes:
        for seed in seeds if seeds else [None]:
            extra = [] if seed is None else [f"seed={seed}"]
            recipe = Recipe.from_yaml(path, [*(overrides or []), *extra])
            run = out / (recipe.name if seed is None else f"{recipe.name}-s{seed}")
            plan.append((recipe, run, run_action(run, recipe)))
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for recipe, run, action in plan:
        if action != "score":
            fit(recipe, data, run, device=device, max_minutes=max_minutes,
                resume=action == "resume")
        rows.append(score_run(run, data, tta, device, ferplus, backend, md5))
        write_table(group_rows(rows, overrides or []), out)
    return out / "results.md"


def run_action(run: Path, recipe: Recipe) -> str:
    """What `reproduce` does with `run`: ``train`` (no run there yet), ``resume`` (one cut
    short) or ``score`` (a finished run); a run of other recipe keys is a DataError that
    names the folder and the keys."""
    summary_file, state = run / "summary.json", run / "last.state.pt"
    if not summary_file.exists() and not state.exists():
        return "train"
    saved = saved_run(run).get("recipe")
    changes = recipe_changes(saved, recipe) if saved is not None else {}
    if saved is None or changes:
        found = (f"was trained with {describe_changes(changes)} (then -> now)" if changes
                 else "holds a run whose recipe is unknown (no last.json or recipe.json)")
        raise DataError(
            f"{run} {found}: its numbers are not those of recipe {recipe.name!r} as asked now. "
            "Remove or rename the folder to train it again, give the same --set keys, or use "
            "another --out"
        )
    try:
        summary = json.loads(summary_file.read_text()) if summary_file.exists() else {}
    except (OSError, ValueError):
        summary = {}
    if summary and summary.get("stop_reason") != "max_minutes":
        return "score"
    if not state.exists():
        raise DataError(f"{run}: the run was cut short but holds no last.state.pt to resume")
    return "resume"
