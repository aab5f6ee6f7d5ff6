"""Edges of `ferkit train` / `ferkit eval`: what a resume keeps, where --out may point,
explicit FER+ paths, devices that cannot run a model, one checkpoint per report folder, the
epochs a report names, and the messages of --init-from and a packaged run folder."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from test_train import TINY, tiny_recipe

from ferkit import evaluate as ev
from ferkit.checkpoint import read_metadata
from ferkit.cli import main
from ferkit.data import DataError
from ferkit.devices import resolve_device
from ferkit.train import find_ferplus_votes, fit

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def src(pack, tmp_path_factory) -> Path:
    """A 2-epoch run at lr 0: its best epoch is 1 (no later epoch improves on it)."""
    out = tmp_path_factory.mktemp("src")
    fit(tiny_recipe(epochs=2, lr=0.0), pack, out, device="cpu", progress=False)
    return out


def _no_work(*args, **kwargs):
    raise AssertionError("work started before the option was checked")


# ---- 1. a resume keeps init_from, and refuses --init-from ----


def test_resume_keeps_the_init_from_of_the_run(src, pack, tmp_path):
    ft = tmp_path / "ft"
    fit(tiny_recipe(epochs=1), pack, ft, device="cpu", init_from=str(src), progress=False)
    first = read_metadata(ft / "last")["init_from"]
    assert first["checkpoint"] == src.name
    fit(tiny_recipe(epochs=2), pack, ft, device="cpu", resume=True, progress=False)
    assert read_metadata(ft / "last")["metrics"]["epoch"] == 2
    assert read_metadata(ft / "last")["init_from"] == first
    # from the saved state too, where last.json is gone (an older or damaged run)
    (ft / "last.json").unlink()
    fit(tiny_recipe(epochs=3), pack, ft, device="cpu", resume=True, progress=False)
    assert read_metadata(ft / "last")["init_from"] == first


def test_resume_with_init_from_is_refused(src, pack, tmp_path, capsys, monkeypatch):
    run = tmp_path / "run"
    fit(tiny_recipe(epochs=1), pack, run, device="cpu", progress=False)
    before = (run / "last.json").read_text()
    with pytest.raises(ValueError, match="--resume .*--init-from"):
        fit(tiny_recipe(epochs=2), pack, run, device="cpu", resume=True, init_from=str(src),
            progress=False)
    rc = main(["train", "--data", str(pack), "--out", str(run), "--resume", "--set",
               "epochs=2", "--init-from", str(src), "--device", "cpu"])
    assert rc == 2
    assert "--init-from" in capsys.readouterr().err
    assert (run / "last.json").read_text() == before  # nothing trained
    assert "init_from" not in json.loads(before)


# ---- 2. --out checked before any work ----


def test_train_out_must_be_a_folder_and_not_empty(tmp_path, capsys, monkeypatch):
    file = tmp_path / "file"
    file.write_text("x")
    missing = tmp_path / "no-such-data"  # a data error would come later: the --out one first
    with pytest.raises(ValueError, match=r"--out .*file is a file; expected a folder"):
        fit(tiny_recipe(), missing, file, device="cpu", progress=False)
    with pytest.raises(ValueError, match="--out is empty"):
        fit(tiny_recipe(), missing, "", device="cpu", progress=False)
    with pytest.raises(ValueError, match="is a file, not a folder"):
        fit(tiny_recipe(), missing, file / "sub", device="cpu", progress=False)
    for out, message in ((str(file), "is a file; expected a folder"), ("", "--out is empty")):
        for extra in (["--recipe", "paper"], ["--resume"]):
            rc = main(["train", "--data", str(missing), "--out", out, *extra])
            assert rc == 2
            assert message in capsys.readouterr().err
    assert file.read_text() == "x"


def test_eval_out_is_checked_before_scoring(src, pack, tmp_path, capsys, monkeypatch):
    file = tmp_path / "file"
    file.write_text("x")
    monkeypatch.setattr(ev, "predict_probs", _no_work)
    with pytest.raises(ValueError, match=r"--out .*file is a file; expected a folder"):
        ev.evaluate(src, pack, device="cpu", out=file, progress=False)
    with pytest.raises(ValueError, match="--out is empty"):
        ev.evaluate(src, pack, device="cpu", out="", progress=False)
    for out, message in ((str(file), "is a file; expected a folder"), ("", "--out is empty")):
        assert main(["eval", "--checkpoint", str(src), "--data", str(pack), "--out", out,
                     "--device", "cpu"]) == 2
        assert message in capsys.readouterr().err


# ---- 3. FER+ votes ----


def test_an_explicit_ferplus_path_that_is_not_there_is_an_error(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    pack = data / "x.fkpack"
    pack.write_bytes(b"")
    (data / "fer2013new.csv").write_text("Usage\n")
    # a bare name is looked for beside the data (documented)
    assert find_ferplus_votes("fer2013new.csv", pack) == data / "fer2013new.csv"
    with pytest.raises(DataError, match=r"typo/fer2013new\.csv: no such file"):
        find_ferplus_votes("typo/fer2013new.csv", pack)
    with pytest.raises(DataError, match="no such file"):
        find_ferplus_votes(tmp_path / "elsewhere" / "fer2013new.csv", pack)


def test_eval_says_ferplus_is_not_used_for_a_fer2013_checkpoint(src, pack, capsys):
    ev.evaluate(src, pack, device="cpu", ferplus="fer2013new.csv", progress=False)
    assert "--ferplus fer2013new.csv not used" in capsys.readouterr().err


# ---- 4. devices ----


def test_devices_that_cannot_run_here_are_value_errors(monkeypatch):
    with pytest.raises(ValueError, match="'meta' cannot run a model.*this machine has: cpu"):
        resolve_device("meta")
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    with pytest.raises(ValueError, match="no mps device on this machine; it has: cpu"):
        resolve_device("mps")
    if hasattr(torch, "xpu"):
        monkeypatch.setattr(torch.xpu, "is_available", lambda: False)
    with pytest.raises(ValueError, match="no xpu device"):
        resolve_device("xpu")
    assert resolve_device("cpu") == torch.device("cpu")


# ---- 5. one checkpoint per eval --out folder ----


def test_eval_out_holds_the_reports_of_one_checkpoint(src, pack, tmp_path, monkeypatch):
    out = tmp_path / "r"
    ev.evaluate(src, pack, device="cpu", out=out, progress=False)
    # the same checkpoint however spelled: another mode joins the folder
    ev.evaluate(src / "best", pack, tta="flip", device="cpu", out=out, progress=False)
    other = tmp_path / "other"
    fit(tiny_recipe(epochs=1, seed=1), pack, other, device="cpu", progress=False)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    monkeypatch.setattr(ev, "predict_probs", _no_work)
    with pytest.raises(ValueError, match=rf"--out {out} holds the reports of another "
                                         rf"checkpoint \({src}"):
        ev.evaluate(other, pack, device="cpu", out=out, progress=False)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


# ---- 6. the epochs a report names ----


def test_eval_names_the_best_epoch_and_the_epochs_trained(src, pack, tmp_path):
    report = ev.evaluate(src, pack, device="cpu", out=tmp_path / "r", progress=False)
    assert "trained_epochs" not in report
    assert report["best_epoch"] == 1 and report["epochs_done"] == 2
    text = (tmp_path / "r" / "report.md").read_text()
    assert "| best_epoch | 1 |" in text and "| epochs_done | 2 |" in text
    # the last checkpoint (epoch 2, not the best): no best epoch claimed for it
    last = ev.evaluate(src / "last", pack, device="cpu", progress=False)
    assert "best_epoch" not in last and last["epochs_done"] == 2


# ---- 7. messages ----


def test_init_from_another_depth_names_the_shapes_not_the_classes(src, pack, tmp_path, capsys):
    # same classes, a head of another size (4 row bands instead of 8)
    fit(tiny_recipe(epochs=1, model_options={"bands": 4}), pack, tmp_path / "ft",
        device="cpu", init_from=str(src), progress=False)
    err = capsys.readouterr().err
    assert "re-initialised ['head.weight']" in err
    assert "head.weight (7, 32) vs (7, 64)" in err
    assert "class set" not in err


def test_a_packaged_run_folder_is_not_offered_to_resume(src, pack, tmp_path):
    packaged = tmp_path / "gpu"
    packaged.mkdir()
    (packaged / "summary.json").write_text((src / "summary.json").read_text())
    with pytest.raises(ValueError, match="cannot be resumed") as info:
        fit(tiny_recipe(), pack, packaged, device="cpu", progress=False)
    assert "continue it with --resume" not in str(info.value)
    assert "--init-from" in str(info.value)


def test_absent_classes_are_the_ones_left_out_of_macro_f1():
    from ferkit.metrics import classification_report

    probs = np.eye(3)[[0, 0, 1, 1]]  # b predicted without test images, c never
    r = classification_report(probs, np.zeros(4, int), ["a", "b", "c"])
    assert r["absent_classes"] == ["c"]
    assert TINY  # the tiny model is registered (imported from test_train)


def test_a_run_at_its_planned_end_is_not_reopened_by_a_faster_epoch():
    """The time budget fits the schedule's length while it runs; once the run has reached
    that length (a cosine at its floor), a faster last epoch must not add one more at a
    raised rate. A resume may re-fit it."""
    from ferkit.recipe import Recipe
    from ferkit.train import Trainer

    trainer = object.__new__(Trainer)  # only what _plan reads
    trainer.recipe = Recipe.from_dict({"model": "mba_cnn", "epochs": 10,
                                       "time_budget_minutes": 60})
    trainer.epoch, trainer.planned_epochs, trainer.elapsed = 3, 3, 30 * 60.0
    trainer._plan(epoch_seconds=600.0)  # 30 minutes left: 3 more would fit
    assert trainer.planned_epochs == 3
    trainer._plan(epoch_seconds=600.0, reopen=True)
    assert trainer.planned_epochs == 6
    trainer.epoch, trainer.planned_epochs = 2, 5  # still running: the plan follows the clock
    trainer._plan(epoch_seconds=1200.0)
    assert trainer.planned_epochs == 3
