"""End to end: ``ferkit serve``'s web page in a real (headless) Chromium, driven by Playwright.

Uses the system's Chromium (``FERKIT_CHROMIUM``, default ``/usr/bin/chromium``), never a
downloaded browser. With ``FERKIT_SCREENSHOT_DIR`` set, screenshots are also copied there.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest
import torch
from conftest import require_serve_extra, serve_in_thread

require_serve_extra()
pytest.importorskip(
    "playwright.sync_api", reason="the browser test needs Playwright: pip install playwright"
)

from playwright.sync_api import expect, sync_playwright  # noqa: E402

from ferkit import samples  # noqa: E402
from ferkit.checkpoint import save_checkpoint  # noqa: E402
from ferkit.models import create_model  # noqa: E402
from ferkit.serve.app import Settings, create_app  # noqa: E402

pytestmark = pytest.mark.browser

CLASSES = ["angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"]
PALETTE = [(230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48),
           (145, 30, 180), (70, 240, 240)]  # fmt: skip
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    # a synthetic webcam, allowed without a prompt
    "--use-fake-device-for-media-stream",
    "--use-fake-ui-for-media-stream",
]


@pytest.fixture(scope="module")
def chromium() -> str:
    path = os.environ.get("FERKIT_CHROMIUM", "/usr/bin/chromium")
    if not (Path(path).is_file() and os.access(path, os.X_OK)):
        pytest.skip(
            f"no Chromium at {path} (install it, e.g. `apt-get install chromium`, or set "
            "FERKIT_CHROMIUM to its path)"
        )
    return path


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """The service on a free loopback port, in a thread, with random weights."""
    torch.manual_seed(0)
    meta = {
        "model": "mba_cnn",
        "model_options": {},
        "class_names": CLASSES,
        "preprocessing": {"size": 48, "gray": True, "mean": 0.5, "std": 0.25},
    }
    base = tmp_path_factory.mktemp("ckpt") / "random"
    save_checkpoint(create_model("mba_cnn"), base, meta, dtype=torch.float16)
    app = create_app(settings=Settings(model=str(base), device="cpu"))
    with serve_in_thread(app) as url:
        yield url


@pytest.fixture
def browser(chromium):
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, headless=True, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


def open_page(browser, server, **context_options):
    context = browser.new_context(**{"viewport": {"width": 1280, "height": 900},
                                     **context_options})  # fmt: skip
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(server + "/")
    expect(page.locator("#model-info")).to_contain_text("random", timeout=20_000)
    page.js_errors = errors
    return page


@pytest.fixture
def page(browser, server):
    return open_page(browser, server)


def save_screenshot(page, tmp_path: Path, name: str) -> Path:
    path = tmp_path / name
    page.screenshot(path=str(path), full_page=True)
    extra = os.environ.get("FERKIT_SCREENSHOT_DIR")
    if extra:
        Path(extra).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(extra) / name)
    return path


def test_upload_shows_boxes_labels_and_chart(page, tmp_path):
    with page.expect_response("**/v1/predict") as answer:
        page.set_input_files("#file", str(samples.path("astronaut")))
    assert answer.value.status == 200
    result = answer.value.json()
    assert len(result["faces"]) == 1
    face = result["faces"][0]
    page.wait_for_selector("#faces figure.face")
    caption = page.inner_text("#faces figure.face figcaption")
    assert caption.startswith(f"Face 1: {face['label']}")
    bars = page.locator("#faces figure.face li.bar")
    assert bars.count() == len(CLASSES)
    assert page.inner_text("#faces li.bar.best .name") == face["label"]
    summary = page.inner_text("#summary")
    assert "1 face in the photo" in summary and face["label"] in summary
    assert page.get_attribute("#canvas", "aria-label") == summary
    assert page.is_hidden("#error")

    # the box is drawn where the service found the face: sample the canvas on the box's
    # bottom edge (the label sits on the top edge) and beside it
    x, y, w, h = face["box"]
    colour = PALETTE[CLASSES.index(face["label"])]
    probe = page.evaluate(
        """([x, y, w, h, iw, ih]) => {
            const c = document.getElementById('canvas');
            const sx = c.width / iw, sy = c.height / ih;
            const ctx = c.getContext('2d');
            const px = (u, v) => Array.from(ctx.getImageData(Math.round(u), Math.floor(v), 1, 1).data);
            return {size: [c.width, c.height], edge: px((x + w / 2) * sx, (y + h) * sy),
                    inside: px((x + w / 2) * sx, (y + h) * sy - 12)};
        }""",
        [x, y, w, h, result["image"]["width"], result["image"]["height"]],
    )
    assert probe["size"] == [result["image"]["width"], result["image"]["height"]]
    assert all(abs(a - b) <= 40 for a, b in zip(probe["edge"][:3], colour, strict=True))
    assert any(abs(a - b) > 40 for a, b in zip(probe["inside"][:3], colour, strict=True))

    shot = save_screenshot(page, tmp_path, "serve-page.png")
    assert shot.stat().st_size > 10_000
    assert page.js_errors == []


def test_errors_are_shown_in_plain_words(page, tmp_path):
    with page.expect_response("**/v1/predict") as answer:
        page.set_input_files(
            "#file", files=[{"name": "broken.jpg", "mimeType": "image/jpeg", "buffer": b"garbage"}]
        )
    assert "not a readable image" in answer.value.json()["error"]["message"]  # the API's words
    page.wait_for_selector("#error", state="visible")
    text = page.inner_text("#error")
    assert "corrupt_image" in text and "HTTP 422" in text
    assert "This image could not be read" in text and "not a readable image" not in text
    assert page.inner_text("#summary") == "No result for this photo."
    save_screenshot(page, tmp_path, "serve-error.png")

    # a file type the server does not read: the formats it does, not Content-Types
    page.set_input_files(
        "#file", files=[{"name": "notes.txt", "mimeType": "text/plain", "buffer": b"hello"}]
    )
    expect(page.locator("#error")).to_contain_text("HTTP 415")
    text = page.inner_text("#error")
    assert "This file is not an image ferkit can read (JPEG, PNG" in text
    assert "multipart" not in text and "Content-Type" not in text
    assert page.js_errors == []


def test_file_picker_offers_what_the_server_reads(page, server):
    accepts = page.request.get(server + "/v1/health").json()["accepts"]
    offered = page.get_attribute("#file", "accept").split(",")
    assert ".jpg" in offered and "image/jpeg" in offered
    assert "application/octet-stream" not in offered
    assert set(offered) == {t for t in accepts["media_types"] if t.startswith("image/")} | set(
        accepts["extensions"]
    )
    label = page.inner_text("label[for=file]")
    assert all(name in label for name in accepts["formats"])


@pytest.mark.parametrize("width", [320, 360, 375])
def test_no_sideways_scrolling_on_phones(browser, server, width):
    page = open_page(browser, server, viewport={"width": width, "height": 740})
    fits = "document.documentElement.scrollWidth <= window.innerWidth"
    assert page.evaluate(fits), page.evaluate("document.documentElement.scrollWidth")
    with page.expect_response("**/v1/predict"):
        page.set_input_files("#file", str(samples.path("astronaut")))
    page.wait_for_selector("#faces figure.face")
    assert page.evaluate(fits)  # with a result and its chart too
    assert page.js_errors == []


def test_keyboard_reaches_every_control(page):
    order = []
    for _ in range(3):
        page.keyboard.press("Tab")
        order.append(page.evaluate("document.activeElement.id"))
    assert order == ["file", "camera", "rate"]
    for control in ("file", "rate"):
        assert page.locator(f"label[for={control}]").count() == 1


def test_webcam_frames_one_request_at_a_time(page, tmp_path):
    """Chromium's synthetic camera: frames go out at the chosen rate, never two at once."""
    state = {"open": 0, "most": 0, "starts": []}

    def started(request):
        if request.url.endswith("/v1/predict"):
            state["open"] += 1
            state["most"] = max(state["most"], state["open"])
            state["starts"].append(time.monotonic())

    def ended(request):
        if request.url.endswith("/v1/predict"):
            state["open"] -= 1

    page.on("request", started)
    page.on("requestfinished", ended)
    page.on("requestfailed", ended)
    page.select_option("#rate", "4")
    page.click("#camera")
    expect(page.locator("#camera")).to_have_attribute("aria-pressed", "true", timeout=20_000)
    expect(page.locator("#summary")).to_contain_text("webcam picture", timeout=20_000)
    page.wait_for_timeout(2000)
    page.keyboard.press("Enter")  # the focused button stops the webcam
    expect(page.locator("#camera")).to_have_attribute("aria-pressed", "false")
    save_screenshot(page, tmp_path, "serve-webcam.png")
    starts = state["starts"]
    assert len(starts) >= 3
    assert state["most"] == 1
    span = starts[-1] - starts[0]
    assert (len(starts) - 1) / span <= 4.5  # the chosen 4 frames a second, at most
    count = len(starts)
    page.wait_for_timeout(800)
    assert len(state["starts"]) == count  # stopped: no more frames
    assert page.js_errors == []
