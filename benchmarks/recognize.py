"""Recognition speed on the CPU: classifier faces/s; photo latency and video fps per detector.

Prints Markdown tables:

- classifier faces/s at batch 1 and 64 (normalised 48 x 48 input, logits out) for torch eager
  fp32 (contiguous NCHW, ``torch.no_grad``), torch channels_last + ``torch.inference_mode``,
  onnxruntime fp32 and onnxruntime int8 (static quantization, calibrated here on crops of
  the sample photo: a speed row only; ``ferkit export --int8`` checks accuracy);
- photo latency: the bundled 512 x 512 sample (decoded once), detection + classification,
  median ms over ``--runs`` calls of `Recognizer.predict`, per detector and backend, and
  the detector's share: its ``detect`` timed inside those same calls (median over the same
  runs, so never more than the total);
- video fps: a synthetic 640 x 480 stream, the sample's face region pasted at moving
  positions of a fixed background (one face per frame), detection + classification per frame.

Torch, onnxruntime and OpenCV (the Haar detector) all get ``--threads`` threads; BlazeFace
runs its network on 1 torch thread (its default). Weights do not change the speed: without
shipped weights a randomly initialised MBA-CNN is timed.

    PYTHONPATH=src python benchmarks/recognize.py [--threads 2] [--seconds 3] [--runs 30]
        [--frames 150] [--model NAME|PATH] [--no-int8] [--detectors blazeface haar]
        [--tta none|flip|ten-crop]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ferkit import samples
from ferkit.argtypes import TTA_MODES, number, whole_number
from ferkit.augment import normalize
from ferkit.export import OnnxClassifier, export_onnx, quantize_onnx
from ferkit.faces import FaceDetector, crop_face, get_detector
from ferkit.models import create_model
from ferkit.recognize import Recognizer
from ferkit.weights import available_weights, load_model

FRAME_W, FRAME_H = 640, 480
CLASSES = ["angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"]


def rate(fn, batch: int, seconds: float) -> float:
    """Items per second of ``fn`` (one batch per call), over at least 3 calls and `seconds`."""
    fn()
    n, t0 = 0, time.perf_counter()
    while n < 3 or time.perf_counter() - t0 < seconds:
        fn()
        n += 1
    return n * batch / (time.perf_counter() - t0)


class TimedDetector(FaceDetector):
    """``detector`` with the seconds spent in its ``detect`` added up in ``elapsed``."""

    def __init__(self, detector: FaceDetector) -> None:
        self.inner = detector
        self.name = detector.name
        self.crop_margin = detector.crop_margin
        self.elapsed = 0.0

    def detect(self, image: np.ndarray) -> list:
        t0 = time.perf_counter()
        try:
            return self.inner.detect(image)
        finally:
            self.elapsed += time.perf_counter() - t0


def photo_latency(rec: Recognizer, timer: TimedDetector, photo: np.ndarray,
                  runs: int) -> tuple[float, float]:
    """Median ms of ``rec.predict(photo)`` over ``runs`` calls, and the median ms of the
    detection inside those same calls (``timer`` is the recognizer's detector)."""
    rec.predict(photo)
    totals, detection = [], []
    for _ in range(runs):
        timer.elapsed = 0.0
        t0 = time.perf_counter()
        rec.predict(photo)
        totals.append(time.perf_counter() - t0)
        detection.append(timer.elapsed)
    # each run's detection is part of its total, so its median is never above the total's
    return 1000 * statistics.median(totals), 1000 * statistics.median(detection)


def the_model(name: str | None) -> tuple[torch.nn.Module, dict, str]:
    if name or available_weights():
        try:
            model, meta = load_model(name) if name else load_model()
        except (FileNotFoundError, ValueError) as exc:
            raise SystemExit(f"error: --model {name}: {exc}") from None
        return model, meta, str(name or "shipped default weights")
    torch.manual_seed(0)
    meta = {"model": "mba_cnn", "class_names": CLASSES}
    return create_model("mba_cnn").eval(), meta, "random mba_cnn (no shipped weights)"


def sample_face(photo: np.ndarray) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """The sample's face region (the Haar box grown 1.6x) and the face box inside it."""
    x, y, w, h = max(get_detector("haar").detect(photo), key=lambda d: d.box[2]).box
    side = round(1.6 * max(w, h))
    x0 = int(np.clip(x + w / 2 - side / 2, 0, photo.shape[1] - side))
    y0 = int(np.clip(y + h / 2 - side / 2, 0, photo.shape[0] - side))
    return photo[y0 : y0 + side, x0 : x0 + side], (x - x0, y - y0, w, h)


def calibration_crops(photo: np.ndarray, box, n: int = 64) -> np.ndarray:
    rng = np.random.default_rng(0)
    x, y, w, h = box
    out = []
    for _ in range(n):
        dx, dy = rng.integers(-w // 6, w // 6 + 1, size=2)
        s = rng.uniform(0.85, 1.2)
        crop = crop_face(photo, (x + dx, y + dy, w * s, h * s))
        out.append(np.clip(crop + rng.normal(0, 6, crop.shape), 0, 255).astype(np.uint8))
    return np.stack(out)


def video_frames(region: np.ndarray, count: int) -> list[np.ndarray]:
    """640 x 480 RGB frames: ``region`` moving on a Lissajous path over a fixed background."""
    yy, xx = np.mgrid[0:FRAME_H, 0:FRAME_W]
    background = (90 + 60 * np.sin(xx / 57.0) * np.cos(yy / 43.0)).astype(np.uint8)
    background = np.repeat(background[:, :, None], 3, axis=2)
    side = region.shape[0]
    frames = []
    for k in range(count):
        t = 2 * np.pi * k / count
        x = round((FRAME_W - side) * (0.5 + 0.45 * np.sin(t)))
        y = round((FRAME_H - side) * (0.5 + 0.45 * np.sin(2 * t + 0.5)))
        frame = background.copy()
        frame[y : y + side, x : x + side] = region
        frames.append(frame)
    return frames


def classifier_rows(model, onnx_fp32: Path, onnx_int8: Path | None, args) -> list[tuple]:
    eager = copy.deepcopy(model).to(memory_format=torch.contiguous_format).eval()
    fast = copy.deepcopy(model).to(memory_format=torch.channels_last).eval()
    ort32 = OnnxClassifier(onnx_fp32, threads=args.threads)
    ort8 = OnnxClassifier(onnx_int8, threads=args.threads) if onnx_int8 else None

    def run_eager(x):
        with torch.no_grad():
            eager(x)

    def run_fast(x):
        x = x.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            fast(x)

    paths = [
        ("torch eager fp32 (NCHW, no_grad)", run_eager, False),
        ("torch channels_last + inference_mode", run_fast, False),
        ("onnxruntime fp32", ort32, True),
    ]
    if ort8 is not None:
        paths.append(("onnxruntime int8 (static QDQ)", ort8, True))
    rows = []
    for name, fn, numpy_input in paths:
        speeds = []
        for batch in (1, 64):
            x = normalize(torch.randint(0, 256, (batch, 48, 48), dtype=torch.uint8))
            arg = x.numpy() if numpy_input else x
            speeds.append(rate(lambda fn=fn, arg=arg: fn(arg), batch, args.seconds))
        rows.append((name, *speeds))
    return rows


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=whole_number(1), default=2,
                    help="torch, onnxruntime and OpenCV threads")
    ap.add_argument("--seconds", type=number(0, open_low=True), default=3.0,
                    help="per classifier measurement")
    ap.add_argument("--runs", type=whole_number(1), default=30,
                    help="photo latency runs (median)")
    ap.add_argument("--frames", type=whole_number(1), default=150,
                    help="video frames per backend")
    ap.add_argument("--model", default=None, help="weights name or checkpoint path")
    ap.add_argument("--no-int8", action="store_true", help="skip the int8 row")
    ap.add_argument("--detectors", nargs="+", default=["blazeface", "haar"],
                    choices=["blazeface", "haar"], help="detectors of the photo and video rows")
    ap.add_argument("--tta", choices=TTA_MODES, default="none",
                    help="test-time views per face in the photo and video rows (default none)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    model, meta, described = the_model(args.model)
    with Image.open(samples.path("astronaut")) as img:
        photo = np.asarray(img.convert("RGB"))
    region, box = sample_face(photo)
    print(f"# Recognition speed: {args.threads} thread(s), torch {torch.__version__}, {described}")

    with tempfile.TemporaryDirectory(prefix="ferkit-bench-") as tmp:
        fp32 = export_onnx((model, meta), Path(tmp) / "fp32.onnx")
        int8 = None
        if not args.no_int8:
            int8 = quantize_onnx(fp32, Path(tmp) / "int8.onnx", calibration_crops(region, box))

        rows = classifier_rows(model, fp32, int8, args)
        eager1 = rows[0][1]
        print("\n## Classifier (48 x 48 faces in, logits out)\n")
        print("| path | batch 1 faces/s | batch 64 faces/s | batch 1 vs eager |")
        print("|---|---:|---:|---:|")
        for name, b1, b64 in rows:
            print(f"| {name} | {b1:.0f} | {b64:.0f} | {b1 / eager1:.2f}x |")

        detectors = {
            name: get_detector(name, threads=1 if name == "blazeface" else args.threads)
            for name in args.detectors
        }
        timers = {
            (det, backend): TimedDetector(detector)
            for det, detector in detectors.items()
            for backend in ("torch", "onnx")
        }
        recognizers = {
            (det, backend): Recognizer(
                model=(model, meta) if backend == "torch" else fp32,
                detector=timer,
                device="cpu",
                backend=backend,
                tta=args.tta,
            )
            for (det, backend), timer in timers.items()
        }
        print(f"\n## Photo latency (512 x 512 sample, decoded once; TTA {args.tta}; median ms "
              f"of {args.runs} runs)\n")
        print("| detector | backend | detection + classification ms | of which detection ms |")
        print("|---|---|---:|---:|")
        for (det, backend), rec in recognizers.items():
            total, detection = photo_latency(rec, timers[det, backend], photo, args.runs)
            print(f"| {det} | {backend} | {total:.1f} | {detection:.1f} |")
        print("\nDetection is timed inside the same runs as the total (median of those runs).")

        frames = video_frames(region, min(args.frames, 60))
        print(f"\n## Video ({FRAME_W} x {FRAME_H}, one moving face, {args.frames} frames, TTA "
              f"{args.tta})\n")
        print("| detector | backend | fps | frames with one face found |")
        print("|---|---|---:|---:|")
        best_fps = 0.0
        for (det, backend), rec in recognizers.items():
            rec.predict(frames[0])
            found, t0 = 0, time.perf_counter()
            for k in range(args.frames):
                found += len(rec.predict(frames[k % len(frames)])) == 1
            fps = args.frames / (time.perf_counter() - t0)
            best_fps = max(best_fps, fps)
            print(f"| {det} | {backend} | {fps:.1f} | {100 * found / args.frames:.0f}% |")

    best = max(rows[1:], key=lambda r: r[1])
    print(
        f"\nTargets: best classifier path at batch 1 ({best[0]}) {best[1] / eager1:.2f}x "
        f"torch eager fp32 (target >= 3x); video {best_fps:.1f} fps (target >= 30)."
    )


if __name__ == "__main__":
    main()
