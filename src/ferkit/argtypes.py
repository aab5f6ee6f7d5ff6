"""argparse helpers shared by the commands: ``type=`` checkers (a clear message for a bad
value), `deferred` command functions and the shipped recipes' names; nothing here imports
torch."""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Callable
from importlib.resources import files
from pathlib import Path

#: The classifier runtimes every ``--backend`` offers: PyTorch, or onnxruntime on the CPU.
BACKENDS = ("torch", "onnx")
#: Test-time views (`ferkit.augment.tta_views`): the face; it and its mirror; ten crops.
TTA_MODES = ("none", "flip", "ten-crop")


def shipped_recipes() -> Path:
    """The folder of the recipes that ship with ferkit (read here, without the training
    code: ``ferkit train --help`` lists them)."""
    return Path(str(files("ferkit").joinpath("recipes")))


def recipe_names() -> list[str]:
    """Names of the recipes that ship with ferkit (``ferkit train --recipe NAME``)."""
    return sorted(p.stem for p in shipped_recipes().glob("*.yaml"))


def whole_number(low: int | None = None, high: int | None = None) -> Callable[[str], int]:
    """An int in ``[low, high]`` (either bound may be None)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
        if low is not None and value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}, not {value}")
        if high is not None and value > high:
            raise argparse.ArgumentTypeError(f"must be at most {high}, not {value}")
        return value

    return parse


def number(
    low: float | None = None, high: float | None = None, open_low: bool = False,
    open_high: bool = False,
) -> Callable[[str], float]:
    """A finite float between ``low`` and ``high``, each bound included unless ``open_*``."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        too_low = low is not None and (value <= low if open_low else value < low)
        too_high = high is not None and (value >= high if open_high else value > high)
        if value != value or too_low or too_high or abs(value) == float("inf"):
            left = "(" if open_low or low is None else "["
            right = ")" if open_high or high is None else "]"
            span = f"{left}{'-inf' if low is None else low}, {'inf' if high is None else high}{right}"
            raise argparse.ArgumentTypeError(f"must be in {span}, not {text}")
        return value

    return parse


def deferred(module: str, function: str) -> Callable[[argparse.Namespace], int]:
    """A command's ``func`` that imports ``module`` (torch and the like) only when the command
    runs, so that the parser, ``--help`` and usage errors stay light."""

    def run(args: argparse.Namespace) -> int:
        return getattr(importlib.import_module(module), function)(args)

    return run
