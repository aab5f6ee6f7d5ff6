"""``ferkit video`` and ``ferkit webcam``'s parsers. Light (no torch, no OpenCV), so that
``ferkit --help`` starts fast; the commands themselves are `ferkit.video.run_video` and
`ferkit.video.run_webcam`, imported when they run."""

from __future__ import annotations

import argparse

from .argtypes import deferred, number, whole_number
from .predict_cli import add_recognizer_arguments


def _common_options(p: argparse.ArgumentParser, smooth_default: float) -> None:
    p.add_argument(
        "--every",
        type=whole_number(1),
        default=1,
        metavar="N",
        help="recognise faces on every Nth frame only; the frames between keep the last "
        "boxes and ids (default: 1, every frame)",
    )
    p.add_argument(
        "--smooth",
        type=number(0.0, 1.0, open_high=True),
        default=smooth_default,
        metavar="ALPHA",
        help="exponential smoothing of each face's scores over time, alpha in [0, 1): "
        f"0 = none, 0.8 = heavy (default: {smooth_default:g})",
    )
    add_recognizer_arguments(p, backend=True)


def add_parsers(subparsers) -> None:
    """Add the ``video`` and ``webcam`` commands to the ``ferkit`` command's subparsers."""
    v = subparsers.add_parser(
        "video",
        help="recognise and track facial expressions in a video file",
        description="Detect, track and score the faces of a video, frame by frame (memory "
        "stays small whatever its length). Writes an annotated copy (--out) and/or a CSV "
        "table (--csv) and prints a summary.",
    )
    v.add_argument("input", metavar="IN", help="video file (anything OpenCV/FFmpeg reads)")
    v.add_argument(
        "--out",
        default=None,
        metavar="ANNOTATED.mp4",
        help="write a copy with boxes, face ids and labels (.mp4, .mov, .m4v or .avi; no "
        "audio), at the same frame rate and size, except that an odd width or height loses "
        "its last pixel column or row in .mp4, .mov and .m4v (and in .avi at a fractional "
        "frame rate such as 29.97); the summary says so when it does",
    )
    v.add_argument(
        "--csv",
        default=None,
        metavar="FRAMES.csv",
        help="write one row per face per analysed frame (a frame without faces gets one "
        "row with empty face fields); '-' for standard output",
    )
    _common_options(v, smooth_default=0.0)
    v.set_defaults(func=deferred("ferkit.video", "run_video"))

    w = subparsers.add_parser(
        "webcam",
        help="live facial expressions from a camera (needs a display)",
        description="Show the camera's picture with each face's box, id and expression "
        "(press q to quit). Needs a display and an OpenCV with GUI support (not "
        "opencv-python-headless).",
    )
    w.add_argument("--camera", type=int, default=0, help="camera number (default: 0)")
    _common_options(w, smooth_default=0.5)
    w.set_defaults(func=deferred("ferkit.video", "run_webcam"))

