"""ONNX and TorchScript export, the onnxruntime classifier, int8 quantization, ``ferkit export``.

An exported file is self-describing: besides the network (normalised float N x 1 x 48 x 48
in, N x C logits out) it carries the class names and the preprocessing (crop size, gray,
normalisation mean and std, and the checkpoint's crop margin where it has one) as ONNX
``metadata_props`` (JSON values) or as the TorchScript extra file ``ferkit.json``;
`read_onnx_metadata` and `load_torchscript` read them back. The input is ``(pixel / 255 -
mean) / std`` of the uint8 crop that `ferkit.faces.crop_face` makes: the square around the
face box with ``(1 + margin)`` times its longer side, eyes levelled where the detector
gives them, gray, 48 x 48; the margin belongs to the detector's boxes (BlazeFace 0.06,
the Haar cascade 0.2), so the files carry none of their own.

`OnnxClassifier` runs an ONNX file with onnxruntime's CPU provider; it is what
``Recognizer(backend="onnx")`` uses, through the same TTA and softmax code as the torch
backend (`ferkit.evaluate.predict_probs`).

int8 (`quantize_onnx`): static quantization (QDQ, per-channel int8 weights, uint8
activations calibrated on real faces). Dynamic quantization was tried and left out: it
turns this network's convolutions into ``ConvInteger``, which ran slower than fp32 here.
``ferkit export --int8`` writes the int8 file only when its PublicTest accuracy is within
0.5 points of the fp32 model's (`export_int8`).

onnx and onnxruntime are optional: ``pip install 'ferkit[export]'``.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import inspect
import io
import json
import os
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .augment import PIXEL_MEAN, PIXEL_STD
from .export_cli import DEFAULT_OPSET, INT8_TOLERANCE, MIN_OPSET
from .faces import FACE_SIZE
from .fileio import no_folders_left_on_failure, write_atomically
from .models.info import eval_mode

try:  # the newest opset this torch's TorchScript-based exporter writes
    from torch.onnx._constants import ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET as MAX_OPSET
except ImportError:  # a private name: where it moves, offer the default only
    MAX_OPSET = DEFAULT_OPSET
CALIBRATION_FACES = 512
#: faces per calibration batch (every batch the same size, see `quantize_onnx`)
CALIBRATION_BATCH = 64
CALIBRATION_PERCENTILE = 99.999
INPUT_NAME = "input"
OUTPUT_NAME = "logits"
_TORCHSCRIPT_META = "ferkit.json"
_INSTALL_HINT = "pip install 'ferkit[export]'"


class Int8AccuracyError(ValueError):
    """The int8 model's accuracy is too far from the fp32 model's; it was not written."""


def _import_onnx():
    try:
        import onnx
    except ImportError as exc:
        raise ImportError(f"ONNX export needs the onnx package: {_INSTALL_HINT}") from exc
    return onnx


def _import_onnxruntime():
    try:
        import onnxruntime
    except ImportError as exc:
        raise ImportError(f"the ONNX backend needs onnxruntime: {_INSTALL_HINT}") from exc
    return onnxruntime


def _resolve(model_or_checkpoint) -> tuple[nn.Module, dict]:
    from .recognize import _resolve_model

    return _resolve_model(model_or_checkpoint)


def _source_files(model_or_checkpoint) -> list[Path]:
    """The files a checkpoint path (or run folder) given as the source is read from."""
    if not isinstance(model_or_checkpoint, (str, os.PathLike)):
        return []
    from .checkpoint import _base, _file
    from .weights import best_checkpoint

    path = Path(model_or_checkpoint)
    base = best_checkpoint(path) if path.is_dir() else _base(path)
    return [] if base is None else [_file(base, ".safetensors"), _file(base, ".json")]


def _output(path, model_or_checkpoint, option: str = "path", keep=()) -> Path:
    """``path`` checked before any work as the file an export writes: not a folder, not
    under a file, writable, and not one of its inputs (the checkpoint's weights or
    metadata, ``keep``); a ValueError naming ``option`` says what is wrong."""
    from .fileio import output_file

    if str(path).strip() == "":
        raise ValueError(f"{option} is empty: give the file to write")
    inputs = [*_source_files(model_or_checkpoint), *(k for k in keep if k)]
    return output_file(path, option, inputs)


def export_metadata(meta: dict) -> dict:
    """What an exported file carries: class names, full preprocessing, model and version."""
    from . import __version__

    if "class_names" not in meta:
        raise ValueError("model metadata has no 'class_names'")
    prep = {
        "size": FACE_SIZE,
        "gray": True,
        "mean": PIXEL_MEAN,
        "std": PIXEL_STD,
        # no margin unless the checkpoint has one: it depends on the detector's boxes
        **meta.get("preprocessing", {}),
    }
    out = {
        "class_names": [str(c) for c in meta["class_names"]],
        "preprocessing": prep,
        "input": f"float N x 1 x {prep['size']} x {prep['size']}: (pixel / 255 - mean) / std",
        "output": "logits",
        "ferkit_version": __version__,
    }
    for key in ("model", "model_options", "quantization"):
        if key in meta:
            out[key] = meta[key]
    return out


def _example_input(model: nn.Module, meta: dict) -> torch.Tensor:
    size = int(meta["preprocessing"]["size"])
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    return torch.zeros(1, 1, size, size, device=device)


def _onnx_bytes(model: nn.Module, meta: dict, opset: int, dynamic_batch: bool) -> bytes:
    """The serialised ONNX model with ``export_metadata(meta)`` as its metadata_props."""
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise ValueError(f"opset {opset}: ferkit exports opsets {MIN_OPSET} to {MAX_OPSET} (the "
                         "newest this torch's exporter writes)")
    onnx = _import_onnx()
    info = export_metadata(meta)
    buffer = io.BytesIO()
    axes = {INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}} if dynamic_batch else None
    with warnings.catch_warnings(), eval_mode(model):
        warnings.simplefilter("ignore", DeprecationWarning)  # the TorchScript-based exporter
        # the TorchScript-based exporter; torch < 2.5 has no `dynamo` switch and uses it anyway
        has_switch = "dynamo" in inspect.signature(torch.onnx.export).parameters
        legacy = {"dynamo": False} if has_switch else {}
        torch.onnx.export(
            model,
            (_example_input(model, info),),
            buffer,
            **legacy,
            opset_version=opset,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes=axes,
        )
    proto = onnx.load_from_string(buffer.getvalue())
    _set_onnx_metadata(proto, info)
    return proto.SerializeToString()


def _set_onnx_metadata(proto, info: dict) -> None:
    del proto.metadata_props[:]
    for key, value in info.items():
        entry = proto.metadata_props.add()
        entry.key = key
        entry.value = value if isinstance(value, str) else json.dumps(value)
    proto.producer_name = "ferkit"
    proto.producer_version = str(info.get("ferkit_version", ""))


def _decode_metadata(props: dict[str, str]) -> dict:
    out = {}
    for key, value in props.items():
        try:
            out[key] = json.loads(value)
        except ValueError:
            out[key] = value  # plain strings (``input``, ``output``, ...)
    return out


def export_onnx(
    model_or_checkpoint,
    path: str | os.PathLike,
    opset: int = DEFAULT_OPSET,
    dynamic_batch: bool = True,
) -> Path:
    """Write the model as an ONNX file; the path written.

    ``model_or_checkpoint``: a shipped weights name, a checkpoint path, ``(nn.Module,
    metadata)`` with ``metadata["class_names"]``, or None (the default shipped weights).
    ``dynamic_batch=False`` fixes the batch size at 1. ``path`` is checked first (not a
    folder, writable, not the checkpoint's own files); a module is exported in eval mode
    and left in the mode it was in.
    """
    path = _output(path, model_or_checkpoint)
    model, meta = _resolve(model_or_checkpoint)
    data = _onnx_bytes(model, meta, opset, dynamic_batch)
    return write_atomically(path, lambda tmp: tmp.write_bytes(data))


def read_onnx_metadata(path: str | os.PathLike) -> dict:
    """The ferkit metadata of an exported ONNX file (class names, preprocessing, ...);
    a file that is not an ONNX model is a ValueError naming it."""
    onnx = _import_onnx()
    _check_model_file(path, "an ONNX")
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf's DecodeError, onnx's own errors
        raise ValueError(f"{path}: not an ONNX model ({_first_line(exc)})") from None
    return _decode_metadata({p.key: p.value for p in proto.metadata_props})


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _check_model_file(path, kind: str) -> None:
    """A missing file or a folder given as a model file: FileNotFoundError / ValueError."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{path}: no such file ({kind} file expected)")
    if p.is_dir():
        raise ValueError(f"{path}: a folder, not {kind} file")


def export_torchscript(model_or_checkpoint, path: str | os.PathLike) -> Path:
    """Write the model traced in eval mode as TorchScript, with its metadata; the path.

    ``path`` is checked first, as `export_onnx` checks it; a module is left in the mode it
    was in.
    """
    path = _output(path, model_or_checkpoint)
    model, meta = _resolve(model_or_checkpoint)
    info = export_metadata(meta)
    with warnings.catch_warnings(), torch.no_grad(), eval_mode(model):
        warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit is deprecated upstream
        traced = torch.jit.trace(model, _example_input(model, info))
    extra = {_TORCHSCRIPT_META: json.dumps(info)}

    def save(tmp: Path) -> None:
        # through memory: saved to a path, the zip's inner folder is named after the
        # temporary file (".NAME.PID.tmp/..."); from memory it is torch's plain "archive"
        buffer = io.BytesIO()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            torch.jit.save(traced, buffer, _extra_files=extra)
        tmp.write_bytes(buffer.getvalue())

    return write_atomically(path, save)


def load_torchscript(
    path: str | os.PathLike, device: str | torch.device = "cpu"
) -> tuple[torch.jit.ScriptModule, dict]:
    """``(module, metadata)`` of a file written by `export_torchscript`; a file that is not
    TorchScript is a ValueError naming it (metadata: {} for a TorchScript file of another
    origin)."""
    _check_model_file(path, "a TorchScript")
    extra = {_TORCHSCRIPT_META: ""}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            module = torch.jit.load(str(path), map_location=device, _extra_files=extra)
        except (RuntimeError, ValueError) as exc:
            raise ValueError(
                f"{path}: not a TorchScript file (such as `ferkit export --format torchscript` "
                f"writes): {_first_line(exc)}"
            ) from None
    try:
        meta = json.loads(extra[_TORCHSCRIPT_META]) if extra[_TORCHSCRIPT_META] else {}
    except ValueError:
        raise ValueError(f"{path}: its {_TORCHSCRIPT_META} is not JSON") from None
    return module.eval(), meta


class OnnxClassifier:
    """An exported ONNX classifier run by onnxruntime on the CPU.

    ``model``: an ONNX file path or its bytes. ``threads``: onnxruntime's intra-op threads
    (None: onnxruntime's default, one per physical core); they do not busy-wait for work
    between calls (onnxruntime's default): in a pipeline that also runs torch or OpenCV
    (detection, then classification) spinning threads take the cores from them (a 512 x 512
    photo with BlazeFace took 48.9 ms with spinning, 20.0 ms without, on 2 cores). Calling
    it with a float
    N x 1 x 48 x 48 batch (numpy or torch, normalised as ``meta["preprocessing"]`` says)
    gives N x C float32 logits (numpy). ``meta`` holds the file's ferkit metadata and
    ``class_names`` its classes.
    """

    def __init__(self, model: str | os.PathLike | bytes, threads: int | None = None) -> None:
        ort = _import_onnxruntime()
        options = ort.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = int(threads)
            options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        source = model if isinstance(model, bytes) else str(model)
        name = "ONNX model bytes" if isinstance(model, bytes) else str(model)
        if not isinstance(model, bytes):
            _check_model_file(model, "an ONNX")
        try:
            self.session = ort.InferenceSession(
                source, options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # onnxruntime's own error types (InvalidProtobuf, ...)
            raise ValueError(
                f"{name}: not an ONNX model onnxruntime can load ({_first_line(exc)})"
            ) from None
        self.meta = _decode_metadata(self.session.get_modelmeta().custom_metadata_map)
        self.class_names = [str(c) for c in self.meta.get("class_names", [])]
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        size = int(self.meta.get("preprocessing", {}).get("size", FACE_SIZE))
        inp = inputs[0] if len(inputs) == 1 else None
        if (inp is None or inp.type != "tensor(float)" or len(inp.shape) != 4
                or any(isinstance(d, int) and d != want
                       for d, want in zip(inp.shape[1:], (1, size, size), strict=True))):
            got = ", ".join(f"{i.name}: {i.type} {i.shape}" for i in inputs)
            raise ValueError(
                f"{name}: expected one input, float N x 1 x {size} x {size} (normalised gray "
                f"faces, as ferkit exports), got {got}"
            )
        out = outputs[0].shape if outputs else []
        classes = len(self.class_names)
        if len(out) != 2 or (classes and isinstance(out[1], int) and out[1] != classes):
            raise ValueError(
                f"{name}: expected an output N x {classes or 'C'} (one logit per class"
                + (f" of its metadata's {classes}" if classes else "")
                + f"), got {[o.shape for o in outputs]}"
            )
        self.input_name = inp.name
        batch = inp.shape[0]
        self.fixed_batch = batch if isinstance(batch, int) else None

    def __call__(self, x: np.ndarray | torch.Tensor) -> np.ndarray:
        if isinstance(x, torch.Tensor):
            x = x.detach().to("cpu", torch.float32).numpy()
        x = np.ascontiguousarray(x, dtype=np.float32)
        b = self.fixed_batch
        if b is None or len(x) == b:
            return self.session.run(None, {self.input_name: x})[0]
        # a fixed-batch file: run in chunks of its batch size, the last one padded
        out = []
        for i in range(0, len(x), b):
            chunk = x[i : i + b]
            pad = b - len(chunk)
            if pad:
                chunk = np.concatenate([chunk, np.zeros((pad, *chunk.shape[1:]), np.float32)])
            out.append(self.session.run(None, {self.input_name: chunk})[0][: b - pad])
        return np.concatenate(out) if out else np.zeros((0, len(self.class_names)), np.float32)


def _weights_digest(model: nn.Module, meta: dict, opset: int) -> str:
    from . import __version__

    h = hashlib.sha256(
        json.dumps(
            [__version__, torch.__version__, opset, meta], sort_keys=True, default=str
        ).encode()
    )
    for name, t in model.state_dict().items():
        h.update(name.encode())
        h.update(str(t.dtype).encode())
        h.update(t.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()[:20]


def onnx_backend(model=None, threads: int | None = None) -> tuple[OnnxClassifier, dict]:
    """``(OnnxClassifier, metadata)`` for ``Recognizer(backend="onnx")``.

    ``model``: an ``.onnx`` file, or anything `export_onnx` takes; the latter is exported
    once into ``ferkit's cache folder/onnx/`` (keyed by its weights and metadata), or kept
    in memory when that folder cannot be written.
    """
    if isinstance(model, (str, os.PathLike)) and Path(model).suffix.lower() == ".onnx":
        classifier = OnnxClassifier(model, threads)
        if not classifier.class_names:
            raise ValueError(
                f"{model}: an ONNX model without ferkit's metadata (no class_names): the onnx "
                "backend runs files written by `ferkit export` (ferkit.export.export_onnx), "
                "which name their classes and preprocessing"
            )
        return classifier, classifier.meta
    from .data.readers import cache_dir

    module, meta = _resolve(model)
    name = f"{meta.get('model', 'model')}-{_weights_digest(module, meta, DEFAULT_OPSET)}.onnx"
    path = cache_dir() / "onnx" / name
    if not path.exists():
        data = _onnx_bytes(module, meta, DEFAULT_OPSET, dynamic_batch=True)
        try:
            write_atomically(path, lambda tmp: tmp.write_bytes(data))
        except OSError:
            return OnnxClassifier(data, threads), meta
    return OnnxClassifier(path, threads), meta


# ---- int8 ----


class _Calibration:
    """onnxruntime's CalibrationDataReader protocol over uint8 faces (normalised here)."""

    def __init__(self, faces: np.ndarray, batch: int = 64) -> None:
        from .augment import normalize

        self._batches = (
            {INPUT_NAME: normalize(torch.from_numpy(faces[i : i + batch])).numpy()}
            for i in range(0, len(faces), batch)
        )

    def get_next(self) -> dict | None:
        return next(self._batches, None)


def quantize_onnx(src: str | os.PathLike, dst: str | os.PathLike, calibration: np.ndarray) -> Path:
    """Statically quantize an exported fp32 ONNX file to int8; the path written.

    ``calibration``: uint8 N x 48 x 48 faces (a few hundred real ones) whose activation
    ranges fix the uint8 scales: each range is the 0.001th to 99.999th percentile of the
    values seen, not their min-max (a few outliers stretched min-max ranges: the shipped
    FER+ model lost 0.91 points of FERValid with min-max ranges, none with percentiles; the
    FER2013 one 0.17 and 0.06). Weights are int8 per output channel (QDQ format). The
    metadata is kept, with ``quantization`` added.
    """
    onnx = _import_onnx()
    _import_onnxruntime()
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    calibration = np.asarray(calibration)
    if calibration.ndim != 3 or calibration.dtype != np.uint8 or len(calibration) == 0:
        raise ValueError("calibration must be uint8 N x 48 x 48 faces (N >= 1)")
    if len(calibration) > CALIBRATION_BATCH:
        # whole batches only: onnxruntime's percentile calibrator stacks every batch's
        # outputs and fails on a smaller last one (400 faces: 6 x 64 + 16)
        calibration = calibration[: len(calibration) // CALIBRATION_BATCH * CALIBRATION_BATCH]
    info = read_onnx_metadata(src)
    with tempfile.TemporaryDirectory(prefix="ferkit-quant-") as tmp:
        prepared, quantized = Path(tmp) / "prepared.onnx", Path(tmp) / "int8.onnx"
        quant_pre_process(str(src), str(prepared))
        print(f"ferkit: calibrating int8 activation ranges on {len(calibration)} faces",
              file=sys.stderr, flush=True)
        # onnxruntime's calibrator prints its steps to stdout, where results go
        with contextlib.redirect_stdout(io.StringIO()), _calibration_errors():
            quantize_static(
                str(prepared),
                str(quantized),
                _Calibration(calibration, CALIBRATION_BATCH),
                quant_format=QuantFormat.QDQ,
                per_channel=True,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                calibrate_method=CalibrationMethod.Percentile,
                extra_options={"CalibPercentile": CALIBRATION_PERCENTILE},
            )
        proto = onnx.load(str(quantized))
    info["quantization"] = (
        f"int8 static QDQ: per-channel int8 weights, uint8 activations calibrated on "
        f"{len(calibration)} faces ({CALIBRATION_PERCENTILE} percentile ranges)"
    )
    _set_onnx_metadata(proto, info)
    data = proto.SerializeToString()
    return write_atomically(Path(dst), lambda p: p.write_bytes(data))


@contextlib.contextmanager
def _calibration_errors():
    """onnxruntime's calibrator fails in numpy (a histogram over an activation that hardly
    varies, as in an untrained model): said so, not in numpy's bare words."""
    try:
        yield
    except ValueError as exc:
        raise ValueError(
            f"int8 calibration failed ({_first_line(exc)}): an activation of the model "
            "hardly varies over the calibration faces (an untrained model, or faces that are "
            "all alike?)"
        ) from None


def _accuracy(classifier, images: np.ndarray, labels: np.ndarray) -> float:
    from .evaluate import predict_probs

    probs = predict_probs(classifier, images, batch_size=256)
    return 100.0 * float((probs.argmax(1) == labels).mean())


def export_int8(
    model_or_checkpoint,
    path: str | os.PathLike,
    data: str | os.PathLike,
    ferplus: str | None = None,
    tolerance: float = INT8_TOLERANCE,
    calibration_size: int = CALIBRATION_FACES,
    threads: int | None = None,
    opset: int = DEFAULT_OPSET,
) -> tuple[Path, float, float]:
    """Write an int8 ONNX file only if it scores like the fp32 one: ``(path, fp32, int8)``.

    Calibrates on ``calibration_size`` random Training faces of ``data``, scores the fp32
    and int8 files on its PublicTest split (accuracy in percent) and raises
    `Int8AccuracyError` with both numbers, writing nothing, when they differ by more than
    ``tolerance`` points.
    """
    from .data import DataError
    from .evaluate import load_eval_data

    inputs = [d for d in (data, ferplus) if isinstance(d, (str, os.PathLike))]
    path = _output(path, model_or_checkpoint, keep=inputs)
    model, meta = _resolve(model_or_checkpoint)
    faces = load_eval_data(meta, data, ferplus)
    train = faces.subset("Training")
    test = faces.subset("PublicTest")
    if len(train) == 0 or len(test) == 0 or (test.labels < 0).any():
        raise DataError(f"{data}: int8 export needs Training faces and labelled PublicTest faces")
    rng = np.random.default_rng(0)
    pick = np.sort(rng.choice(len(train), min(calibration_size, len(train)), replace=False))
    with tempfile.TemporaryDirectory(prefix="ferkit-int8-") as tmp:
        fp32 = Path(tmp) / "fp32.onnx"
        fp32.write_bytes(_onnx_bytes(model, meta, opset, dynamic_batch=True))
        int8 = quantize_onnx(fp32, Path(tmp) / "int8.onnx", train.images[pick])
        acc32 = _accuracy(OnnxClassifier(fp32, threads), test.images, test.labels)
        acc8 = _accuracy(OnnxClassifier(int8, threads), test.images, test.labels)
        if abs(acc8 - acc32) > tolerance:
            raise Int8AccuracyError(
                f"int8 model not written: its PublicTest accuracy {acc8:.2f}% differs from the "
                f"fp32 model's {acc32:.2f}% by {abs(acc8 - acc32):.2f} points (at most "
                f"{tolerance} allowed); export without --int8 for the fp32 model"
            )
        data_bytes = int8.read_bytes()
    out = write_atomically(path, lambda p: p.write_bytes(data_bytes))
    return out, acc32, acc8


# ---- the export command ----


def run_export(args: argparse.Namespace) -> int:
    source = args.checkpoint or args.model
    opset = DEFAULT_OPSET if args.opset is None else args.opset
    if args.format != "onnx" and args.opset is not None:
        raise ValueError(f"--opset is for --format onnx only (a {args.format} file has none)")
    if args.int8:
        if args.format != "onnx":
            raise ValueError("--int8 is for --format onnx only")
        if not args.data:
            raise ValueError(
                "--int8 needs --data PATH: the int8 file is written only when its PublicTest "
                f"accuracy on that dataset is within {INT8_TOLERANCE} points of the fp32 model's"
            )
    else:  # given, and not used: said, not dropped silently
        for option, value in (("--data", args.data), ("--ferplus", args.ferplus)):
            if value is not None:
                raise ValueError(f"{option} {value}: only --int8 uses a dataset (to calibrate "
                                 "and check the int8 model); leave it out, or add --int8")
    # an export that fails (a model that cannot load) leaves no empty folders behind
    with no_folders_left_on_failure(files=[args.out]):
        # the output before any work (a model load, minutes of int8 calibration)
        out = _output(args.out, source, "--out",
                      keep=[args.data, args.ferplus] if args.int8 else ())
        if args.int8:
            path, acc32, acc8 = export_int8(source, out, args.data, args.ferplus, opset=opset)
            print(f"PublicTest accuracy: fp32 {acc32:.2f}%, int8 {acc8:.2f}%")
        elif args.format == "onnx":
            path = export_onnx(source, out, opset=opset)
        else:
            path = export_torchscript(source, out)
    kind = "int8 onnx" if args.int8 else args.format
    print(f"wrote {path} ({kind}, {path.stat().st_size / 2**20:.1f} MiB)")
    return 0
