"""Review fixes of explanations and export: Grad-CAM under no_grad / inference mode, the
model's mode and statistics left as they were, EMA wrappers, crops as `classify` takes
them, class names that do not fit; exports that never replace their checkpoint, outputs
checked before any work, options that would be ignored, bad ONNX / TorchScript files."""

from __future__ import annotations

import argparse
import shutil

import numpy as np
import pytest
import torch
from test_explain import BrightDark
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from ferkit import samples
from ferkit.explain import explain, explain_crops
from ferkit.explain_cli import add_parsers as add_explain_parsers
from ferkit.models import create_model
from ferkit.recognize import Recognizer

CLASSES = ["angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"]


def corner_crop() -> np.ndarray:
    crop = np.full((48, 48), 40, np.uint8)
    crop[:16, :16] = 230
    return crop


def face_crops(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:48, 0:48] / 47.0
    a, b = rng.uniform(-80, 80, size=(2, n, 1, 1))
    return np.clip(128 + a * x + b * y + rng.normal(0, 30, (n, 48, 48)), 0, 255).astype(np.uint8)


# ---- explanations ----


def test_gradcam_under_no_grad_and_inference_mode():
    """Callers often wrap inference in no_grad or inference_mode; Grad-CAM turns gradients
    on for itself (it failed: 'element 0 of tensors does not require grad', or a wrong
    'forward() did not call features()')."""
    names = ["bright", "dark"]
    bright_dark = BrightDark()
    (ref,) = explain_crops(bright_dark, [corner_crop()], names, target="bright")
    for context in (torch.no_grad, torch.inference_mode):
        with context():
            (e,) = explain_crops(bright_dark, [corner_crop()], names, target="bright")
        np.testing.assert_allclose(e.gradcam, ref.gradcam, atol=1e-6)
    model = create_model("mba_cnn").eval()
    meta = {"class_names": CLASSES}
    photo = samples.path("astronaut")
    (ref,) = explain((model, meta), photo)
    with torch.inference_mode():
        (e,) = explain((model, meta), photo)
    assert e.gradcam is not None and e.gradcam_class == ref.gradcam_class
    np.testing.assert_allclose(e.gradcam, ref.gradcam, atol=1e-5)


def test_the_model_keeps_its_mode_and_batchnorm_statistics():
    """A model in train mode (a Recognizer's, or one given directly) is explained in eval
    mode and left in train mode, its BatchNorm running statistics untouched (they were
    updated by the explanation, and the explanation was a train-mode one)."""
    torch.manual_seed(0)
    model = create_model("mba_cnn")
    meta = {"class_names": CLASSES}
    crops = face_crops(3)
    ref = explain_crops(model.eval(), crops, CLASSES)
    state = {k: v.clone() for k, v in model.state_dict().items()}

    model.train()
    got = explain_crops(model, crops, CLASSES)
    assert model.training
    rec = Recognizer(model=(model, meta), detector="none", device="cpu")
    model.train()  # the Recognizer put it in eval mode; a user turns it back
    (from_rec,) = explain(rec, crops[0])
    assert model.training
    (direct,) = explain((model, meta), crops[0], detector="none")
    assert model.training
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), key
    for e, r in zip([*got, from_rec, direct], [*ref, ref[0], ref[0]], strict=True):
        np.testing.assert_allclose(e.gradcam, r.gradcam, atol=1e-5)
        assert e.face.scores == pytest.approx(r.face.scores, abs=1e-5)


def test_ema_wrapper_is_explained_through_its_network():
    """ferkit's trainer keeps its EMA as an AveragedModel: explained as the network inside
    (it had no Grad-CAM, silently, and its maps were named module.module1, ...)."""
    torch.manual_seed(0)
    model = create_model("mba_cnn").eval()
    ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(0.999)).eval()
    crops = face_crops(2, seed=1)
    ref = explain_crops(model, crops, CLASSES)
    got = explain_crops(ema, crops, CLASSES)
    (from_photo,) = explain((ema, {"class_names": CLASSES}), crops[0], detector="none")
    for e, r in zip([*got, from_photo], [*ref, ref[0]], strict=True):
        assert list(e.attention_maps) == ["module1", "module2", "module3"]
        assert e.gradcam is not None
        np.testing.assert_allclose(e.gradcam, r.gradcam, atol=1e-5)


def test_explain_crops_takes_the_crops_classify_takes():
    """Float crops in 0..1 were cast to uint8 (all zero), colour crops refused, other sizes
    explained at their own size, unlike `Recognizer.classify`."""
    torch.manual_seed(0)
    model = create_model("mba_cnn").eval()
    crop = face_crops(1, seed=2)[0]
    (ref,) = explain_crops(model, [crop], CLASSES)
    (as_float,) = explain_crops(model, [crop / 255.0], CLASSES)
    np.testing.assert_array_equal(as_float.crop, ref.crop)
    np.testing.assert_allclose(as_float.gradcam, ref.gradcam, atol=1e-5)
    (colour,) = explain_crops(model, np.repeat(crop[:, :, None], 3, axis=2), CLASSES)
    np.testing.assert_array_equal(colour.crop, ref.crop)
    big = np.kron(crop, np.ones((2, 2), np.uint8))  # 96 x 96
    (e,) = explain_crops(model, [big], CLASSES)
    rec = Recognizer(model=(model, {"class_names": CLASSES}), detector="none", device="cpu")
    assert e.crop.shape == (48, 48) and e.gradcam.shape == (48, 48)
    assert [e.face.scores[c] for c in CLASSES] == pytest.approx(
        rec.classify(big)[0].tolist(), abs=1e-5
    )


def test_class_names_that_do_not_fit_the_model():
    model = create_model("mba_cnn").eval()
    crops = face_crops(1)
    for names in (["a", "b"], list("abcdefghij")):
        with pytest.raises(ValueError, match=rf"gives 7 class scores, but class_names has "
                                             rf"{len(names)} classes"):
            explain_crops(model, crops, names)
        with pytest.raises(ValueError, match="gives 7 class scores"):
            explain((model, {"class_names": names}), crops[0], detector="none")


def explain_cli(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="ferkit")
    add_explain_parsers(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(list(argv))
    return args.func(args)


def test_cli_explain_pgf_needs_its_tex_system(tmp_path, monkeypatch):
    """matplotlib draws .pgf through xelatex: without it, refused before the model loads
    (it was accepted, and failed with matplotlib's traceback after all the work)."""

    def no_model(args):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr("ferkit.explain.recognizer_from_args", no_model)
    monkeypatch.setattr(shutil, "which", lambda *a, **k: None)
    with pytest.raises(ValueError, match=r"--out .*e\.pgf: .*pgf through \w+, which is not "
                                         r"installed; use one of .*\.png"):
        explain_cli("explain", str(samples.path("astronaut")), "--out", str(tmp_path / "e.pgf"))
    assert not (tmp_path / "e.pgf").exists()


# ---- export ----

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from ferkit.checkpoint import save_checkpoint  # noqa: E402
from ferkit.export import (  # noqa: E402
    OnnxClassifier,
    export_onnx,
    export_torchscript,
    load_torchscript,
    quantize_onnx,
    read_onnx_metadata,
)
from ferkit.export_cli import add_parsers as add_export_parsers  # noqa: E402


def export_cli(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="ferkit")
    add_export_parsers(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["export", *argv])
    return args.func(args)


def make_checkpoint(folder):
    torch.manual_seed(0)
    base = folder / "best"
    meta = {"model": "mba_cnn_1branch", "model_options": {}, "class_names": CLASSES}
    save_checkpoint(create_model("mba_cnn_1branch").eval(), base, meta)
    return base


@pytest.fixture(scope="module")
def small_checkpoint(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("run"))


def test_export_never_replaces_its_checkpoint(tmp_path):
    small_checkpoint = make_checkpoint(tmp_path)  # its own: a failure destroys it
    """`--out` naming the checkpoint's own weights (or metadata) overwrote them with the
    exported model: the checkpoint was lost."""
    weights = small_checkpoint.with_name("best.safetensors")
    meta_file = small_checkpoint.with_name("best.json")
    before = weights.read_bytes(), meta_file.read_bytes()
    for out in (weights, meta_file):
        with pytest.raises(ValueError, match=r"would replace .*best\.(safetensors|json)"):
            export_cli("--checkpoint", str(small_checkpoint), "--out", str(out))
        with pytest.raises(ValueError, match="would replace"):
            export_cli("--checkpoint", str(small_checkpoint.parent), "--format", "torchscript",
                       "--out", str(out))  # the run folder: its best checkpoint
        with pytest.raises(ValueError, match="would replace"):
            export_onnx(str(small_checkpoint), out)
        with pytest.raises(ValueError, match="would replace"):
            export_torchscript(str(weights), out)
    assert (weights.read_bytes(), meta_file.read_bytes()) == before


def test_export_out_is_checked_before_any_work(small_checkpoint, tmp_path, monkeypatch):
    """A folder, or a path under a file, was found only after the export (an OSError from
    the rename, '[Errno 21] Is a directory: .d.123.tmp -> d')."""

    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr("ferkit.export._resolve", no_model)
    folder, afile = tmp_path / "folder", tmp_path / "afile"
    folder.mkdir()
    afile.write_text("x")
    with pytest.raises(ValueError, match="--out .*folder is a folder"):
        export_cli("--checkpoint", str(small_checkpoint), "--out", str(folder))
    with pytest.raises(ValueError, match=r"--out .*m\.onnx: .*afile is a file, not a folder"):
        export_cli("--checkpoint", str(small_checkpoint), "--out", str(afile / "m.onnx"))
    with pytest.raises(ValueError, match="--out is empty"):
        export_cli("--checkpoint", str(small_checkpoint), "--out", "")
    data = tmp_path / "fer2013.csv"
    data.write_text("emotion,pixels,Usage\n")
    with pytest.raises(ValueError, match=r"would replace .*fer2013\.csv"):
        export_cli("--checkpoint", str(small_checkpoint), "--int8", "--data", str(data),
                   "--out", str(data))
    with pytest.raises(ValueError, match="is a folder"):
        export_onnx(str(small_checkpoint), folder)


def test_cli_refuses_options_it_would_ignore(small_checkpoint, tmp_path):
    out = tmp_path / "m.pt"
    with pytest.raises(ValueError, match="--opset is for --format onnx only"):
        export_cli("--checkpoint", str(small_checkpoint), "--format", "torchscript",
                   "--opset", "13", "--out", str(out))
    for option in ("--data", "--ferplus"):
        with pytest.raises(ValueError, match=rf"{option} .*only --int8 uses"):
            export_cli("--checkpoint", str(small_checkpoint), option, str(tmp_path),
                       "--out", str(tmp_path / "m.onnx"))
    assert not out.exists() and not (tmp_path / "m.onnx").exists()


def test_export_leaves_the_model_in_its_mode(tmp_path):
    torch.manual_seed(0)
    model = create_model("mba_cnn_1branch", dropout=0.5).train()
    meta = {"class_names": CLASSES}
    onnx_path = export_onnx((model, meta), tmp_path / "m.onnx")
    assert model.training
    ts_path = export_torchscript((model, meta), tmp_path / "m.pt")
    assert model.training
    model.eval()
    x = torch.randn(3, 1, 48, 48)
    with torch.no_grad():
        ref = model(x).numpy()
    np.testing.assert_allclose(OnnxClassifier(onnx_path)(x), ref, atol=1e-4)
    module, _ = load_torchscript(ts_path)
    with torch.no_grad():
        np.testing.assert_allclose(module(x).numpy(), ref, atol=1e-5)


class Foreign(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3)).repeat(1, 7)


def foreign_onnx(path, shape) -> str:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(Foreign(), (torch.zeros(*shape),), str(path), dynamo=False,
                          input_names=["x"], dynamic_axes={"x": {0: "batch"}})
    return str(path)


def test_bad_onnx_files_are_errors_naming_the_file(tmp_path, small_checkpoint, ferkit_cache):
    """onnxruntime's own exceptions (InvalidProtobuf, not a ValueError: a traceback from the
    CLI), a foreign network's shape error at the first face, or 'model metadata has no
    class_names' without the file's name."""
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a model")
    with pytest.raises(ValueError, match=r"junk\.onnx: not an ONNX model onnxruntime can load"):
        Recognizer(model=str(junk), backend="onnx")
    with pytest.raises(ValueError, match=r"junk\.onnx: not an ONNX model"):
        read_onnx_metadata(junk)
    folder = tmp_path / "dir.onnx"
    folder.mkdir()
    with pytest.raises(ValueError, match=r"dir\.onnx: a folder, not an ONNX file"):
        Recognizer(model=str(folder), backend="onnx")

    colour = foreign_onnx(tmp_path / "colour.onnx", (1, 3, 64, 64))
    with pytest.raises(ValueError, match=r"colour\.onnx: expected one input, float N x 1 x 48 "
                                         r"x 48 .*got x: tensor\(float\) \[.*3, 64, 64\]"):
        Recognizer(model=colour, backend="onnx")
    plain = foreign_onnx(tmp_path / "plain.onnx", (1, 1, 48, 48))
    with pytest.raises(ValueError, match=r"plain\.onnx: an ONNX model without ferkit's "
                                         r"metadata \(no class_names\)"):
        Recognizer(model=plain, backend="onnx")

    # a ferkit file whose metadata names 3 classes for a 7-logit network
    good = export_onnx(str(small_checkpoint), tmp_path / "good.onnx")
    proto = onnx.load(str(good))
    for prop in proto.metadata_props:
        if prop.key == "class_names":
            prop.value = '["a", "b", "c"]'
    onnx.save(proto, str(tmp_path / "three.onnx"))
    with pytest.raises(ValueError, match=r"three\.onnx: expected an output N x 3"):
        Recognizer(model=str(tmp_path / "three.onnx"), backend="onnx")
    assert Recognizer(model=str(good), backend="onnx").class_names == CLASSES

    with pytest.raises(ValueError, match=r"good\.onnx: not a TorchScript file"):
        load_torchscript(good)


def test_int8_calibration_failure_is_said(tmp_path, monkeypatch):
    """onnxruntime's calibrator fails in numpy where an activation hardly varies (an
    untrained model): 'Too many bins for data range' alone said nothing of int8."""
    import onnxruntime.quantization as quantization

    def failing(*args, **kwargs):
        raise ValueError("Too many bins for data range. Cannot create 2048 finite-sized bins.")

    monkeypatch.setattr(quantization, "quantize_static", failing)
    src = export_onnx((BrightDark(), {"class_names": ["bright", "dark"]}), tmp_path / "bd.onnx")
    with pytest.raises(ValueError, match=r"int8 calibration failed \(Too many bins.*\): an "
                                         r"activation of the model hardly varies"):
        quantize_onnx(src, tmp_path / "int8.onnx", face_crops(8))
    assert not (tmp_path / "int8.onnx").exists()


def test_a_failed_export_or_explanation_leaves_no_empty_folders(tmp_path, capsys):
    from ferkit import samples
    from ferkit.cli import main

    photo = str(samples.path("astronaut"))
    for argv in (["export", "--model", "nosuch-weights", "--out", str(tmp_path / "e1/sub/m.onnx")],
                 ["explain", photo, "--model", "nosuch-weights", "--out",
                  str(tmp_path / "e2/sub/x.png")]):
        assert main(argv) == 2
        assert "nosuch-weights" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []
