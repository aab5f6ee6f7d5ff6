"""The REST service (`ferkit.serve`): endpoints, limits, errors, the worker pool and the CLI."""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import struct
import threading
import time
import warnings
import zlib

import numpy as np
import pytest
from conftest import require_serve_extra
from PIL import Image

require_serve_extra()
pytest.importorskip("httpx", reason="FastAPI's TestClient needs httpx: pip install httpx")

with warnings.catch_warnings():
    # starlette >= 1 prefers httpx2 for its TestClient and warns when it falls back to httpx
    warnings.filterwarnings("ignore", "Using `httpx` with `starlette.testclient`")
    from fastapi.testclient import TestClient

from ferkit import samples  # noqa: E402
from ferkit.recognize import Recognizer  # noqa: E402
from ferkit.serve import cli as serve_cli  # noqa: E402
from ferkit.serve.app import InferencePool, Settings, create_app  # noqa: E402

CLASSES = ["angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"]


@pytest.fixture(scope="module")
def recognizer(checkpoint) -> Recognizer:
    return Recognizer(model=str(checkpoint), device="cpu")


@pytest.fixture(scope="module")
def photo() -> bytes:
    return samples.path("astronaut").read_bytes()


@pytest.fixture(scope="module")
def photo_size() -> tuple[int, int]:
    with Image.open(samples.path("astronaut")) as img:
        return img.size


def make_client(recognizer, **settings) -> TestClient:
    settings.setdefault("model_name", "random")
    return TestClient(create_app(recognizer, Settings(**settings)))


@pytest.fixture(scope="module")
def client(recognizer):
    with make_client(recognizer) as c:
        yield c


def png_bytes(width: int, height: int, colour=(128, 128, 128)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), colour).save(buf, "PNG")
    return buf.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header declares width x height and whose pixel data is a few bytes."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data))
            + kind
            + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0" * 16))
        + chunk(b"IEND", b"")
    )


def assert_error(response, status: int, code: str) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}
    assert body["error"]["code"] == code
    assert body["error"]["message"]
    return body["error"]


def check_sample_answer(body: dict, photo_size) -> None:
    assert set(body) == {"faces", "model", "timing_ms", "image"}
    assert body["model"] == "random"
    assert body["image"] == {"width": photo_size[0], "height": photo_size[1]}
    assert set(body["timing_ms"]) == {"queue_ms", "decode_ms", "inference_ms", "total_ms"}
    assert all(v >= 0 for v in body["timing_ms"].values())
    assert len(body["faces"]) == 1
    face = body["faces"][0]
    x, y, w, h = face["box"]
    assert 150 < x < 210 and 40 < y < 100 and 70 < w < 130 and 70 < h < 130  # the face
    assert list(face["scores"]) == CLASSES
    assert abs(sum(face["scores"].values()) - 1) < 1e-4
    assert face["label"] == max(face["scores"], key=face["scores"].get)
    assert face["confidence"] == pytest.approx(face["scores"][face["label"]])


# ---- POST /v1/predict ----


def test_predict_multipart(client, photo, photo_size):
    r = client.post("/v1/predict", files={"file": ("astronaut.jpg", photo, "image/jpeg")})
    assert r.status_code == 200, r.text
    check_sample_answer(r.json(), photo_size)


@pytest.mark.parametrize("content_type", ["image/jpeg", "application/octet-stream"])
def test_predict_raw_body(client, photo, photo_size, content_type):
    r = client.post("/v1/predict", content=photo, headers={"Content-Type": content_type})
    assert r.status_code == 200, r.text
    check_sample_answer(r.json(), photo_size)


def test_raw_and_multipart_give_the_same_faces(client, photo):
    a = client.post("/v1/predict", files={"file": ("x.jpg", photo, "image/jpeg")}).json()
    b = client.post("/v1/predict", content=photo, headers={"Content-Type": "image/jpeg"}).json()
    assert a["faces"] == b["faces"]


def test_multipart_part_without_a_type_and_a_misdeclared_type_are_sniffed(client, photo):
    # the bytes decide the format: a JPEG declared as PNG is still read
    r = client.post("/v1/predict", content=photo, headers={"Content-Type": "image/png"})
    assert r.status_code == 200 and len(r.json()["faces"]) == 1
    r = client.post("/v1/predict", files={"file": ("x", photo, "application/octet-stream")})
    assert r.status_code == 200 and len(r.json()["faces"]) == 1


def test_no_face_gives_an_empty_list(client):
    r = client.post("/v1/predict", files={"file": ("grey.png", png_bytes(64, 48), "image/png")})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["faces"] == []
    assert body["image"] == {"width": 64, "height": 48}


def test_exif_rotated_photo_reports_the_oriented_size(client, photo_size):
    buf = io.BytesIO()
    img = Image.new("RGB", (80, 40), (90, 90, 90))
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90 degrees when shown
    img.save(buf, "JPEG", exif=exif)
    r = client.post("/v1/predict", content=buf.getvalue(), headers={"Content-Type": "image/jpeg"})
    assert r.status_code == 200
    assert r.json()["image"] == {"width": 40, "height": 80}


# ---- limits and errors ----


def test_upload_too_large_413(recognizer, photo):
    limit = 10_000
    with make_client(recognizer, max_upload_bytes=limit) as c:
        big = photo[: limit + 1]
        err = assert_error(
            c.post("/v1/predict", content=big, headers={"Content-Type": "image/jpeg"}),
            413,
            "upload_too_large",
        )
        assert "10000 bytes" in err["message"]
        err = assert_error(
            c.post("/v1/predict", files={"file": ("big.jpg", big, "image/jpeg")}),
            413,
            "upload_too_large",
        )
        assert "10000 bytes" in err["message"]
        # a body beyond the file limit plus the multipart allowance: refused while read
        huge = photo * (1 + 70_000 // len(photo))
        err = assert_error(
            c.post("/v1/predict", files={"file": ("huge.jpg", huge, "image/jpeg")}),
            413,
            "upload_too_large",
        )
        assert "10000 bytes" in err["message"]
        small = png_bytes(40, 40)
        assert len(small) < limit
        assert c.post(
            "/v1/predict", content=small, headers={"Content-Type": "image/png"}
        ).is_success


def test_upload_limit_is_enforced_while_reading(recognizer):
    """A body without Content-Length is refused once the limit is passed, unread beyond it."""
    app = create_app(recognizer, Settings(max_upload_bytes=100_000))
    chunk, sent, messages = b"\0" * 16_384, [], []

    async def receive():
        if len(sent) >= 1000:  # 16 MB: never reached
            return {"type": "http.request", "body": b"", "more_body": False}
        sent.append(chunk)
        return {"type": "http.request", "body": chunk, "more_body": True}

    async def send(message):
        messages.append(message)

    asyncio.run(app(predict_scope(), receive, send))
    assert messages[0]["type"] == "http.response.start" and messages[0]["status"] == 413
    assert len(sent) * len(chunk) <= 100_000 + len(chunk)  # stopped right after the limit
    body = json.loads(b"".join(m.get("body", b"") for m in messages[1:]))
    assert body["error"]["code"] == "upload_too_large"
    app.state.pool.close()


def test_declared_content_length_over_the_limit_is_refused_at_once(recognizer):
    with make_client(recognizer, max_upload_bytes=1000) as c:
        r = c.post(
            "/v1/predict",
            content=b"\0" * 500,
            headers={"Content-Type": "image/jpeg", "Content-Length": "5000000"},
        )
    assert_error(r, 413, "upload_too_large")


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_too_many_pixels_413_before_decoding(client, recognizer):
    # 10000 x 10000 = 100 MP, over the default 50 MP limit; only the header is real
    bomb = png_header_only(10_000, 10_000)
    assert len(bomb) < 200
    err = assert_error(
        client.post("/v1/predict", content=bomb, headers={"Content-Type": "image/png"}),
        413,
        "too_many_pixels",
    )
    assert "10000 x 10000" in err["message"]
    # beyond PIL's own decompression-bomb limit
    huge = png_header_only(100_000, 100_000)
    assert_error(
        client.post("/v1/predict", files={"file": ("b.png", huge, "image/png")}),
        413,
        "too_many_pixels",
    )
    with make_client(recognizer, max_pixels=50 * 50) as c:
        r = c.post("/v1/predict", content=png_bytes(60, 50), headers={"Content-Type": "image/png"})
        assert_error(r, 413, "too_many_pixels")
        r = c.post("/v1/predict", content=png_bytes(50, 50), headers={"Content-Type": "image/png"})
        assert r.status_code == 200


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_pixel_limit_above_pils_own_is_honoured(recognizer, monkeypatch):
    """--max-pixels beyond PIL's decompression-bomb limit: PIL must not refuse what the
    service allows (its limit is scaled down here so that the images stay small)."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # PIL refuses > 2000 pixels
    with make_client(recognizer, max_pixels=5000) as c:
        assert Image.MAX_IMAGE_PIXELS >= 5000
        assert c.get("/v1/health").json()["limits"]["max_pixels"] == 5000
        r = c.post("/v1/predict", content=png_bytes(60, 60), headers={"Content-Type": "image/png"})
        assert r.status_code == 200, r.text  # 3600 pixels: within the service's limit
        r = c.post("/v1/predict", content=png_bytes(80, 80), headers={"Content-Type": "image/png"})
        assert "6,400 pixels" in assert_error(r, 413, "too_many_pixels")["message"]
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10**9)
    create_app(recognizer, Settings(max_pixels=5000)).state.pool.close()
    assert Image.MAX_IMAGE_PIXELS == 10**9  # never lowered


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        ("text/plain", b"hello"),
        ("application/json", b"{}"),
        ("image/svg+xml", b"<svg xmlns='http://www.w3.org/2000/svg'/>"),
        ("image/heic", b"\0\0\0\x18ftypheic"),
        (None, b"\xff\xd8\xff"),
    ],
)
def test_unsupported_media_type_415(client, content_type, body):
    headers = {"Content-Type": content_type} if content_type else {}
    r = client.post("/v1/predict", content=body, headers=headers)
    err = assert_error(r, 415, "unsupported_media_type")
    assert "JPEG" in err["message"]


def test_unsupported_multipart_part_and_image_format_415(client):
    r = client.post("/v1/predict", files={"file": ("a.txt", b"hello", "text/plain")})
    assert_error(r, 415, "unsupported_media_type")
    # an EPS file (PIL would run Ghostscript to decode it) is identified and refused
    eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n"
    r = client.post(
        "/v1/predict", content=eps, headers={"Content-Type": "application/octet-stream"}
    )
    assert "EPS" in assert_error(r, 415, "unsupported_media_type")["message"]


def test_corrupt_image_422(client, photo):
    r = client.post(
        "/v1/predict", content=b"not an image at all", headers={"Content-Type": "image/jpeg"}
    )
    assert_error(r, 422, "corrupt_image")
    # a readable header and a truncated body fail in the decoder
    r = client.post("/v1/predict", content=photo[:2000], headers={"Content-Type": "image/jpeg"})
    err = assert_error(r, 422, "corrupt_image")
    assert "<stream>" not in err["message"]
    r = client.post("/v1/predict", files={"file": ("x.png", b"\x89PNG\r\n\x1a\nxx", "image/png")})
    assert_error(r, 422, "corrupt_image")


def test_malformed_requests_400(client, photo):
    assert_error(
        client.post("/v1/predict", files={"image": ("a.jpg", photo, "image/jpeg")}),
        400,
        "missing_file",
    )
    r = client.post(
        "/v1/predict", data={"file": "not a file"}, files={"other": ("a.jpg", b"x", "image/jpeg")}
    )
    assert_error(r, 400, "missing_file")
    assert_error(
        client.post("/v1/predict", content=b"", headers={"Content-Type": "image/jpeg"}),
        400,
        "empty_upload",
    )
    r = client.post(
        "/v1/predict",
        content=b"--x\r\nbroken",
        headers={"Content-Type": "multipart/form-data; boundary=x"},
    )
    assert r.status_code == 400 and "error" in r.json()


def test_unknown_path_and_method_are_json_errors(client):
    assert_error(client.get("/v1/nothing"), 404, "not_found")
    assert_error(client.get("/v1/predict"), 405, "method_not_allowed")


class BlockingRecognizer:
    """Waits for ``release`` inside `predict`, so the requests pile up in the pool."""

    def __init__(self, inner: Recognizer) -> None:
        self.inner = inner
        self.release = threading.Event()

    def predict(self, image):
        assert self.release.wait(30), "the test never released the recognizer"
        return self.inner.predict(image)

    def __getattr__(self, name):
        return getattr(self.inner, name)


def wait_for(predicate, timeout: float = 10.0) -> None:
    end = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.01)


def test_full_queue_503_with_retry_after_and_recovery(recognizer, photo):
    blocking = BlockingRecognizer(recognizer)
    with make_client(blocking, workers=1, queue=1) as c:
        results: list = []

        def send():
            results.append(
                c.post("/v1/predict", content=photo, headers={"Content-Type": "image/jpeg"})
            )

        threads = [threading.Thread(target=send) for _ in range(2)]
        try:
            for t in threads:
                t.start()
            # one request runs (blocked), one waits in the queue: the pool is full
            wait_for(lambda: c.get("/v1/health").json()["busy"] == 1)
            wait_for(lambda: c.get("/v1/health").json()["waiting"] == 1)
            r = c.post("/v1/predict", content=photo, headers={"Content-Type": "image/jpeg"})
            err = assert_error(r, 503, "busy")
            assert "retry" in err["message"]
            assert int(r.headers["Retry-After"]) >= 1
            # health still answers while the pool is full, and says that it is
            health = c.get("/v1/health").json()
            assert health["status"] == "ok" and health["accepting"] is False
        finally:
            blocking.release.set()
            for t in threads:
                t.join(30)
        assert [r.status_code for r in results] == [200, 200]
        # recovered: the next request runs and the pool is empty again
        r = c.post("/v1/predict", content=photo, headers={"Content-Type": "image/jpeg"})
        assert r.status_code == 200 and len(r.json()["faces"]) == 1
        h = c.get("/v1/health").json()
        assert (h["busy"], h["waiting"]) == (0, 0)


def test_several_workers_answer_concurrent_requests(recognizer, photo):
    with make_client(recognizer, workers=2, queue=4) as c:
        workers = c.app.state.pool._threads
        assert len(workers) == 2
        out: list = []

        def send():
            out.append(c.post("/v1/predict", content=photo, headers={"Content-Type": "image/jpeg"}))

        threads = [threading.Thread(target=send) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert [r.status_code for r in out] == [200] * 4
        assert len({json.dumps(r.json()["faces"]) for r in out}) == 1


def test_inference_pool_bounds_and_recovers():
    gate = threading.Event()
    pool = InferencePool(["runner"], queue_size=2)
    try:
        futures = [pool.submit(lambda r: gate.wait(10) and r) for _ in range(3)]
        assert all(f is not None for f in futures)
        assert pool.submit(lambda r: r) is None  # 1 running + 2 waiting: full
        gate.set()
        assert [f.result(10) for f in futures] == ["runner"] * 3
        wait_for(lambda: pool.stats()["busy"] == 0)
        assert pool.submit(lambda r: r).result(10) == "runner"
        failing = pool.submit(lambda r: 1 / 0)
        with pytest.raises(ZeroDivisionError):
            failing.result(10)
        assert pool.submit(lambda r: r + "!").result(10) == "runner!"  # a failure is contained
    finally:
        pool.close()
    assert pool.submit(lambda r: r) is None


def test_inference_pool_withdraws_a_waiting_job():
    gate = threading.Event()
    ran: list = []
    pool = InferencePool(["runner"], queue_size=1)
    try:
        running = pool.submit(lambda r: gate.wait(10) and "first")
        wait_for(lambda: pool.stats()["busy"] == 1)
        waiting = pool.submit(ran.append)
        assert pool.submit(lambda r: r) is None and not pool.stats()["accepting"]
        assert pool.cancel(waiting) is True and waiting.cancelled()
        # the slot is free at once, although the worker is still busy
        assert pool.stats() == {"workers": 1, "queue_size": 1, "busy": 1, "waiting": 0,
                                "accepting": True}  # fmt: skip
        again = pool.submit(lambda r: "again")
        assert again is not None
        assert pool.cancel(running) is False  # a running job finishes
        gate.set()
        assert (running.result(10), again.result(10)) == ("first", "again")
        assert ran == []  # the withdrawn job never ran
    finally:
        gate.set()
        pool.close()


def predict_scope(query: bytes = b"") -> dict:
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/v1/predict",
        "raw_path": b"/v1/predict",
        "root_path": "",
        "query_string": query,
        "headers": [(b"content-type", b"image/jpeg"), (b"host", b"test")],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 80),
    }


class AsgiClient:
    """One request straight into the ASGI app: sends ``body``, then reports a disconnect
    when ``leave`` is set (as uvicorn does when the client closes its connection)."""

    def __init__(self, app, body: bytes) -> None:
        self.leave = asyncio.Event()
        self.messages: list = []
        self._body = body
        self.task = asyncio.ensure_future(app(predict_scope(), self._receive, self._send))

    async def _receive(self):
        if self._body is not None:
            body, self._body = self._body, None
            return {"type": "http.request", "body": body, "more_body": False}
        await self.leave.wait()
        return {"type": "http.disconnect"}

    async def _send(self, message):
        self.messages.append(message)

    @property
    def status(self):
        return self.messages[0]["status"] if self.messages else None


async def until(predicate, timeout: float = 10.0) -> None:
    end = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < end, "timed out"
        await asyncio.sleep(0.01)


def test_a_client_that_goes_away_gives_up_its_place(recognizer, photo):
    """A queued request whose client disconnects leaves the queue at once and never runs;
    a running one finishes, its answer dropped."""
    blocking = BlockingRecognizer(recognizer)
    calls: list = []
    real_predict = blocking.predict
    blocking.predict = lambda image: calls.append(1) or real_predict(image)
    app = create_app(blocking, Settings(workers=1, queue=1, model_name="random"))
    pool = app.state.pool

    async def scenario():
        first = AsgiClient(app, photo)
        await until(lambda: pool.stats()["busy"] == 1)
        second = AsgiClient(app, photo)
        await until(lambda: pool.stats()["waiting"] == 1)
        assert not pool.stats()["accepting"]
        second.leave.set()  # the waiting client hangs up
        await until(lambda: pool.stats()["waiting"] == 0, timeout=2)
        await asyncio.wait_for(second.task, 2)
        assert second.status == 400 and pool.stats()["accepting"]
        third = AsgiClient(app, photo)  # takes the freed place
        await until(lambda: pool.stats()["waiting"] == 1)
        first.leave.set()  # the running client hangs up: its answer is dropped
        await asyncio.wait_for(first.task, 2)
        assert first.status == 400 and pool.stats()["busy"] == 1
        blocking.release.set()
        await asyncio.wait_for(third.task, 30)
        assert third.status == 200
        await until(lambda: pool.stats()["busy"] == 0)

    try:
        asyncio.run(scenario())
    finally:
        blocking.release.set()
        pool.close()
    assert len(calls) == 2  # the first and the third: the withdrawn one never ran


def test_disconnected_clients_free_the_queue_of_a_real_server(recognizer, photo):
    """Through uvicorn: clients that close their connections while queued leave the queue."""
    import http.client
    import socket

    import uvicorn

    blocking = BlockingRecognizer(recognizer)
    app = create_app(blocking, Settings(workers=1, queue=3, model_name="random"))
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    clients = []

    def health() -> dict:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("GET", "/v1/health")
        body = json.loads(conn.getresponse().read())
        conn.close()
        return body

    def post() -> socket.socket:
        c = socket.create_connection(("127.0.0.1", port), timeout=10)
        c.sendall(b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\n"
                  b"Content-Length: %d\r\n\r\n" % len(photo) + photo)  # fmt: skip
        clients.append(c)
        return c

    try:
        wait_for(lambda: server.started)
        post()
        wait_for(lambda: health()["busy"] == 1)
        leaving = [post() for _ in range(3)]
        wait_for(lambda: health()["waiting"] == 3)
        assert health()["accepting"] is False
        for c in leaving:
            c.close()
        wait_for(lambda: health()["waiting"] == 0, timeout=3)
        assert health()["accepting"] is True
    finally:
        blocking.release.set()
        for c in clients:
            c.close()
        server.should_exit = True
        thread.join(15)
        sock.close()


# ---- other endpoints ----


def test_health(client):
    r = client.get("/v1/health")
    assert r.status_code == 200
    body = r.json()
    assert body["status"] == "ok" and body["model"] == "random"
    assert body["workers"] == 1 and body["queue_size"] == 8
    assert body["accepting"] is True
    assert body["limits"] == {"max_upload_bytes": 10 * 1024 * 1024, "max_pixels": 50_000_000}
    assert "JPEG" in body["accepts"]["formats"] and ".jpg" in body["accepts"]["extensions"]
    assert {"image/jpeg", "application/octet-stream"} <= set(body["accepts"]["media_types"])


def test_models(client):
    r = client.get("/v1/models")
    assert r.status_code == 200
    (model,) = r.json()["models"]
    assert model["name"] == "random" and model["architecture"] == "mba_cnn"
    assert model["classes"] == CLASSES
    assert model["preprocessing"] == {"size": 48, "gray": True, "mean": 0.5, "std": 0.25}
    assert model["detector"] == "blazeface"
    assert (model["backend"], model["device"]) == ("torch", "cpu")
    assert model["auto_contrast"] is True and model["tta"] == "none"


def test_openapi_docs(client):
    assert client.get("/docs").status_code == 200
    spec = client.get("/openapi.json").json()
    predict = spec["paths"]["/v1/predict"]["post"]
    content = set(predict["requestBody"]["content"])
    # the concrete types the service takes, not a range it does not (HEIC, SVG get 415)
    assert {"multipart/form-data", "image/jpeg", "image/png", "application/octet-stream"} <= content
    assert not any("*" in media for media in content)
    assert {"200", "413", "415", "422", "503"} <= set(predict["responses"])
    assert "/v1/health" in spec["paths"] and "/v1/models" in spec["paths"]


def test_every_listed_type_is_accepted_and_image_star_is_refused_as_documented(client, photo):
    spec = client.get("/openapi.json").json()
    content = spec["paths"]["/v1/predict"]["post"]["requestBody"]["content"]
    for media in content:
        if media != "multipart/form-data":
            r = client.post("/v1/predict", content=photo, headers={"Content-Type": media})
            assert r.status_code == 200, (media, r.text)
    err = assert_error(
        client.post("/v1/predict", content=photo, headers={"Content-Type": "image/*"}),
        415,
        "unsupported_media_type",
    )
    # the message names types that work, not the range that was refused
    assert "image/*" not in err["message"].replace("'image/*' is not accepted", "")
    assert "image/jpeg" in err["message"] and "application/octet-stream" in err["message"]
    assert "a JPEG, PNG" in err["message"]


def test_format_names_take_the_right_article(client):
    ico = io.BytesIO()
    Image.new("RGB", (16, 16)).save(ico, "ICO")
    r = client.post(
        "/v1/predict", content=ico.getvalue(), headers={"Content-Type": "application/octet-stream"}
    )
    message = assert_error(r, 415, "unsupported_media_type")["message"]
    assert message.startswith("an ICO image is not accepted"), message
    from ferkit.serve.app import _with_article

    names = ("JPEG", "EPS", "SGI", "PNG", "XBM", "TGA")
    assert [_with_article(n) for n in names] == ["a JPEG", "an EPS", "an SGI", "a PNG",
                                                 "an XBM", "a TGA"]  # fmt: skip
    assert _with_article("AVIF", "PNG", "GIF") == "an AVIF, PNG or GIF"


def test_only_common_formats_parsers_see_refused_uploads(client):
    """A format the service does not take is named when it is a common one; PIL's rarer
    plugins (here SPIDER, a rare scientific format PIL reads) never parse client bytes."""
    for fmt, status in (("SPIDER", 422), ("PCX", 415)):
        data = io.BytesIO()
        Image.new("L", (16, 16)).save(data, fmt)
        r = client.post("/v1/predict", content=data.getvalue(),
                        headers={"Content-Type": "application/octet-stream"})
        assert r.status_code == status, (fmt, r.text)


def test_face_fields_are_documented(client):
    schemas = client.get("/openapi.json").json()["components"]["schemas"]
    face = schemas["FaceOut"]["properties"]
    assert set(face) == {"box", "label", "confidence", "scores", "landmarks",
                         "detection_score", "detector"}  # fmt: skip
    for name, prop in face.items():
        assert len(prop.get("description", "")) > 20, name
    assert "EXIF" in face["box"]["description"]
    assert ("right eye, left eye, nose tip, mouth centre, right ear tragion, left ear tragion"
            in face["landmarks"]["description"])  # fmt: skip
    assert "Haar" in face["detection_score"]["description"]
    for model in ("PredictOut", "HealthOut"):
        for name, prop in schemas[model]["properties"].items():
            assert prop.get("description") or "$ref" in prop, (model, name)


def test_answers_round_floats_and_name_the_detector(client, photo):
    body = client.post("/v1/predict", content=photo, headers={"Content-Type": "image/jpeg"}).json()
    (face,) = body["faces"]
    assert face["detector"] == "blazeface"
    numbers = [face["confidence"], face["detection_score"], *face["scores"].values(),
               *(v for point in face["landmarks"] for v in point)]  # fmt: skip
    assert all(n == round(n, 6) for n in numbers)
    assert len(face["landmarks"]) == 6 and 0 < face["detection_score"] <= 1
    assert face["confidence"] == face["scores"][face["label"]]
    assert abs(sum(face["scores"].values()) - 1) < 1e-5


def test_query_parameters_are_refused_not_ignored(client, photo):
    r = client.post(
        "/v1/predict?model=mba_cnn-ferplus&tta=flip",
        content=photo,
        headers={"Content-Type": "image/jpeg"},
    )
    message = assert_error(r, 400, "unknown_parameter")["message"]
    assert "'model'" in message and "'tta'" in message
    assert "no per-request options" in message and "ferkit serve --model" in message


def test_head_requests(client):
    for path in ("/", "/v1/health", "/v1/models"):
        r = client.head(path)
        assert r.status_code == 200, path
        assert r.content == b""
    assert client.head("/").headers["content-type"].startswith("text/html")
    spec = client.get("/openapi.json").json()
    assert "head" not in spec["paths"]["/v1/health"]  # one documented operation per path


def test_page_and_static_assets(client):
    r = client.get("/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in r.headers["content-security-policy"]
    assert r.headers["x-content-type-options"] == "nosniff"
    html = r.text
    # relative links: the page works behind a proxy that serves it under a path prefix
    assert 'src="static/app.js"' in html and 'href="static/style.css"' in html
    # the schema works offline; docs needs Swagger UI from a CDN
    assert 'href="openapi.json"' in html and 'href="docs"' in html
    assert 'href="/' not in html and 'src="/' not in html
    assert 'type="file"' in html and 'aria-live="polite"' in html and 'role="alert"' in html
    for asset, kind in (("app.js", "javascript"), ("style.css", "text/css")):
        a = client.get(f"/static/{asset}")
        assert a.status_code == 200 and kind in a.headers["content-type"] and a.text
    js = client.get("/static/app.js").text
    assert "getUserMedia" in js and 'fetch("v1/predict"' in js and 'fetch("/' not in js
    # offline: no third-party resources on the page
    for text in (html, js, client.get("/static/style.css").text):
        assert "https://" not in text and "http://" not in text and "//cdn" not in text
    assert client.get("/static/../app.py").status_code == 404


def test_cors_off_by_default_and_on_for_given_origins(client, recognizer):
    headers = {"Origin": "https://elsewhere.example"}
    assert "access-control-allow-origin" not in client.get("/v1/health", headers=headers).headers
    with make_client(recognizer, cors_origins=["https://elsewhere.example"]) as c:
        r = c.get("/v1/health", headers=headers)
        assert r.headers["access-control-allow-origin"] == "https://elsewhere.example"
        r = c.options(
            "/v1/predict",
            headers={**headers, "Access-Control-Request-Method": "POST"},
        )
        assert r.status_code == 200
        other = c.get("/v1/health", headers={"Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in other.headers


def test_host_check_answers_only_to_the_allowed_names(recognizer):
    with make_client(recognizer, allowed_hosts=["localhost", "127.0.0.1", "::1"]) as c:
        for host in ("localhost", "localhost:8000", "LOCALHOST:1", "127.0.0.1:8000", "[::1]:80"):
            r = c.get("/v1/health", headers={"Host": host})
            assert r.status_code == 200, (host, r.text)
        # a page of another site reaching the service through a name it controls
        for host in ("evil.example", "evil.example:8000", "localhost.evil.example", "[::1",
                     "localhost@evil.example"):  # fmt: skip
            r = c.get("/", headers={"Host": host})
            assert r.status_code == 400, host
            assert r.json()["error"]["code"] == "bad_host"
            assert "--allowed-host" in r.json()["error"]["message"]
            assert r.headers["x-content-type-options"] == "nosniff"
        r = c.post("/v1/predict", content=b"x", headers={"Host": "evil.example"})
        assert r.json()["error"]["code"] == "bad_host"  # refused before the body is read
    for anyone in ([], ["*"], ["localhost", "*"]):
        with make_client(recognizer, allowed_hosts=anyone) as c:
            assert c.get("/v1/health", headers={"Host": "evil.example"}).status_code == 200


def test_model_name_defaults_to_the_checkpoint_name(checkpoint):
    app = create_app(settings=Settings(model=str(checkpoint) + ".safetensors", device="cpu",
                                       auto_contrast=False, tta="flip"))
    with TestClient(app) as c:
        assert c.get("/v1/health").json()["model"] == "random"
        model = c.get("/v1/models").json()["models"][0]
        assert (model["auto_contrast"], model["tta"]) == (False, "flip")
    assert (app.state.recognizer.auto_contrast, app.state.recognizer.tta) == (False, "flip")
    with pytest.raises(ValueError, match="tta must be one of none, flip, ten-crop"):
        Settings(tta="five-crop")


def test_onnx_backend_serves_the_torch_scores(checkpoint, ferkit_cache, photo):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    answers = []
    for backend in ("torch", "onnx"):
        settings = Settings(model=str(checkpoint), device="cpu", backend=backend, workers=2)
        with TestClient(create_app(settings=settings)) as c:
            r = c.post("/v1/predict", files={"file": ("astronaut.jpg", photo, "image/jpeg")})
            assert r.status_code == 200, r.text
            answers.append(r.json()["faces"])
    (torch_face,), (onnx_face,) = answers
    assert onnx_face["box"] == torch_face["box"] and onnx_face["label"] == torch_face["label"]
    for name, p in torch_face["scores"].items():
        assert onnx_face["scores"][name] == pytest.approx(p, abs=1e-4)


def test_settings_are_validated():
    for bad in ({"workers": 0}, {"queue": -1}, {"max_upload_bytes": 0}, {"max_pixels": 0},
                {"backend": "tensorrt"}, {"allowed_hosts": "localhost"}):
        with pytest.raises(ValueError):
            Settings(**bad)
    for name in ("localhost", "Example.ORG", "192.0.2.7", "::1", "[::1]", "*"):
        Settings(allowed_hosts=[name])
    for bad_name in ("", "http://example.org", "example.org:8000", "example.org/x", "a b"):
        with pytest.raises(ValueError, match="allowed_hosts: .* is not a host name"):
            Settings(allowed_hosts=[bad_name])


# ---- the command ----


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="ferkit")
    serve_cli.add_parsers(parser.add_subparsers(dest="command"))
    return parser.parse_args(["serve", *argv])


def test_cli_defaults_and_options():
    args = parse([])
    assert (args.host, args.port, args.workers, args.queue) == ("127.0.0.1", 8000, 1, 8)
    assert (args.model, args.detector, args.max_upload_mb) == (None, "blazeface", 10.0)
    assert args.max_pixels == 50_000_000 and args.cors_origins == []
    assert args.allowed_hosts == [] and args.root_path == ""
    args = parse(
        ["--port", "9000", "--workers", "2", "--queue", "0", "--max-upload-mb", "2.5",
         "--cors-origin", "https://a.example", "https://b.example", "--cors-origin", "*"]
    )  # fmt: skip
    assert (args.port, args.workers, args.queue, args.max_upload_mb) == (9000, 2, 0, 2.5)
    assert args.cors_origins == ["https://a.example", "https://b.example", "*"]
    for bad in (["--workers", "0"], ["--port", "70000"], ["--max-upload-mb", "0"]):
        with pytest.raises(SystemExit):
            parse(bad)


def fake_uvicorn(monkeypatch) -> dict:
    """uvicorn.Server.run replaced: records the app and the sockets handed to it."""
    import uvicorn

    seen: dict = {}

    def run(server, sockets=None):
        (sock,) = sockets
        seen.update(
            app=server.config.app, address=sock.getsockname(), root_path=server.config.root_path
        )
        with TestClient(server.config.app, base_url="http://localhost") as c:
            seen["health"] = c.get("/v1/health").json()
            seen["other_host"] = c.get("/v1/health", headers={"Host": "evil.example"}).status_code

    monkeypatch.setattr(uvicorn.Server, "run", run)
    return seen


def test_cli_loads_the_model_then_runs_uvicorn_on_the_port_it_announces(
    checkpoint, monkeypatch, capsys
):
    seen = fake_uvicorn(monkeypatch)
    args = parse(["--model", str(checkpoint), "--device", "cpu", "--max-upload-mb", "1",
                  "--port", "0"])  # fmt: skip
    assert args.func(args) == 0
    host, port = seen["address"]
    assert host == "127.0.0.1" and port != 0  # port 0: the free port the socket got
    assert seen["health"]["model"] == "random"
    assert seen["health"]["limits"]["max_upload_bytes"] == 1024 * 1024
    err = capsys.readouterr().err
    assert f"http://127.0.0.1:{port}/" in err and ":0/" not in err


def test_cli_host_names_and_root_path(checkpoint, monkeypatch, capsys):
    assert serve_cli.allowed_hosts("127.0.0.1", []) == ("localhost", "127.0.0.1", "::1")
    assert serve_cli.allowed_hosts("127.0.0.2", [])[-1] == "127.0.0.2"
    assert serve_cli.allowed_hosts("0.0.0.0", []) == ()  # reached by any name: no check
    assert serve_cli.allowed_hosts("0.0.0.0", ["fer.example"]) == ("fer.example",)
    # names given add to a loopback address's own: the address it prints still works
    assert serve_cli.allowed_hosts("127.0.0.1", ["fer.example"]) == (
        "localhost", "127.0.0.1", "::1", "fer.example")
    assert serve_cli.allowed_hosts("127.0.0.1", ["fer.example", "*"]) == ()
    seen = fake_uvicorn(monkeypatch)
    common = ["--model", str(checkpoint), "--device", "cpu", "--port", "0"]
    args = parse([*common, "--root-path", "fer/"])
    assert args.func(args) == 0
    assert seen["other_host"] == 400 and seen["root_path"] == "/fer"
    args = parse([*common, "--host", "0.0.0.0"])
    assert args.func(args) == 0
    assert seen["other_host"] == 200 and seen["root_path"] == ""
    args = parse([*common, "--allowed-host", "*"])
    assert args.func(args) == 0
    assert seen["other_host"] == 200


def test_behind_a_proxy_prefix_the_docs_link_the_prefixed_schema(recognizer):
    """A proxy serving the app under /fer (uvicorn's root_path, set by --root-path): the
    docs page loads /fer/openapi.json, and the page and API answer with or without it."""
    with TestClient(create_app(recognizer, Settings()), root_path="/fer") as c:
        assert "'/fer/openapi.json'" in c.get("/docs").text
        for path in ("/v1/health", "/fer/v1/health", "/", "/fer/"):
            assert c.get(path).status_code == 200, path


def test_cli_bad_allowed_host_is_a_one_line_error(checkpoint, capsys):
    from ferkit.cli import main

    argv = ["serve", "--model", str(checkpoint), "--device", "cpu", "--port", "0"]
    assert main([*argv, "--allowed-host", "http://fer.example"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ferkit: error: ") and "is not a host name" in err
    assert err.count("\n") == 1, err


def test_cli_ctrl_c_stops_without_a_traceback(checkpoint, monkeypatch):
    import uvicorn

    def interrupted(server, sockets=None):
        raise KeyboardInterrupt  # what uvicorn raises again after its graceful shutdown

    monkeypatch.setattr(uvicorn.Server, "run", interrupted)
    args = parse(["--model", str(checkpoint), "--device", "cpu", "--port", "0"])
    assert args.func(args) == 0


def test_cli_fails_fast_when_the_port_is_taken(checkpoint, monkeypatch, capsys):
    import socket

    from ferkit.serve import app as serve_app

    def must_not_load(*args, **kwargs):
        raise AssertionError("the model was loaded although the port is taken")

    monkeypatch.setattr(serve_app, "create_app", must_not_load)
    fake_uvicorn(monkeypatch)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        args = parse(["--model", str(checkpoint), "--device", "cpu", "--port", str(port)])
        assert args.func(args) == 2
    err = capsys.readouterr().err
    assert err == f"ferkit: error: cannot listen on 127.0.0.1:{port} (address already in use)\n"


def test_cli_device_the_machine_lacks_is_a_one_line_error(checkpoint, capsys):
    import torch

    from ferkit.cli import main

    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU")
    assert main(["serve", "--model", str(checkpoint), "--device", "cuda", "--port", "0"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ferkit: error: ") and err.count("\n") == 1, err
    assert "cuda" in err and "Traceback" not in err


def test_cli_warns_when_listening_beyond_this_machine(checkpoint, monkeypatch, capsys):
    fake_uvicorn(monkeypatch)
    args = parse(["--model", str(checkpoint), "--device", "cpu", "--host", "0.0.0.0",
                  "--port", "0"])  # fmt: skip
    assert args.func(args) == 0
    assert "no authentication" in capsys.readouterr().err


def test_sample_photo_through_numpy_matches_the_service(client, recognizer, photo):
    direct = recognizer.predict(np.asarray(Image.open(io.BytesIO(photo)).convert("RGB")))
    served = client.post("/v1/predict", content=photo, headers={"Content-Type": "image/jpeg"})
    assert [f.box for f in direct] == [f["box"] for f in served.json()["faces"]]


def test_worker_detectors_keep_their_options(checkpoint):
    from ferkit.faces import HaarDetector
    from ferkit.serve.app import _worker_recognizers

    rec = Recognizer(model=str(checkpoint), detector=HaarDetector(min_neighbors=9, min_size=40))
    workers = _worker_recognizers(rec, 3)
    assert len({id(w.detector) for w in workers}) == 3  # one cascade per thread
    assert all(
        (w.detector.min_neighbors, w.detector.min_size) == (9, 40) for w in workers
    )
