"""Edges of `ferkit reproduce`: kept scores belong to the very test images and labels, rows
are recipe configurations (not names), --ferplus trains too, run folders of the plan are
refused before training where they clash or escape --out, the epochs a resumed run ended
with, malformed run metadata, and notes on what a call's table holds."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import pytest
import torch
from test_train import SPLITS, bar_faces, tiny_recipe

from ferkit import reproduce as rp
from ferkit.data import DataError
from ferkit.data.fer2013 import FER2013_CLASSES
from ferkit.train import fit, run_recipe

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def run(pack, tmp_path_factory) -> Path:
    """One finished 2-epoch run of recipe ``tiny`` (seed 0)."""
    out = tmp_path_factory.mktemp("runs") / "tiny-s0"
    fit(tiny_recipe(epochs=2), pack, out, device="cpu", progress=False)
    return out


def write_recipe(path: Path, **keys) -> Path:
    r = tiny_recipe(epochs=1).to_dict()
    r.pop("name")
    r.update(keys)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(r))  # JSON is YAML
    return path


def write_folders(root: Path, relabel: bool = False) -> Path:
    """The bar faces as image folders (train/ + test/, PNG); ``relabel``: every PrivateTest
    image in the next class's folder (the same images, other labels)."""
    faces = bar_faces(SPLITS)
    for i, (img, label, split) in enumerate(zip(faces.images, faces.labels, faces.splits,
                                                strict=True)):
        if relabel and split == "PrivateTest":
            label = (label + 1) % len(FER2013_CLASSES)
        part = "train" if split == "Training" else "test"
        folder = root / part / FER2013_CLASSES[label]
        folder.mkdir(parents=True, exist_ok=True)
        name = f"{i}.png" if part == "train" else f"{split}_{i}.png"
        cv2.imwrite(str(folder / name), img)
    return root


# ---- 1. kept scores are those of the very images and labels scored ----


def test_kept_scores_are_not_reused_for_other_test_labels(run, tmp_path, monkeypatch, capsys):
    a = write_folders(tmp_path / "a")
    b = write_folders(tmp_path / "b", relabel=True)
    row_a = rp.table_from_runs([run], a, tmp_path / "ta", tta="flip", device="cpu")
    assert row_a.exists()
    capsys.readouterr()
    acc_a = json.loads((tmp_path / "ta" / "results.json").read_text())[0]["test_acc"][0]
    rp.table_from_runs([run], b, tmp_path / "tb", tta="flip", device="cpu")
    err = capsys.readouterr().err
    assert "kept in privatetest.json" not in err
    acc_b = json.loads((tmp_path / "tb" / "results.json").read_text())[0]["test_acc"][0]
    from ferkit.evaluate import evaluate
    direct = evaluate(run / "best", b, "PrivateTest", "none", "cpu", progress=False)
    assert acc_b == direct["accuracy"] and acc_b != acc_a
    kept = json.loads((run / "privatetest.json").read_text())["fingerprint"]
    assert kept["test_sha256"] == rp.check_test_data(b) != rp.check_test_data(a)
    # the same folders again: now the kept scores count
    rp.table_from_runs([run], b, tmp_path / "tb", tta="flip", device="cpu")
    assert "kept in privatetest.json" in capsys.readouterr().err


# ---- 2. a row is a recipe configuration, not a recipe name ----


def test_runs_of_one_name_with_other_keys_are_rows_of_their_own(pack, run, tmp_path, capsys):
    wide = tmp_path / "wide" / "tiny-s0"  # the same name and seed, another model width
    fit(tiny_recipe(epochs=2, model_options={"width": 4}), pack, wide, device="cpu",
        progress=False)
    fast = tmp_path / "fast" / "tiny-s1"  # seed 1, only evaluated in other batches
    fit(tiny_recipe(epochs=2, seed=1, eval_batch_size=32), pack, fast, device="cpu",
        progress=False)
    rp.table_from_runs([run, wide, fast], pack, tmp_path / "t", tta="flip", device="cpu")
    err = capsys.readouterr().err
    assert "skipped" not in err
    groups = json.loads((tmp_path / "t" / "results.json").read_text())
    assert [(g["recipe"], g["seeds"]) for g in groups] == [("tiny", [0, 1]), ("tiny", [0])]
    assert groups[0]["runs"] == [str(run), str(fast)]
    assert groups[0]["params"] != groups[1]["params"]
    assert groups[0]["variant"] == "model_options {}"
    assert groups[1]["variant"] == 'model_options {"width": 4}'
    table = (tmp_path / "t" / "results.md").read_text()
    assert '| tiny (model_options {"width": 4}) |' in table
    # a true duplicate (the same configuration and seed) is still skipped
    rp.table_from_runs([run, run], pack, tmp_path / "u", tta="flip", device="cpu")
    assert f"skipped {run}: recipe tiny seed 0 is already in the table" in capsys.readouterr().err


def test_a_name_of_several_configurations_answers_no_claim():
    def group(name, variant):
        return {"recipe": name, "variant": variant, "test_accs": [0.5, 0.6], "epochs": "1 of 1"}

    assert rp.claim_lines([group("paper", ""), group("paper-noaug", "")])
    assert not rp.claim_lines([group("paper", "epochs 1"), group("paper", "epochs 2"),
                               group("paper-noaug", "")])


# ---- 3. --ferplus trains FER+ recipes too; missing votes are refused before training ----


def test_ferplus_feeds_training_and_missing_votes_refuse_before_training(pack, tmp_path,
                                                                         monkeypatch):
    recipe = write_recipe(tmp_path / "fp.yaml", dataset="ferplus", ferplus_csv="fer2013new.csv")
    monkeypatch.setattr(rp, "fit", lambda *a, **kw: pytest.fail("trained"))
    with pytest.raises(DataError, match=r"fp.yaml \(fp\) trains on FER\+.*--ferplus"):
        rp.reproduce([recipe], pack, tmp_path / "t", device="cpu")
    with pytest.raises(DataError, match="votes nowhere.csv not found beside .*--ferplus"):
        rp.reproduce([recipe], pack, tmp_path / "t", device="cpu", ferplus="nowhere.csv")
    votes = tmp_path / "elsewhere" / "fer2013new.csv"
    votes.parent.mkdir()
    votes.write_text("Usage,Image name,neutral\n")
    given = []

    def record(recipe, data, run, **kw):
        given.append(recipe.ferplus_csv)
        raise KeyboardInterrupt  # enough: what training got

    monkeypatch.setattr(rp, "fit", record)
    monkeypatch.chdir(votes.parent)
    with pytest.raises(KeyboardInterrupt):
        rp.reproduce([recipe], pack, tmp_path / "t", device="cpu", ferplus="fer2013new.csv")
    assert given == [str(votes)]
    # a bare name is also looked for beside the data, as training looks for it
    import shutil

    beside = tmp_path / "data"
    beside.mkdir()
    data = Path(shutil.copy(pack, beside / "bars.fkpack"))
    shutil.copy(votes, beside / "fer2013new.csv")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(KeyboardInterrupt):
        rp.reproduce([recipe], data, tmp_path / "t2", device="cpu", ferplus="fer2013new.csv")
    assert given[-1] == str(beside / "fer2013new.csv")


# ---- 4. run folders: one per entry, inside --out ----


def test_entries_that_share_a_run_folder_are_refused_before_training(pack, tmp_path,
                                                                     monkeypatch):
    monkeypatch.setattr(rp, "fit", lambda *a, **kw: pytest.fail("trained"))
    a, b = write_recipe(tmp_path / "a" / "exp.yaml"), write_recipe(tmp_path / "b" / "exp.yaml")
    out = tmp_path / "t"
    with pytest.raises(DataError, match=rf"{a} and {b} would both train into {out / 'exp'}"):
        rp.reproduce([a, b], pack, out, device="cpu")
    with pytest.raises(DataError, match=r"\(seed 0\) and .*\(seed 0\) would both train"):
        rp.reproduce([a], pack, out, device="cpu", seeds=[0, 0])
    other = write_recipe(tmp_path / "other.yaml")
    with pytest.raises(DataError, match="would both train into .*X"):
        rp.reproduce([a, other], pack, out, device="cpu", overrides=["name=X"])
    for name in ("../escaped", "a/b", ".."):
        with pytest.raises(DataError, match="is not a plain folder name"):
            rp.reproduce([a], pack, out, device="cpu", overrides=[f"name={name}"])
    assert not out.exists() and not (tmp_path / "escaped").exists()


# ---- 5. the epochs a run ended with ----


def test_epochs_are_the_runs_final_length(pack, tmp_path):
    out = tmp_path / "tiny"
    fit(tiny_recipe(epochs=1), pack, out, device="cpu", progress=False)
    # lengthened to 3 at lr 0: no later epoch improves, the best checkpoint is epoch 1's
    fit(run_recipe(out, ["epochs=3", "lr=0"]), pack, out, device="cpu", resume=True,
        progress=False)
    (group,) = json.loads(rp.table_from_runs([out], pack, tmp_path / "t", tta="flip",
                                             device="cpu").with_suffix(".json").read_text())
    assert group["epochs"] == "3 of 3"


# ---- 6. malformed run metadata: a clear skip, the good runs still tabulated ----


@pytest.mark.parametrize("summary, says", [
    ("null", "it holds NoneType"), ("[1, 2]", "it holds list"),
    ('{"epochs_done": 1}', "it lacks best_val_acc, wall_seconds, device"),
    ("{not json", "summary.json is not JSON"),
])
def test_a_malformed_summary_is_a_clear_skip(pack, run, tmp_path, capsys, summary, says):
    bad = tmp_path / "bad"
    bad.mkdir()
    for f in ("best.safetensors", "recipe.json"):
        (bad / f).write_bytes((run / f).read_bytes())
    (bad / "summary.json").write_text(summary)
    table = rp.table_from_runs([bad, run], pack, tmp_path / "t", tta="flip", device="cpu")
    err = capsys.readouterr().err
    assert f"skipped {bad}: {bad / 'summary.json'}: " in err and says in err
    assert "expected an object with best_val_acc, epochs_done, wall_seconds, device" in err
    assert "| tiny |" in table.read_text()


def test_a_checkpoint_without_a_recipe_is_a_clear_skip(pack, run, tmp_path, capsys):
    from ferkit.checkpoint import load_checkpoint, save_checkpoint

    bad = tmp_path / "bad"
    bad.mkdir()
    model, meta = load_checkpoint(run / "best")
    save_checkpoint(model, bad / "best", {k: v for k, v in meta.items() if k != "recipe"})
    (bad / "summary.json").write_text((run / "summary.json").read_text())
    rp.table_from_runs([bad, run], pack, tmp_path / "t", tta="flip", device="cpu")
    assert "its metadata holds no recipe and class_names" in capsys.readouterr().err


# ---- 7. what a call's table says it holds ----


def test_set_seed_with_seeds_is_refused(pack, tmp_path, monkeypatch):
    monkeypatch.setattr(rp, "fit", lambda *a, **kw: pytest.fail("trained"))
    with pytest.raises(DataError, match="--set seed=... and --seeds"):
        rp.reproduce([write_recipe(tmp_path / "r.yaml")], pack, tmp_path / "t", device="cpu",
                     seeds=[0], overrides=["seed=5"])


def test_a_table_of_fewer_rows_says_which_it_no_longer_has(pack, run, tmp_path, capsys):
    other = tmp_path / "other"
    fit(tiny_recipe(name="other", epochs=1), pack, other, device="cpu", progress=False)
    rp.table_from_runs([run, other], pack, tmp_path / "t", tta="flip", device="cpu")
    capsys.readouterr()
    rp.table_from_runs([run], pack, tmp_path / "t", tta="flip", device="cpu")
    assert "rows no longer there: other" in capsys.readouterr().err


def test_a_rerun_of_the_same_recipes_drops_no_rows(pack, tmp_path, capsys):
    """reproduce writes the table after each run: only its last write may say that rows of
    the previous call are gone (a partial table is not a dropped row)."""
    recipes = [write_recipe(tmp_path / "a.yaml", epochs=1),
               write_recipe(tmp_path / "b.yaml", epochs=1)]
    for _ in range(2):
        rp.reproduce(recipes, pack, tmp_path / "t", tta="flip", device="cpu")
        assert "no longer there" not in capsys.readouterr().err
    rp.reproduce(recipes[:1], pack, tmp_path / "t", tta="flip", device="cpu")
    assert "rows no longer there: b" in capsys.readouterr().err


def test_check_test_data_fingerprints_labels_and_images(env, tmp_path):
    faces = bar_faces(SPLITS)
    one = faces.save_pack(tmp_path / "one.fkpack", preset=1)
    labels = faces.labels.copy()
    labels[faces.splits == "PrivateTest"] = (labels[faces.splits == "PrivateTest"] + 1) % 7
    from ferkit.data import FaceSet
    two = FaceSet(faces.images, labels, faces.splits).save_pack(tmp_path / "two.fkpack",
                                                               preset=1)
    assert rp.check_test_data(one) == rp.check_test_data(one)
    assert rp.check_test_data(one) != rp.check_test_data(two)
    assert isinstance(rp.check_test_data(one), str)


@pytest.mark.parametrize("extra, flag", [(["--seeds", "0", "1"], "--seeds"),
                                         (["--set", "epochs=3"], "--set"),
                                         (["--max-minutes", "5"], "--max-minutes")])
def test_runs_refuses_the_options_that_only_apply_to_training(run, tmp_path, capsys, extra,
                                                              flag):
    from ferkit.cli import main

    out = tmp_path / "table"
    code = main(["reproduce", "--runs", str(run), "--data", str(tmp_path / "absent.csv"),
                 "--out", str(out), *extra])
    err = capsys.readouterr().err
    assert code == 2
    assert flag in err and "--recipes" in err
    assert not out.exists()  # refused before anything is read or written


def test_votes_for_a_table_without_ferplus_runs_are_said_unused_once(pack, run, tmp_path,
                                                                       capsys):
    votes = tmp_path / "fer2013new.csv"
    votes.write_text("Usage\n")
    rp.table_from_runs([run], pack, tmp_path / "table", tta="flip", device="cpu",
                       ferplus=str(votes))
    err = capsys.readouterr().err
    assert err.count("not used") == 1, err  # once for the table, not per TTA pass
    assert "no run of this table is a FER+ run" in err


def test_a_ferplus_run_resumes_with_its_votes_given_from_another_folder(tmp_path):
    """A FER+ run cut short, resumed by `reproduce` with the same votes file given from
    another folder (another spelling of --ferplus): it resumes; another file is refused."""
    import numpy as np

    from ferkit.data import FaceSet
    from ferkit.data.ferplus import VOTE_COLUMNS

    bars = bar_faces(SPLITS)
    n = len(bars)
    faces = FaceSet(images=bars.images, labels=np.zeros(n), splits=bars.splits,
                    index=np.arange(n), info={"icml_rows": True})
    data = faces.save_pack(tmp_path / "data" / "bars.fkpack", preset=1)
    rows = [f"{split},fer{i:07d}.png," + ",".join(
                str(10 if c == int(label) else 0) for c in range(len(VOTE_COLUMNS)))
            for i, (split, label) in enumerate(zip(bars.splits, bars.labels, strict=True))]
    text = "Usage,Image name," + ",".join(VOTE_COLUMNS) + "\n" + "\n".join(rows) + "\n"
    first, second = tmp_path / "a" / "fer2013new.csv", tmp_path / "b" / "fer2013new.csv"
    for votes in (first, second):
        votes.parent.mkdir()
        votes.write_text(text)
    other = tmp_path / "b" / "votes-v2.csv"
    other.write_text(text)
    recipe = write_recipe(tmp_path / "fp.yaml", name="fp", dataset="ferplus", epochs=2,
                          ferplus_csv="fer2013new.csv")
    out = tmp_path / "table"
    rp.reproduce([recipe], data, out, device="cpu", ferplus=str(first), tta="flip",
                 max_minutes=1e-4)  # cut short after its first epoch
    cut = json.loads((out / "fp" / "summary.json").read_text())
    assert cut["stop_reason"] == "max_minutes" and cut["epochs_done"] == 1
    with pytest.raises(DataError, match="ferplus_csv"):
        rp.reproduce([recipe], data, out, device="cpu", ferplus=str(other), tta="flip")
    rp.reproduce([recipe], data, out, device="cpu", ferplus=str(second), tta="flip")
    done = json.loads((out / "fp" / "summary.json").read_text())
    assert done["epochs_done"] == 2 and done.get("stop_reason") != "max_minutes"
    assert "| fp |" in (out / "results.md").read_text().replace("`", "")

