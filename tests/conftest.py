"""Shared synthetic-data fixtures (no real FER2013 data is ever written into the repo)."""

from __future__ import annotations

import bz2
import contextlib
import gzip
import lzma
from pathlib import Path

import numpy as np
import pytest
import torch


@pytest.fixture
def ferkit_cache(tmp_path_factory, monkeypatch) -> Path:
    """A fresh ``FERKIT_CACHE`` folder for the test (nothing goes to ~/.cache)."""
    folder = tmp_path_factory.mktemp("ferkit-cache")
    monkeypatch.setenv("FERKIT_CACHE", str(folder))
    return folder


@pytest.fixture
def make_images():
    """``make_images(n, seed=0, smooth=False)``: n distinct uint8 48 x 48 images.

    ``smooth`` gives gentle gradients that survive JPEG almost unchanged.
    """

    def make(n: int, seed: int = 0, smooth: bool = False) -> np.ndarray:
        rng = np.random.default_rng(seed)
        if not smooth:
            return rng.integers(0, 256, size=(n, 48, 48), dtype=np.uint8)
        y, x = np.mgrid[0:48, 0:48] / 47.0
        out = []
        for i in range(n):
            a, b = rng.uniform(-60, 60, size=2)
            out.append(np.clip(40 + 4 * i + a * x + b * y + 60, 0, 255))
        return np.rint(np.stack(out)).astype(np.uint8)

    return make


@pytest.fixture
def write_csv():
    """``write_csv(path, header, rows, crlf=False, quote=False)``: a CSV, compressed by suffix.

    ``rows`` are lists of fields; an ``np.ndarray`` field is written as space-separated pixels.
    """

    def write(path, header, rows, crlf: bool = False, quote: bool = False) -> Path:
        path = Path(path)

        def cell(v) -> str:
            s = " ".join(map(str, v.ravel().tolist())) if isinstance(v, np.ndarray) else str(v)
            return f'"{s}"' if quote else s

        end = "\r\n" if crlf else "\n"
        lines = [header] + [",".join(cell(v) for v in row) for row in rows]
        data = (end.join(lines) + end).encode()
        opener = {".gz": gzip.compress, ".xz": lzma.compress, ".bz2": bz2.compress}
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(opener.get(path.suffix, bytes)(data))
        return path

    return write


RANDOM_MODEL_META = {
    "model": "mba_cnn",
    "model_options": {},
    "class_names": ["angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"],
    "preprocessing": {"size": 48, "gray": True, "mean": 0.5, "std": 0.25},
}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A randomly initialised MBA-CNN saved as a shipped-style checkpoint (no trained weights)."""
    from ferkit.checkpoint import save_checkpoint
    from ferkit.models import create_model

    torch.manual_seed(0)
    base = tmp_path_factory.mktemp("ckpt") / "random"
    save_checkpoint(create_model("mba_cnn"), base, RANDOM_MODEL_META, dtype=torch.float16)
    return base


def require_serve_extra() -> None:
    """Skip the calling test module unless the packages of ``ferkit[serve]`` are installed."""
    for module in ("fastapi", "uvicorn"):
        pytest.importorskip(module, reason=f"the REST service needs {module}: pip install "
                            "'ferkit[serve]'")
    try:
        import python_multipart  # noqa: F401 - the module's name since python-multipart 0.0.13
    except ImportError:
        pytest.importorskip(
            "multipart", reason="uploads need python-multipart: pip install 'ferkit[serve]'"
        )


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """A module's own ferkit cache (the training tests' data is parsed once per module)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FERKIT_CACHE", str(tmp_path_factory.mktemp("fkc")))
        yield


@pytest.fixture(scope="module")
def pack(env, tmp_path_factory) -> Path:
    """The training tests' learnable bar faces (test_train's `bar_faces`) as a pack."""
    from test_train import SPLITS, bar_faces

    return bar_faces(SPLITS).save_pack(tmp_path_factory.mktemp("data") / "bars.fkpack", preset=1)


@contextlib.contextmanager
def serve_in_thread(app):
    """``app`` served by uvicorn on a free loopback port, in a thread; yields its URL
    (needs ``ferkit[serve]``)."""
    import socket
    import threading
    import time

    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    srv = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=srv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    end = time.monotonic() + 30
    while not srv.started:
        assert thread.is_alive() and time.monotonic() < end, "the server did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        srv.should_exit = True
        thread.join(15)
        sock.close()
