"""Explanations: CBAM attention maps, Grad-CAM, the rendered figure and ``ferkit explain``."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from ferkit import samples
from ferkit.explain import (
    FaceExplanation,
    explain,
    explain_crops,
    render_explanations,
    upsample,
)
from ferkit.explain_cli import add_parsers
from ferkit.faces import crop_face, faces_to_tensor
from ferkit.models import create_model, list_models
from ferkit.models.layers import CBAM
from ferkit.recognize import Recognizer

CLASSES = ["angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"]
META = {
    "model": "mba_cnn",
    "model_options": {},
    "class_names": CLASSES,
    "preprocessing": {"size": 48, "gray": True, "mean": 0.5, "std": 0.25},
}


@pytest.fixture(scope="module")
def recognizer(checkpoint) -> Recognizer:
    return Recognizer(model=str(checkpoint), device="cpu")


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    with Image.open(samples.path("astronaut")) as img:
        return np.asarray(img.convert("RGB"))


@pytest.fixture(scope="module")
def explained(recognizer, astronaut) -> list[FaceExplanation]:
    return explain(recognizer, astronaut)


def test_one_explanation_per_face_matching_predict(recognizer, astronaut, explained):
    assert len(explained) == 1
    e = explained[0]
    face = recognizer.predict(astronaut)[0]
    assert e.face.box == face.box and e.face.label == face.label
    assert np.allclose(list(e.face.scores.values()), list(face.scores.values()), atol=1e-5)
    eyes = face.landmarks[:2] if face.landmarks else None
    assert np.array_equal(e.crop, crop_face(astronaut, face.box, recognizer.margin, eyes=eyes))


def test_attention_maps_shapes_and_ranges(explained):
    maps = explained[0].attention_maps
    assert list(maps) == ["module1", "module2", "module3"]
    assert [m.shape for m in maps.values()] == [(24, 24), (12, 12), (6, 6)]
    for m in maps.values():
        assert m.dtype == np.float32 and 0.0 <= m.min() and m.max() <= 1.0


def test_attention_maps_are_the_cbam_spatial_weights(recognizer, explained):
    """The hooked map equals CBAM's spatial attention computed by hand."""
    model = recognizer.model
    x = faces_to_tensor([explained[0].crop])
    with torch.no_grad():
        pooled, _ = model.module1(model.stem(x))
        cbam = model.module1.cbam
        expected = cbam.spatial.attention(cbam.channel(pooled))[0, 0].numpy()
    assert np.allclose(explained[0].attention_maps["module1"], expected, atol=1e-6)


def test_gradcam_of_the_mba_cnn(explained, recognizer, astronaut):
    e = explained[0]
    cam = e.gradcam
    assert cam.shape == (48, 48) and cam.min() == pytest.approx(0) and cam.max() == 1
    assert cam.std() > 0.05  # not constant
    assert e.gradcam_class == e.face.label
    others = {c: explain(recognizer, astronaut, target=c)[0] for c in ("happy", "surprise", "sad")}
    assert all(o.gradcam_class == c for c, o in others.items())
    assert all(o.face.label == e.face.label for o in others.values())  # scores do not change
    cams = [o.gradcam for o in others.values()]
    assert max(np.abs(a - b).mean() for a in cams for b in cams) > 0.02  # the class matters
    assert np.allclose(explain(recognizer, astronaut, target=e.face.label)[0].gradcam, cam)


class BrightDark(nn.Module):
    """Two classes whose evidence is known: "bright" pixels and "dark" pixels.

    ``features``: [relu(x), relu(-x)] average-pooled to 6 x 6; the logits are the two
    channels' means. Grad-CAM of "bright" must light up the bright part of the image, that
    of "dark" the dark part.
    """

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(10.0))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(torch.cat([F.relu(x), F.relu(-x)], dim=1), 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * self.features(x).mean(dim=(2, 3))


def test_gradcam_finds_the_evidence_of_each_class():
    crop = np.zeros((48, 48), np.uint8)
    crop[:16, :16] = 255  # a bright corner on a dark face
    model = BrightDark()
    (default,) = explain_crops(model, [crop], ["bright", "dark"])
    (bright,) = explain_crops(model, [crop], ["bright", "dark"], target="bright")
    (dark,) = explain_crops(model, [crop], ["bright", "dark"], target=1)
    assert default.face.label == "dark" and default.gradcam_class == "dark"
    assert np.allclose(default.gradcam, dark.gradcam)
    assert bright.gradcam[:12, :12].min() > 0.9 and bright.gradcam[24:, :].max() < 0.01
    assert dark.gradcam[:8, :8].max() < 0.01 and dark.gradcam[24:, 24:].min() > 0.9
    assert default.attention_maps == {}  # no CBAM in this model
    assert default.face.box == [0, 0, 48, 48]


def test_tta_scores_and_their_top_class(checkpoint, astronaut):
    rec = Recognizer(model=str(checkpoint), device="cpu", tta="flip")
    (e,) = explain(rec, astronaut)
    face = rec.predict(astronaut)[0]
    assert np.allclose(list(e.face.scores.values()), list(face.scores.values()), atol=1e-5)
    assert e.gradcam_class == face.label


def test_model_is_left_as_it_was(recognizer, astronaut):
    model = recognizer.model
    explain(recognizer, astronaut)
    assert "features" not in model.__dict__
    assert all(p.grad is None for p in model.parameters())
    assert all(not m._forward_hooks for m in model.modules())
    with torch.no_grad():
        x = torch.zeros(1, 1, 48, 48)
        assert torch.allclose(model(x), model.head(model.features(x).mean(dim=(2, 3))))


def test_any_model_with_cbam_or_features(astronaut):
    torch.manual_seed(1)

    class Small(nn.Module):  # CBAM inside a Sequential, no features()
        def __init__(self) -> None:
            super().__init__()
            self.block = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.MaxPool2d(4), CBAM(8, 2))
            self.fc = nn.Linear(8, 3)

        def forward(self, x):
            return self.fc(self.block(x).mean(dim=(2, 3)))

    (e,) = explain(Small(), astronaut)
    assert list(e.attention_maps) == ["block.2"] and e.attention_maps["block.2"].shape == (12, 12)
    assert e.gradcam is None and e.gradcam_class is None
    assert list(e.face.scores) == ["0", "1", "2"]

    no_cbam = create_model("mba_cnn_no_cbam")
    (e,) = explain((no_cbam, {"class_names": CLASSES}), astronaut)
    assert e.attention_maps == {} and e.gradcam.shape == (48, 48)
    assert e.face.label in CLASSES

    vulpe = create_model("vulpe_cnn")  # features is a submodule: hooked, not replaced
    (e,) = explain((vulpe, {"class_names": CLASSES}), astronaut)
    assert e.attention_maps == {} and e.gradcam.shape == (48, 48) and e.gradcam.max() == 1
    assert not vulpe.features._forward_hooks

    # every model ferkit registers (not the tests' own): each has CBAM maps or features()
    # for Grad-CAM (ResNet had neither)
    for name in [n for n in list_models() if not n.startswith("test_")]:
        model = create_model(name)
        (e,) = explain((model, {"class_names": CLASSES}), astronaut)
        assert e.gradcam is not None and e.gradcam.shape == (48, 48), name

    linear = nn.Sequential(nn.Flatten(), nn.Linear(48 * 48, 7))
    with pytest.raises(ValueError, match=r"Sequential.*CBAM.*features\(\)"):
        explain(linear, astronaut)
    with pytest.raises(TypeError):
        explain("not a model", astronaut)


def test_bad_target_and_no_face(recognizer, astronaut):
    with pytest.raises(ValueError, match="joy"):
        explain(recognizer, astronaut, target="joy")
    with pytest.raises(ValueError, match="out of range"):
        explain(recognizer, astronaut, target=7)
    assert explain(recognizer, np.full((120, 160), 128, np.uint8)) == []
    assert explain_crops(create_model("mba_cnn"), []) == []


def test_upsample_keeps_the_range():
    up = upsample(np.array([[0.0, 1.0], [1.0, 0.0]]), 48)
    assert up.shape == (48, 48) and up.min() >= 0 and up.max() <= 1 and up[0, 0] < up[0, 47]


def test_render_writes_a_png(explained, astronaut, tmp_path):
    path = render_explanations(astronaut, explained, tmp_path / "sub" / "explained.png")
    assert path.stat().st_size > 10_000
    with Image.open(path) as img:
        assert img.format == "PNG" and img.width > 600 and img.height > 300
    # without the overview, two faces, and a model without CBAM
    crop = np.zeros((48, 48), np.uint8)
    crop[:16, :16] = 255
    two = explain_crops(BrightDark(), [crop, 255 - crop], ["bright", "dark"])
    path = render_explanations(None, two, tmp_path / "crops.png")
    with Image.open(path) as img:
        assert img.format == "PNG" and img.height > img.width / 3
    with pytest.raises(ValueError, match="no face"):
        render_explanations(astronaut, [], tmp_path / "none.png")


def cli(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="ferkit")
    add_parsers(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(list(argv))
    return args.func(args)


def test_cli_explain(checkpoint, tmp_path, capsys):
    out = tmp_path / "out.png"
    code = cli("explain", str(samples.path("astronaut")), "--out", str(out),
               "--model", str(checkpoint), "--device", "cpu")  # fmt: skip
    stdout, _ = capsys.readouterr()
    assert code == 0 and out.stat().st_size > 10_000
    assert "face 1 (" in stdout and str(out) in stdout


def test_cli_explain_without_a_face(checkpoint, tmp_path, capsys):
    blank = tmp_path / "blank.png"
    Image.new("L", (160, 120), 128).save(blank)
    out = tmp_path / "new" / "out.png"
    code = cli("explain", str(blank), "--out", str(out), "--model", str(checkpoint))
    stdout, _ = capsys.readouterr()
    assert code == 0 and "no face found" in stdout
    assert not (tmp_path / "new").exists()  # nothing written: no folder made for it either


def test_cli_explain_output_is_checked_before_any_work(checkpoint, tmp_path, capsys):
    photo = tmp_path / "photo.png"
    Image.open(samples.path("astronaut")).save(photo)
    before = photo.read_bytes()
    base = ["--model", str(checkpoint), "--device", "cpu"]
    with pytest.raises(ValueError, match="would replace"):
        cli("explain", str(photo), "--out", str(photo), *base)
    assert photo.read_bytes() == before
    with pytest.raises(ValueError, match="is a folder"):
        cli("explain", str(photo), "--out", str(tmp_path), *base)
    # no suffix: a PNG named with one
    assert cli("explain", str(photo), "--out", str(tmp_path / "explained"), *base) == 0
    with Image.open(tmp_path / "explained.png") as img:
        assert img.format == "PNG"


def test_gradcam_without_positive_evidence_says_so(tmp_path):
    crop = np.zeros((48, 48), np.uint8)  # all dark: nothing at all for "bright"
    # (as it is: lifted, a flat crop would be mid-gray)
    (bright,) = explain_crops(BrightDark(), [crop], ["bright", "dark"], target="bright",
                              auto_contrast=False)
    assert bright.gradcam_class == "bright" and not bright.gradcam.any()
    assert bright.gradcam_note == "no positive evidence for bright"
    (dark,) = explain_crops(BrightDark(), [crop], ["bright", "dark"], auto_contrast=False)
    assert dark.gradcam_note is None and dark.gradcam.max() == 1
    path = render_explanations(None, [bright, dark], tmp_path / "notes.png")
    assert path.stat().st_size > 1000


def test_low_contrast_faces_are_explained_as_the_model_sees_them():
    """A dim face (left half 10, right half 40: all dark as it is) is lifted before it is
    explained, as `Recognizer` lifts it before scoring: the brighter half is then bright."""
    crop = np.full((48, 48), 10, np.uint8)
    crop[:, 24:] = 40
    names = ["bright", "dark"]
    (raw,) = explain_crops(BrightDark(), [crop], names, target="bright", auto_contrast=False)
    assert raw.gradcam_note == "no positive evidence for bright"
    (lifted,) = explain_crops(BrightDark(), [crop], names, target="bright")
    assert lifted.gradcam_note is None
    assert lifted.gradcam[:, 30:].mean() > 0.5 > lifted.gradcam[:, :18].mean()
    # explain() on a photo: the scores are the recognizer's, from the lifted face
    meta = {"class_names": names}
    for contrast in (True, False):
        rec = Recognizer(model=(BrightDark(), meta), detector="none", auto_contrast=contrast)
        (e,) = explain(rec, crop)
        expected = rec.classify(crop)[0]
        assert [e.face.scores[n] for n in names] == pytest.approx(expected.tolist(), abs=1e-5)
        assert (e.face.label == "bright") is contrast


def test_explain_needs_the_torch_model(astronaut, ferkit_cache, tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    model = nn.Sequential(nn.Flatten(), nn.Linear(48 * 48, len(CLASSES)))
    rec = Recognizer(model=(model, {"class_names": CLASSES}), backend="onnx")
    with pytest.raises(ValueError, match="need the torch model.*backend='torch'"):
        explain(rec, astronaut)
    with pytest.raises(ValueError, match=r"--model .*m\.onnx: explain needs torch weights"):
        cli("explain", str(samples.path("astronaut")), "--out", str(tmp_path / "e.png"),
            "--model", str(tmp_path / "m.onnx"))  # fmt: skip


def test_cli_explain_out_is_writable_in_a_known_format_before_any_work(tmp_path, monkeypatch):
    def no_model(args):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr("ferkit.explain.recognizer_from_args", no_model)
    photo = str(samples.path("astronaut"))
    with pytest.raises(ValueError, match=r"--out .*a\.xyz: cannot write a \.xyz image; .*\.png"):
        cli("explain", photo, "--out", str(tmp_path / "e" / "a.xyz"))
    if Path("/proc").is_dir():
        with pytest.raises(ValueError, match=r"--out /proc/ferkit-test\.png: cannot write"):
            cli("explain", photo, "--out", "/proc/ferkit-test.png")
    copy, link = tmp_path / "photo.jpg", tmp_path / "link.jpg"
    copy.write_bytes(Path(photo).read_bytes())
    os.link(copy, link)  # the same file under another name
    with pytest.raises(ValueError, match="would replace"):
        cli("explain", str(copy), "--out", str(link))
