"""Parameter and multiply-accumulate counts of the registered models; what a model gives
for one face (its class scores), in eval mode."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import torch
from torch import nn

from .registry import create_model, list_models, model_spec


@contextlib.contextmanager
def eval_mode(model: nn.Module):
    """``model`` in eval mode inside the block, and back in the mode it was in after it."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def model_device(model: nn.Module) -> torch.device:
    """The device of ``model``'s parameters (the CPU for a model without any)."""
    return next((p.device for p in model.parameters()), torch.device("cpu"))


def class_scores(model: nn.Module, size: int = 48) -> int:
    """How many class scores ``model`` gives: one blank gray 1 x size x size face through it
    on its own device, in eval mode, without gradients. A ValueError where it takes no such
    face."""
    face = torch.zeros(1, 1, size, size, device=model_device(model))
    try:
        with eval_mode(model), torch.no_grad():
            return int(model(face).shape[-1])
    except Exception as exc:
        raise ValueError(f"{type(model).__name__} does not take one 1 x {size} x {size} gray "
                         f"face ({type(exc).__name__}: {exc})") from None


def check_class_names(model: nn.Module, class_names: Sequence, size: int = 48,
                      given: str = "its metadata names") -> None:
    """A ValueError where ``model`` gives another number of class scores than there are
    ``class_names`` (a model given with metadata that is not its own); ``given`` says where
    the names come from."""
    scores = class_scores(model, size)
    if scores != len(class_names):
        raise ValueError(
            f"{type(model).__name__} gives {scores} class scores, but {given} "
            f"{len(class_names)} classes ({', '.join(map(str, class_names))})"
        )


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def count_macs(model: nn.Module, size: int = 48, in_chans: int = 1) -> int:
    """Multiply-accumulates of one forward pass (convolutions and linear layers)."""
    total = 0

    def conv_hook(mod: nn.Conv2d, _inp, out):
        nonlocal total
        k = mod.kernel_size[0] * mod.kernel_size[1] * (mod.in_channels // mod.groups)
        total += out.numel() * k

    def linear_hook(mod: nn.Linear, _inp, out):
        nonlocal total
        total += out.numel() * mod.in_features

    hooks = []
    for mod in model.modules():
        if isinstance(mod, nn.Conv2d):
            hooks.append(mod.register_forward_hook(conv_hook))
        elif isinstance(mod, nn.Linear):
            hooks.append(mod.register_forward_hook(linear_hook))
    was_training = model.training
    model.eval()
    with torch.no_grad():
        model(torch.zeros(1, in_chans, size, size))
    model.train(was_training)
    for h in hooks:
        h.remove()
    return total


def model_table(num_classes: int = 7) -> list[dict]:
    rows = []
    for name in list_models():
        model = create_model(name, num_classes=num_classes)
        rows.append({
            "name": name,
            "params": count_params(model),
            "gmacs": count_macs(model) / 1e9,
            "description": model_spec(name).description,
        })
    return rows
