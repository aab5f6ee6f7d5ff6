"""Model registry: ``create_model(name, num_classes=7, in_chans=1, **options)``."""

from __future__ import annotations

import inspect
import numbers
from collections.abc import Callable
from dataclasses import dataclass, field

from torch import nn

from . import baselines
from .mba_cnn import MBACNN


@dataclass(frozen=True)
class ModelSpec:
    name: str
    builder: Callable[..., nn.Module]
    description: str
    defaults: dict = field(default_factory=dict)


_REGISTRY: dict[str, ModelSpec] = {}


def register(name: str, builder: Callable[..., nn.Module], description: str, **defaults) -> None:
    if name in _REGISTRY:
        raise ValueError(f"model {name!r} is already registered")
    _REGISTRY[name] = ModelSpec(name, builder, description, defaults)


def list_models() -> list[str]:
    """Names of the registered models (``create_model``'s first argument)."""
    return sorted(_REGISTRY)


def model_options(name: str) -> dict:
    """The options (keyword arguments beyond ``num_classes`` and ``in_chans``) of model
    ``name`` with their defaults, as `create_model` (and a recipe's ``model_options``) takes
    them."""
    spec = model_spec(name)
    params = inspect.signature(spec.builder).parameters
    options = {
        k: p.default
        for k, p in params.items()
        if k not in ("self", "num_classes", "in_chans")
        and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    }
    return {**options, **spec.defaults}


def model_spec(name: str) -> ModelSpec:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(
            f"unknown model {name!r}; available: {', '.join(list_models())}"
        ) from None


def _option_problem(value, default) -> str | None:
    """What a model option's value should be, where it is not that (by its default's kind):
    a bool for a switch, a whole number >= 1 for a count or size, a fraction in [0, 1) for a
    rate, a list of whole numbers >= 1 for widths and depths."""
    if isinstance(default, bool):
        return None if isinstance(value, bool) else "true or false"
    if isinstance(default, numbers.Integral):
        ok = (isinstance(value, numbers.Integral) and not isinstance(value, bool)
              and value >= 1)
        return None if ok else "a whole number >= 1"
    if isinstance(default, float):
        ok = (isinstance(value, numbers.Real) and not isinstance(value, bool)
              and 0 <= value < 1)
        return None if ok else "a fraction in [0, 1)"
    if isinstance(default, tuple | list):  # how many: the model's own check (stages, ...)
        ok = (isinstance(value, tuple | list) and len(value) > 0
              and all(_option_problem(v, default[0]) is None for v in value))
        return None if ok else "a list of whole numbers >= 1"
    return None


def create_model(name: str, num_classes: int = 7, in_chans: int = 1, **options) -> nn.Module:
    """Build a registered model. ``options`` override the model's defaults
    (`model_options` lists them); a wrong name, option or value is a ValueError naming it."""
    spec = model_spec(name)
    for key, value in (("num_classes", num_classes), ("in_chans", in_chans)):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
            raise ValueError(f"model {name!r}: {key} must be a whole number >= 1, not {value!r}")
    known = model_options(name)
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise ValueError(
            f"model {name!r} has no option {', '.join(map(repr, unknown))}; its options: "
            + ", ".join(f"{k} (default {v!r})" for k, v in known.items())
        )
    for key, value in options.items():
        problem = _option_problem(value, known[key])
        if problem:
            raise ValueError(f"model {name!r}: option {key} must be {problem}, not {value!r}")
    kwargs = {**spec.defaults, **options}
    try:
        return spec.builder(num_classes=int(num_classes), in_chans=int(in_chans), **kwargs)
    except (TypeError, ValueError) as exc:
        shown = ", ".join(f"{k}={v!r}" for k, v in options.items()) or "defaults"
        raise ValueError(f"model {name!r} with {shown}: {exc}") from None


register("mba_cnn", MBACNN, "MBA-CNN (He 2023): DSC + CBAM, three branches")
register("mba_cnn_conv", MBACNN, "MBA-CNN ablation: standard 3x3 convs instead of DSC",
         separable=False)
register("mba_cnn_no_cbam", MBACNN, "MBA-CNN ablation: no CBAM attention", attention=False)
register("mba_cnn_1branch", MBACNN, "MBA-CNN ablation: one branch (modules 1-2-3, no sum)",
         branches=1)
register("vulpe_cnn", baselines.VulpeCNN, "plain CNN of Vulpe-Grigorasi & Grigore (ATEE 2021)")
register("resnet18", baselines.ResNet18, "ResNet-18 for 48x48 gray input, from scratch")
register("vgg_fer", baselines.VGGFer, "VGG variant of Khaireddin & Chen (2021)")
