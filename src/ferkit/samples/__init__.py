"""Public-domain sample photos shipped with ferkit (sources and licences in README.md here)."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

_FILES = {"astronaut": "astronaut.jpg"}


def names() -> list[str]:
    """Names of the bundled samples."""
    return sorted(_FILES)


def path(name: str = "astronaut") -> Path:
    """File path of a bundled sample photo, e.g. ``Recognizer().predict(path("astronaut"))``."""
    try:
        filename = _FILES[name]
    except KeyError:
        raise ValueError(f"unknown sample {name!r}; available: {', '.join(names())}") from None
    return Path(str(files(__name__).joinpath(filename)))
