"""``ferkit serve``: the REST service and web page (needs ``pip install 'ferkit[serve]'``)."""

from __future__ import annotations

import argparse
import errno
import ipaddress
import os
import socket
import sys

from ..argtypes import number, whole_number
from ..predict_cli import add_recognizer_arguments, detector_from_args
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
        "GET /v1/models, the OpenAPI schema at /openapi.json (docs pages at /docs and /redoc, "
        "which load their scripts from cdn.jsdelivr.net) and a web page at / (upload, "
        "drag-and-drop or webcam; works offline). The port is taken first, then the model "
        "loads once; inference runs on --workers threads with at most --queue requests "
        "waiting (more get 503 with Retry-After). Needs: pip install 'ferkit[serve]'.",
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
        help=f"TCP port (default: {DEFAULT_PORT}; 0: any free port, printed at start-up)",
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
        help="let pages from ORIGIN (scheme://host[:port] as browsers send it, e.g. "
        "https://example.org, no trailing /; or *) call the API from a browser (default: "
        "CORS off, only the service's own page)",
    )
    p.add_argument(
        "--allowed-host",
        dest="allowed_hosts",
        nargs="+",
        action="extend",
        default=[],
        metavar="NAME",
        help="host names the service answers to besides its own (the Host header without its "
        "port; others get 400), e.g. the machine's name or the proxy's public name, or * for "
        "any (default: on a loopback --host, localhost, 127.0.0.1 and ::1 only, which stops "
        "other sites' pages from reaching it by DNS rebinding; on another --host, any)",
    )
    p.add_argument(
        "--root-path",
        default="",
        metavar="PREFIX",
        help="the path prefix a reverse proxy serves ferkit under (e.g. /fer), so that "
        "/docs and the schema's links include it; the web page works under any prefix",
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


LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")


def allowed_hosts(host: str, given: list[str]) -> tuple[str, ...]:
    """The Host names to answer to: on a loopback address its own names (DNS rebinding
    cannot reach it) and those given; on another address those given, or any (empty)."""
    if "*" in given:
        return ()
    if _is_loopback(host):
        return tuple(dict.fromkeys((*LOOPBACK_NAMES, host, *given)))
    return tuple(given)


def _root_path(value: str) -> str:
    """``/fer`` from ``fer``, ``/fer/`` or ``/fer``; empty stays empty."""
    value = value.strip().strip("/")
    return f"/{value}" if value else ""


def _share_cpu_threads(workers: int, threads: int | None = None) -> None:
    """Give each inference worker ``threads`` of PyTorch's intra-op threads (default: the
    cores divided between the workers)."""
    if workers <= 1 and threads is None:
        return
    import torch

    if threads is None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        threads = max(1, (cores or 1) // workers)
    torch.set_num_threads(threads)


def _shown_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def listen_socket(host: str, port: int) -> socket.socket:
    """A socket bound to ``host``:``port`` (0: a free port), for uvicorn to listen on.

    Bound before the model loads, so that a port in use fails at once with a clear message
    (not after the model has loaded, in uvicorn's log) and port 0 can be announced as the
    port it became. OSError, with that message, when the address cannot be had."""
    where = f"{_shown_host(host)}:{port}"
    # the address family as uvicorn picks it for --host: IPv6 for an address with a colon
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    try:
        if os.name == "posix":  # as uvicorn does: a restart need not wait for TIME_WAIT
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        # listening already holds the port; connections made while the model loads wait
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        reason = "address already in use" if exc.errno == errno.EADDRINUSE else exc.strerror
        raise OSError(f"cannot listen on {where} ({reason or exc})") from None
    return sock


def _import_multipart() -> None:
    """python-multipart, which form uploads (the web page's among them) need: without it
    the service would start and answer every multipart request with 500. ImportError
    when it is missing."""
    try:
        import python_multipart  # noqa: F401 - its name since python-multipart 0.0.13
    except ModuleNotFoundError:
        try:
            from multipart.multipart import parse_options_header  # noqa: F401 - older ones
        except ImportError:
            raise ImportError("No module named 'python_multipart'") from None


def run_serve(args: argparse.Namespace) -> int:
    """Take the port, load the model, announce the address and run uvicorn. Start-up errors
    (a device this machine lacks, a missing checkpoint) propagate as they are:
    ``ferkit.cli.main`` reports them as one ``ferkit: error:`` line."""
    try:
        import uvicorn

        from .app import MB, Settings, create_app

        _import_multipart()
    except ImportError as exc:
        print(
            f"ferkit: error: `ferkit serve` needs FastAPI and uvicorn ({exc}); "
            "install them with: pip install 'ferkit[serve]'",
            file=sys.stderr,
        )
        return 2
    if not args.host.strip():
        # an empty address would listen on every interface, announced as http://:PORT/
        print(
            "ferkit: error: --host is empty; give an address, e.g. 127.0.0.1 (this machine "
            "only, the default) or 0.0.0.0 (every interface)",
            file=sys.stderr,
        )
        return 2
    if int(args.max_upload_mb * MB) < 1:
        print(
            f"ferkit: error: --max-upload-mb {args.max_upload_mb:g} is less than one byte; "
            "give the largest accepted upload in MB, e.g. 10",
            file=sys.stderr,
        )
        return 2
    try:
        sock = listen_socket(args.host, args.port)
    except OSError as exc:
        print(f"ferkit: error: {exc}", file=sys.stderr)
        return 2
    with sock:  # closed however the start-up or the service ends
        settings = Settings(
            model=args.model,
            detector=detector_from_args(args),
            device=args.device,
            backend=args.backend,
            auto_contrast=args.auto_contrast,
            tta=args.tta,
            workers=args.workers,
            queue=args.queue,
            max_upload_bytes=int(args.max_upload_mb * MB),
            max_pixels=args.max_pixels,
            cors_origins=tuple(args.cors_origins),
            allowed_hosts=allowed_hosts(args.host, args.allowed_hosts),
        )
        _share_cpu_threads(args.workers, args.threads)
        app = create_app(settings=settings)  # loads the model now, before listening
        if not _is_loopback(args.host):
            print(
                f"ferkit: warning: listening on {args.host}: anyone who can reach this machine "
                "can use the service (it has no authentication)",
                file=sys.stderr,
            )
        port = sock.getsockname()[1]  # the real one when --port is 0
        print(
            f"ferkit serve: model {app.state.model_name} on "
            f"http://{_shown_host(args.host)}:{port}/ ({args.workers} worker(s), queue "
            f"{args.queue}); Ctrl+C stops",
            file=sys.stderr,
        )
        # uvicorn listens on the bound socket (host and port only name it in its log)
        config = uvicorn.Config(
            app,
            host=args.host,
            port=port,
            log_level=args.log_level,
            root_path=_root_path(args.root_path),
        )
        try:
            uvicorn.Server(config).run(sockets=[sock])
        except KeyboardInterrupt:  # uvicorn re-raises Ctrl+C once it has shut down
            pass
    return 0
