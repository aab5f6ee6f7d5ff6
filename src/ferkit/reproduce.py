"""`ferkit reproduce`: train recipes (over seeds), score PrivateTest once each, write one table.

A row of the table is a recipe; its numbers are the mean and sample standard deviation over
the seeds that trained it (runs of one recipe name trained with other keys are rows of
their own). Finished runs (from another machine, for instance) are scored with
`table_from_runs`; each run's PrivateTest scores are kept in the run folder
(``privatetest.json``, with the sha256 of the weights and of the PrivateTest images and
labels they belong to), so adding seeds later scores only the new runs.
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
from .data import FERPLUS_CLASSES, DataError, load
from .evaluate import evaluate
from .fileio import write_atomically
from .models import create_model
from .models.info import count_macs, count_params
from .recipe import TEST_SPLIT, Recipe
from .train import describe_changes, find_ferplus_votes, fit, recipe_changes, saved_run
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


def check_test_data(data: str | os.PathLike) -> str:
    """The sha256 of what `data` gives to score (its PrivateTest images, labels and class
    names), which must be a labelled PrivateTest: checked before any training or scoring (a
    Training+PublicTest pack fails here, not after hours). Kept scores count only for this
    very fingerprint, whatever the layout (folders have no file md5)."""
    return _test_data(data)[0]


def _test_data(data: str | os.PathLike) -> tuple[str, tuple[str, ...]]:
    """``(check_test_data's sha256, the data's class names)``."""
    faces = load(data)
    if TEST_SPLIT not in faces.split_names:
        raise DataError(
            f"{data}: no {TEST_SPLIT} split to score (it has {faces.split_names}); give the "
            f"full dataset (e.g. fer2013.csv), not a pack of the training splits"
        )
    if (faces.labels[faces.splits == TEST_SPLIT] < 0).any():
        raise DataError(f"{data}: its {TEST_SPLIT} rows are unlabelled (a Kaggle test.csv?); "
                        "they cannot be scored")
    test = faces.splits == TEST_SPLIT
    digest = hashlib.sha256(json.dumps(list(faces.class_names)).encode())
    digest.update(faces.labels[test].astype("<i8").tobytes())
    digest.update(faces.images[test].tobytes())
    return digest.hexdigest(), tuple(faces.class_names)


def votes_sha256(recipe: dict, data: str | os.PathLike, ferplus: str | None) -> str | None:
    """The sha256 of the FER+ votes file that scoring a run of `recipe` joins to `data` (as
    `ferplus.evaluate` finds it), or None where it joins none (a FER2013 run, or no such
    file: scoring then says what is missing, or the data has the FER+ labels itself)."""
    if recipe.get("dataset") != "ferplus":
        return None
    name = ferplus or recipe.get("ferplus_csv") or "fer2013new.csv"
    try:
        path = find_ferplus_votes(name, Path(data))
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except (DataError, OSError):
        return None


def split_label(val_split: str | list[str]) -> str:
    """A run's selection split as one string (a list of splits joined with +)."""
    return val_split if isinstance(val_split, str) else "+".join(val_split)


#: What a run's summary.json must hold (`Trainer.run` writes it): the table reads these.
SUMMARY_KEYS = ("best_val_acc", "epochs_done", "wall_seconds", "device")

#: Recipe keys that do not change what is trained, only how fast or in what batches it is
#: evaluated: runs that differ only in these (and the seed) are one row. ``eval_batch_size``
#: (selection scores whole batches in eval mode), ``compile``, ``compile_mode``,
#: ``cuda_graph`` and ``channels_last`` (the same step, run another way). Not among them:
#: ``time_budget_minutes`` (it sets the schedule's length, so what is trained), ``amp`` /
#: ``amp_cpu`` (bf16 arithmetic) and ``sync_bn`` (other BatchNorm statistics).
EXECUTION_KEYS = ("eval_batch_size", "compile", "compile_mode", "cuda_graph", "channels_last")


def finished_run(run: Path) -> tuple[dict, Path, dict]:
    """A finished run's summary, its selected checkpoint and that checkpoint's metadata,
    each checked (a DataError that names the file and what it should hold)."""
    if not run.is_dir():
        raise DataError(f"{run}: no such folder" if not run.exists() else
                        f"{run}: not a folder (give the run's folder)")
    summary_file = run / "summary.json"
    if not summary_file.exists():
        raise DataError(f"{run}: no summary.json (the run did not finish an epoch)")
    expected = f"expected an object with {', '.join(SUMMARY_KEYS)}"
    try:
        summary = json.loads(summary_file.read_text())
    except ValueError as exc:
        raise DataError(f"{summary_file}: summary.json is not JSON ({exc}); {expected}") from None
    if not isinstance(summary, dict) or any(k not in summary for k in SUMMARY_KEYS):
        missing = ([k for k in SUMMARY_KEYS if k not in summary] if isinstance(summary, dict)
                   else None)
        raise DataError(f"{summary_file}: summary.json is not a run summary ({expected}"
                        + (f"; it lacks {', '.join(missing)}" if missing else
                           f"; it holds {type(summary).__name__}") + ")")
    if not all(isinstance(summary[k], (int, float)) for k in SUMMARY_KEYS[:3]):
        raise DataError(f"{summary_file}: summary.json is not a run summary ({expected}, "
                        f"{', '.join(SUMMARY_KEYS[:3])} numbers)")
    checkpoint = run_checkpoint(run)
    try:
        meta = read_metadata(checkpoint)
    except (OSError, ValueError) as exc:
        raise DataError(f"{checkpoint}: cannot read its metadata ({exc})") from None
    if (not isinstance(meta, dict) or not isinstance(meta.get("recipe"), dict)
            or not isinstance(meta.get("class_names"), list)):
        raise DataError(f"{checkpoint}: its metadata holds no recipe and class_names (expected "
                        "an object with a recipe object and a class_names list)")
    try:
        Recipe.from_dict(run_recipe_dict(run, meta))
    except (TypeError, ValueError) as exc:
        raise DataError(f"{run}: its recipe is not a valid recipe ({exc})") from None
    return summary, checkpoint, meta


def run_recipe_dict(run: Path, meta: dict) -> dict:
    """The recipe the run ended with (recipe.json / last.json, which a resume that lengthened
    the run updates), else the one saved with its selected checkpoint."""
    saved = saved_run(run).get("recipe")
    return saved if isinstance(saved, dict) else meta["recipe"]


def config_key(recipe: dict) -> str:
    """What a row stands for: the whole recipe but its seed and `EXECUTION_KEYS` (with
    defaults filled in; the FER+ votes by file name, not by folder)."""
    d = Recipe.from_dict(recipe).to_dict()
    for key in ("seed", *EXECUTION_KEYS):
        d.pop(key, None)
    if d.get("ferplus_csv"):
        d["ferplus_csv"] = Path(d["ferplus_csv"]).name
    return json.dumps(d, sort_keys=True)


def run_key(finished: tuple[dict, Path, dict]) -> tuple[str, str, int]:
    """``(configuration, selection split, seed)`` of a finished run (`finished_run`'s answer;
    the configuration is `config_key` of its recipe, name included): one seed counts once per
    row."""
    summary, checkpoint, meta = finished
    recipe = run_recipe_dict(checkpoint.parent, meta)
    val_split = summary.get("val_split", recipe.get("val_split", "PublicTest"))
    return config_key(recipe), split_label(val_split), recipe.get("seed", 0)


def score_run(
    run: str | os.PathLike, data: str | os.PathLike, tta: str = "ten-crop",
    device: str = "auto", ferplus: str | None = None, backend: str = "torch",
    test_sha256: str | None = None, finished: tuple[dict, Path, dict] | None = None,
) -> dict:
    """One finished run's row: PrivateTest single-crop and `tta`, scored once and kept.

    ``test_sha256``: `check_test_data`'s fingerprint of `data` (read once for a whole table;
    read here where not given); ``finished``: the run's `finished_run` answer, where the
    caller has it already."""
    run = Path(run)
    summary, checkpoint, meta = finished or finished_run(run)
    final = run_recipe_dict(run, meta)
    recipe = Recipe.from_dict(final)
    # kept scores count only for these very weights and these very test images and labels
    fingerprint = {
        "weights_sha256": hashlib.sha256(_file(checkpoint, ".safetensors").read_bytes())
        .hexdigest(),
        "test_sha256": test_sha256 or check_test_data(data),
        "ferplus_sha256": votes_sha256(meta["recipe"], data, ferplus),
        "backend": backend,
    }
    cache = run / SCORES_FILE
    try:
        kept = json.loads(cache.read_text()) if cache.exists() else {}
    except ValueError:
        kept = {}  # a damaged file: scored again
    kept = kept if isinstance(kept, dict) else {}
    scores = kept.get("scores", {}) if kept.get("fingerprint") == fingerprint else {}
    scores = scores if isinstance(scores, dict) else {}
    kept_modes = [mode for mode in dict.fromkeys(("none", tta)) if mode in scores]
    # a FER2013 run is scored without votes (where no run of the table is a FER+ run,
    # `unused_votes` says once that --ferplus went unused)
    votes = ferplus if recipe.dataset == "ferplus" else None
    for mode in dict.fromkeys(("none", tta)):
        if mode not in scores:
            report = evaluate(checkpoint, data, "PrivateTest", mode, device, ferplus=votes,
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
        "config": config_key(final),
        "recipe_keys": recipe.to_dict(),
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
        # the run's own final length (a resume may have lengthened it after the best epoch)
        "epochs_recipe": summary.get("epochs_planned", recipe.epochs),
        "wall_minutes": summary["wall_seconds"] / 60,
        "device": summary["device"],
    }


def spread(values: Sequence[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (None for a single value)."""
    mean = statistics.fmean(values)
    return mean, statistics.stdev(values) if len(values) > 1 else None


def differing_keys(groups: list[list[dict]]) -> list[str]:
    """``"key value, ..."`` for each group of runs (of one recipe name): the recipe keys in
    which it differs from the other groups of that name ("" for a name with one group)."""
    keys = [g[0].get("recipe_keys") or {} for g in groups]
    if len(groups) < 2:
        return [""] * len(groups)
    names = sorted({k for d in keys for k in d if k not in ("seed", *EXECUTION_KEYS)})
    differ = [k for k in names if len({json.dumps(d.get(k), sort_keys=True) for d in keys}) > 1]
    return [", ".join(f"{k} {json.dumps(d.get(k))}" for k in differ) for d in keys]


def group_rows(rows: list[dict], overrides: Sequence[str] = ()) -> list[dict]:
    """One row per recipe configuration and selection split, in first-seen order, with mean
    and spread over its seeds. A configuration is the whole recipe but its seed and
    `EXECUTION_KEYS`: runs of one recipe name trained with other keys (another model, other
    options, another length) are rows of their own, and such a row's ``variant`` names the
    keys it differs in; runs that selected on another split than PublicTest are a row of
    their own too (their numbers are not the protocol's)."""
    groups: dict[tuple[str, str, str], list[dict]] = {}
    for row in rows:
        key = (row["recipe"], row.get("config", row["recipe"]), row.get("val_split", "PublicTest"))
        groups.setdefault(key, []).append(row)
    variants: dict[tuple, str] = {}
    for name, val_split in dict.fromkeys((k[0], k[2]) for k in groups):
        same = [k for k in groups if (k[0], k[2]) == (name, val_split)]
        variants.update(zip(same, differing_keys([groups[k] for k in same]), strict=True))
    out = []
    for key, runs in groups.items():
        name, _, val_split = key
        seeds = [r["seed"] for r in runs]
        twice = sorted({s for s in seeds if seeds.count(s) > 1})
        if twice:
            dup = [r["run"] for r in runs if r["seed"] in twice]
            raise DataError(f"recipe {name}: seed(s) {twice} appear in more than one run "
                            f"({', '.join(dup)}): a seed must count once")
        first = runs[0]
        variant = variants[key]
        model = create_model(first["model"], num_classes=first["num_classes"],
                             **first["model_options"])
        epochs = sorted(r["epochs_done"] for r in runs)
        planned = sorted(r["epochs_recipe"] for r in runs)
        out.append({
            "recipe": name,
            "variant": variant,
            "runs": [r["run"] for r in runs],
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
            + f" of {planned[0]}" + (f"-{planned[-1]}" if planned[0] != planned[-1] else ""),
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


def row_label(group: dict) -> str:
    """A row's recipe cell: its name, and the keys its configuration differs in where the
    name has rows of several."""
    return group["recipe"] + (f" ({group['variant']})" if group.get("variant") else "")


def percent(stat: tuple[float, float | None]) -> str:
    mean, sd = stat
    return f"{100 * mean:.2f}%" + (f" ± {100 * sd:.2f}" if sd is not None else "")


def claim_lines(groups: list[dict]) -> list[str]:
    """The paper's claims that the table can answer, in plain words."""
    protocol = [g for g in groups if g.get("val_split", "PublicTest") == "PublicTest"]
    names = [g["recipe"] for g in protocol]
    # a name with rows of several configurations answers no claim: which one would it be?
    by_name = {g["recipe"]: g for g in protocol if names.count(g["recipe"]) == 1}
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
    ax.set_xticks(range(len(groups)), [row_label(g) for g in groups], rotation=30, ha="right")
    ax.set_ylabel("PrivateTest single-crop accuracy (%)")
    ax.set_title("One dot per seed, line = mean")
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)


def note_dropped_rows(groups: list[dict], out: Path) -> None:
    """Say which rows of the table already in `out` the new one (of this call's runs only)
    leaves out: the files are replaced, not merged."""
    try:
        old = json.loads((out / "results.json").read_text())
        before = [row_label(g) for g in old]
    except (OSError, ValueError, TypeError, KeyError):
        return
    now = {row_label(g) for g in groups}
    dropped = [label for label in dict.fromkeys(before) if label not in now]
    if dropped:
        print(f"ferkit reproduce: {out}/results.md, .json and .png now hold this call's runs "
              f"only; rows no longer there: {', '.join(dropped)} (give every recipe, or "
              "another --out, to keep them)", file=sys.stderr)


def write_table(groups: list[dict], out: Path, final: bool = True) -> Path:
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
            f"| {row_label(g)} | {g['model']} | {g['params']:,} | {g['gmacs']:.3f} | "
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
    if final:  # a table written as the runs finish holds fewer rows until the last one
        note_dropped_rows(groups, out)
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
    and left out, and so is a run whose recipe configuration (`config_key`: its name and
    every key that changes what is trained) and seed an earlier folder already gave (a seed
    counts once)."""
    rows, test_sha256, seen = [], check_test_data(data), {}
    for run in runs:
        try:
            finished = finished_run(Path(run))
            key = run_key(finished)  # before scoring: a clash costs no TTA pass
            if key in seen:
                name = finished[2]["recipe"].get("name")
                print(f"ferkit reproduce: skipped {run}: recipe {name} seed {key[2]} is "
                      f"already in the table from {seen[key]} (a seed counts once)",
                      file=sys.stderr)
                continue
            rows.append(score_run(run, data, tta, device, ferplus, backend, test_sha256,
                                  finished))
            seen[key] = run
        except (DataError, OSError, KeyError, ValueError) as exc:
            print(f"ferkit reproduce: skipped {run}: {exc}", file=sys.stderr)
    if not rows:
        raise DataError("no finished run to tabulate")
    unused_votes(ferplus, [row["dataset"] for row in rows])
    return write_table(group_rows(rows), Path(out))


def unused_votes(ferplus: str | None, datasets: list[str]) -> None:
    """Say once that ``--ferplus`` was given to a table without FER+ runs (not dropped
    silently; each run's scoring does not repeat it)."""
    if ferplus and "ferplus" not in datasets:
        print(f"ferkit reproduce: --ferplus {ferplus} not used: no run of this table is a FER+ "
              "run", file=sys.stderr, flush=True)


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
    again; one cut short (a last.state.pt, or stopped by --max-minutes) resumes.
    ``ferplus`` (``--ferplus``): the FER+ votes file, used to train FER+ recipes (as their
    ``ferplus_csv``, made absolute) and to score them.

    Errors before anything trains: data without a labelled PrivateTest; a FER+ recipe whose
    votes are not found; a recipe ``name`` that is no plain folder name; two entries of the
    plan that would share a run folder (the same recipe or name twice, a seed twice); a run
    folder that holds a run of other recipe keys (an earlier ``--set epochs=1``, say: its
    numbers are not the recipe's); ``--set seed=...`` with ``seeds``."""
    out = Path(out)
    overrides = list(overrides or [])
    if seeds and any(o.split("=", 1)[0].strip() == "seed" for o in overrides):
        raise DataError("reproduce: --set seed=... and --seeds both set the seed; give the "
                        "seeds with --seeds only")
    # before hours of training, not after
    test_sha256, class_names = _test_data(data)
    if ferplus is not None:  # as training finds it: a bare name also beside the data
        ferplus = str(find_ferplus_votes(ferplus, data).resolve())
    plan = []
    for path in recipes:
        for seed in seeds if seeds else [None]:
            extra = [] if seed is None else [f"seed={seed}"]
            recipe = Recipe.from_yaml(path, [*overrides, *extra])
            check_run_name(recipe.name, path)
            if recipe.dataset == "ferplus":
                recipe = ferplus_recipe(recipe, path, data, ferplus, class_names)
            run = out / (recipe.name if seed is None else f"{recipe.name}-s{seed}")
            plan.append((recipe, run, path, seed))
    refuse_shared_folders(plan)
    unused_votes(ferplus, [recipe.dataset for recipe, *_ in plan])
    plan = [(recipe, run, run_action(run, recipe)) for recipe, run, _, _ in plan]
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for k, (recipe, run, action) in enumerate(plan):
        if action != "score":
            fit(recipe, data, run, device=device, max_minutes=max_minutes,
                resume=action == "resume")
        rows.append(score_run(run, data, tta, device, ferplus, backend, test_sha256))
        # the table so far after each run; rows of an earlier call dropped: said at the end
        write_table(group_rows(rows, overrides), out, final=k == len(plan) - 1)
    return out / "results.md"


def check_run_name(name: str, path: str | os.PathLike) -> None:
    """A recipe name is the run's folder inside ``--out``: a plain folder name, not a path
    (``../x``, ``a/b``) that would put the run elsewhere."""
    if name in (".", "..") or Path(name).name != name or "/" in name or "\\" in name:
        raise DataError(f"recipe {path}: name {name!r} is not a plain folder name (the run goes "
                        "to --out/NAME): give a name without / or \\ that is not . or ..")


def ferplus_recipe(recipe: Recipe, path: str | os.PathLike, data: str | os.PathLike,
                   ferplus: str | None, class_names: tuple[str, ...]) -> Recipe:
    """A FER+ recipe as reproduce trains it: ``--ferplus`` (absolute) as its votes, which
    must be found (a DataError naming the recipe otherwise), unless the data has the FER+
    labels itself."""
    if ferplus is not None:
        recipe = Recipe.from_dict({**recipe.to_dict(), "ferplus_csv": ferplus})
    if list(class_names) == list(FERPLUS_CLASSES):
        return recipe
    try:
        votes = find_ferplus_votes(recipe.ferplus_csv, Path(data))
    except DataError:
        votes = None
    if votes is None or not votes.is_file():
        raise DataError(f"recipe {path} ({recipe.name}) trains on FER+, but its votes "
                        f"{recipe.ferplus_csv} are not found beside {data}: give their path "
                        "with --ferplus")
    return recipe


def refuse_shared_folders(plan: list[tuple[Recipe, Path, str | os.PathLike, int | None]]) -> None:
    """Two entries of the plan that would train into one run folder: a DataError naming
    them (the second would find the first's finished run, of other keys or seed)."""
    first: dict[Path, str] = {}
    for _, run, path, seed in plan:
        entry = f"{path}" + (f" (seed {seed})" if seed is not None else "")
        key = Path(os.path.normpath(run.absolute()))
        if key in first:
            raise DataError(f"{first[key]} and {entry} would both train into {run}: give each "
                            "recipe its own name (--set name=... applies to every recipe) and "
                            "each seed once")
        first[key] = entry


def run_action(run: Path, recipe: Recipe) -> str:
    """What `reproduce` does with `run`: ``train`` (no run there yet), ``resume`` (one cut
    short) or ``score`` (a finished run); a run of other recipe keys is a DataError that
    names the folder and the keys."""
    summary_file, state = run / "summary.json", run / "last.state.pt"
    if not summary_file.exists() and not state.exists():
        return "train"
    saved = saved_run(run).get("recipe")
    changes = recipe_changes(saved, recipe) if saved is not None else {}
    votes = changes.get("ferplus_csv")
    if votes and all(votes) and Path(votes[0]).name == Path(votes[1]).name:
        del changes["ferplus_csv"]  # the same votes file, given from another folder
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
