"""`ferkit reproduce`: train several recipes, score each on PrivateTest, write one table."""

from __future__ import annotations

import json
import os
from pathlib import Path

from .evaluate import evaluate
from .models import create_model
from .models.info import count_params
from .recipe import Recipe
from .train import fit

#: Published FER2013 PrivateTest accuracies to print beside ours (single model).
PUBLISHED = {
    "mba_cnn": "69.49% (He 2023); 71.55% student reproduction on a Kaggle re-split that "
    "contains most test images: not comparable",
    "vulpe_cnn": "72.16% (Vulpe-Grigorasi & Grigore 2021, as claimed)",
    "vgg_fer": "73.28% (Khaireddin & Chen 2021, with ten-crop TTA)",
}


def describe_augment(recipe: Recipe) -> str:
    cfg = recipe.augment_config
    parts = []
    if cfg.geometric:
        parts.append("flip/affine")
    if cfg.erasing:
        parts.append(f"erasing {cfg.erasing:g}")
    if cfg.mixup:
        parts.append("mixup")
    if cfg.cutmix:
        parts.append("cutmix")
    return ", ".join(parts) or "none"


def reproduce(
    recipes: list[str | os.PathLike],
    data: str | os.PathLike,
    out: str | os.PathLike,
    overrides: list[str] | None = None,
    device: str = "auto",
    max_minutes: float | None = None,
    ferplus: str | None = None,
) -> Path:
    """Train each recipe into ``out/<name>``, evaluate PrivateTest once, write ``results.md``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for path in recipes:
        recipe = Recipe.from_yaml(path, overrides)
        run = out / recipe.name
        summary = fit(recipe, data, run, device=device, max_minutes=max_minutes)
        single = evaluate(run / "best", data, "PrivateTest", "none", device, ferplus=ferplus)
        tta = evaluate(run / "best", data, "PrivateTest", "ten-crop", device, ferplus=ferplus)
        model = create_model(recipe.model, num_classes=len(single["per_class"]),
                             **recipe.model_options)
        rows.append({
            "recipe": recipe.name,
            "model": recipe.model,
            "params": count_params(model),
            "branches": getattr(model, "branches", "-"),
            "augmentation": describe_augment(recipe),
            "val_acc": summary["best_val_acc"],
            "test_acc": single["accuracy"],
            "test_acc_tta": tta["accuracy"],
            "epochs": f"{summary['epochs_done']}/{recipe.epochs}",
            "wall_minutes": summary["wall_seconds"] / 60,
            "device": summary["device"],
            "published": PUBLISHED.get(recipe.model, ""),
        })
        (out / "results.json").write_text(json.dumps(rows, indent=2))
    lines = [
        "| recipe | model | params | branches | augmentation | PublicTest (select) | "
        "PrivateTest single-crop | PrivateTest ten-crop TTA | epochs | wall (min) | device | "
        "published |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['recipe']} | {r['model']} | {r['params']:,} | {r['branches']} | "
            f"{r['augmentation']} | {100 * r['val_acc']:.2f}% | {100 * r['test_acc']:.2f}% | "
            f"{100 * r['test_acc_tta']:.2f}% | {r['epochs']} | {r['wall_minutes']:.1f} | "
            f"{r['device']} | {r['published']} |"
        )
    table = out / "results.md"
    table.write_text("\n".join(lines) + "\n")
    return table
