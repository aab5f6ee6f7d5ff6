"""Checkpoints written in a thread of their own while the next epoch trains (`ferkit.train`).

The tiny CNN and the bar faces come from test_train (its import registers the model).
"""

from __future__ import annotations

import threading

import pytest
import torch
from test_train import read_rows, tiny_recipe, weights

import ferkit.train as train_module
from ferkit.checkpoint import weights_state
from ferkit.train import CheckpointWriter, cpu_copy, fit

torch.set_num_threads(1)


def test_epoch_files_are_written_beside_training(pack, env, tmp_path, monkeypatch):
    threads = []
    write = train_module.write_checkpoint

    def recording(state, path, meta):
        threads.append((path.name, threading.current_thread().name))
        return write(state, path, meta)

    monkeypatch.setattr(train_module, "write_checkpoint", recording)
    out = tmp_path / "run"
    summary = fit(tiny_recipe(epochs=3), pack, out, device="cpu", progress=False)
    # every epoch wrote `last`, and `best` when it improved, none of them in this thread
    names = [name for name, _ in threads]
    assert names.count("last") == 3 and names.count("best") >= 1
    assert {thread for _, thread in threads} == {"ferkit-checkpoints"}
    # all written by the time fit returns: the state and `last` are the final epoch's
    state = torch.load(out / "last.state.pt", weights_only=False)
    assert state["epoch"] == 3 == summary["epochs_done"]
    assert len(state["history"]) == 3 == len(read_rows(out))
    last = weights(out / "last")
    assert all(torch.equal(last[k], v.float()) for k, v in state["model"].items())


def test_each_epochs_files_hold_that_epoch_while_the_next_trains(pack, env, tmp_path,
                                                                 monkeypatch):
    """Every write waits until the next epoch has trained, then checks that what it was
    handed is still the epoch's own model (copies, not the tensors training goes on with),
    and the order of the files: best, last, then the state."""
    epochs = 3
    trained = {e: threading.Event() for e in range(1, epochs + 1)}  # epoch e+1 trained
    handed, seen, order = {}, [], []
    Trainer = train_module.Trainer
    train_epoch, save_epoch = Trainer.train_epoch, Trainer._save_epoch

    def training(self):
        row = train_epoch(self)
        if self.epoch in trained:  # epoch self.epoch + 1 has just trained
            trained[self.epoch].set()
        return row

    def saving(self, metrics, improved):
        handed[self.epoch] = weights_state(self.model, copy=True)  # the truth, now
        return save_epoch(self, metrics, improved)

    def later(epoch):
        if epoch < epochs:
            assert trained[epoch].wait(10), "the next epoch never trained"

    write, save = train_module.write_checkpoint, torch.save

    def checking_write(state, path, meta):
        epoch = meta["metrics"]["epoch"]
        later(epoch)
        seen.append(all(torch.equal(state[k], v) for k, v in handed[epoch].items()))
        order.append((epoch, path.name))
        return write(state, path, meta)

    def checking_save(state, file, *args, **kwargs):
        if isinstance(state, dict) and "optimizer" in state:
            later(state["epoch"])
            model = state["model"]
            seen.append(all(torch.equal(model[k], v) for k, v in handed[state["epoch"]].items()))
            order.append((state["epoch"], "state"))
        return save(state, file, *args, **kwargs)

    monkeypatch.setattr(Trainer, "train_epoch", training)
    monkeypatch.setattr(Trainer, "_save_epoch", saving)
    monkeypatch.setattr(train_module, "write_checkpoint", checking_write)
    monkeypatch.setattr(torch, "save", checking_save)
    summary = fit(tiny_recipe(epochs=epochs), pack, tmp_path / "run", device="cpu",
                  progress=False)
    assert summary["epochs_done"] == epochs
    assert trained[1].is_set() and trained[2].is_set()
    assert seen and all(seen)  # no file took weights from a later epoch
    for epoch in range(1, epochs + 1):
        names = [name for e, name in order if e == epoch]
        assert names in (["best", "last", "state"], ["last", "state"])
    assert [e for e, _ in order] == sorted(e for e, _ in order)


def test_a_failed_write_stops_the_run_with_its_error(pack, env, tmp_path, monkeypatch):
    def full_disk(state, path, meta):
        raise OSError(28, "No space left on device", str(path))

    monkeypatch.setattr(train_module, "write_checkpoint", full_disk)
    out = tmp_path / "run"
    with pytest.raises(OSError, match="No space left on device"):
        fit(tiny_recipe(epochs=5), pack, out, device="cpu", progress=False)
    # said at the next epoch's hand-over, not after training all five
    assert len(read_rows(out)) == 2
    assert not (out / "last.state.pt").exists()


def test_a_failed_write_of_the_last_epoch_is_said_too(pack, env, tmp_path, monkeypatch):
    def full_disk(state, path, meta):
        raise OSError(28, "No space left on device", str(path))

    monkeypatch.setattr(train_module, "write_checkpoint", full_disk)
    with pytest.raises(OSError, match="No space left on device"):
        fit(tiny_recipe(epochs=1), pack, tmp_path / "run", device="cpu", progress=False)


def test_a_failed_write_is_said_when_the_run_stops_on_an_error_of_its_own(
        pack, env, tmp_path, monkeypatch, capsys):
    def full_disk(state, path, meta):
        raise OSError(28, "No space left on device", str(path))

    calls = []
    train_epoch = train_module.Trainer.train_epoch

    def failing(self):
        calls.append(self.epoch)
        if len(calls) == 2:
            raise RuntimeError("CUDA out of memory")
        return train_epoch(self)

    monkeypatch.setattr(train_module, "write_checkpoint", full_disk)
    monkeypatch.setattr(train_module.Trainer, "train_epoch", failing)
    out = tmp_path / "run"
    with pytest.raises(RuntimeError, match="out of memory"):
        fit(tiny_recipe(epochs=3), pack, out, device="cpu", progress=False)
    err = capsys.readouterr().err
    assert f"epoch 1's checkpoint files ({out}) not written: OSError" in err
    assert "No space left on device" in err


def test_snapshots_do_not_follow_the_model():
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.Adam(model.parameters())
    model(torch.ones(1, 3)).sum().backward()
    opt.step()
    weights_now = weights_state(model, copy=True)
    state_now = cpu_copy({"model": model.state_dict(), "optimizer": opt.state_dict(),
                          "history": [1, 2], "pair": (torch.ones(1), "x")})
    before = {k: v.clone() for k, v in model.state_dict().items()}
    moments = opt.state_dict()["state"][0]["exp_avg"].clone()
    for _ in range(3):  # the next epoch trains on in place
        opt.zero_grad()
        model(torch.ones(1, 3)).sum().backward()
        opt.step()
    assert not torch.equal(model.weight, before["weight"])
    assert all(torch.equal(weights_now[k], before[k]) for k in before)
    assert all(torch.equal(state_now["model"][k], before[k]) for k in before)
    assert torch.equal(state_now["optimizer"]["state"][0]["exp_avg"], moments)
    assert isinstance(state_now["pair"], tuple) and state_now["pair"][1] == "x"


def test_writer_waits_for_one_epoch_before_the_next():
    writer = CheckpointWriter()
    order, release = [], threading.Event()

    def slow():
        release.wait(5)
        order.append("first")

    writer.submit([slow])
    timer = threading.Timer(0.2, release.set)
    timer.start()
    writer.submit([lambda: order.append("second")])  # waits for `slow` first
    writer.wait()
    timer.join()
    assert order == ["first", "second"]
    # a quiet wait (the run is stopping on an error of its own) does not raise the write's
    writer.submit([lambda: 1 / 0])
    writer.wait(quiet=True)
    writer.wait()  # nothing left to raise
