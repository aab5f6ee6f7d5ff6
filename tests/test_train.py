"""Training (`ferkit.train.fit`), checkpoints, the CLI, the GPU script and evaluation.

Everything runs on the CPU with a tiny BatchNorm-free CNN (registered here under a test-only
name) and a synthetic dataset that is learnable in a few epochs: each class puts a bright
horizontal bar at its own height (hflip leaves it unchanged).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from ferkit.checkpoint import load_checkpoint, save_checkpoint
from ferkit.data import DataError, FaceSet, load
from ferkit.models import list_models
from ferkit.models.registry import register
from ferkit.recipe import Recipe
from ferkit.train import fit

torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]
TINY = "test_tiny_cnn"


class TinyCNN(nn.Module):
    """Two strided convolutions, a pool that keeps `bands` row bands, a linear head (~2k
    params). ONNX can export the pool only where `bands` divides 12 (the rows it pools)."""

    def __init__(self, num_classes: int = 7, in_chans: int = 1, width: int = 8, bands: int = 8):
        super().__init__()
        self.conv1 = nn.Conv2d(in_chans, width, 3, stride=2, padding=1)
        self.conv2 = nn.Conv2d(width, width, 3, stride=2, padding=1)
        self.pool = nn.AdaptiveAvgPool2d((bands, 1))
        self.head = nn.Linear(bands * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv2(torch.relu(self.conv1(x))))
        return self.head(self.pool(x).flatten(1))


def register_tiny() -> None:
    if TINY not in list_models():
        register(TINY, TinyCNN, "test-only tiny CNN without BatchNorm")


register_tiny()  # at import: spawned DDP workers import this module too


def bar_faces(n_per_split: dict[str, int], class_names=None, seed: int = 0) -> FaceSet:
    """Noise images with a bright bar whose height encodes the class."""
    class_names = tuple(class_names) if class_names else None
    k = len(class_names) if class_names else 7
    rng = np.random.default_rng(seed)
    images, labels, splits = [], [], []
    for split, n in n_per_split.items():
        y = np.arange(n) % k
        rng.shuffle(y)
        for label in y:
            img = rng.integers(0, 90, size=(48, 48))
            top = 2 + int(label) * (44 // k) + int(rng.integers(0, 2))
            left = int(rng.integers(0, 12))
            img[top : top + 4, left : left + 36] = rng.integers(190, 256, size=(4, 36))
            images.append(img)
        labels.append(y)
        splits += [split] * n
    kw = {"class_names": class_names} if class_names else {}
    return FaceSet(
        np.stack(images).astype(np.uint8), np.concatenate(labels), np.array(splits), **kw
    )


SPLITS = {"Training": 200, "PublicTest": 60, "PrivateTest": 60}


def tiny_recipe(**overrides) -> Recipe:
    d = dict(
        name="tiny",
        model=TINY,
        epochs=4,
        batch_size=20,
        lr=0.01,
        optimizer="adam",
        schedule="constant",
        eval_batch_size=64,
        seed=0,
        augment={
            "hflip": 0.5,
            "rotation": 3.0,
            "scale": [1.0, 1.0],
            "shear": 0.0,
            "translate": 0.02,
        },
    )
    d.update(overrides)
    return Recipe(**d)


@pytest.fixture(scope="module")
def trained(pack, tmp_path_factory):
    """One 6-epoch run shared by the checks that only read its outputs."""
    out = tmp_path_factory.mktemp("run")
    summary = fit(tiny_recipe(epochs=6), pack, out, device="cpu", progress=False)
    return out, summary


def read_rows(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]


def weights(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path.with_suffix(".safetensors")))


def assert_same_weights(a: dict, b: dict, atol: float) -> None:
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=atol, rtol=0, msg=k)


# ---- (a) it learns ----


def test_fit_learns(trained):
    out, summary = trained
    rows = read_rows(out)
    assert [r["epoch"] for r in rows] == [1, 2, 3, 4, 5, 6]
    assert rows[-1]["train_loss"] < 0.7 * rows[0]["train_loss"]
    # chance is 1/7; the bars are easy
    assert summary["best_val_acc"] >= 0.6
    assert max(r["val_acc"] for r in rows) == summary["best_val_acc"]
    assert summary["epochs_done"] == 6 and summary["stop_reason"] == "epochs"
    assert summary["val_split"] == "PublicTest" and summary["world_size"] == 1
    assert json.loads((out / "summary.json").read_text()) == summary


# ---- (b) checkpoints ----


def test_checkpoints_and_metadata(trained, tmp_path):
    out, summary = trained
    for name in ("best", "last"):
        assert (out / f"{name}.safetensors").is_file() and (out / f"{name}.json").is_file()
        meta = json.loads((out / f"{name}.json").read_text())
        for key in ("model", "class_names", "recipe", "preprocessing", "metrics"):
            assert key in meta, key
        assert meta["model"] == TINY and len(meta["class_names"]) == 7
        assert meta["recipe"]["epochs"] == 6 and meta["recipe"]["model"] == TINY
        assert meta["preprocessing"]["size"] == 48
    best = json.loads((out / "best.json").read_text())["metrics"]
    last = json.loads((out / "last.json").read_text())["metrics"]
    assert best["val_acc"] == summary["best_val_acc"] and best["epoch"] == summary["best_epoch"]
    assert last["epoch"] == 6
    # load_checkpoint gives the trained weights back, and save -> load round-trips them
    model, meta = load_checkpoint(out / "last")
    state = torch.load(out / "last.state.pt", weights_only=False)["model"]
    assert_same_weights(model.state_dict(), state, atol=0)
    save_checkpoint(model, tmp_path / "copy", meta)
    again, meta2 = load_checkpoint(tmp_path / "copy.safetensors")
    assert meta2 == meta
    assert_same_weights(again.state_dict(), model.state_dict(), atol=0)
    assert not again.training


# ---- (c) resume ----


def test_resume_equals_an_uninterrupted_run(pack, tmp_path):
    full, split = tmp_path / "full", tmp_path / "split"
    fit(tiny_recipe(epochs=4), pack, full, device="cpu", progress=False)
    first = fit(tiny_recipe(epochs=2), pack, split, device="cpu", progress=False)
    assert first["epochs_done"] == 2
    summary = fit(tiny_recipe(epochs=4), pack, split, device="cpu", resume=True, progress=False)
    assert summary["epochs_done"] == 4 and summary["epochs_planned"] == 4
    assert_same_weights(weights(split / "last"), weights(full / "last"), atol=1e-6)
    a, b = read_rows(full), read_rows(split)
    assert [r["epoch"] for r in b] == [1, 2, 3, 4]
    for ra, rb in zip(a, b, strict=True):
        assert rb["train_loss"] == pytest.approx(ra["train_loss"], abs=1e-6)
        assert rb["val_acc"] == pytest.approx(ra["val_acc"], abs=1e-6)
    # resuming a folder with nothing in it is an error, not a fresh run
    with pytest.raises(FileNotFoundError, match="last.state.pt"):
        fit(tiny_recipe(), pack, tmp_path / "empty", device="cpu", resume=True, progress=False)


def test_resume_after_interruption_with_ema_and_cosine(pack, tmp_path):
    """An interrupted run (time box after epoch 1) resumed to its end equals the
    uninterrupted run, also with a schedule that depends on the run length and with EMA."""
    recipe = tiny_recipe(epochs=3, schedule="cosine", warmup_epochs=0.5, ema=0.9)
    full, cut = tmp_path / "full", tmp_path / "cut"
    fit(recipe, pack, full, device="cpu", progress=False)
    first = fit(recipe, pack, cut, device="cpu", max_minutes=1e-4, progress=False)
    assert first["epochs_done"] == 1 and first["stop_reason"] == "max_minutes"
    fit(recipe, pack, cut, device="cpu", resume=True, progress=False)
    assert_same_weights(weights(cut / "last"), weights(full / "last"), atol=1e-6)
    state_full = torch.load(full / "last.state.pt", weights_only=False)
    state_cut = torch.load(cut / "last.state.pt", weights_only=False)
    assert_same_weights(state_cut["model"], state_full["model"], atol=1e-6)
    assert [r["lr"] for r in read_rows(cut)] == pytest.approx([r["lr"] for r in read_rows(full)])


# ---- (d) time box ----


def test_max_minutes_stops_after_one_epoch_with_a_checkpoint(pack, tmp_path):
    out = tmp_path / "boxed"
    summary = fit(tiny_recipe(epochs=5), pack, out, device="cpu", max_minutes=1e-4, progress=False)
    assert summary["stop_reason"] == "max_minutes"
    assert summary["epochs_done"] == 1
    assert len(read_rows(out)) == 1
    model, meta = load_checkpoint(out / "last")
    assert meta["metrics"]["epoch"] == 1
    assert model(torch.zeros(2, 1, 48, 48)).shape == (2, 7)
    assert (out / "best.safetensors").is_file()
    # the stopped run can be continued to its end
    summary = fit(tiny_recipe(epochs=5), pack, out, device="cpu", resume=True, progress=False)
    assert summary["epochs_done"] == 5 and summary["stop_reason"] == "epochs"
    assert [r["epoch"] for r in read_rows(out)] == [1, 2, 3, 4, 5]


# ---- (e) DDP on CPU (gloo) ----


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(
    rank: int, world: int, port: int, recipe: dict, data: str, out: str, cache: str
) -> None:
    torch.set_num_threads(1)
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_RANK=str(rank),
        FERKIT_CACHE=cache,
    )
    register_tiny()
    fit(Recipe(**recipe), data, out, device="cpu", progress=False)


def test_ddp_two_processes_match_one(pack, tmp_path):
    import torch.multiprocessing as mp

    recipe = tiny_recipe(epochs=2).to_dict()
    one, two = tmp_path / "one", tmp_path / "two"
    fit(Recipe(**recipe), pack, one, device="cpu", progress=False)
    mp.spawn(
        _ddp_worker,
        args=(2, free_port(), recipe, str(pack), str(two), os.environ["FERKIT_CACHE"]),
        nprocs=2,
        join=True,
    )
    summary = json.loads((two / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["epochs_done"] == 2
    assert_same_weights(weights(two / "last"), weights(one / "last"), atol=1e-5)
    for ra, rb in zip(read_rows(one), read_rows(two), strict=True):
        assert rb["train_loss"] == pytest.approx(ra["train_loss"], abs=1e-5)


# ---- (f) fine-tuning on a different class set ----


def test_init_from_reinitialises_only_the_head(trained, env, tmp_path, capsys):
    out, _ = trained
    abc = bar_faces({"Training": 60, "PublicTest": 30}, class_names=("a", "b", "c"), seed=3)
    data = abc.save_pack(tmp_path / "abc.fkpack", preset=1)
    # lr 0: the weights after "training" are exactly the initial ones
    fine = tmp_path / "fine"
    fit(
        tiny_recipe(epochs=1, lr=0.0),
        data,
        fine,
        device="cpu",
        init_from=str(out / "best"),
        progress=False,
    )
    err = capsys.readouterr().err
    assert "re-initialised ['head.bias', 'head.weight']" in err
    source, _ = load_checkpoint(out / "best")
    tuned, meta = load_checkpoint(fine / "last")
    assert meta["class_names"] == ["a", "b", "c"]
    s, t = source.state_dict(), tuned.state_dict()
    for k in ("conv1.weight", "conv1.bias", "conv2.weight", "conv2.bias"):
        assert torch.equal(s[k], t[k]), k
    assert t["head.weight"].shape == (3, 64) and s["head.weight"].shape == (7, 64)
    assert not torch.equal(t["head.weight"], s["head.weight"][:3])
    # the run says where it started from (the file's name only: no folders of this machine)
    source_meta = load_checkpoint(out / "best")[1]
    assert "init_from" not in source_meta
    assert meta["init_from"] == {
        "checkpoint": "best", "model": TINY, "recipe": "tiny",
        "code_version": source_meta["code_version"],
        "reinitialised": ["head.bias", "head.weight"],
    }
    # and real fine-tuning from there learns the new classes
    summary = fit(
        tiny_recipe(epochs=3),
        data,
        tmp_path / "fine2",
        device="cpu",
        init_from=str(out / "best"),
        progress=False,
    )
    assert summary["best_val_acc"] > 0.6


# ---- (g) the command line ----


def write_recipe(path: Path, **keys) -> Path:
    r = tiny_recipe().to_dict()
    r.pop("name")
    r.update(keys)
    path.write_text(json.dumps(r))  # JSON is YAML
    return path


def test_cli_train(pack, tmp_path, capsys):
    from ferkit.cli import main

    recipe = write_recipe(tmp_path / "tiny.yaml")
    out = tmp_path / "cli-run"
    rc = main(
        [
            "train",
            "--recipe",
            str(recipe),
            "--data",
            str(pack),
            "--out",
            str(out),
            "--set",
            "epochs=1",
            "batch_size=16",
            "--device",
            "cpu",
        ]
    )
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    summary = json.loads(captured.out.strip().splitlines()[-1])
    assert summary["epochs_done"] == 1 and summary["recipe"] == "tiny"
    assert json.loads((out / "recipe.json").read_text())["batch_size"] == 16
    assert (out / "best.safetensors").is_file()

    rc = main(
        [
            "train",
            "--recipe",
            str(recipe),
            "--data",
            str(pack),
            "--out",
            str(tmp_path / "bad"),
            "--set",
            "val_split=PrivateTest",
        ]
    )
    captured = capsys.readouterr()
    assert rc == 2
    assert "PrivateTest" in captured.err and "error" in captured.err
    assert not (tmp_path / "bad").exists()


# ---- (h) the GPU script's CPU dry run ----


def test_gpu_script_dry_run(pack, tmp_path):
    if shutil.which("bash") is None:
        pytest.skip("needs bash")
    work = tmp_path / "work"
    work.mkdir()  # the script names recipes; the shipped ones come with the package ...
    (work / "recipes").mkdir()  # ... and a checkout's own recipes/NAME.yaml is found too
    shutil.copy(REPO / "src" / "ferkit" / "recipes" / "cpu.yaml", work / "recipes" / "mine.yaml")
    (work / "src").symlink_to(REPO / "src")
    out = tmp_path / "out"
    extra = (
        "--set model=resnet18 model_options={depths:[1],widths:[8]} epochs=1 "
        "batch_size=16 eval_batch_size=32"
    )
    env = {
        **os.environ,
        "EXTRA": extra,
        "PYTHONPATH": str(REPO / "src"),
        "OMP_NUM_THREADS": "1",
        "FERKIT_CACHE": os.environ["FERKIT_CACHE"],
    }
    proc = subprocess.run(
        ["bash", str(REPO / "scripts" / "gpu_train.sh"), str(pack), str(out), "0.05", "cpu",
         "cpu@3", "cpu@3+eval_batch_size=16+label_smoothing=0.05", "mine"],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    m = re.search(
        r"^RESULT cpu best_val_acc=([\d.]+) epochs=1/1 wall=\d+s stop=(\w+)$", proc.stdout, re.M
    )
    assert m, proc.stdout
    assert 0 <= float(m.group(1)) <= 1
    archive = out / "cpu.tar.gz"
    with tarfile.open(archive) as tar:
        names = set(tar.getnames())
        expected = {
            "best-fp16.safetensors",
            "best-fp16.json",
            "metrics.jsonl",
            "summary.json",
            "train.log",
            "recipe.json",
            "last.json",
        }
        assert expected <= names, names
        tar.extractall(tmp_path / "unpacked", filter="data")
    unpacked = tmp_path / "unpacked"
    fp16 = load_file(str(unpacked / "best-fp16.safetensors"))
    assert all(v.dtype == torch.float16 for v in fp16.values() if v.is_floating_point())
    model, meta = load_checkpoint(unpacked / "best-fp16")
    assert meta["model"] == "resnet18" and meta["model_options"] == {"depths": [1], "widths": [8]}
    assert meta["recipe"]["time_budget_minutes"] == 0.05
    assert model(torch.zeros(1, 1, 48, 48)).shape == (1, 7) and len(read_rows(unpacked)) == 1
    assert meta["recipe"]["seed"] == 0
    # RECIPE@SEED: the same recipe with another seed, as its own run
    assert re.search(r"^RESULT cpu-s3 best_val_acc=[\d.]+ epochs=1/1 ", proc.stdout, re.M)
    with tarfile.open(out / "cpu-s3.tar.gz") as tar:
        tar.extractall(tmp_path / "seed3", filter="data")
    assert load_checkpoint(tmp_path / "seed3" / "best-fp16")[1]["recipe"]["seed"] == 3
    # +KEY=VALUE: keys for one run only, in its name; the other runs keep the recipe's
    variant = "cpu-eval_batch_size-16-label_smoothing-0.05-s3"
    assert re.search(rf"^RESULT {variant} best_val_acc=[\d.]+ epochs=1/1 ", proc.stdout, re.M)
    with tarfile.open(out / f"{variant}.tar.gz") as tar:
        tar.extractall(tmp_path / "variant", filter="data")
    recipe = load_checkpoint(tmp_path / "variant" / "best-fp16")[1]["recipe"]
    assert (recipe["seed"], recipe["label_smoothing"], recipe["eval_batch_size"]) == (3, 0.05, 16)
    assert recipe["name"] == "cpu-eval_batch_size-16-label_smoothing-0.05"
    assert load_checkpoint(tmp_path / "seed3" / "best-fp16")[1]["recipe"]["label_smoothing"] == 0.1
    assert re.search(r"^RESULT mine best_val_acc=[\d.]+ epochs=1/1 ", proc.stdout, re.M)
    assert sorted(p.name for p in out.iterdir()) == [
        "cpu-eval_batch_size-16-label_smoothing-0.05-s3.tar.gz", "cpu-s3.tar.gz", "cpu.tar.gz",
        "mine.tar.gz"]
    assert "WARNING" not in proc.stdout


# ---- evaluation of the trained checkpoint ----


def test_evaluate_matches_a_direct_computation(trained, pack, tmp_path):
    from ferkit.evaluate import evaluate, predict_probs

    out, _ = trained
    report = evaluate(out / "best", pack, split="PrivateTest", device="cpu", progress=False)
    model, _ = load_checkpoint(out / "best")
    test = load(pack).subset("PrivateTest")
    probs = predict_probs(model, test.images)
    assert probs.shape == (60, 7)
    np.testing.assert_allclose(probs.sum(1), 1, atol=1e-5)
    direct = float((probs.argmax(1) == test.labels).mean())
    assert report["accuracy"] == pytest.approx(direct)
    assert report["num_samples"] == 60 and report["split"] == "PrivateTest"
    assert report["accuracy"] > 0.4  # the bars generalise to the held-out split

    flip = evaluate(
        out / "best",
        pack,
        split="PrivateTest",
        tta="flip",
        device="cpu",
        out=tmp_path / "report",
        progress=False,
    )
    assert flip["tta"] == "flip" and 0 <= flip["accuracy"] <= 1
    # hflip-invariant data and a model trained with flips: the mirrored view agrees
    assert abs(flip["accuracy"] - report["accuracy"]) < 0.15
    files = {p.name for p in (tmp_path / "report").iterdir()}
    assert {
        "PrivateTest-flip.json",
        "PrivateTest-flip-confusion.png",
        "PrivateTest-flip-reliability.png",
        "report.md",
        "training-curves.png",
    } <= files
    saved = json.loads((tmp_path / "report" / "PrivateTest-flip.json").read_text())
    assert saved["accuracy"] == flip["accuracy"]
    assert "PrivateTest" in (tmp_path / "report" / "report.md").read_text()
    with pytest.raises(ValueError, match="TTA"):
        evaluate(out / "best", pack, split="PrivateTest", tta="bogus", device="cpu")
    with pytest.raises(ValueError, match="backend 'tensorrt'"):
        evaluate(out / "best", pack, split="PrivateTest", device="cpu", backend="tensorrt")


def test_evaluate_with_onnxruntime_agrees_with_torch(pack, ferkit_cache, tmp_path):
    pytest.importorskip("onnxruntime")
    from ferkit.evaluate import evaluate

    # 12 row bands: a pool that ONNX can export
    fit(tiny_recipe(model_options={"bands": 12}), pack, tmp_path / "run", device="cpu",
        progress=False)
    checkpoint = tmp_path / "run" / "best"
    kw = dict(split="PrivateTest", tta="flip", device="cpu", progress=False)
    torch_report = evaluate(checkpoint, pack, **kw)
    onnx_report = evaluate(checkpoint, pack, backend="onnx", **kw)
    assert torch_report["backend"] == "torch" and onnx_report["backend"] == "onnx"
    assert onnx_report["accuracy"] == torch_report["accuracy"]
    assert onnx_report["confusion_matrix"] == torch_report["confusion_matrix"]
    predicted = np.array(torch_report["confusion_matrix"]).sum(0)
    assert (predicted > 0).sum() >= 2  # not one class for everything: the match means something
    assert onnx_report["ece"] == pytest.approx(torch_report["ece"], abs=1e-5)


def test_predict_probs_runs_modules_channels_last(trained):
    from ferkit.evaluate import channels_last_on, predict_probs

    out, _ = trained
    model, _ = load_checkpoint(out / "best")
    assert not model.conv2.weight.is_contiguous(memory_format=torch.channels_last)
    faces = np.random.default_rng(0).integers(0, 256, (5, 48, 48), dtype=np.uint8)
    before = predict_probs(model, faces)
    assert model.conv2.weight.is_contiguous(memory_format=torch.channels_last)
    weight = model.conv2.weight
    assert channels_last_on(model, torch.device("cpu")) is model
    assert model.conv2.weight is weight  # already there: nothing moved
    np.testing.assert_allclose(predict_probs(model, faces), before, atol=1e-6)


def test_code_version_marks_uncommitted_changes(monkeypatch):
    from ferkit import __version__, train

    def fake_git(status: str):
        def run(cmd, **kw):
            if isinstance(status, Exception):
                raise status
            out = "abc1234" if "rev-parse" in cmd else status
            return subprocess.CompletedProcess(cmd, 0, stdout=out + "\n", stderr="")

        return run

    monkeypatch.setattr(train, "checkout_root", lambda: Path("/checkout"))
    monkeypatch.setattr(train.subprocess, "run", fake_git(""))
    assert train.code_version() == f"{__version__}+abc1234"
    monkeypatch.setattr(train.subprocess, "run", fake_git(" M src/ferkit/train.py"))
    assert train.code_version() == f"{__version__}+abc1234.dirty"
    monkeypatch.setattr(train.subprocess, "run", fake_git(FileNotFoundError("git")))
    assert train.code_version() == __version__
    # an installed copy: no git asked at all
    monkeypatch.setattr(train, "checkout_root", lambda: None)
    monkeypatch.setattr(train.subprocess, "run", fake_git(AssertionError("git was asked")))
    assert train.code_version() == __version__


def test_plot_runs_times_the_first_arrival_at_a_target(trained, tmp_path):
    pytest.importorskip("matplotlib")
    out, _ = trained
    rows = read_rows(out)

    def table(target: float, log: Path = out / "metrics.jsonl") -> str:
        proc = subprocess.run(
            [sys.executable, str(REPO / "scripts" / "plot_runs.py"), str(log),
             "--out", str(tmp_path / "curves.png"), "--target", str(target)],
            capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO / "src")},
        )
        assert proc.returncode == 0, proc.stderr
        return proc.stdout

    best = max(rows, key=lambda r: r["val_acc"])
    first = rows[0]
    text = table(first["val_acc"])  # reached at the first epoch
    line = next(x for x in text.splitlines() if x.startswith(f"| {out.name} |"))
    assert f"| {len(rows)} | {100 * best['val_acc']:.2f}% (epoch {best['epoch']}) |" in line
    assert f"| {first['elapsed_s'] / 60:.1f} min (epoch 1) |" in line
    # a target above the best (targets are fractions up to 1: the log scaled down to make room)
    lower = tmp_path / "lower" / "metrics.jsonl"
    lower.parent.mkdir()
    lower.write_text("".join(json.dumps({**r, "val_acc": 0.9 * r["val_acc"]}) + "\n"
                             for r in rows))
    assert "not reached" in table(0.9 * best["val_acc"] + 0.01, lower)
    assert (tmp_path / "curves.png").stat().st_size > 0


# ---- the comparison table over seeds (`ferkit reproduce`) ----


def test_reproduce_trains_each_seed_scores_once_and_tabulates(pack, tmp_path, monkeypatch,
                                                               capsys):
    from ferkit import reproduce as rp
    from ferkit.cli import main
    from ferkit.evaluate import evaluate

    recipe = write_recipe(tmp_path / "tiny.yaml", epochs=2)
    out = tmp_path / "table"
    rp.reproduce([recipe], pack, out, seeds=[0, 1], device="cpu", tta="flip")
    runs = [out / "tiny-s0", out / "tiny-s1"]
    scores = [json.loads((run / "privatetest.json").read_text())["scores"] for run in runs]
    direct = evaluate(runs[1] / "best", pack, "PrivateTest", "flip", "cpu", progress=False)
    assert scores[1]["flip"]["accuracy"] == direct["accuracy"]
    assert [load_checkpoint(r / "best")[1]["recipe"]["seed"] for r in runs] == [0, 1]
    (group,) = json.loads((out / "results.json").read_text())
    single = [s["none"]["accuracy"] for s in scores]
    assert group["seeds"] == [0, 1] and group["epochs"] == "2 of 2"
    assert group["test_acc"][0] == pytest.approx(np.mean(single))
    assert group["test_acc"][1] == pytest.approx(np.std(single, ddof=1))
    assert group["params"] > 0 and group["gmacs"] > 0
    table = (out / "results.md").read_text()
    assert "| tiny | test_tiny_cnn |" in table and "PrivateTest flip TTA" in table
    assert f"{100 * np.mean(single):.2f}% ± {100 * np.std(single, ddof=1):.2f}" in table
    assert "](results.png)" in table and (out / "results.png").stat().st_size > 0

    # again, plus a third seed: only the new run trains and is scored
    trained, scored = [], []
    monkeypatch.setattr(rp, "fit", lambda recipe, data, run, **kw: trained.append(run.name)
                        or fit(recipe, data, run, **kw))
    monkeypatch.setattr(rp, "evaluate", lambda ckpt, *a, **kw: scored.append(ckpt.parent.name)
                        or evaluate(ckpt, *a, **kw))
    rp.reproduce([recipe], pack, out, seeds=[0, 1, 2], device="cpu", tta="flip")
    assert trained == ["tiny-s2"] and scored == ["tiny-s2", "tiny-s2"]
    # kept scores belong to their weights: new weights in a run are scored again
    shutil.copy(out / "tiny-s0" / "best.safetensors", out / "tiny-s1" / "best.safetensors")
    scored.clear()
    rp.reproduce([recipe], pack, out, seeds=[0, 1, 2], device="cpu", tta="flip")
    assert scored == ["tiny-s1", "tiny-s1"]
    rescored = json.loads((out / "tiny-s1" / "privatetest.json").read_text())["scores"]
    assert rescored == scores[0]

    # finished runs from elsewhere: scored from their folders; a folder that is no run is
    # reported and left out
    (tmp_path / "not-a-run").mkdir()
    rc = main(["reproduce", "--runs", *map(str, runs), str(tmp_path / "not-a-run"),
               "--data", str(pack), "--out", str(tmp_path / "again"), "--tta", "flip",
               "--device", "cpu"])
    captured = capsys.readouterr()
    assert rc == 0 and "skipped" in captured.err and "not-a-run" in captured.err
    assert "| tiny | test_tiny_cnn |" in captured.out
    # the same seed twice would count twice: the later folder is skipped, naming both
    copy = tmp_path / "copy-of-s0"
    shutil.copytree(runs[0], copy)
    rp.table_from_runs([runs[0], copy], pack, tmp_path / "twice", tta="flip", device="cpu")
    err = capsys.readouterr().err
    assert f"skipped {copy}: recipe tiny seed 0 is already in the table from {runs[0]}" in err
    (group,) = json.loads((tmp_path / "twice" / "results.json").read_text())
    assert group["seeds"] == [0]


def test_claims_are_answered_only_as_far_as_the_seeds_allow():
    from ferkit.reproduce import claim_lines

    def group(name, accs, epochs="30 of 300"):
        return {"recipe": name, "test_accs": accs, "epochs": epochs}

    lines = claim_lines([
        group("paper", [0.70, 0.71, 0.69]),
        group("mba_cnn_1branch", [0.65, 0.66, 0.64]),  # clearly worse: branches help
        group("mba_cnn_no_cbam", [0.70, 0.69, 0.72]),  # the same within noise
        group("mba_cnn_conv", [0.72], epochs="12 of 300"),  # one seed, fewer epochs
    ])
    assert len(lines) == 3  # paper-noaug was not trained: no line
    branches, cbam, conv = lines
    assert "three branches" in branches and "+5.00 points" in branches and "; yes." in branches
    assert "CBAM" in cbam and "within twice its standard error" in cbam
    assert "Conv2D" in conv and "-2.00 points" in conv and "not decided" in conv
    assert "different epochs, 30 of 300 vs 12 of 300" in conv
    assert "different epochs" not in branches + cbam


# ---- review fixes: recipe types, held-out validation, unlabelled splits, dotted names ----


def test_recipe_numbers_given_as_text_become_numbers():
    r = Recipe.from_dict(
        {"name": "t", "lr": "1e-3", "weight_decay": "5e-4", "epochs": "3",
         "augment": {"rotation": "5", "scale": ["0.9", "1.1"]}}
    )
    assert r.lr == pytest.approx(1e-3) and isinstance(r.lr, float)
    assert r.epochs == 3 and isinstance(r.epochs, int)
    assert r.augment_config.scale == (0.9, 1.1)
    with pytest.raises(ValueError, match="epochs"):
        Recipe.from_dict({"epochs": "abc"})
    with pytest.raises(ValueError, match="epochs"):
        Recipe.from_dict({"epochs": 2.5})
    with pytest.raises(ValueError, match="scale"):
        Recipe.from_dict({"augment": {"scale": 1.1}})


def test_recipe_checks_the_compile_mode():
    assert Recipe.from_dict({"compile": True, "compile_mode": "reduce-overhead"}).compile_mode == (
        "reduce-overhead"
    )
    with pytest.raises(ValueError, match="compile_mode 'fast'"):
        Recipe.from_dict({"compile": True, "compile_mode": "fast"})


def test_recipe_refuses_selecting_on_a_training_split():
    with pytest.raises(ValueError, match="held out"):
        Recipe(val_split="Training")


def test_unlabelled_training_or_validation_rows_are_refused(env, tmp_path):
    faces = bar_faces(SPLITS)
    faces.labels[faces.splits == "PublicTest"] = -1  # as in a Kaggle test.csv
    path = faces.save_pack(tmp_path / "unlabelled.fkpack", preset=1)
    with pytest.raises(ValueError, match="unlabelled"):
        fit(tiny_recipe(epochs=1), path, tmp_path / "run", device="cpu", progress=False)


def test_checkpoint_names_with_dots(tmp_path):
    model = nn.Linear(2, 2)
    meta = {"model": "mba_cnn", "class_names": ["a", "b"]}
    save_checkpoint(model, tmp_path / "best-lr0.5", meta)
    assert (tmp_path / "best-lr0.5.safetensors").exists()
    assert (tmp_path / "best-lr0.5.json").exists()


def test_bad_checkpoint_metadata_is_a_clear_error(tmp_path):
    (tmp_path / "c.json").write_text("{not json")
    (tmp_path / "c.safetensors").write_bytes(b"")
    with pytest.raises(ValueError, match="c.json"):
        load_checkpoint(tmp_path / "c")
    (tmp_path / "c.json").write_text(json.dumps({"model": "mba_cnn"}))
    with pytest.raises(ValueError, match="class_names"):
        load_checkpoint(tmp_path / "c")


# ---- review fixes: stale runs, refusals, held-out validation, progress lines ----


def test_reproduce_refuses_a_run_of_other_keys_and_records_overrides(pack, tmp_path,
                                                                     monkeypatch):
    from ferkit import reproduce as rp

    recipe = write_recipe(tmp_path / "tiny.yaml", epochs=2)
    out = tmp_path / "table"
    rp.reproduce([recipe], pack, out, overrides=["epochs=1"], device="cpu", tta="flip")
    (group,) = json.loads((out / "results.json").read_text())
    assert group["overrides"] == ["epochs=1"] and group["epochs"] == "1 of 1"
    assert "`--set epochs=1`" in (out / "results.md").read_text()
    # the recipe as it is: the epochs=1 run is not its row; refused before anything trains
    monkeypatch.setattr(rp, "fit", lambda *a, **kw: pytest.fail("trained"))
    with pytest.raises(rp.DataError, match=r"tiny was trained with epochs 1 -> 2") as info:
        rp.reproduce([recipe], pack, out, device="cpu", tta="flip")
    assert str(out / "tiny") in str(info.value) and "--set" in str(info.value)
    # the same keys again: the finished run is scored, not trained
    rp.reproduce([recipe], pack, out, overrides=["epochs=1"], device="cpu", tta="flip")


def test_reproduce_resumes_a_run_stopped_by_max_minutes(pack, tmp_path, monkeypatch):
    from ferkit import reproduce as rp

    recipe = write_recipe(tmp_path / "tiny.yaml", epochs=2)
    out = tmp_path / "table"
    rp.reproduce([recipe], pack, out, device="cpu", tta="flip", max_minutes=1e-4)
    summary = json.loads((out / "tiny" / "summary.json").read_text())
    assert summary["stop_reason"] == "max_minutes" and summary["epochs_done"] == 1
    calls = []
    monkeypatch.setattr(rp, "fit", lambda recipe, data, run, **kw: calls.append(kw["resume"])
                        or fit(recipe, data, run, **kw))
    rp.reproduce([recipe], pack, out, device="cpu", tta="flip")
    assert calls == [True]
    summary = json.loads((out / "tiny" / "summary.json").read_text())
    assert summary["stop_reason"] == "epochs" and summary["epochs_done"] == 2
    assert [r["epoch"] for r in read_rows(out / "tiny")] == [1, 2]
    (group,) = json.loads((out / "results.json").read_text())
    assert group["epochs"] == "2 of 2"


def test_reproduce_checks_for_privatetest_before_training(env, tmp_path, monkeypatch):
    from ferkit import reproduce as rp

    no_test = bar_faces({"Training": 60, "PublicTest": 20}).save_pack(
        tmp_path / "train-val.fkpack", preset=1)
    monkeypatch.setattr(rp, "fit", lambda *a, **kw: pytest.fail("trained"))
    recipe = write_recipe(tmp_path / "tiny.yaml", epochs=1)
    with pytest.raises(rp.DataError, match=r"no PrivateTest split to score .*Training"):
        rp.reproduce([recipe], no_test, tmp_path / "table", device="cpu")
    with pytest.raises(rp.DataError, match="no PrivateTest"):
        rp.table_from_runs([tmp_path], no_test, tmp_path / "table", device="cpu")


def test_train_refuses_a_folder_that_holds_a_run(pack, tmp_path, capsys):
    from ferkit.cli import main

    out = tmp_path / "run"
    fit(tiny_recipe(epochs=1), pack, out, device="cpu", progress=False)
    log = (out / "metrics.jsonl").read_text()
    with pytest.raises(ValueError, match="already holds a run .*--resume"):
        fit(tiny_recipe(epochs=1), pack, out, device="cpu", progress=False)
    recipe = write_recipe(tmp_path / "tiny.yaml", epochs=1)
    capsys.readouterr()
    rc = main(["train", "--recipe", str(recipe), "--data", str(pack), "--out", str(out),
               "--device", "cpu"])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("ferkit: error: ") and "--resume" in err
    assert len(err.splitlines()) == 1
    assert (out / "metrics.jsonl").read_text() == log  # the old log untouched
    # a folder with files that are no run's (a log the caller writes there) is fine
    other = tmp_path / "other"
    other.mkdir()
    (other / "train.log").write_text("started\n")
    fit(tiny_recipe(epochs=1), pack, other, device="cpu", progress=False)
    assert len(read_rows(other)) == 1
    # a run killed after logging its first epoch but before saving its state: neither
    # --resume nor a fresh run would be possible if the log alone counted as a run
    stuck = tmp_path / "stuck"
    stuck.mkdir()
    (stuck / "metrics.jsonl").write_text(log)
    fit(tiny_recipe(epochs=1), pack, stuck, device="cpu", progress=False)
    assert len(read_rows(stuck)) == 1 and "starting it over" in capsys.readouterr().err


def test_resume_refuses_another_model_optimizer_or_data(pack, env, tmp_path, capsys):
    out = tmp_path / "run"
    fit(tiny_recipe(epochs=1), pack, out, device="cpu", progress=False)
    state = (out / "last.state.pt").read_bytes()

    def resume(data=pack, **keys):
        return fit(tiny_recipe(**keys), data, out, device="cpu", resume=True, progress=False)

    with pytest.raises(ValueError, match=r"cannot resume: .*model_options \{\} -> \{'width': 4\}"):
        resume(model_options={"width": 4})
    with pytest.raises(ValueError, match=r"optimizer 'adam' -> 'sgd'"):
        resume(optimizer="sgd")
    with pytest.raises(ValueError, match=r"batch_size 20 -> 10"):
        resume(batch_size=10)
    other = bar_faces(SPLITS, seed=5).save_pack(tmp_path / "other.fkpack", preset=1)
    with pytest.raises(ValueError, match="cannot resume: the data differs"):
        resume(data=other, epochs=2)
    assert (out / "last.state.pt").read_bytes() == state  # nothing was touched
    # a longer run, with a harmless change: allowed, with a note; the first recipe is kept
    capsys.readouterr()
    summary = resume(epochs=2, lr=0.005)
    assert summary["epochs_done"] == 2
    assert "changed recipe keys: lr 0.01 -> 0.005" in capsys.readouterr().err
    assert json.loads((out / "recipe-first.json").read_text())["lr"] == 0.01
    assert json.loads((out / "recipe.json").read_text())["lr"] == 0.005


def test_resume_without_recipe_continues_the_runs_own_recipe(pack, tmp_path, capsys):
    """The README's two commands: a run trained with --set keys, then --resume that only
    lengthens it (earlier --set keys need not be given again)."""
    from ferkit.cli import main
    from ferkit.train import run_recipe

    recipe = write_recipe(tmp_path / "tiny.yaml", epochs=4)
    out = tmp_path / "run"
    common = ["--data", str(pack), "--out", str(out), "--device", "cpu"]
    assert main(["train", "--recipe", str(recipe), *common, "--set", "epochs=1",
                 "batch_size=10"]) == 0
    capsys.readouterr()
    # the file without the first --set keys: batch_size differs, and the error says what to do
    assert main(["train", "--recipe", str(recipe), *common, "--resume"]) == 2
    err = capsys.readouterr().err
    assert "batch_size 10 -> 20" in err and "leave out --recipe" in err
    assert run_recipe(out, ["epochs=2"]).batch_size == 10
    assert main(["train", *common, "--resume", "--set", "epochs=2"]) == 0
    captured = capsys.readouterr()
    assert "with a new length: epochs 1 -> 2" in captured.err
    summary = json.loads(captured.out.strip().splitlines()[-1])
    assert summary["epochs_done"] == 2 and summary["epochs_planned"] == 2
    assert json.loads((out / "recipe.json").read_text())["batch_size"] == 10
    # from Python: recipe None resumes with the run's own recipe (its length as saved)
    assert fit(None, pack, out, device="cpu", resume=True, progress=False)["epochs_done"] == 2
    # no recipe and nothing to resume: clear errors
    assert main(["train", "--data", str(pack), "--out", str(tmp_path / "new"),
                 "--device", "cpu"]) == 2
    assert "--recipe is needed" in capsys.readouterr().err
    assert main(["train", "--data", str(pack), "--out", str(tmp_path / "new"), "--resume"]) == 2
    assert "nothing to resume" in capsys.readouterr().err
    with pytest.raises(ValueError, match="a recipe is needed"):
        fit(None, pack, tmp_path / "new", device="cpu", progress=False)


def test_resume_refuses_a_length_it_cannot_train(pack, tmp_path, capsys):
    """A spent time budget keeps a run's length: a longer resume says so (it trained nothing
    and exited 0); fewer epochs than done is refused too, without first announcing the new
    length."""
    out = tmp_path / "run"
    first = fit(tiny_recipe(epochs=4, time_budget_minutes=1e-4), pack, out, device="cpu",
                progress=False)
    # the plan follows the budget from the second epoch on (the first may compile)
    assert (first["epochs_done"], first["epochs_planned"]) == (2, 2)
    state = (out / "last.state.pt").read_bytes()
    with pytest.raises(ValueError, match=r"budget is spent .*time_budget_minutes=null"):
        fit(tiny_recipe(epochs=6, time_budget_minutes=1e-4), pack, out, device="cpu",
            resume=True, progress=False)
    assert (out / "last.state.pt").read_bytes() == state
    summary = fit(tiny_recipe(epochs=3, time_budget_minutes=None), pack, out, device="cpu",
                  resume=True, progress=False)
    assert (summary["epochs_done"], summary["epochs_planned"]) == (3, 3)
    capsys.readouterr()
    with pytest.raises(ValueError, match="has trained 3 epochs already"):
        fit(tiny_recipe(epochs=2), pack, out, device="cpu", resume=True, progress=False)
    assert "new length" not in capsys.readouterr().err


def test_resume_from_a_truncated_state_names_the_file(pack, tmp_path):
    """A state file cut short (an interrupted copy) is one message naming it, not torch's
    unpickling error."""
    out = tmp_path / "run"
    fit(tiny_recipe(epochs=1), pack, out, device="cpu", progress=False)
    state = out / "last.state.pt"
    state.write_bytes(state.read_bytes()[:1000])
    with pytest.raises(ValueError, match=r"last\.state\.pt: unreadable training state .*"
                                         r"--init-from"):
        fit(tiny_recipe(epochs=2), pack, out, device="cpu", resume=True, progress=False)


def test_val_fraction_holds_out_a_stratified_part(env, tmp_path):
    from ferkit.train import hold_out

    faces = bar_faces({"all": 140}, seed=2)
    train, val = hold_out(faces, 0.2, seed=0)
    assert len(train) + len(val) == 140
    assert list(np.bincount(val.labels, minlength=7)) == [4] * 7  # 20% of each class's 20
    assert not set(val.index) & set(train.index)
    assert np.array_equal(hold_out(faces, 0.2, seed=0)[1].index, val.index)  # seeded
    assert not np.array_equal(hold_out(faces, 0.2, seed=1)[1].index, val.index)

    data = faces.save_pack(tmp_path / "mine.fkpack", preset=1)
    # no validation split and no val_fraction: the error says which key to set
    with pytest.raises(ValueError, match=r"no validation split \['PublicTest'\].*val_fraction"):
        fit(tiny_recipe(train_splits=["all"], epochs=1), data, tmp_path / "a", device="cpu",
            progress=False)
    with pytest.raises(ValueError, match=r"no training split \['Training'\].*train_splits"):
        fit(tiny_recipe(epochs=1), data, tmp_path / "a", device="cpu", progress=False)
    summary = fit(tiny_recipe(train_splits=["all"], val_fraction=0.2, epochs=1), data,
                  tmp_path / "b", device="cpu", progress=False)
    assert summary["val_split"] == "20% of all (held out)"
    meta = load_checkpoint(tmp_path / "b" / "best")[1]
    assert meta["data"]["held_out"] == {"from": ["all"], "fraction": 0.2, "seed": 0,
                                        "train_images": 112, "val_images": 28}
    assert meta["metrics"]["val_split"] == "20% of all (held out)"


def test_finetune_recipe_on_class_folders(env, tmp_path):
    from PIL import Image

    from ferkit.train import load_data

    faces = bar_faces({"all": 30}, seed=4)
    root = tmp_path / "my_faces"
    for i, (img, label) in enumerate(zip(faces.images, faces.labels, strict=True)):
        folder = root / faces.class_names[label]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(folder / f"{i}.png")
    recipe = Recipe.from_yaml("finetune")
    assert recipe.val_fraction == 0.1 and recipe.train_splits == ["all"]
    train, val, name = load_data(recipe, root)
    assert (len(train), len(val), name) == (23, 7, "10% of all (held out)")


def test_init_from_takes_shipped_names_and_run_folders(trained, pack, tmp_path):
    out, _ = trained
    # a run folder, as predict --model takes it
    fit(tiny_recipe(epochs=1, lr=0.0), pack, tmp_path / "a", device="cpu",
        init_from=str(out), progress=False)
    assert load_checkpoint(tmp_path / "a" / "last")[1]["init_from"]["reinitialised"] == []
    # shipped weights of another architecture: nothing fits, an error naming both models
    with pytest.raises(ValueError, match=r"only 0 of the 6 tensors of model 'test_tiny_cnn'"
                                         r".*checkpoint's model 'mba_cnn'"):
        fit(tiny_recipe(epochs=1), pack, tmp_path / "b", device="cpu",
            init_from="mba_cnn-fer2013", progress=False)
    assert not (tmp_path / "b" / "metrics.jsonl").exists()


def test_eval_takes_shipped_names_and_run_folders(trained, pack, tmp_path, capsys):
    from ferkit.cli import main

    out, _ = trained
    assert main(["eval", "--checkpoint", str(out), "--data", str(pack), "--device", "cpu",
                 "--json"]) == 0
    by_folder = json.loads(capsys.readouterr().out)
    assert main(["eval", "--checkpoint", "mba_cnn-fer2013", "--data", str(pack), "--device",
                 "cpu", "--json", "--out", str(tmp_path / "shipped")]) == 0
    shipped = json.loads(capsys.readouterr().out)
    assert by_folder["model"] == TINY and shipped["model"] == "mba_cnn"
    assert not (tmp_path / "shipped" / "training-curves.png").exists()  # no run, no curves
    # a checkpoint whose name holds a dot (no suffix to cut)
    for suffix in (".safetensors", ".json"):
        shutil.copy(out / f"best{suffix}", tmp_path / f"best-lr0.5{suffix}")
    assert main(["eval", "--checkpoint", str(tmp_path / "best-lr0.5"), "--data", str(pack),
                 "--device", "cpu", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["accuracy"] == by_folder["accuracy"]


@pytest.mark.parametrize(
    "override, match",
    [
        ("eval_batch_size=0", "eval_batch_size: expected a positive integer"),
        ("label_smoothing=1.5", r"label_smoothing: expected a number in \[0, 1\)"),
        ("augment.hflip=2", r"augment.hflip: expected a probability in \[0, 1\]"),
        ("augment.scale=[1.2, 0.8]", "augment.scale: expected a zoom range"),
        ("augment=5", "augment: expected a mapping"),
        ("model_options=5", "model_options: expected a mapping"),
        ("train_splits=5", "train_splits: expected a split name"),
        ("val_split=null", "val_split: expected a split name.*val_fraction"),
        ("lr=null", "lr: expected float, got null"),
        ("lr=-1", "lr: expected a number >= 0"),
        ("val_fraction=1", r"val_fraction: expected a fraction in \[0, 1\)"),
        ("time_budget_minutes=0", "time_budget_minutes: expected minutes > 0"),
        ("model=mbacnn", "model: 'mbacnn' is not a model"),
        ("ema=1", r"ema: expected a decay in \[0, 1\)"),
        ("model_options={dropuot: 0.3}",
         "model_options: model 'mba_cnn' has no option 'dropuot'; its options: .*dropout"),
        ("model_options={dropout: 2}", "model_options: model 'mba_cnn': option dropout must be"),
        ("model_options={branches: 5}", "model_options: model 'mba_cnn' with branches=5"),
    ],
)
def test_recipe_values_are_checked_before_any_work(override, match):
    with pytest.raises(ValueError, match=f"recipe key {match}"):
        Recipe.from_yaml("paper", [override])


def test_recipe_overrides_as_a_list_a_string_or_a_dict():
    assert Recipe.from_yaml("finetune", ["epochs=2", "augment.erasing=0.5"]).epochs == 2
    assert Recipe.from_yaml("finetune", "epochs=3").epochs == 3
    r = Recipe.from_yaml("finetune", {"epochs": 4, "augment.erasing": 0.5, "optimizer": "sgd"})
    assert (r.epochs, r.augment["erasing"], r.optimizer) == (4, 0.5, "sgd")
    with pytest.raises(TypeError, match="overrides must be KEY=VALUE strings"):
        Recipe.from_yaml("finetune", 5)


def test_fit_and_evaluate_take_in_memory_data_and_recipes(pack, env, tmp_path):
    """From Python: a dict of recipe keys or a recipe's name, a FaceSet made from arrays,
    and evaluation of (model, metadata) on a FaceSet: the same as from files."""
    from ferkit.evaluate import evaluate

    faces = load(pack)
    in_memory = FaceSet(faces.images, faces.labels, faces.splits)  # no file behind it
    keys = dataclasses.asdict(tiny_recipe(epochs=1))
    summary = fit(keys, in_memory, tmp_path / "mem", device="cpu", progress=False)
    from_file = fit(tiny_recipe(epochs=1), pack, tmp_path / "file", device="cpu",
                    progress=False)
    assert summary["best_val_acc"] == pytest.approx(from_file["best_val_acc"])
    assert_same_weights(weights(tmp_path / "mem" / "best"), weights(tmp_path / "file" / "best"),
                        atol=0)
    loaded = load_checkpoint(tmp_path / "mem" / "best")
    loaded[0].train()  # e.g. scored in the middle of training: left in its mode
    report = evaluate(loaded, in_memory, split="PrivateTest", device="cpu", progress=False)
    assert loaded[0].training
    by_path = evaluate(tmp_path / "file" / "best", pack, split="PrivateTest", device="cpu",
                       progress=False)
    assert report["accuracy"] == by_path["accuracy"] and report["num_samples"] == 60
    assert report["data"] == "<FaceSet>"
    with pytest.raises(TypeError, match="data must be a dataset path or a FaceSet"):
        fit(keys, (faces.images, faces.labels), tmp_path / "bad", device="cpu")
    with pytest.raises(TypeError, match="metadata with class_names and model"):
        evaluate((loaded[0], {"class_names": loaded[1]["class_names"]}), in_memory)
    with pytest.raises(TypeError, match="recipe must be a Recipe"):
        fit(5, pack, tmp_path / "bad", device="cpu")
    # a wrong TTA mode is found before the checkpoint or the data are read
    with pytest.raises(ValueError, match="unknown TTA mode 'tencrop'"):
        evaluate(tmp_path / "no-such-run", tmp_path / "no-such-data", tta="tencrop")


def test_a_faceset_with_ferplus_labels_trains_a_ferplus_recipe_as_it_is(env, tmp_path):
    from ferkit.data import FERPLUS_CLASSES

    faces = bar_faces(SPLITS, class_names=FERPLUS_CLASSES)  # labelled already: no votes file
    recipe = tiny_recipe(epochs=1, dataset="ferplus", ferplus_csv="no-such-votes.csv")
    summary = fit(recipe, faces, tmp_path / "run", device="cpu", progress=False)
    assert summary["epochs_done"] == 1
    meta = json.loads((tmp_path / "run" / "best.json").read_text())
    assert meta["class_names"] == list(FERPLUS_CLASSES)


def test_checkpoints_name_the_votes_file_without_its_folder(env, tmp_path):
    faces = bar_faces(SPLITS)
    faces.info["ferplus"] = str(tmp_path / "private" / "fer2013new.csv")
    fit(tiny_recipe(epochs=1), faces, tmp_path / "run", device="cpu", progress=False)
    meta = json.loads((tmp_path / "run" / "best.json").read_text())
    assert meta["data"]["ferplus"] == "fer2013new.csv"
    assert str(tmp_path) not in (tmp_path / "run" / "best.json").read_text()


def test_max_minutes_must_be_positive(pack, tmp_path, capsys):
    from ferkit.cli import main

    with pytest.raises(ValueError, match=r"max_minutes \(--max-minutes\) 0: expected minutes > 0"):
        fit(tiny_recipe(), pack, tmp_path / "run", device="cpu", max_minutes=0, progress=False)
    recipe = write_recipe(tmp_path / "tiny.yaml")
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--recipe", str(recipe), "--data", str(pack), "--out",
              str(tmp_path / "run"), "--max-minutes", "0"])
    assert exit_info.value.code == 2 and "--max-minutes: must be in (0, inf)" in (
        capsys.readouterr().err)


def test_training_says_what_it_starts_and_how_it_goes(pack, tmp_path, capsys, monkeypatch):
    from ferkit import train

    monkeypatch.setattr(train, "PROGRESS_SECONDS", 0)  # a line per step instead of a minute
    fit(tiny_recipe(epochs=1), pack, tmp_path / "run", device="cpu", progress=False)
    err = capsys.readouterr().err
    start = err.splitlines()[0]
    assert start.startswith("ferkit: training test_tiny_cnn (") and " parameters) on cpu: " in start
    assert ("200 training images (Training), 60 validation (PublicTest), 10 steps of 20 per "
            "epoch, 1 epoch planned") in start
    assert "epoch 1: step 10/10" in err


def test_reproduce_table_names_the_selection_split_and_missing_folders(pack, tmp_path, capsys):
    from ferkit.reproduce import group_rows, table_from_runs, write_table

    def row(recipe, seed, val_split):
        return {"run": f"runs/{recipe}-s{seed}", "recipe": recipe, "seed": seed, "model": TINY,
                "model_options": {}, "dataset": "fer2013", "num_classes": 7,
                "augmentation": "none", "val_acc": 0.5, "val_split": val_split,
                "test_acc": 0.5, "test_acc_tta": 0.5, "tta": "flip", "backend": "torch",
                "epochs_done": 1, "epochs_recipe": 1, "wall_minutes": 1.0, "device": "cpu"}

    held = "10% of Training (held out)"
    groups = group_rows([row("tiny", 0, "PublicTest"), row("tiny", 0, held)])
    assert [g["val_split"] for g in groups] == ["PublicTest", held]  # two rows, no clash
    text = write_table(groups, tmp_path / "t").read_text()
    assert "| selection (split) |" in text and f"50.00% ({held})" in text
    assert "after selection on 10% of Training (held out) or PublicTest" in text
    text = write_table(group_rows([row("tiny", 0, held)]), tmp_path / "u").read_text()
    assert f"| {held} (select) |" in text and "PublicTest (select)" not in text
    with pytest.raises(ValueError, match="no finished run"):
        table_from_runs([tmp_path / "nowhere"], pack, tmp_path / "v", device="cpu")
    assert f"skipped {tmp_path / 'nowhere'}: {tmp_path / 'nowhere'}: no such folder" in (
        capsys.readouterr().err)


def test_eval_out_keeps_every_tta_mode_and_errors_before_warnings(trained, pack, tmp_path,
                                                                  monkeypatch):
    from ferkit import evaluate as ev

    out, _ = trained
    for tta in ("none", "flip"):
        ev.evaluate(out / "best", pack, tta=tta, device="cpu", out=tmp_path / "r",
                    progress=False)
    files = {p.name for p in (tmp_path / "r").iterdir()}
    assert {"PrivateTest-none.md", "PrivateTest-flip.md", "report.md"} <= files
    report = (tmp_path / "r" / "report.md").read_text()
    assert report.index("TTA none") < report.index("TTA flip")
    assert "(PrivateTest-none-confusion.png)" in report
    assert "(PrivateTest-flip-confusion.png)" in report and "| backend | torch |" in report
    warned = []
    monkeypatch.setattr(ev, "warn_if_resplit", lambda *a: warned.append(a))
    with pytest.raises(ev.DataError, match=r"no split \['Foo'\]"):
        ev.evaluate(out / "best", pack, split="Foo", device="cpu", progress=False)
    assert warned == []


def test_soft_targets_train_from_any_data_that_has_them(env, tmp_path):
    """``targets: soft`` learns the data's distributions (a teacher's, for distillation),
    not only FER+ votes; data without them is refused naming the key."""
    faces = bar_faces(SPLITS)
    recipe = tiny_recipe(epochs=1, targets="soft")
    with pytest.raises(DataError, match="targets soft needs target distributions"):
        fit(recipe, faces, tmp_path / "none", device="cpu", progress=False)
    soft = np.full((len(faces), 7), 1 / 7, np.float32)  # uniform: nothing to learn
    faces.soft_labels = soft
    fit(recipe, faces, tmp_path / "flat", device="cpu", progress=False)
    faces.soft_labels = np.eye(7, dtype=np.float32)[faces.labels]
    fit(recipe, faces, tmp_path / "sharp", device="cpu", progress=False)
    losses = [json.loads((tmp_path / run / "metrics.jsonl").read_text().splitlines()[-1])
              ["train_loss"] for run in ("flat", "sharp")]
    hard = fit(tiny_recipe(epochs=1), faces, tmp_path / "hard", device="cpu", progress=False)
    sharp = json.loads((tmp_path / "sharp" / "summary.json").read_text())
    assert sharp["best_val_acc"] == hard["best_val_acc"]  # one-hot soft targets: the labels
    assert losses[0] > losses[1]  # a uniform target cannot be fitted below log 7
