"""Bad checkpoints, devices, recipe values and model options are refused with one message
that names the file, key or option and what it expects (not an error from deep inside
safetensors, torch or numpy)."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

import ferkit
from ferkit.recipe import Recipe, apply_overrides

WEIGHTS = "mba_cnn-fer2013"


def shipped_files(tmp_path):
    """A copy of the shipped checkpoint's two files in tmp_path/ck (best.*)."""
    from ferkit.weights import _weights_folder

    folder = tmp_path / "ck"
    folder.mkdir()
    for suffix in (".json", ".safetensors"):
        shutil.copy(_weights_folder() / f"{WEIGHTS}{suffix}", folder / f"best{suffix}")
    return folder


def test_truncated_weights_name_the_file(tmp_path):
    folder = shipped_files(tmp_path)
    weights = folder / "best.safetensors"
    weights.write_bytes(weights.read_bytes()[:100_000])  # an interrupted copy
    with pytest.raises(ValueError, match="best.safetensors: unreadable checkpoint weights"):
        ferkit.load_model(folder)
    weights.write_text("not a checkpoint")
    with pytest.raises(ValueError, match="unreadable checkpoint weights"):
        ferkit.load_model(folder)


def test_weights_that_do_not_fit_say_what_differs(tmp_path):
    folder = shipped_files(tmp_path)
    meta = json.loads((folder / "best.json").read_text())
    meta["class_names"] = meta["class_names"][:6]  # metadata of 6 classes, a head of 7
    (folder / "best.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError) as exc:
        ferkit.load_model(folder)
    message = str(exc.value)
    assert "6 classes" in message and "7 x 1024 in the file, 6 x 1024 in the model" in message


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_load_model_checks_the_device():
    with pytest.raises(ValueError, match="no CUDA GPU"):
        ferkit.load_model(WEIGHTS, "cuda")
    with pytest.raises(ValueError, match="unknown device 'tpu'"):
        ferkit.load_model(WEIGHTS, "tpu")
    model, _ = ferkit.load_model(WEIGHTS, "auto")  # auto: the CPU here
    assert next(model.parameters()).device.type == "cpu"


@pytest.mark.parametrize("override,expected", [
    ("epochs=.inf", "recipe key epochs: expected an integer, got inf"),
    ("epochs=.nan", "recipe key epochs: expected an integer, got nan"),
    ("epochs=true", "recipe key epochs: expected int, got True"),
    ("lr=false", "recipe key lr: expected float, got False"),
    ("seed=-1", "recipe key seed: expected an integer in [0, 2**63), got -1"),
    ("seed=1180591620717411303424", "recipe key seed: expected an integer in [0, 2**63)"),
    ("time_budget_minutes=.inf", "recipe key time_budget_minutes: expected minutes > 0"),
    ("epochs.x=1", "override 'epochs.x=1': epochs is 5, not a mapping"),
    ("augment.scale.lo=1", "augment.scale is [0.9, 1.1], not a mapping"),
])
def test_bad_recipe_values_name_the_key(override, expected):
    with pytest.raises(ValueError) as exc:
        Recipe.from_yaml("cpu", [override])
    assert expected in str(exc.value)


def test_overrides_still_set_nested_keys():
    d = apply_overrides({"augment": {"hflip": 0.5}, "model_options": None},
                        ["augment.rotation=10", "model_options.dropout=0.2", "new.key=1"])
    assert d == {"augment": {"hflip": 0.5, "rotation": 10}, "model_options": {"dropout": 0.2},
                 "new": {"key": 1}}
    assert Recipe.from_yaml("cpu", ["seed=7", "epochs=2.0"]).epochs == 2


@pytest.mark.parametrize("options,expected", [
    ({"cbam_ratio": 0}, "option cbam_ratio must be a whole number >= 1, not 0"),
    ({"cbam_ratio": -1}, "option cbam_ratio must be a whole number >= 1"),
    ({"stem_channels": (-1, 8)}, "option stem_channels must be a list of whole numbers >= 1"),
    ({"stem_channels": (0, 4)}, "option stem_channels must be a list of whole numbers >= 1"),
    ({"stem_channels": (16, 32, 64)}, "stem_channels must be two widths"),
    ({"separable": "no"}, "option separable must be true or false, not 'no'"),
    ({"dropout": 1.0}, "option dropout must be a fraction in [0, 1), not 1.0"),
    ({"dropout": True}, "option dropout must be a fraction in [0, 1)"),
])
def test_bad_model_options_name_the_option(options, expected):
    with pytest.raises(ValueError) as exc:
        ferkit.create_model("mba_cnn", **options)
    assert expected in str(exc.value)
    # a recipe checks them before any data is read, with the same words
    key, value = next(iter(options.items()))
    with pytest.raises(ValueError, match="recipe key model_options: .*" + key):
        Recipe.from_dict({"model": "mba_cnn", "model_options": {key: value}})


def test_resnet_stages_are_checked():
    with pytest.raises(ValueError, match="depths and widths must be as long .* got 2 and 1"):
        ferkit.create_model("resnet18", depths=[1, 1], widths=[8])
    with pytest.raises(ValueError, match="option depths must be a list of whole numbers"):
        ferkit.create_model("resnet18", depths=[])


def test_good_model_options_still_build():
    model = ferkit.create_model("mba_cnn", stem_channels=[8, 16], cbam_ratio=16, dropout=0,
                                separable=False)
    assert model(torch.zeros(2, 1, 48, 48)).shape == (2, 7)
    assert ferkit.create_model("resnet18", depths=[1, 1, 1, 1], widths=[8, 16, 32, 64])
    tiny = ferkit.create_model("resnet18", depths=[1], widths=[8])  # one stage: fine
    assert tiny(torch.zeros(1, 1, 48, 48)).shape == (1, 7)
