"""Checkpoints: weights as safetensors beside a JSON file of metadata, written atomically."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from .devices import resolve_device
from .fileio import write_atomically
from .models import create_model


def save_checkpoint(
    model: nn.Module, path: str | os.PathLike, metadata: dict, dtype: torch.dtype | None = None
) -> Path:
    """Write ``PATH.safetensors`` and ``PATH.json``; `path` is given without a suffix.

    ``dtype=torch.float16`` stores floating weights in half precision (shipped weights).
    """
    return write_checkpoint(weights_state(model, dtype), path, metadata)


def weights_state(model: nn.Module, dtype: torch.dtype | None = None,
                  copy: bool = False) -> dict[str, torch.Tensor]:
    """The model's weights as contiguous CPU tensors, as `write_checkpoint` writes them;
    ``copy``: never the model's own tensors (a CPU model's weights are otherwise shared, and
    change as it trains on)."""
    state = {}
    for k, v in model.state_dict().items():
        v = v.detach().to("cpu", copy=copy).contiguous()
        if dtype is not None and v.is_floating_point():
            v = v.to(dtype)
        state[k] = v
    return state


def write_checkpoint(state: dict[str, torch.Tensor], path: str | os.PathLike,
                     metadata: dict) -> Path:
    """Write `weights_state`'s ``state`` as ``PATH.safetensors`` beside ``PATH.json``."""
    base = Path(path)
    base.parent.mkdir(parents=True, exist_ok=True)
    # JSON first, weights last: a reader that sees new weights also sees their metadata
    text = json.dumps(metadata, indent=2).encode()
    write_atomically(_file(base, ".json"), lambda tmp: tmp.write_bytes(text))
    return write_atomically(
        _file(base, ".safetensors"), lambda tmp: save_file(state, str(tmp), metadata={"format": "pt"})
    )


def read_metadata(path: str | os.PathLike) -> dict:
    meta_file = _file(_base(path), ".json")
    if not meta_file.exists():
        raise FileNotFoundError(f"{meta_file}: checkpoint metadata not found")
    try:
        meta = json.loads(meta_file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{meta_file}: unreadable checkpoint metadata ({exc})") from None
    missing = [k for k in ("model", "class_names") if k not in meta]
    if missing:
        raise ValueError(f"{meta_file}: checkpoint metadata lacks {missing}")
    return meta


def _base(path: str | os.PathLike) -> Path:
    p = Path(path)
    return p.with_suffix("") if p.suffix in (".safetensors", ".json") else p


def _file(base: Path, suffix: str) -> Path:
    # not with_suffix: a name such as best-lr0.5 has a dot of its own
    return base.with_name(base.name + suffix)


def load_checkpoint(path: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[nn.Module, dict]:
    """The model (eval mode, float32) and metadata of a checkpoint written by `save_checkpoint`.

    ``device``: as `ferkit.devices.resolve_device` takes it (``auto``, ``cpu``, ``cuda``,
    ``cuda:N``); one this machine lacks is a ValueError. Weights that cannot be read
    (truncated, not a safetensors file) or do not fit the model the metadata names are a
    ValueError naming the file."""
    dev = resolve_device(device)
    base = _base(path)
    weights = _file(base, ".safetensors")
    if not weights.exists():
        raise FileNotFoundError(f"{weights}: checkpoint weights not found")
    meta = read_metadata(base)
    model = create_model(
        meta["model"], num_classes=len(meta["class_names"]), **meta.get("model_options", {})
    )
    try:
        tensors = load_file(str(weights))
    except Exception as exc:  # safetensors' own error type, or an OSError
        raise ValueError(
            f"{weights}: unreadable checkpoint weights, truncated or not a safetensors file "
            f"({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})"
        ) from None
    state = {k: v.float() if v.is_floating_point() else v for k, v in tensors.items()}
    try:
        model.load_state_dict(state)
    except RuntimeError:
        raise ValueError(
            f"{weights}: weights do not fit model {meta['model']!r} with options "
            f"{meta.get('model_options', {})} and {len(meta['class_names'])} classes "
            f"({_misfit(model.state_dict(), state)})"
        ) from None
    return model.to(dev).eval(), meta


def _misfit(expected: dict[str, torch.Tensor], found: dict[str, torch.Tensor]) -> str:
    """What differs between a model's state and a checkpoint's: a few names, and shapes."""
    shape = lambda t: " x ".join(map(str, t.shape)) or "scalar"  # noqa: E731
    parts = []
    wrong = [k for k in expected if k in found and expected[k].shape != found[k].shape]
    if wrong:
        parts.append("shapes differ: " + ", ".join(
            f"{k} {shape(found[k])} in the file, {shape(expected[k])} in the model"
            for k in wrong[:3]) + (f" and {len(wrong) - 3} more" if len(wrong) > 3 else ""))
    for what, keys in (("missing from the file", [k for k in expected if k not in found]),
                       ("not in the model", [k for k in found if k not in expected])):
        if keys:
            parts.append(f"{len(keys)} tensor(s) {what}: " + ", ".join(keys[:3])
                         + (", ..." if len(keys) > 3 else ""))
    return "; ".join(parts) or "the state does not load"
