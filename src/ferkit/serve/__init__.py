"""``ferkit serve``: a REST service and a web page for facial expression recognition.

Needs the ``serve`` extra (``pip install 'ferkit[serve]'``: FastAPI, uvicorn and
python-multipart). `create_app` builds the ASGI application; `Settings` holds its limits.
Importing this package does not import FastAPI, so ``ferkit --help`` works without it.
"""

from __future__ import annotations

__all__ = ["Settings", "create_app"]

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000
DEFAULT_MAX_UPLOAD_MB = 10.0
DEFAULT_MAX_PIXELS = 50_000_000
DEFAULT_QUEUE = 8


def __getattr__(name: str):
    if name in __all__:
        from . import app

        return getattr(app, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
