"""Face detector accuracy and speed on real faces: FER2013 faces pasted on a face-free scene.

For each detector (BlazeFace with its default options, BlazeFace with ``tiles=2``, the
Haar cascade, and ``blazeface+haar``: Haar only where BlazeFace finds nothing) and each
``--sizes`` side, a seeded random sample of ``--samples`` images of ``--split`` is upscaled
(bicubic, OpenCV) from 48 x 48 to side x side, made 3-channel RGB (gray repeated) and
pasted at a seeded random position of a 640 x 480 background, one face per image. Constant images are left out of the sample, and with ``--ferplus`` so are the rows
whose FER+ votes are more than half "not a face" (NF).

FER2013 crops are tight (the face fills the 48 x 48 square, little hair or neck), so a
pasted face has no context around it and a hard edge: harder than a face in a photo for a
detector that uses context, and the box a detector draws may extend past the square.

- Hit: a detection whose box centre lies inside the pasted square and whose box side
  (max(w, h)) is 0.3x to 1.5x the square's side. Recall = faces with a hit / faces.
- False positives: every detection that is not a face's (best-scoring) hit, so a second box
  on the same face counts too; per image, on the face images of that size. Face-free images
  are reported apart: the background alone (``--backgrounds`` seeds) and, with ``--ferplus``,
  the FER+ non-face rows (all splits) pasted the same way at the middle size.
- Time: median ms of ``detect`` per 640 x 480 image, torch and OpenCV pinned to ``--threads``
  (BlazeFace gets ``threads=--threads``, Haar ``threads=--threads``).

The background (`background`) is synthetic and face-free: 1/f ("fractal") value noise,
octaves from 5 to 320 pixels with amplitude proportional to the scale, tinted per colour
channel, under a linear illumination gradient in a random direction, with a few
soft-edged axis-aligned rectangles (wall panels, furniture, windows), stretched to a random
contrast range, plus mild sensor noise.
Each image gets its own seed.

    PYTHONPATH=src python benchmarks/detectors.py --data fer2013.csv.gz
        [--ferplus fer2013new.csv] [--split PrivateTest]
        [--samples 300] [--sizes 64 128 256] [--backgrounds 20] [--seed 0] [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import cv2
import numpy as np
import torch

from ferkit.argtypes import whole_number
from ferkit.data import DataError, load
from ferkit.data.ferplus import VOTE_COLUMNS, joined_votes
from ferkit.faces import get_detector

FRAME_W, FRAME_H = 640, 480


def background(seed: int) -> np.ndarray:
    """A 640 x 480 RGB face-free scene (see the module docstring)."""
    rng = np.random.default_rng(seed)
    texture = np.zeros((FRAME_H, FRAME_W), np.float32)
    for scale in (5, 10, 20, 40, 80, 160, 320):
        coarse = rng.normal(0, 1, (FRAME_H // scale + 2, FRAME_W // scale + 2)).astype(np.float32)
        big = cv2.resize(coarse, None, fx=scale, fy=scale, interpolation=cv2.INTER_CUBIC)
        texture += (scale / 320) ** 0.7 * big[:FRAME_H, :FRAME_W]
    texture *= 40 / max(float(texture.std()), 1e-6)
    yy, xx = np.mgrid[0:FRAME_H, 0:FRAME_W].astype(np.float32)
    angle = rng.uniform(0, 2 * np.pi)
    ramp = (np.cos(angle) * xx / FRAME_W + np.sin(angle) * yy / FRAME_H) * rng.uniform(30, 90)
    gray = texture + ramp
    for _ in range(rng.integers(2, 6)):  # soft-edged rectangles
        x0, x1 = np.sort(rng.integers(0, FRAME_W, 2))
        y0, y1 = np.sort(rng.integers(0, FRAME_H, 2))
        mask = np.zeros((FRAME_H, FRAME_W), np.float32)
        mask[y0:y1, x0:x1] = 1
        mask = cv2.GaussianBlur(mask, (0, 0), rng.uniform(1, 6))
        gray += mask * rng.uniform(-60, 60)
    lo, hi = np.percentile(gray, (1, 99))  # contrast: into a random range inside 10..245
    low, high = rng.uniform(10, 90), rng.uniform(160, 245)
    gray = low + (gray - lo) * (high - low) / max(hi - lo, 1e-6)
    tint = rng.uniform(0.85, 1.15, 3).astype(np.float32)
    rgb = gray[:, :, None] * tint + rng.normal(0, 3, (FRAME_H, FRAME_W, 3))
    return np.clip(rgb, 0, 255).astype(np.uint8)


def paste(face48: np.ndarray, side: int, seed: int) -> tuple[np.ndarray, tuple[int, int, int]]:
    """``face48`` upscaled to side x side on background(seed) at a random position."""
    rng = np.random.default_rng([seed, 1])
    frame = background(seed)
    face = cv2.resize(face48, (side, side), interpolation=cv2.INTER_CUBIC)
    x = int(rng.integers(0, FRAME_W - side + 1))
    y = int(rng.integers(0, FRAME_H - side + 1))
    frame[y : y + side, x : x + side] = face[:, :, None]
    return frame, (x, y, side)


def is_hit(box, square) -> bool:
    bx, by, bw, bh = box
    x, y, side = square
    cx, cy = bx + bw / 2, by + bh / 2
    return x <= cx <= x + side and y <= cy <= y + side and 0.3 * side <= max(bw, bh) <= 1.5 * side


def timed_detect(detector, image) -> tuple[list, float]:
    t0 = time.perf_counter()
    found = detector.detect(image)
    return found, 1000 * (time.perf_counter() - t0)


def nonface_rows(faces, votes_path: str) -> np.ndarray:
    """Mask of the rows of ``faces`` whose FER+ votes are more than half NF."""
    v = joined_votes(faces, votes_path)
    return v[:, VOTE_COLUMNS.index("NF")] > 0.5 * v.sum(axis=1)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True, help="FER2013 csv(.gz), folder or pack")
    ap.add_argument("--ferplus", default=None, help="fer2013new.csv: drop NF rows, test them")
    ap.add_argument("--split", default="PrivateTest")
    ap.add_argument("--samples", type=whole_number(1), default=300,
                    help="faces sampled from the split")
    ap.add_argument("--sizes", type=int, nargs="+", default=[64, 128, 256],
                    help="pasted face sides in pixels")
    ap.add_argument("--backgrounds", type=whole_number(0), default=20,
                    help="face-free background images")
    ap.add_argument("--seed", type=whole_number(0), default=0)
    ap.add_argument("--threads", type=whole_number(1), default=1, help="torch and OpenCV threads")
    args = ap.parse_args(argv)
    bad = [s for s in args.sizes if not 16 <= s <= min(FRAME_W, FRAME_H)]
    if bad:
        ap.error(f"--sizes {bad}: each must be 16 to {min(FRAME_W, FRAME_H)}")
    torch.set_num_threads(args.threads)
    cv2.setNumThreads(args.threads)
    start = time.perf_counter()

    try:
        faces = load(args.data)
        nf = nonface_rows(faces, args.ferplus) if args.ferplus else np.zeros(len(faces), bool)
        split = faces.splits == args.split
        if not split.any():
            raise DataError(f"{args.data}: no split {args.split!r}; it has {faces.split_names}")
        flat = faces.images.reshape(len(faces), -1)
        constant = flat.min(axis=1) == flat.max(axis=1)
        eligible = np.flatnonzero(split & ~constant & ~nf)
        if not len(eligible):
            raise DataError(f"{args.data}: split {args.split!r} has no face left to sample "
                            "(all constant images or FER+ non-faces)")
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    rng = np.random.default_rng(args.seed)
    sample = rng.choice(eligible, size=min(args.samples, len(eligible)), replace=False)

    detectors = {
        "blazeface": get_detector("blazeface", threads=args.threads),
        "blazeface tiles=2": get_detector("blazeface", tiles=2, threads=args.threads),
        "haar": get_detector("haar", threads=args.threads),
        "blazeface+haar": get_detector("blazeface+haar", threads=args.threads),
    }
    print(f"# Face detectors on FER2013 {args.split} faces pasted on 640 x 480 backgrounds")
    dropped = f" and {int((split & nf).sum())} FER+ non-face" if args.ferplus else ""
    print(f"\n{len(sample)} faces of {len(eligible)} eligible ({int(constant[split].sum())} "
          f"constant{dropped} left out), seed {args.seed}, {args.threads} thread(s), torch {torch.__version__}, "
          f"OpenCV {cv2.__version__}")

    times: dict[str, list[float]] = {}
    rows: dict[str, list[tuple]] = {name: [] for name in detectors}
    for side in args.sizes:
        frames = [paste(faces.images[i], side, args.seed * 1_000_003 + int(i) * 7 + side)
                  for i in sample]
        for name, det in detectors.items():
            hits, fps, ms = 0, 0, []
            for frame, square in frames:
                found, t = timed_detect(det, frame)
                ms.append(t)
                matched = [d for d in found if is_hit(d.box, square)]
                hits += bool(matched)
                fps += len(found) - min(1, len(matched))
            times.setdefault(name, []).extend(ms)
            rows[name].append((side, hits / len(frames), fps / len(frames), statistics.median(ms)))

    print("\n## Faces (one per image)\n")
    print("| detector | face side px | recall | false positives per image | median ms |")
    print("|---|---:|---:|---:|---:|")
    for name, per_size in rows.items():
        for side, recall, fp, ms in per_size:
            print(f"| {name} | {side} | {recall:.1%} | {fp:.3f} | {ms:.0f} |")

    nonface_sets = {f"background only ({args.backgrounds} seeds)": [
        background(10_000 + args.seed * 1_000 + k) for k in range(args.backgrounds)
    ]}
    if args.ferplus:
        middle = sorted(args.sizes)[len(args.sizes) // 2]
        nonface_sets[f"FER+ non-face rows, all splits (side {middle})"] = [
            paste(faces.images[i], middle, 20_000 + args.seed * 1_000_003 + int(i))[0]
            for i in np.flatnonzero(nf)
        ]
    print("\n## Face-free images\n")
    print("| detector | images | count | images with any detection | detections | median ms |")
    print("|---|---|---:|---:|---:|---:|")
    for name, det in detectors.items():
        for label, frames in nonface_sets.items():
            found = [timed_detect(det, frame) for frame in frames]
            times[name].extend(t for _, t in found)
            any_det = sum(bool(f) for f, _ in found)
            total = sum(len(f) for f, _ in found)
            ms = statistics.median(t for _, t in found) if found else float("nan")
            print(f"| {name} | {label} | {len(frames)} | {any_det} | {total} | {ms:.0f} |")

    print("\n## Time over all images (median ms per 640 x 480 image)\n")
    print("| detector | images | median ms |")
    print("|---|---:|---:|")
    for name, ms in times.items():
        print(f"| {name} | {len(ms)} | {statistics.median(ms):.0f} |")
    print(f"\nTotal runtime {time.perf_counter() - start:.0f} s.")


if __name__ == "__main__":
    main()
