"""The REST service after a review: uploads and requests it answered wrongly, the CLI's
start-up checks, the load benchmark's overload run and the web page's webcam control."""

from __future__ import annotations

import asyncio
import gzip
import io
import os
import sys
import threading
import time
import warnings
from pathlib import Path

import pytest
from conftest import require_serve_extra, serve_in_thread
from PIL import Image
from test_benchmarks import load_benchmark

require_serve_extra()
pytest.importorskip("httpx", reason="FastAPI's TestClient needs httpx: pip install httpx")

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", "Using `httpx` with `starlette.testclient`")
    from fastapi.testclient import TestClient

import uvicorn  # noqa: E402

from ferkit.recognize import Face  # noqa: E402
from ferkit.serve.app import Settings, create_app  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
CLASSES = ["angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"]


class FakeRecognizer:
    """No model: ``faces`` faces per image after ``delay`` seconds (the service's machinery
    is what these tests check)."""

    class_names = CLASSES

    def __init__(self, faces: int = 0, delay: float = 0.0) -> None:
        self.faces, self.delay = faces, delay

    def predict(self, image):
        time.sleep(self.delay)
        scores = {c: (1.0 if c == "happy" else 0.0) for c in CLASSES}
        return [Face([1, 1, 4, 4], None, scores, "happy", 1.0) for _ in range(self.faces)]


def png_bytes(size=(16, 12), mode="L") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, 128).save(buf, "PNG")
    return buf.getvalue()


def error_of(response, status: int, code: str) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and body["error"]["code"] == code, body
    return body["error"]["message"]


@pytest.fixture(scope="module")
def client():
    with TestClient(create_app(FakeRecognizer(), Settings(model_name="fake"))) as c:
        yield c


# ---- uploads ----


def test_pbm_files_are_taken_with_the_type_browsers_give_them(client):
    """.pbm is offered by the page and listed in accepts.extensions; browsers and curl send it
    as image/x-portable-bitmap, which was refused with 415."""
    buf = io.BytesIO()
    Image.new("1", (16, 8), 1).save(buf, "PPM")
    pbm = buf.getvalue()
    assert pbm.startswith(b"P4")
    kind = "image/x-portable-bitmap"
    r = client.post("/v1/predict", files={"file": ("bits.pbm", pbm, kind)})
    assert r.status_code == 200, r.text
    assert r.json()["image"] == {"width": 16, "height": 8}
    r = client.post("/v1/predict", content=pbm, headers={"Content-Type": kind})
    assert r.status_code == 200, r.text
    health = client.get("/v1/health").json()["accepts"]
    assert kind in health["media_types"] and ".pbm" in health["extensions"]


def test_a_compressed_body_is_refused_as_such_not_called_corrupt(client):
    png = png_bytes()
    r = client.post(
        "/v1/predict",
        content=gzip.compress(png),
        headers={"Content-Type": "image/png", "Content-Encoding": "gzip"},
    )
    message = error_of(r, 415, "unsupported_media_type")
    assert "Content-Encoding 'gzip'" in message
    r = client.post(
        "/v1/predict",
        content=png,
        headers={"Content-Type": "image/png", "Content-Encoding": "identity"},
    )
    assert r.status_code == 200, r.text


def test_a_cut_off_multipart_upload_is_not_called_a_missing_field(client):
    """A form whose body stops before its closing boundary held the field 'file', cut short:
    the answer says so, instead of asking for the field that was sent."""
    part = (
        b'--XX\r\nContent-Disposition: form-data; name="file"; filename="a.png"\r\n'
        b"Content-Type: image/png\r\n\r\n" + png_bytes()
    )
    headers = {"Content-Type": "multipart/form-data; boundary=XX"}
    r = client.post("/v1/predict", content=part, headers=headers)
    message = error_of(r, 400, "bad_request")
    assert "closing boundary" in message and "'file'" in message
    # whole, the same form is answered; a whole form without the field is still missing_file
    r = client.post("/v1/predict", content=part + b"\r\n--XX--\r\n", headers=headers)
    assert r.status_code == 200, r.text
    other = part.replace(b'name="file"', b'name="image"') + b"\r\n--XX--\r\n"
    error_of(client.post("/v1/predict", content=other, headers=headers), 400, "missing_file")


def test_a_full_pool_refuses_before_reading_the_body():
    """503 busy comes before the upload is read: the body of a request that cannot run is
    not read into memory (up to the upload limit each) first."""
    app = create_app(FakeRecognizer(), Settings(workers=1, queue=0, model_name="fake"))
    release = threading.Event()
    assert app.state.pool.submit(lambda runner: release.wait(10)) is not None
    try:
        chunks = [png_bytes()] + [b"\0" * 65536] * 20
        read = []

        async def receive():
            if len(read) < len(chunks):
                read.append(chunks[len(read)])
                return {"type": "http.request", "body": read[-1],
                        "more_body": len(read) < len(chunks)}  # fmt: skip
            await asyncio.sleep(3600)

        sent = []

        async def send(message):
            sent.append(message)

        scope = {
            "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
            "method": "POST", "scheme": "http", "path": "/v1/predict", "raw_path": b"/v1/predict",
            "root_path": "", "query_string": b"", "client": ("127.0.0.1", 1),
            "server": ("127.0.0.1", 8000),
            "headers": [(b"host", b"localhost"), (b"content-type", b"image/png")],
        }  # fmt: skip
        asyncio.run(asyncio.wait_for(app(scope, receive, send), 10))
        assert sent[0]["status"] == 503
        assert (b"retry-after", b"1") in sent[0]["headers"]
        assert read == []  # nothing of the body was taken in
    finally:
        release.set()
        app.state.pool.close()


def test_cors_origins_that_no_browser_sends_are_refused_not_ignored(
    checkpoint, no_uvicorn_run, capsys
):
    """An origin with a trailing '/' or without its scheme never equals a browser's Origin
    header: CORS stayed off without a word."""
    for bad in ("https://a.example/", "a.example", "https://A.example", "https://a.example/x"):
        with pytest.raises(ValueError, match="is not an origin"):
            Settings(cors_origins=[bad])
    with pytest.raises(ValueError, match="list of origins"):
        Settings(cors_origins="https://a.example")
    good = ["https://a.example", "http://localhost:3000", "http://[::1]:8000", "*"]
    assert list(Settings(cors_origins=good).cors_origins) == good
    app = create_app(FakeRecognizer(), Settings(cors_origins=["https://a.example"]))
    with TestClient(app) as c:
        r = c.get("/v1/health", headers={"Origin": "https://a.example"})
    assert r.headers["access-control-allow-origin"] == "https://a.example"
    assert serve(checkpoint, "--cors-origin", "https://a.example/") == 2
    err = capsys.readouterr().err
    assert err.startswith("ferkit: error: cors_origins: 'https://a.example/' is not an origin")
    assert err.count("\n") == 1, err


# ---- ferkit serve ----


@pytest.fixture
def no_uvicorn_run(monkeypatch):
    """uvicorn.Server.run replaced by a no-op: the command returns once it would serve."""
    monkeypatch.setattr(uvicorn.Server, "run", lambda server, sockets=None: None)


def serve(checkpoint, *more: str) -> int:
    from ferkit.cli import main

    return main(["serve", "--model", str(checkpoint), "--device", "cpu", "--port", "0", *more])


def test_cli_refuses_an_empty_host(checkpoint, no_uvicorn_run, capsys):
    """--host '' listened on every interface and announced http://:PORT/."""
    assert serve(checkpoint, "--host", "") == 2
    err = capsys.readouterr().err
    assert err.startswith("ferkit: error: --host is empty") and err.count("\n") == 1, err


def test_cli_names_its_own_option_for_a_too_small_upload_limit(
    checkpoint, no_uvicorn_run, capsys
):
    assert serve(checkpoint, "--max-upload-mb", "1e-9") == 2
    err = capsys.readouterr().err
    assert err.startswith("ferkit: error: --max-upload-mb 1e-09") and err.count("\n") == 1, err
    assert "max_upload_bytes" not in err


def test_cli_says_when_python_multipart_is_missing(
    checkpoint, no_uvicorn_run, monkeypatch, capsys
):
    """Without python-multipart (part of ferkit[serve]) the service started and answered
    every form upload, the web page's included, with 500."""
    for name in ("python_multipart", "multipart", "multipart.multipart"):
        monkeypatch.setitem(sys.modules, name, None)  # an import of it fails
    assert serve(checkpoint) == 2
    err = capsys.readouterr().err
    assert err.startswith("ferkit: error: `ferkit serve` needs") and "ferkit[serve]" in err


# ---- benchmarks/serve_load.py ----


def test_serve_load_says_when_its_overload_cannot_overload(capsys):
    """--overload with fewer clients than workers + queue printed '503 answers: 0' as if
    the service had held an overload."""
    bench = load_benchmark("serve_load")
    argv = ["--seconds", "0.3", "--clients", "1", "--overload", "--overload-factor", "2",
            "--warmup", "1", "--busy-pause", "0.01"]  # fmt: skip
    for queue, expected in ((8, True), (0, False)):  # capacity 9 and 1 against 2 clients
        app = create_app(FakeRecognizer(faces=1, delay=0.01), Settings(queue=queue))
        with serve_in_thread(app) as url:
            assert bench.main(["--url", url, *argv]) == 0
        out = capsys.readouterr().out
        assert ("no 503 is expected" in out) is expected, out
        assert "overload: 2 clients" in out


# ---- the web page's webcam control ----

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--use-fake-device-for-media-stream",  # a synthetic webcam, allowed without a prompt
    "--use-fake-ui-for-media-stream",
]
# getUserMedia answering after 300 ms, as after a permission prompt; every stream recorded
SLOW_CAMERA = """
  window.streams = [];
  const open = navigator.mediaDevices.getUserMedia.bind(navigator.mediaDevices);
  navigator.mediaDevices.getUserMedia = async (c) => {
    await new Promise((r) => setTimeout(r, 300));
    const s = await open(c);
    window.streams.push(s);
    return s;
  };
"""
LIVE_TRACKS = "streams.flatMap((s) => s.getTracks()).filter((t) => t.readyState === 'live').length"


@pytest.fixture
def slow_page():
    """The page of a service that takes 1 s per picture, in headless Chromium; yields the
    page and the times its predict requests started."""
    chromium = os.environ.get("FERKIT_CHROMIUM", "/usr/bin/chromium")
    if not (Path(chromium).is_file() and os.access(chromium, os.X_OK)):
        pytest.skip(f"no Chromium at {chromium} (set FERKIT_CHROMIUM to its path)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="needs Playwright")
    app = create_app(FakeRecognizer(delay=1.0), Settings(model_name="slow"))
    with serve_in_thread(app) as url, sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            page.add_init_script(SLOW_CAMERA)
            starts: list[float] = []
            page.on("request", lambda r: r.url.endswith("/v1/predict")
                    and starts.append(time.monotonic()))  # fmt: skip
            page.goto(url + "/")
            sync_api.expect(page.locator("#model-info")).to_contain_text("slow", timeout=20_000)
            yield page, starts, sync_api.expect
        finally:
            browser.close()


@pytest.mark.browser
def test_webcam_started_again_while_a_frame_is_out_keeps_sending_frames(slow_page):
    """Stop and start the webcam while a frame awaits its (slow) answer: the new run sent no
    frame ever, though the page said 'Webcam on: analysing frames'."""
    page, starts, expect = slow_page
    page.click("#camera")
    expect(page.locator("#camera")).to_have_attribute("aria-pressed", "true", timeout=10_000)
    end = time.monotonic() + 10
    while not starts and time.monotonic() < end:
        page.wait_for_timeout(50)
    assert starts, "the webcam sent no frame"
    page.click("#camera")  # stop, the frame still out
    expect(page.locator("#camera")).to_have_attribute("aria-pressed", "false")
    page.click("#camera")  # and start again
    expect(page.locator("#camera")).to_have_attribute("aria-pressed", "true", timeout=10_000)
    restarted = time.monotonic()
    end = restarted + 6
    while not any(t > restarted for t in starts) and time.monotonic() < end:
        page.wait_for_timeout(100)
    assert any(t > restarted for t in starts), "no frame sent after the restart"


@pytest.mark.browser
def test_a_second_click_while_the_camera_starts_leaves_no_camera_on(slow_page):
    """Two clicks on 'Start webcam' while the browser asks for the camera opened two streams;
    'Stop webcam' then stopped one, and the other kept the camera (and its light) on."""
    page, _, expect = slow_page
    page.click("#camera")
    page.click("#camera")
    expect(page.locator("#camera")).to_have_attribute("aria-pressed", "true", timeout=10_000)
    page.wait_for_timeout(500)
    page.click("#camera")
    expect(page.locator("#camera")).to_have_attribute("aria-pressed", "false")
    assert page.evaluate("streams.length") >= 1
    assert page.evaluate(LIVE_TRACKS) == 0
