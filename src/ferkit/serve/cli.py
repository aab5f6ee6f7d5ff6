"""``ferkit serve``: the REST service and web page (needs ``pip install 'ferkit[serve]'``)."""

from __future__ import annotations

import argparse
import ipaddress
import os
import sys

from ..argtypes import number, whole_number
from ..predict_cli import add_recognizer_arguments
from . import (
    DEFAULT_HOST,
    DEFAULT_MAX_PIXELS,
    DEFAULT_MAX_UPLOAD_MB,
    DEFAULT_PORT,
    DEFAULT_QUEUE,
)


def add_parsers(subparsers) -> None:
    """Add the ``serve`` command to the ``ferkit`` command's subparsers."""
    p = subparsers.add_parser(
        "serve",
        help="REST service and web page for photos and webcams",
        description="Serve the recognizer over HTTP: POST /v1/predict (JSON), GET /v1/health, "
        "GET /v1/models, OpenAPI docs at /docs and a web page at / (upload, drag-and-drop or "
        "webcam). The model loads once at start-up; inference runs on --workers threads with "
        "at most --queue requests waiting (more get 503 with Retry-After). "
        "Needs: pip install 'ferkit[serve]'.",
    )
    p.add_argument(
        "--host",
        default=DEFAULT_HOST,
        help=f"address to listen on (default: {DEFAULT_HOST}, this machine only; 0.0.0.0 "
        "exposes the service, which has no authentication, to the network)",
    )
    p.add_argument(
        "--port",
        type=whole_number(0, 65535),
        default=DEFAULT_PORT,
        help=f"TCP port (default: {DEFAULT_PORT})",
    )
    p.add_argument(
        "--workers",
        type=whole_number(1),
        default=1,
        help="inference threads sharing the one loaded model (default: 1); PyTorch's CPU "
        "threads are divided between them",
    )
    p.add_argument(
        "--queue",
        type=whole_number(0),
        default=DEFAULT_QUEUE,
        help=f"requests that may wait for a free worker; more get 503 (default: {DEFAULT_QUEUE})",
    )
    add_recognizer_arguments(p, backend=True)
    p.add_argument(
        "--max-upload-mb",
        type=number(0.0, open_low=True),
        default=DEFAULT_MAX_UPLOAD_MB,
        help=f"largest accepted upload in MB (2**20 bytes); larger gets 413 (default: {DEFAULT_MAX_UPLOAD_MB:g})",
    )
    p.add_argument(
        "--max-pixels",
        type=whole_number(1),
        default=DEFAULT_MAX_PIXELS,
        help="largest accepted image in pixels (width x height, read from the header before "
        f"decoding); larger gets 413 (default: {DEFAULT_MAX_PIXELS:,})",
    )
    p.add_argument(
        "--cors-origin",
        dest="cors_origins",
        nargs="+",
        action="extend",
        default=[],
        metavar="ORIGIN",
        help="let pages from ORIGIN (e.g. https://example.org, or *) call the API from a "
        "browser (default: CORS off, only the service's own page)",
    )
    p.add_argument(
        "--log-level",
        default="info",
        choices=["critical", "error", "warning", "info", "debug"],
        help="uvicorn's log level (default: info)",
    )
    p.set_defaults(func=run_serve)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _share_cpu_threads(workers: int) -> None:
    """Divide PyTorch's intra-op threads between the inference workers."""
    if workers <= 1:
        return
    import torch

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    torch.set_num_threads(max(1, (cores or 1) // workers))


def run_serve(args: argparse.Namespace) -> int:
    try:
        import uvicorn

        from .app import MB, Settings, create_app
    except ImportError as exc:
        print(
            f"ferkit: error: `ferkit serve` needs FastAPI and uvicorn ({exc}); "
            "install them with: pip install 'ferkit[serve]'",
            file=sys.stderr,
        )
        return 2
    settings = Settings(
        model=args.model,
        detector=args.detector,
        device=args.device,
        backend=args.backend,
        workers=args.workers,
        queue=args.queue,
        max_upload_bytes=int(args.max_upload_mb * MB),
        max_pixels=args.max_pixels,
        cors_origins=tuple(args.cors_origins),
    )
    _share_cpu_threads(args.workers)
    app = create_app(settings=settings)  # loads the model now, before listening
    if not _is_loopback(args.host):
        print(
            f"ferkit: warning: listening on {args.host}: anyone who can reach this machine can "
            "use the service (it has no authentication)",
            file=sys.stderr,
        )
    shown = f"[{args.host}]" if ":" in args.host else args.host
    print(
        f"ferkit serve: model {app.state.model_name} on http://{shown}:{args.port}/ "
        f"({args.workers} worker(s), queue {args.queue}); Ctrl+C stops",
        file=sys.stderr,
    )
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)
    return 0
