"""Parameter and multiply-accumulate counts of the registered models."""

from __future__ import annotations

import torch
from torch import nn

from .registry import create_model, list_models, model_spec


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
