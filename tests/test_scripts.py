"""The helper scripts of scripts/: their arguments are checked before any work, with one
clear line, and their outputs say what they wrote."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = REPO / "scripts"
GPU_TRAIN = SCRIPTS / "gpu_train.sh"


def load_script(name: str):
    """scripts/NAME.py as a module (scripts/ is not a package)."""
    spec = importlib.util.spec_from_file_location(f"script_{name}", SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def error_of(exc: pytest.ExceptionInfo, capsys) -> str:
    """The message of a SystemExit: argparse's (on stderr) or the exception's own."""
    code = exc.value.code
    return capsys.readouterr().err if isinstance(code, int) else str(code)


# ---- scripts/gpu_train.sh ----


def fake_nvidia_smi(folder: Path, pid_file: Path) -> dict:
    """An nvidia-smi on PATH whose logger (-l) runs until killed and notes its pid."""
    folder.mkdir()
    smi = folder / "nvidia-smi"
    smi.write_text(
        "#!/bin/sh\n"
        f'case "$*" in *" -l "*) echo $$ > "{pid_file}"; exec sleep 120 ;; esac\n'
        'echo "Fake GPU, 1 MiB, 1.0"\n'
    )
    smi.chmod(0o755)
    return {**os.environ, "PATH": f"{folder}{os.pathsep}{os.environ['PATH']}"}


def gpu_train(*args, env=None, cwd=None, timeout=30) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(GPU_TRAIN), *map(str, args)], capture_output=True,
                          text=True, env=env, cwd=cwd, timeout=timeout)


def alive(pid: int) -> bool:
    stat = Path(f"/proc/{pid}/stat")
    if stat.exists():  # a zombie nobody reaped is not running
        return stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture
def bash():
    if shutil.which("bash") is None:
        pytest.skip("needs bash")


def test_gpu_train_prints_its_usage(bash, tmp_path):
    for flag in ("--help", "-h"):
        proc = gpu_train(flag)
        assert proc.returncode == 0 and proc.stdout.startswith("usage: scripts/gpu_train.sh PACK")
    proc = gpu_train()
    assert proc.returncode == 2 and "usage:" in proc.stderr
    assert "unbound variable" not in proc.stderr
    assert "expected PACK, OUT, MINUTES and at least one RECIPE; got 0" in proc.stderr


def test_gpu_train_without_a_recipe_stops_at_once_with_a_gpu_logger(bash, tmp_path):
    # before: no recipe ran nothing and waited for the endless nvidia-smi logger
    env = fake_nvidia_smi(tmp_path / "bin", tmp_path / "smi.pid")
    pack = tmp_path / "tiny.pack"
    pack.write_bytes(b"")
    proc = gpu_train(pack, tmp_path / "out", 1, env=env, timeout=20)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "at least one RECIPE; got 3" in proc.stderr
    assert not (tmp_path / "out").exists() and not (tmp_path / "smi.pid").exists()


def test_gpu_train_checks_minutes_and_pack_first(bash, tmp_path):
    pack = tmp_path / "tiny.pack"
    pack.write_bytes(b"")
    for minutes in ("0", "-1", "abc", "1e3", "0.0", ""):
        proc = gpu_train(pack, tmp_path / "out", minutes, "cpu")
        assert proc.returncode == 2, minutes
        assert f"MINUTES must be a positive number (e.g. 30 or 0.5), not '{minutes}'" in proc.stderr
    proc = gpu_train(tmp_path / "nosuch.pack", tmp_path / "out", "0.5", "cpu")
    assert proc.returncode == 2 and "PACK" in proc.stderr and "no such file" in proc.stderr
    assert not (tmp_path / "out").exists()


def test_gpu_train_stops_the_gpu_logger_when_the_runs_end(bash, tmp_path):
    env = fake_nvidia_smi(tmp_path / "bin", tmp_path / "smi.pid")
    env["PYTHONPATH"] = str(REPO / "src")
    pack = tmp_path / "tiny.pack"
    pack.write_bytes(b"")
    out = tmp_path / "out"
    # a recipe that does not exist: its run fails at once, the script still packs its log
    proc = gpu_train(pack, out, "0.5", "nosuch", env=env, cwd=tmp_path, timeout=120)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "RESULT nosuch FAILED" in proc.stdout
    pid = int((tmp_path / "smi.pid").read_text())
    assert not alive(pid), "the nvidia-smi logger outlived the script"
    assert (out / "gpu_util.csv").exists() and (out / "nosuch.tar.gz").exists()
    assert not (out / "runs").exists()  # deleted unless KEEP_RUNS=1


# ---- scripts/ship_weights.py ----


def test_strip_paths_keeps_file_names_only():
    ship = load_script("ship_weights")
    meta = {
        "data": {"ferplus": ".pack/fer2013new.csv", "packed_from": "fer2013.csv.gz"},
        "files": ["runs/gpu/x/f.csv", "/abs/p.csv", "~/d/g.csv", "C:\\data\\h.csv", "./i.csv"],
        "name": "mba_cnn-ferplus",
        "recipe": {"name": "ferplus-soft", "lr": 0.05, "splits": ["Training"]},
        "source": "https://example.org/a/b.csv",
    }
    assert ship.strip_paths(meta) == {
        "data": {"ferplus": "fer2013new.csv", "packed_from": "fer2013.csv.gz"},
        "files": ["f.csv", "p.csv", "g.csv", "h.csv", "i.csv"],
        "name": "mba_cnn-ferplus",
        "recipe": {"name": "ferplus-soft", "lr": 0.05, "splits": ["Training"]},
        "source": "https://example.org/a/b.csv",
    }


def test_shipped_weights_metadata_holds_no_paths():
    ship = load_script("ship_weights")
    shipped = sorted((REPO / "src" / "ferkit" / "weights").glob("mba_cnn-*.json"))
    assert shipped
    for path in shipped:
        meta = json.loads(path.read_text())
        assert ship.strip_paths(meta) == meta, path.name


def test_ship_weights_checks_its_arguments_before_scoring(checkpoint, tmp_path, monkeypatch,
                                                          capsys):
    ship = load_script("ship_weights")

    def no_scoring(*args, **kwargs):
        raise AssertionError("scored before the arguments were checked")

    monkeypatch.setattr(ship, "evaluate", no_scoring)
    monkeypatch.setattr(ship, "ROOT", tmp_path)  # nothing is written into the checkout
    data = tmp_path / "fer2013.csv"
    data.write_text("emotion,pixels,Usage\n")
    cases = {
        ("--tta", "none", "mirror"): "argument --tta: invalid choice: 'mirror'",
        ("--data", str(tmp_path / "nosuch.csv")): "--data",
        ("--ferplus", str(tmp_path / "nosuch-new.csv")): "--ferplus",
        ("--name", "../x"): "--name '../x'",
    }
    for extra, expected in cases.items():
        argv = [str(checkpoint), "--data", str(data), "--name", "t", *extra]
        with pytest.raises(SystemExit) as exc:
            ship.main(argv)
        message = error_of(exc, capsys)
        assert expected in message, message
    with pytest.raises(SystemExit) as exc:
        ship.main([str(tmp_path / "nosuch"), "--data", str(data), "--name", "t"])
    message = error_of(exc, capsys)
    assert "checkpoint" in message and "not found" in message and "Traceback" not in message


# ---- scripts/plot_runs.py ----


def write_run(folder: Path, accs: list[float]) -> Path:
    folder.mkdir(parents=True)
    rows = [{"epoch": i + 1, "val_acc": a, "elapsed_s": 60.0 * (i + 1), "images_per_s": 100.0}
            for i, a in enumerate(accs)]
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


def test_plot_runs_takes_run_folders_and_prints_the_file_it_wrote(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    plot = load_script("plot_runs")
    run = write_run(tmp_path / "runs" / "paper", [0.5, 0.7, 0.72])
    other = write_run(tmp_path / "runs" / "best", [0.4, 0.6])
    plot.main([str(run), str(other / "metrics.jsonl"), "--out", str(tmp_path / "curves"),
               "--target", "0.69"])
    lines = capsys.readouterr().out.splitlines()
    assert lines[-1] == str(tmp_path / "curves.png")  # the file written, not the name given
    assert (tmp_path / "curves.png").stat().st_size > 0
    assert any(x.startswith("| paper | 3 | 72.00% (epoch 3) | 2.0 min (epoch 2) |") for x in lines)
    assert any(x.startswith("| best | 2 | 60.00% (epoch 2) | not reached |") for x in lines)


def test_plot_runs_refuses_bad_input_in_one_line(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    plot = load_script("plot_runs")
    run = write_run(tmp_path / "run", [0.5])
    (tmp_path / "empty").mkdir()
    out = ["--out", str(tmp_path / "c.png")]
    cases = {
        (str(tmp_path / "nosuch.jsonl"), *out): "nosuch.jsonl: no such file or folder",
        (str(tmp_path / "empty"), *out): "empty: a folder without metrics.jsonl",
        (str(run), *out, "--target", "69.5"): "a fraction in (0, 1] (0.695 for 69.5%), not 69.5",
        (str(run), *out, "--target", "0"): "argument --target",
        (str(run), "--out", str(tmp_path / "c.txt")): "--out",
    }
    for argv, expected in cases.items():
        with pytest.raises(SystemExit) as exc:
            plot.main(list(argv))
        message = error_of(exc, capsys)
        assert expected in message, message
    assert not list(tmp_path.glob("c.*"))


def test_plot_runs_help_says_the_target_is_a_fraction():
    proc = subprocess.run([sys.executable, str(SCRIPTS / "plot_runs.py"), "--help"],
                          capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(REPO / "src")})
    assert proc.returncode == 0
    assert "0.695 for 69.5%" in " ".join(proc.stdout.split())


# ---- scripts/teacher_targets.py ----


def test_teacher_targets_mix_the_label_with_the_teachers_tta_scores(checkpoint, tmp_path,
                                                                     capsys):
    import numpy as np

    from ferkit.data import FaceSet, load
    from ferkit.evaluate import predict_probs
    from ferkit.weights import load_model

    script = load_script("teacher_targets")
    rng = np.random.default_rng(0)
    splits = np.array(["Training"] * 12 + ["PublicTest"] * 5)
    faces = FaceSet(images=rng.integers(0, 256, (17, 48, 48), dtype=np.uint8),
                    labels=np.arange(17) % 7, splits=splits)
    data = faces.save_pack(tmp_path / "d.fkpack", preset=1)
    out = tmp_path / "soft.fkpack"
    assert script.main([str(data), "--teacher", str(checkpoint), "--tta", "flip", "--hard",
                        "0.25", "--out", str(out)]) == 0
    said = capsys.readouterr().out
    soft = load(out)
    assert np.array_equal(soft.images, faces.images) and np.array_equal(soft.labels, faces.labels)
    model, _ = load_model(checkpoint)
    probs = predict_probs(model, faces.images[:12], tta="flip")
    onehot = np.eye(7, dtype=np.float32)[faces.labels]
    np.testing.assert_allclose(soft.soft_labels[:12], 0.25 * onehot[:12] + 0.75 * probs,
                               atol=1e-5)
    assert np.array_equal(soft.soft_labels[12:], onehot[12:])  # no teacher output there
    np.testing.assert_allclose(soft.soft_labels.sum(1), 1.0, atol=1e-5)
    agree = (probs.argmax(1) == faces.labels[:12]).mean()  # the teacher's, not the targets'
    assert f"agrees with the label on {100 * agree:.2f}% of the Training rows" in said

    # the test split never goes into training data; nonsense is refused in one line
    with_test = FaceSet(images=faces.images, labels=faces.labels,
                        splits=np.where(splits == "PublicTest", "PrivateTest", splits))
    held = with_test.save_pack(tmp_path / "t.fkpack", preset=1)
    for argv, words in (([str(held)], "holds PrivateTest rows"),
                        ([str(data), "--hard", "1.5"], "expected a weight in [0, 1]"),
                        ([str(data), "--splits", "Nope"], "no Nope rows")):
        assert script.main([*argv, "--teacher", str(checkpoint), "--out",
                            str(tmp_path / "new" / "x.fkpack")]) == 2
        assert words in capsys.readouterr().err
        assert not (tmp_path / "new").exists()  # a refused run leaves no folder behind
    assert script.main([str(data), "--teacher", str(checkpoint), "--out", str(data)]) == 2
    assert "--out" in capsys.readouterr().err and load(data).soft_labels is None
