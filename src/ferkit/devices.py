"""The device a model runs on, named as the commands and functions take it."""

from __future__ import annotations

import torch


def _has(kind: str) -> bool:
    """Whether torch can run on a `kind` device (mps, xpu) on this machine."""
    if kind == "mps":
        backend = getattr(torch.backends, "mps", None)
        return bool(backend is not None and backend.is_available())
    module = getattr(torch, kind, None)
    try:
        return bool(module is not None and module.is_available())
    except Exception:  # a backend compiled in but broken
        return False


def available_devices() -> list[str]:
    """The devices this machine can run a model on, as `resolve_device` takes them."""
    found = ["cpu"]
    if torch.cuda.is_available() and torch.cuda.device_count():
        found.append("cuda" + (f" (cuda:0 to cuda:{torch.cuda.device_count() - 1})"
                               if torch.cuda.device_count() > 1 else ""))
    found += [kind for kind in ("mps", "xpu") if _has(kind)]
    return found


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``auto`` (CUDA when there is a GPU, else the CPU), ``cpu``, ``cuda`` or ``cuda:N``,
    ``mps`` or ``xpu`` where torch has them on this machine; anything else (``meta`` and the
    like, which cannot run a model), or a GPU this machine lacks, is a ValueError that says
    what there is."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"unknown device {device!r}; use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ValueError(f"device {device!r} requested but this machine has no CUDA GPU "
                             "(torch sees none); use --device cpu or auto")
        if dev.index is not None and dev.index >= count:
            raise ValueError(f"device {device!r} requested but this machine has {count} CUDA "
                             f"GPU(s): cuda:0 to cuda:{count - 1}")
    elif dev.type in ("mps", "xpu"):
        if not _has(dev.type):
            raise ValueError(f"device {device!r} requested but torch has no {dev.type} device on "
                             f"this machine; it has: {', '.join(available_devices())} "
                             "(--device auto picks one)")
    elif dev.type != "cpu":
        raise ValueError(f"device {device!r} cannot run a model here; use auto, cpu, cuda or "
                         f"cuda:N (this machine has: {', '.join(available_devices())})")
    return dev
