"""Load test of ``ferkit serve``: concurrent clients posting a 640 x 480 one-face photo.

Each client is a thread with its own keep-alive HTTP connection, posting the photo as a raw
``image/jpeg`` body to ``/v1/predict`` for ``--seconds``. Prints requests/s, latency
percentiles (p50/p95/p99) of the successful requests and the count of each answer status.

``--overload`` runs ``--overload-factor`` (4) times the clients: the service is expected to
answer 503 (with Retry-After) to what its queue cannot hold, without failing otherwise; once
the load stops it waits for the pool to drain and checks that requests succeed again.

    # against a running service
    PYTHONPATH=src python benchmarks/serve_load.py --url http://127.0.0.1:8000 --clients 4
    # start one (a subprocess) with a checkpoint, or random weights to test the machinery
    PYTHONPATH=src python benchmarks/serve_load.py --start --model runs/x/best --seconds 20
    PYTHONPATH=src python benchmarks/serve_load.py --start --random-weights --overload
"""

from __future__ import annotations

import argparse
import io
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

from ferkit.argtypes import number, whole_number

_LAUNCH = (
    "import argparse, sys\n"
    "from ferkit.serve.cli import add_parsers\n"
    "p = argparse.ArgumentParser(prog='ferkit')\n"
    "add_parsers(p.add_subparsers(dest='command', required=True))\n"
    "a = p.parse_args(sys.argv[1:])\n"
    "sys.exit(a.func(a))\n"
)


def make_photo(width: int = 640, height: int = 480) -> bytes:
    """The bundled sample (one face) fitted into a grey width x height canvas, as JPEG."""
    from ferkit import samples

    canvas = Image.new("RGB", (width, height), (128, 128, 128))
    with Image.open(samples.path("astronaut")) as img:
        img = img.convert("RGB")
        img.thumbnail((width, height), Image.Resampling.LANCZOS)
        canvas.paste(img, ((width - img.width) // 2, (height - img.height) // 2))
    buf = io.BytesIO()
    canvas.save(buf, "JPEG", quality=90)
    return buf.getvalue()


def random_checkpoint(folder: Path) -> Path:
    """A randomly initialised MBA-CNN checkpoint (the same cost as trained weights)."""
    import torch

    from ferkit.checkpoint import save_checkpoint
    from ferkit.models import create_model

    torch.manual_seed(0)
    meta = {
        "model": "mba_cnn",
        "model_options": {},
        "class_names": ["angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"],
        "preprocessing": {"size": 48, "gray": True, "mean": 0.5, "std": 0.25},
    }
    base = folder / "random-weights"
    save_checkpoint(create_model("mba_cnn"), base, meta, dtype=torch.float16)
    return base


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(args, model: str | None, log_path: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    cmd = [sys.executable, "-c", _LAUNCH, "serve", "--host", "127.0.0.1", "--port", str(port)]
    cmd += ["--workers", str(args.workers), "--queue", str(args.queue), "--log-level", "warning"]
    if model:
        cmd += ["--model", model]
    if args.device:
        cmd += ["--device", args.device]
    log = open(log_path, "wb")  # closed by stop_server
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    proc.log = log
    url = f"http://127.0.0.1:{port}"
    end = time.monotonic() + args.start_timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            log.close()
            raise SystemExit(
                f"the server exited with status {proc.returncode}; its log:\n"
                + log_path.read_text(errors="replace")
            )
        try:
            if httpx.get(url + "/v1/health", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    stop_server(proc)
    raise SystemExit(f"the server did not answer within {args.start_timeout} s")


def stop_server(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    proc.log.close()


class Result:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.latencies: list[float] = []  # seconds, successful requests
        self.statuses: Counter = Counter()

    def add(self, status, latency: float) -> None:
        with self.lock:
            self.statuses[status] += 1
            if status == 200:
                self.latencies.append(latency)


def client_loop(url, photo, stop: threading.Event, result: Result, busy_pause: float) -> None:
    headers = {"Content-Type": "image/jpeg"}
    with httpx.Client(base_url=url, timeout=60) as http:
        while not stop.is_set():
            t0 = time.perf_counter()
            try:
                r = http.post("/v1/predict", content=photo, headers=headers)
                status = r.status_code
            except httpx.HTTPError as exc:
                status = type(exc).__name__
            result.add(status, time.perf_counter() - t0)
            if status != 200:
                # a client that hammers a refusing server only measures the refusals
                stop.wait(busy_pause)


def run_load(url: str, photo: bytes, clients: int, seconds: float, busy_pause: float) -> dict:
    result, stop = Result(), threading.Event()
    threads = [
        threading.Thread(target=client_loop, args=(url, photo, stop, result, busy_pause))
        for _ in range(clients)
    ]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    time.sleep(seconds)
    stop.set()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - t0  # includes the requests in flight when stopped
    lat = np.array(result.latencies) * 1000
    total = sum(result.statuses.values())
    return {
        "clients": clients,
        "seconds": elapsed,
        "requests": total,
        "ok": len(lat),
        "rps": total / elapsed,
        "ok_rps": len(lat) / elapsed,
        "p50": float(np.percentile(lat, 50)) if len(lat) else float("nan"),
        "p95": float(np.percentile(lat, 95)) if len(lat) else float("nan"),
        "p99": float(np.percentile(lat, 99)) if len(lat) else float("nan"),
        "statuses": dict(sorted(result.statuses.items(), key=lambda kv: str(kv[0]))),
    }


def report(title: str, r: dict) -> None:
    print(f"{title}: {r['clients']} clients, {r['seconds']:.1f} s")
    print(
        f"  requests/s {r['rps']:.1f} (successful {r['ok_rps']:.1f}); "
        f"{r['requests']} requests, {r['ok']} successful"
    )
    print(
        f"  latency of successful requests: p50 {r['p50']:.0f} ms, p95 {r['p95']:.0f} ms, "
        f"p99 {r['p99']:.0f} ms"
    )
    print("  answers: " + ", ".join(f"{k}: {v}" for k, v in r["statuses"].items()))


def check_recovery(url: str, photo: bytes, timeout: float = 60.0) -> float:
    """Seconds until the pool is idle and 3 requests in a row succeed after an overload."""
    t0 = time.perf_counter()
    with httpx.Client(base_url=url, timeout=60) as http:
        while True:
            h = http.get("/v1/health").json()
            if h["busy"] == 0 and h["waiting"] == 0:
                break
            if time.perf_counter() - t0 > timeout:
                raise SystemExit(f"not recovered after {timeout} s: {h}")
            time.sleep(0.05)
        for _ in range(3):
            r = http.post("/v1/predict", content=photo, headers={"Content-Type": "image/jpeg"})
            if r.status_code != 200:
                raise SystemExit(f"not recovered: {r.status_code} {r.text}")
            if len(r.json()["faces"]) != 1:
                raise SystemExit(f"expected one face, got {r.json()['faces']}")
    return time.perf_counter() - t0


def check_service(url: str) -> None:
    """Exit with one line unless a ferkit service answers ``url + /v1/health``."""
    try:
        r = httpx.get(url + "/v1/health", timeout=10)
    except httpx.TransportError:
        raise SystemExit(
            f"error: no service at {url}; start one (ferkit serve) or use --start"
        ) from None
    try:
        ok = r.status_code == 200 and {"model", "workers", "queue_size"} <= set(r.json())
    except ValueError:
        ok = False
    if not ok:
        raise SystemExit(
            f"error: {url}/v1/health answered {r.status_code}, not as ferkit serve does; "
            "is it a ferkit service?"
        )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    where = p.add_mutually_exclusive_group()
    where.add_argument("--url", default="http://127.0.0.1:8000", help="a running service")
    where.add_argument("--start", action="store_true", help="start a service (a subprocess)")
    p.add_argument("--model", default=None, help="with --start: weights name or checkpoint")
    p.add_argument(
        "--random-weights", action="store_true", help="with --start: a random MBA-CNN checkpoint"
    )
    p.add_argument("--device", default=None, help="with --start: the service's --device")
    p.add_argument("--workers", type=whole_number(1), default=1,
                   help="with --start: inference threads")
    p.add_argument("--queue", type=whole_number(0), default=8, help="with --start: the wait queue")
    p.add_argument("--start-timeout", type=number(0, open_low=True), default=120.0)
    p.add_argument("--clients", type=whole_number(1), default=4,
                   help="concurrent clients (default: 4)")
    p.add_argument("--seconds", type=number(0, open_low=True), default=10.0,
                   help="load duration (default: 10)")
    p.add_argument("--warmup", type=whole_number(0), default=3, help="sequential requests first")
    p.add_argument(
        "--overload", action="store_true", help="also run --overload-factor times the clients"
    )
    p.add_argument("--overload-factor", type=whole_number(1), default=4)
    p.add_argument(
        "--busy-pause",
        type=number(0),
        default=0.05,
        help="seconds a client waits after a non-200 answer (default: 0.05)",
    )
    args = p.parse_args(argv)
    if (args.model or args.random_weights) and not args.start:
        p.error("--model and --random-weights need --start")
    if not args.start and not args.url.startswith(("http://", "https://")):
        p.error(f"--url {args.url}: expected http://HOST:PORT")
    if not args.start:  # before anything else: is there a service at --url at all?
        check_service(args.url.rstrip("/"))

    photo = make_photo()
    print(f"photo: 640 x 480 JPEG, {len(photo) / 1024:.0f} KiB, one face; CPUs {os.cpu_count()}")
    with tempfile.TemporaryDirectory(prefix="serve-load-") as tmp:
        proc = None
        url = args.url.rstrip("/")
        if args.start:
            model = args.model
            if args.random_weights:
                model = str(random_checkpoint(Path(tmp)))
            proc, url = start_server(args, model, Path(tmp) / "server.log")
            print(f"started the service at {url} (workers {args.workers}, queue {args.queue})")
        try:
            health = httpx.get(url + "/v1/health", timeout=10).json()
            print(
                f"service: model {health['model']}, {health['workers']} worker(s), "
                f"queue {health['queue_size']}"
            )
            with httpx.Client(base_url=url, timeout=60) as http:
                for _ in range(args.warmup):
                    r = http.post(
                        "/v1/predict", content=photo, headers={"Content-Type": "image/jpeg"}
                    )
                    r.raise_for_status()
                faces = r.json()["faces"] if args.warmup else None
            if faces is not None:
                print(f"warm-up: {len(faces)} face(s) found, server {r.json()['timing_ms']}")
            report("load", run_load(url, photo, args.clients, args.seconds, args.busy_pause))
            if args.overload:
                clients = args.clients * args.overload_factor
                capacity = health["workers"] + health["queue_size"]
                if clients <= capacity:
                    print(
                        f"note: the overload's {clients} clients fit in the service's "
                        f"{health['workers']} worker(s) + queue {health['queue_size']} = "
                        f"{capacity}: no 503 is expected; raise --clients or "
                        f"--overload-factor so that clients exceed {capacity}"
                    )
                over = run_load(url, photo, clients, args.seconds, args.busy_pause)
                report("overload", over)
                refused = over["statuses"].get(503, 0)
                others = {k: v for k, v in over["statuses"].items() if k not in (200, 503)}
                print(f"  503 (busy) answers: {refused}; other failures: {others or 'none'}")
                print(f"recovery: idle and answering again {check_recovery(url, photo):.2f} s "
                      "after the load stopped")  # fmt: skip
        finally:
            if proc is not None:
                stop_server(proc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
