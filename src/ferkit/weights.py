"""Pretrained weights shipped inside the package (``ferkit/weights/NAME.safetensors`` + ``.json``)."""

from __future__ import annotations

import json
import os
from importlib.resources import as_file, files
from pathlib import Path

import torch
from torch import nn

from .checkpoint import _base, _file, load_checkpoint

DEFAULT_MODEL = "mba_cnn-fer2013"


def _weights_folder():
    return files("ferkit").joinpath("weights")


def available_weights() -> list[str]:
    """Names of the shipped checkpoints (weights and metadata both present)."""
    folder = _weights_folder()
    if not folder.is_dir():
        return []
    names = {p.name for p in folder.iterdir()}
    return sorted(
        n.removesuffix(".safetensors")
        for n in names
        if n.endswith(".safetensors") and n.removesuffix(".safetensors") + ".json" in names
    )


def best_checkpoint(folder: Path) -> Path | None:
    """A run folder's selected weights: ``best``, or the ``best-fp16`` copy a GPU call
    brings back (None: neither is there)."""
    for stem in ("best", "best-fp16"):
        if (folder / f"{stem}.safetensors").exists():
            return folder / stem
    return None


def load_model(
    name: str | os.PathLike = DEFAULT_MODEL, device: str | torch.device = "cpu"
) -> tuple[nn.Module, dict]:
    """``(model, metadata)`` of shipped weights by name, or of a checkpoint by path.

    A name of the shipped weights wins over a file of the same name; a path may be given
    with or without its ``.safetensors`` / ``.json`` suffix, or be the folder of a run
    written by `ferkit train` (its ``best`` checkpoint, or ``best-fp16``).
    """
    shipped = available_weights()
    if str(name) in shipped:
        with as_file(_weights_folder()) as folder:
            return load_checkpoint(Path(folder) / str(name), device)
    path = Path(name)
    if path.is_dir():
        best = best_checkpoint(path)
        if best is not None:
            return load_checkpoint(best, device)
        found = sorted(p.stem for p in path.glob("*.safetensors"))
        raise FileNotFoundError(
            f"{name}: a folder without a best checkpoint (best.safetensors); "
            + (f"pass one of its checkpoints: {', '.join(str(path / f) for f in found)}"
               if found else "it holds no .safetensors checkpoint")
        )
    base = _base(path)  # not with_suffix: a name such as best-lr0.5 has a dot of its own
    if _file(base, ".safetensors").exists():
        return load_checkpoint(base, device)
    available = ", ".join(shipped) if shipped else "none are installed in this copy of ferkit"
    raise FileNotFoundError(
        f"{name}: neither shipped weights (available: {available}) nor a checkpoint "
        f"({_file(base, '.safetensors')} not found); pass the path of a checkpoint "
        "written by `ferkit train`"
    )


def weights_table() -> list[dict]:
    """One row per shipped checkpoint, from its metadata (the weights are not read): name,
    model, dataset, class names, whether it is the default, and its test scores as shipped
    (`scripts/ship_weights.py` scores the test split once per TTA mode)."""
    rows = []
    folder = _weights_folder()
    for name in available_weights():
        meta = json.loads(folder.joinpath(f"{name}.json").read_text())
        tests = meta.get("test_metrics") or {}
        scores = {mode: tests[mode]["accuracy"] for mode in ("none", "flip", "ten-crop")
                  if isinstance(tests.get(mode), dict) and "accuracy" in tests[mode]}
        rows.append({
            "name": name,
            "default": name == DEFAULT_MODEL,
            "model": meta.get("model"),
            "dataset": (meta.get("recipe") or {}).get("dataset"),
            "class_names": list(meta.get("class_names", [])),
            "test_split": next((t["split"] for t in tests.values()
                                if isinstance(t, dict) and "split" in t), None),
            "test_accuracy": scores,
        })
    return rows

