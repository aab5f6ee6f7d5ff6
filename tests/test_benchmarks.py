"""The benchmarks of benchmarks/: bad arguments give one clear line before any measuring,
and what they print measures what it says."""

from __future__ import annotations

import gc
import http.server
import importlib.util
import socket
import threading
import time
import weakref
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

REPO = Path(__file__).resolve().parents[1]


def load_benchmark(name: str):
    """benchmarks/NAME.py as a module (benchmarks/ is not a package)."""
    spec = importlib.util.spec_from_file_location(f"bench_{name}", REPO / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def refused(main, argv: list[str], capsys) -> str:
    """The one-line message with which ``main(argv)`` stops (argparse's or its own)."""
    with pytest.raises(SystemExit) as exc:
        main(argv)
    code = exc.value.code
    message = capsys.readouterr().err.strip().splitlines()[-1] if isinstance(code, int) else code
    assert code != 0 and "Traceback" not in message
    return message


# ---- train_speed.py ----


def test_train_speed_refuses_bad_arguments(capsys):
    bench = load_benchmark("train_speed")
    cases = {
        ("--batch-sizes", "0"): "argument --batch-sizes: must be at least 1, not 0",
        ("--threads", "0"): "argument --threads: must be at least 1, not 0",
        ("--models", "nosuch"): "argument --models: invalid choice: 'nosuch'",
        ("--seconds", "0"): "argument --seconds",
        ("--device", "tpu"): "--device tpu: expected cpu, cuda or cuda:N",
    }
    if not torch.cuda.is_available():
        cases["--device", "cuda"] = "--device cuda: CUDA is not available here"
    for argv, expected in cases.items():
        assert expected in refused(bench.main, list(argv), capsys)


def test_train_speed_frees_each_row_before_the_next_one_is_measured(monkeypatch, capsys):
    bench = load_benchmark("train_speed")
    models, alive_at_start = [], []

    def tiny_model(name):
        model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                              nn.Linear(4, 7))
        models.append(weakref.ref(model))
        return model

    make_step = bench.make_step

    def counting_make_step(*args, **kwargs):
        # the peak-memory counter has been reset by now: only this row's model may be alive
        gc.collect()
        alive_at_start.append(sum(ref() is not None for ref in models))
        return make_step(*args, **kwargs)

    monkeypatch.setattr(bench, "create_model", tiny_model)
    monkeypatch.setattr(bench, "make_step", counting_make_step)
    bench.main(["--batch-sizes", "2", "2", "4", "--seconds", "0.01", "--threads", "1",
                "--device", "cpu"])
    assert alive_at_start == [1, 1, 1]
    out = capsys.readouterr().out
    assert "1 CPU thread(s)" in out and out.count("| mba_cnn | ") == 3


# ---- recognize.py ----


class SlowDetector:
    """One face per image, after a sleep that alternates between 0 and ``pause`` seconds."""

    name = "slow"
    crop_margin = 0.1

    def __init__(self, pause: float) -> None:
        self.pause, self.calls = pause, 0

    def detect(self, image):
        from ferkit.faces import Detection

        self.calls += 1
        time.sleep(self.pause * (self.calls % 2))
        return [Detection(box=(8, 8, 48, 48), score=1.0)]


def test_recognize_refuses_bad_arguments(capsys):
    pytest.importorskip("onnx")
    bench = load_benchmark("recognize")
    for option in ("--frames", "--runs", "--threads"):
        assert f"argument {option}: must be at least 1, not 0" in refused(
            bench.main, [option, "0"], capsys)
    assert "--model nosuch: nosuch: neither shipped weights" in refused(
        bench.main, ["--model", "nosuch"], capsys)
    assert "argument --tta: invalid choice: 'five-crop'" in refused(
        bench.main, ["--tta", "five-crop"], capsys)


def test_photo_latency_times_detection_inside_the_same_runs(checkpoint):
    pytest.importorskip("onnx")
    bench = load_benchmark("recognize")
    from ferkit.recognize import Recognizer

    slow = SlowDetector(0.03)
    timer = bench.TimedDetector(slow)
    assert (timer.name, timer.crop_margin) == ("slow", 0.1)  # the crop stays the detector's
    rec = Recognizer(model=checkpoint, detector=timer, device="cpu")
    photo = np.full((96, 96, 3), 128, np.uint8)
    total, detection = bench.photo_latency(rec, timer, photo, runs=4)
    assert slow.calls == 5  # a warm-up, then the 4 timed runs, each detecting once
    # runs 2 and 4 sleep 30 ms: the median of (0, 30, 0, 30) is 15 ms, and each run's detection
    # is part of that run's total
    assert 15 <= detection <= total


# ---- detectors.py and models.py ----


def test_detectors_refuses_bad_arguments(capsys):
    bench = load_benchmark("detectors")
    for argv, expected in {
        ("--samples", "0"): "argument --samples: must be at least 1, not 0",
        ("--samples", "-1"): "argument --samples: must be at least 1, not -1",
        ("--threads", "0"): "argument --threads: must be at least 1, not 0",
    }.items():
        assert expected in refused(bench.main, ["--data", "x.csv", *argv], capsys)


def test_models_refuses_bad_arguments(capsys):
    bench = load_benchmark("models")
    assert "argument --models: invalid choice: 'nosuch'" in refused(
        bench.main, ["--models", "nosuch"], capsys)
    assert "argument --threads: must be at least 1, not 0" in refused(
        bench.main, ["--threads", "0"], capsys)


# ---- serve_load.py ----


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_serve_load_says_when_no_service_answers(capsys):
    pytest.importorskip("httpx")
    bench = load_benchmark("serve_load")
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    assert refused(bench.main, ["--url", url, "--seconds", "0.1"], capsys) == (
        f"error: no service at {url}; start one (ferkit serve) or use --start")
    assert "--url localhost:8000: expected http://HOST:PORT" in refused(
        bench.main, ["--url", "localhost:8000"], capsys)
    assert "argument --clients: must be at least 1, not 0" in refused(
        bench.main, ["--clients", "0"], capsys)


def test_serve_load_says_when_the_service_is_not_ferkit(capsys):
    pytest.importorskip("httpx")
    bench = load_benchmark("serve_load")

    class NotFound(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_error(404)

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), NotFound)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        message = refused(bench.main, ["--url", url], capsys)
    finally:
        server.shutdown()
        server.server_close()
    assert message == f"error: {url}/v1/health answered 404, not as ferkit serve does; " \
        "is it a ferkit service?"


# ---- low_contrast.py ----


def test_low_contrast_changes_and_table(checkpoint, make_images, write_csv, capsys, ferkit_cache):
    bench = load_benchmark("low_contrast")
    images = make_images(12)  # noise: pixel std about 74, far above the lift's 25
    labels = np.arange(12) % 7
    dark = bench.changed(images, "dark x 0.1")
    assert np.array_equal(dark, np.rint(images * np.float32(0.1)).astype(np.uint8))
    assert np.array_equal(bench.changed(images, "as recorded"), images)
    assert bench.changed(images, "bright x 2").max() == 255  # clipped, not wrapped

    rows = [[int(y), img, "PublicTest"] for y, img in zip(labels, images, strict=True)]
    rows += [[0, images[0], "Training"]]
    data = write_csv(Path(ferkit_cache) / "tiny.csv", "emotion,pixels,Usage", rows)
    assert "no split ['Nope']" in refused(
        bench.main, ["--data", str(data), "--model", str(checkpoint), "--split", "Nope"], capsys)
    bench.main(["--data", str(data), "--model", str(checkpoint), "--limit", "10"])
    out = capsys.readouterr().out
    table = [line for line in out.splitlines() if line.startswith("| ")][1:]
    assert "PublicTest, 10 faces" in out and len(table) == len(bench.CHANGES)
    cells = {r.split(" | ")[0][2:]: r.strip("| ").split(" | ")[1:] for r in table}
    # nothing lifted: both modes score the same faces alike; all lifted at a tenth of the light
    assert cells["dark x 0.1"][2] == "100 %" and cells["as recorded"][2] == "0 %"
    for change, (auto, plain, lifted) in cells.items():
        if lifted == "0 %":
            assert auto == plain, change


def test_low_contrast_photo_mode(checkpoint, tmp_path, capsys):
    """--photo: the whole sample photo, detection included, per change and mode; the faces
    of the auto-contrast column are what `Recognizer.prepare` makes of the detected crop."""
    bench = load_benchmark("low_contrast")
    assert "one of --data and --photo" in refused(bench.main, [], capsys)
    assert "one of --data and --photo" in refused(
        bench.main, ["--data", "x.csv", "--photo"], capsys)
    assert "give --photo too" in refused(
        bench.main, ["--data", "x.csv", "--picture", str(tmp_path / "p.png")], capsys)
    assert "--photo: " in refused(bench.main, ["--photo", str(tmp_path / "none.jpg")], capsys)

    from ferkit import samples
    from ferkit.recognize import Recognizer, load_image

    recs = {"auto": Recognizer(str(checkpoint)),
            "plain": Recognizer(str(checkpoint), auto_contrast=False)}
    photo = load_image(samples.path()).pixels
    rows = bench.photo_rows(recs, photo, changes=("as recorded", "dark x 0.1"))
    same, dark = rows
    assert np.array_equal(same["photo"], photo) and dark["photo"].max() <= 26
    assert len(same["auto"]) == len(same["plain"]) == 1  # the sample's one face
    # a face of ordinary contrast is left alone; at a tenth of the light it is lifted
    assert np.array_equal(same["auto"][0][0], same["plain"][0][0])
    assert dark["plain"][0][0].std() < 15 < 40 < dark["auto"][0][0].std()
    crops = recs["plain"].faces_in(load_image(dark["photo"]))[1]
    assert np.array_equal(dark["auto"][0][0], recs["auto"].prepare(crops)[0])
    for row in rows:
        for name, rec in recs.items():
            _, label, confidence = row[name][0]
            assert label in rec.class_names and 0 < confidence <= 1

    if importlib.util.find_spec("matplotlib") is None:
        return
    out = tmp_path / "lift.png"
    bench.main(["--photo", "--model", str(checkpoint), "--picture", str(out)])
    printed = capsys.readouterr().out
    table = [line for line in printed.splitlines() if line.startswith("| ")][1:]
    assert [r.split(" | ")[0][2:] for r in table] == list(bench.CHANGES)
    assert out.stat().st_size > 10_000 and f"picture: {out}" in printed
