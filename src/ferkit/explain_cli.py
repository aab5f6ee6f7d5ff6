"""``ferkit explain``'s parser. Light (no torch, no matplotlib), so that ``ferkit --help``
starts fast; the command itself is `ferkit.explain.run_explain`, imported when it runs."""

from __future__ import annotations

from .argtypes import deferred
from .predict_cli import add_recognizer_arguments


def add_parsers(subparsers) -> None:
    """Add the ``explain`` command to the ``ferkit`` command's subparsers."""
    p = subparsers.add_parser(
        "explain",
        help="show what the model looked at: attention maps and Grad-CAM per face",
        description="Detect the faces of a photo and draw, for each, the crop the model saw, "
        "its CBAM spatial attention maps, the Grad-CAM of the predicted class and the "
        "scores, into one PNG. No face: says so, writes nothing, exit status 0.",
    )
    p.add_argument("image", metavar="IMAGE", help="photo file")
    p.add_argument(
        "--out", required=True, metavar="OUT.png",
        help="image file to write (PNG; .pdf, .svg or .jpg by its suffix)",
    )
    add_recognizer_arguments(p)
    p.add_argument(
        "--target",
        default=None,
        metavar="CLASS",
        help="class whose Grad-CAM to draw (default: each face's predicted class)",
    )
    p.set_defaults(func=deferred("ferkit.explain", "run_explain"))
