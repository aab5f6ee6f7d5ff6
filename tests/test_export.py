"""ONNX / TorchScript export, the onnxruntime classifier and backend, and ``ferkit export``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from ferkit import samples  # noqa: E402
from ferkit.augment import normalize  # noqa: E402
from ferkit.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402
from ferkit.export import (  # noqa: E402
    Int8AccuracyError,
    OnnxClassifier,
    export_int8,
    export_onnx,
    export_torchscript,
    load_torchscript,
    quantize_onnx,
    read_onnx_metadata,
)
from ferkit.export_cli import add_parsers  # noqa: E402
from ferkit.models import create_model  # noqa: E402
from ferkit.recognize import Recognizer  # noqa: E402

CLASSES = ["angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"]
PREPROCESSING = {"size": 48, "gray": True, "mean": 0.5, "std": 0.25, "margin": 0.2}


def faces(n: int, seed: int) -> np.ndarray:
    """uint8 n x 48 x 48: noise over smooth gradients, so images differ in several ways."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:48, 0:48] / 47.0
    a, b, c = rng.uniform(-80, 80, size=(3, n, 1, 1))
    base = 128 + a * x + b * y + c
    return np.clip(base + rng.normal(0, 30, size=(n, 48, 48)), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A random MBA-CNN whose outputs depend on its input (a random one's barely do).

    BN statistics are those of a batch of test-like faces (an exact average, not one
    momentum step), and the last layer is scaled so that logits spread over a few units.
    """
    torch.manual_seed(0)
    model = create_model("mba_cnn")
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average
    model.train()
    with torch.no_grad():
        model(normalize(torch.from_numpy(faces(64, seed=1))))
        model.head[-1].weight.mul_(30)
        model.head[-1].bias.zero_()
    for bn in bns:
        bn.momentum = 0.1
    meta = {
        "model": "mba_cnn",
        "model_options": {},
        "class_names": CLASSES,
        "preprocessing": PREPROCESSING,
    }
    base = tmp_path_factory.mktemp("ckpt") / "random"
    save_checkpoint(model.eval(), base, meta)
    return base


@pytest.fixture(scope="module")
def torch_model(checkpoint) -> torch.nn.Module:
    return load_checkpoint(checkpoint)[0]


@pytest.fixture(scope="module")
def onnx_file(checkpoint, tmp_path_factory) -> Path:
    return export_onnx(str(checkpoint), tmp_path_factory.mktemp("onnx") / "model.onnx")


def torch_logits(model, x: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        return model(x).numpy()


def test_onnx_logits_equal_torch_for_batch_1_and_5(torch_model, onnx_file):
    classifier = OnnxClassifier(onnx_file, threads=1)
    x = normalize(torch.from_numpy(faces(5, seed=2)))
    ref = torch_logits(torch_model, x)
    assert ref.std(0).mean() > 0.1  # the outputs really depend on the input
    for batch in (x[:1], x):  # one file, two batch sizes
        out = classifier(batch.numpy())
        assert out.shape == (len(batch), len(CLASSES)) and out.dtype == np.float32
        np.testing.assert_allclose(out, ref[: len(batch)], rtol=0, atol=1e-4)
    np.testing.assert_allclose(classifier(x), ref, rtol=0, atol=1e-4)  # torch input too


def test_onnx_metadata_round_trips(onnx_file):
    meta = read_onnx_metadata(onnx_file)
    assert meta["class_names"] == CLASSES
    assert meta["preprocessing"] == PREPROCESSING
    assert meta["model"] == "mba_cnn" and meta["output"] == "logits"
    classifier = OnnxClassifier(onnx_file)
    assert classifier.class_names == CLASSES and classifier.meta == meta


def test_fixed_batch_onnx_runs_any_batch(torch_model, tmp_path):
    path = export_onnx(
        (torch_model, {"class_names": CLASSES}), tmp_path / "b1.onnx", dynamic_batch=False
    )
    classifier = OnnxClassifier(path, threads=1)
    assert classifier.fixed_batch == 1
    x = normalize(torch.from_numpy(faces(3, seed=3)))
    np.testing.assert_allclose(classifier(x), torch_logits(torch_model, x), rtol=0, atol=1e-4)
    meta = read_onnx_metadata(path)
    assert meta["class_names"] == CLASSES and meta["preprocessing"]["std"] == 0.25  # defaults


def test_torchscript_equals_torch_and_keeps_metadata(checkpoint, torch_model, tmp_path):
    path = export_torchscript(str(checkpoint), tmp_path / "model.pt")
    module, meta = load_torchscript(path)
    assert meta["class_names"] == CLASSES and meta["preprocessing"] == PREPROCESSING
    x = normalize(torch.from_numpy(faces(5, seed=4)))
    with torch.no_grad():
        np.testing.assert_allclose(
            module(x).numpy(), torch_logits(torch_model, x), rtol=0, atol=1e-5
        )
        assert module(x[:1]).shape == (1, len(CLASSES))
    import zipfile  # the zip names no temporary file of the export

    assert {n.split("/")[0] for n in zipfile.ZipFile(path).namelist()} == {"archive"}


def test_recognizer_onnx_backend_equals_torch(checkpoint, onnx_file, ferkit_cache):
    photo = samples.path("astronaut")
    ref = Recognizer(model=str(checkpoint), device="cpu").predict(photo)
    assert len(ref) == 1
    for model in (str(checkpoint), str(checkpoint), onnx_file):  # export, cached, file
        rec = Recognizer(model=model, backend="onnx")
        assert rec.class_names == CLASSES
        faces_found = rec.predict(photo)
        assert [f.box for f in faces_found] == [f.box for f in ref]
        assert [f.label for f in faces_found] == [f.label for f in ref]
        np.testing.assert_allclose(
            list(faces_found[0].scores.values()), list(ref[0].scores.values()), atol=1e-4
        )
    assert len(list((ferkit_cache / "onnx").glob("*.onnx"))) == 1  # exported once


def test_recognizer_onnx_backend_shares_tta(checkpoint, onnx_file):
    crops = faces(3, seed=5)
    for tta in ("flip", "ten-crop"):
        torch_rec = Recognizer(model=str(checkpoint), device="cpu", tta=tta)
        onnx_rec = Recognizer(model=onnx_file, backend="onnx", tta=tta)
        np.testing.assert_allclose(onnx_rec.classify(crops), torch_rec.classify(crops), atol=1e-5)


def test_backend_errors(checkpoint, onnx_file, monkeypatch):
    with pytest.raises(ValueError, match="backend='onnx'"):
        Recognizer(model=onnx_file, device="cpu")
    with pytest.raises(ValueError, match="runs on the CPU"):
        Recognizer(model=onnx_file, backend="onnx", device="cuda")
    with pytest.raises(ValueError, match="'torch' or 'onnx'"):
        Recognizer(model=str(checkpoint), backend="tensorrt")
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as if not installed
    with pytest.raises(ImportError, match=r"pip install 'ferkit\[export\]'"):
        OnnxClassifier(onnx_file)


# ---- the export command ----


def run_cli(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="ferkit")
    add_parsers(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["export", *argv])
    return args.func(args)


def test_cli_writes_onnx_and_torchscript(checkpoint, tmp_path, capsys):
    onnx_out, ts_out = tmp_path / "out" / "m.onnx", tmp_path / "m.pt"
    assert run_cli("--checkpoint", str(checkpoint), "--out", str(onnx_out)) == 0
    assert run_cli("--model", str(checkpoint), "--format", "torchscript", "--out", str(ts_out)) == 0
    out = capsys.readouterr().out
    assert f"wrote {onnx_out}" in out and f"wrote {ts_out}" in out
    assert read_onnx_metadata(onnx_out)["class_names"] == CLASSES
    assert load_torchscript(ts_out)[1]["class_names"] == CLASSES
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == ["m.onnx", "m.pt"]


def test_cli_int8_needs_data(checkpoint, tmp_path):
    out = tmp_path / "q.onnx"
    argv = ["--checkpoint", str(checkpoint), "--out", str(out), "--int8"]
    with pytest.raises(ValueError, match="--int8 needs --data"):
        run_cli(*argv)
    with pytest.raises(ValueError, match="onnx only"):
        run_cli(*argv, "--format", "torchscript", "--data", str(tmp_path))
    assert not out.exists()


@pytest.fixture
def small_fer2013(tmp_path, write_csv) -> Path:
    rows = [[i % 7, img, "Training"] for i, img in enumerate(faces(32, seed=6))]
    rows += [[i % 7, img, "PublicTest"] for i, img in enumerate(faces(40, seed=7))]
    return write_csv(tmp_path / "fer2013.csv", "emotion,pixels,Usage", rows)


@pytest.mark.slow
def test_int8_is_written_only_within_the_accuracy_tolerance(
    checkpoint, small_fer2013, tmp_path, ferkit_cache
):
    out = tmp_path / "int8.onnx"
    with pytest.raises(Int8AccuracyError, match=r"accuracy \d+\.\d\d% differs .* \d+\.\d\d%"):
        export_int8(str(checkpoint), out, small_fer2013, tolerance=-1, calibration_size=16)
    assert not out.exists()
    path, acc32, acc8 = export_int8(
        str(checkpoint), out, small_fer2013, tolerance=100, calibration_size=16
    )
    assert path == out and 0 <= acc32 <= 100 and 0 <= acc8 <= 100
    meta = read_onnx_metadata(out)
    assert meta["class_names"] == CLASSES and "int8" in meta["quantization"]
    x = normalize(torch.from_numpy(faces(4, seed=8)))
    assert OnnxClassifier(out)(x).shape == (4, len(CLASSES))


@pytest.mark.slow
def test_int8_calibrates_on_whole_batches(checkpoint, tmp_path):
    """70 calibration faces (not a multiple of the batch of 64): onnxruntime's percentile
    calibrator failed on the smaller last batch; whole batches are used."""
    fp32 = export_onnx(str(checkpoint), tmp_path / "fp32.onnx")
    out = quantize_onnx(fp32, tmp_path / "int8.onnx", faces(70, seed=3))
    assert "calibrated on 64 faces" in read_onnx_metadata(out)["quantization"]
    small = quantize_onnx(fp32, tmp_path / "int8-small.onnx", faces(20, seed=3))
    assert "calibrated on 20 faces" in read_onnx_metadata(small)["quantization"]
    assert OnnxClassifier(small)(normalize(torch.from_numpy(faces(2, seed=8)))).shape == (2, 7)


def test_cli_opset_range(checkpoint, tmp_path, capsys):
    from ferkit.export import MAX_OPSET, MIN_OPSET

    with pytest.raises(SystemExit):  # below: the parser refuses it
        run_cli("--checkpoint", str(checkpoint), "--out", str(tmp_path / "m.onnx"),
                "--opset", str(MIN_OPSET - 1))
    assert "must be at least" in capsys.readouterr().err
    with pytest.raises(ValueError, match=f"opset {MAX_OPSET + 1}: ferkit exports opsets"):
        run_cli("--checkpoint", str(checkpoint), "--out", str(tmp_path / "m.onnx"),
                "--opset", str(MAX_OPSET + 1))
    out = tmp_path / "m13.onnx"
    assert run_cli("--checkpoint", str(checkpoint), "--out", str(out), "--opset", str(MIN_OPSET)) == 0
    import onnx

    assert onnx.load(str(out)).opset_import[0].version == MIN_OPSET
    assert not (tmp_path / "m.onnx").exists()
