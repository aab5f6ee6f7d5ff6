"""ferkit: facial expression recognition with a fast, faithful MBA-CNN.

The public names are imported on first use (PEP 562), so that importing ``ferkit`` (and
``ferkit --help``) does not import torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

__version__ = "0.1.0"

if TYPE_CHECKING:
    from .data import FaceSet
    from .models import create_model, list_models
    from .recipe import Recipe
    from .recognize import Face, Recognizer
    from .train import fit
    from .weights import load_model

#: Each public name and the submodule that defines it.
_PUBLIC = {
    "Face": "recognize",
    "FaceSet": "data",
    "Recipe": "recipe",
    "Recognizer": "recognize",
    "create_model": "models",
    "fit": "train",
    "list_models": "models",
    "load_model": "weights",
}

__all__ = [
    "Face",
    "FaceSet",
    "Recipe",
    "Recognizer",
    "__version__",
    "create_model",
    "fit",
    "list_models",
    "load_model",
]


def __getattr__(name: str):
    from importlib import import_module

    if name in _PUBLIC:
        value = getattr(import_module(f"{__name__}.{_PUBLIC[name]}"), name)
        globals()[name] = value  # looked up once
        return value
    if not name.startswith("_"):  # `import ferkit; ferkit.models.X` worked when this
        try:  # module imported its submodules eagerly; it still does
            return import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"{__name__}.{name}":
                raise
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    """The public names and the submodules (not this module's own helpers)."""
    from pkgutil import iter_modules

    return sorted(set(__all__) | {m.name for m in iter_modules(__path__) if m.name[0] != "_"})
