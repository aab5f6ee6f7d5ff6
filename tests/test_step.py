"""The training step (`ferkit.step`): what a CUDA graph records must never wait for the host.

A graph replays device work only: a value read back to Python during recording (``.item()``,
``bool(tensor)``, a data-dependent shape such as ``nonzero``) either fails the recording or
is frozen into it. These checks watch every operator the step dispatches, backward and the
optimizer included, on the CPU with the real MBA-CNN.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from ferkit.augment import AugmentConfig
from ferkit.models import create_model
from ferkit.recipe import Recipe
from ferkit.step import TrainStep, graph_support

# operators that copy a value to the host or whose output shape depends on the data
HOST_WAITS = {
    "aten._local_scalar_dense", "aten.is_nonzero", "aten.equal", "aten.nonzero",
    "aten.masked_select", "aten._unique2", "aten.unique_dim", "aten.unique_consecutive",
    "aten.repeat_interleave",
}


class OperatorLog(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.seen: set[str] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.seen.add(str(func.overloadpacket))
        return func(*args, **(kwargs or {}))


def make_step(augment: AugmentConfig, soft: bool = False, batch: int = 8) -> TrainStep:
    torch.manual_seed(0)
    model = create_model("mba_cnn").to(memory_format=torch.channels_last)
    # fused Adam and a tensor learning rate, as the step runs when it is recorded on a GPU
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, fused=True)
    lr = torch.tensor(1e-3)
    for group in opt.param_groups:
        group["lr"] = lr
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (4 * batch, 48, 48), dtype=torch.uint8, generator=gen)
    labels = torch.randint(0, 7, (4 * batch,), generator=gen)
    soft_targets = torch.softmax(torch.randn(4 * batch, 7, generator=gen), 1) if soft else None
    weight = torch.linspace(0.5, 2.0, 7)

    def loss_fn(logits, targets):
        return F.cross_entropy(logits.float(), targets, weight=weight, label_smoothing=0.1)

    return TrainStep(model, opt, images, labels, soft_targets, augment, gen, loss_fn, 7, batch)


def operators_of_a_step(step: TrainStep, batch: int = 8) -> set[str]:
    idx = torch.arange(batch)
    step.opt.zero_grad(set_to_none=True)
    step.body(idx)  # the optimizer's state exists before the step that is watched
    step.opt.zero_grad(set_to_none=True)
    with OperatorLog() as log:
        step.body(idx)
    return log.seen


@pytest.mark.parametrize(
    "augment, soft",
    [
        (AugmentConfig(erasing=0.5), False),  # the paper's set plus random erasing
        (AugmentConfig(vflip=0.5, rotation=0.0), True),  # FER+ soft targets
        (AugmentConfig(gamma=0.3, contrast=0.4, brightness=0.4), False),  # photometric too
    ],
)
def test_the_step_never_waits_for_the_host(augment, soft):
    seen = operators_of_a_step(make_step(augment, soft))
    # the log saw the whole step: augmentation, forward, backward and the update
    assert {"aten.grid_sampler_2d", "aten.convolution_backward", "aten._fused_adam_"} <= seen
    assert not seen & HOST_WAITS, f"the step waits for the host in {sorted(seen & HOST_WAITS)}"


def test_mixup_is_seen_waiting_for_the_host():
    """The same log catches a real host read: mixup draws its ratio with `.item()`."""
    seen = operators_of_a_step(make_step(AugmentConfig(mixup=0.2)))
    assert "aten._local_scalar_dense" in seen


def test_step_totals_add_up_until_reset():
    step = make_step(AugmentConfig())
    for _ in range(3):
        step(torch.arange(8), 1e-3)
    assert 0 <= float(step.correct) <= 24 and float(step.loss_sum) > 0
    loss_after_three = float(step.loss_sum)
    step(torch.arange(8), 1e-3)
    assert float(step.loss_sum) > loss_after_three
    step.reset_totals()
    assert float(step.loss_sum) == 0 and float(step.correct) == 0


def test_graph_support_says_why_not():
    model = torch.nn.Linear(2, 2)
    fused = torch.optim.Adam(model.parameters(), fused=True)
    plain = torch.optim.Adam(model.parameters())
    cuda, cfg = torch.device("cuda"), AugmentConfig()
    assert "CUDA device" in graph_support(torch.device("cpu"), 1, cfg, fused)
    assert "DDP" in graph_support(cuda, 2, cfg, fused)
    assert "mixup" in graph_support(cuda, 1, AugmentConfig(cutmix=1.0), fused)
    assert "fused" in graph_support(cuda, 1, cfg, plain)
    assert graph_support(cuda, 1, cfg, fused) is None


def test_cuda_graph_on_the_cpu_runs_the_eager_step_and_says_so():
    notes = []
    step = make_step(AugmentConfig())
    graphed = TrainStep(
        step.train_model, step.opt, step.images, step.labels, None, step.cfg, step.gen,
        step.loss_fn, 7, 8, cuda_graph=True, log=notes.append,
    )
    assert not graphed.graphing and notes == ["cuda_graph off: it needs a CUDA device; the "
                                              "step runs eagerly"]
    graphed(torch.arange(8), 1e-3)
    assert float(graphed.loss_sum) > 0


class FrozenReplay:
    """Stands in for a recorded graph whose replays do not advance the generator."""

    replays = 0

    def replay(self):
        self.replays += 1


@pytest.mark.parametrize("offsets, graphed_after", [((5, 5), False), ((5, 9), True)])
def test_a_replay_that_does_not_advance_the_generator_ends_graphing(
    monkeypatch, offsets, graphed_after
):
    """The CPU has no graphs: the recording is faked, the check after the first replay is
    real (a frozen generator would augment every batch alike)."""
    from ferkit import step as step_module

    notes = []
    step = make_step(AugmentConfig())
    step.log = notes.append
    step.graphing, step.graph, step.replays_checked = True, FrozenReplay(), False
    step.lr, step.static_idx = torch.zeros(()), torch.zeros(8, dtype=torch.long)
    reads = iter(offsets)
    monkeypatch.setattr(step_module, "generator_offset", lambda gen: next(reads))
    step(torch.arange(8), 1e-3)
    assert (step.graph is not None) == graphed_after
    assert bool(notes) != graphed_after
    if not graphed_after:
        assert "does not advance the augmentation's generator" in notes[0]
        loss = float(step.loss_sum)
        step(torch.arange(8), 1e-3)  # the next steps run eagerly
        assert float(step.loss_sum) > loss


def test_generator_offset_is_none_where_there_is_none():
    from ferkit.step import generator_offset

    assert generator_offset(torch.Generator()) is None  # a CPU generator has no offset


def test_recipe_refuses_two_kinds_of_graph():
    assert Recipe(cuda_graph=True, compile=True).cuda_graph
    assert Recipe(cuda_graph=True, compile=True, compile_mode="max-autotune-no-cudagraphs")
    with pytest.raises(ValueError, match="compile_mode 'reduce-overhead' records graphs"):
        Recipe(cuda_graph=True, compile=True, compile_mode="reduce-overhead")
