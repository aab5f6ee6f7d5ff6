"""``ferkit export``'s parser and the constants it shows. Light (no torch, no onnx), so that
``ferkit --help`` starts fast; the command itself is `ferkit.export.run_export`, imported
when it runs."""

from __future__ import annotations

from .argtypes import deferred, whole_number

FORMATS = ("onnx", "torchscript")
DEFAULT_OPSET = 17
#: The largest PublicTest accuracy difference (percentage points) `export_int8` accepts.
INT8_TOLERANCE = 0.5
#: The oldest opset offered (this network exports to it, tested); the newest is what this
#: torch's exporter writes (`ferkit.export.MAX_OPSET`, checked when the export runs: it needs
#: torch, which the parser does not import)
MIN_OPSET = 13


def add_parsers(subparsers) -> None:
    """Add the ``export`` command to the ``ferkit`` command's subparsers."""
    p = subparsers.add_parser(
        "export",
        help="export a model to ONNX or TorchScript",
        description="Write a self-describing ONNX or TorchScript file (class names and "
        "preprocessing inside). --int8 writes a statically quantized ONNX file, only when "
        f"its PublicTest accuracy on --data is within {INT8_TOLERANCE} points of fp32's.",
    )
    src = p.add_mutually_exclusive_group()
    src.add_argument(
        "--model", default=None, help="shipped weights name (default: mba_cnn-fer2013)"
    )
    src.add_argument("--checkpoint", default=None, help="checkpoint path (with or without suffix)")
    p.add_argument("--format", choices=FORMATS, default="onnx", help="default: onnx")
    p.add_argument("--out", required=True, metavar="FILE", help="the file to write")
    p.add_argument(
        "--opset", type=whole_number(MIN_OPSET), default=None,
        help=f"ONNX opset, {MIN_OPSET} up to the newest this torch's exporter writes "
        f"(default: {DEFAULT_OPSET}; --format onnx only)",
    )
    p.add_argument("--int8", action="store_true", help="int8 static quantization (ONNX only)")
    p.add_argument("--data", default=None,
                   help="dataset for --int8 calibration and its check (--int8 only)")
    p.add_argument("--ferplus", default=None,
                   help="fer2013new.csv for FER+ checkpoints (--int8 only)")
    p.set_defaults(func=deferred("ferkit.export", "run_export"))
