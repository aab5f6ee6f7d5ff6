"""The training step, run eagerly or replayed as one CUDA graph.

A step gathers a batch from the uint8 training tensor, augments it, runs forward and
backward and updates the weights. At small batches a GPU spends most of a step waiting for
Python to launch its kernels one by one (`mba_cnn`: about 450 operators per step, views
aside; batch 64 on an H200: 19.7 ms per step, of which the kernels run 5.1 ms). With
``cuda_graph`` the whole step (gather, augmentation, forward, backward, optimizer, loss and
accuracy totals) is recorded once after a few eager warm-up steps and then replayed: one
launch per step. Everything a replay needs lives in static device tensors (the batch
indices, the learning rate, the random generator's state), and nothing in `body` waits for
the host, so the recording stays valid.
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .augment import AugmentConfig, augment_batch, mix_batch

#: eager steps before recording: Adam's state and cuDNN's choices must exist first
WARMUP_STEPS = 3


def graph_support(device: torch.device, world: int, cfg: AugmentConfig,
                  opt: torch.optim.Optimizer) -> str | None:
    """Why this run cannot replay its step as a CUDA graph (None: it can)."""
    if device.type != "cuda":
        return "it needs a CUDA device"
    if world > 1:
        return "it is not combined with DDP here"
    if cfg.mixup > 0 or cfg.cutmix > 0:
        return "mixup/CutMix draw their mixing ratio on the host"
    if not all(group.get("fused") for group in opt.param_groups):
        return "it needs a fused optimizer (the learning rate is a device tensor)"
    return None


def generator_offset(gen: torch.Generator) -> int | None:
    """The Philox offset of a CUDA generator (None where there is none to read)."""
    try:
        return int(gen.get_offset())
    except (AttributeError, RuntimeError):
        return None


class TrainStep:
    """``step(idx, lr)``: one optimisation step on the training images at ``idx``.

    ``train_model`` is what runs forward (the model, or its DDP / compiled wrapper);
    ``eager_model`` is what a failed ``torch.compile`` falls back to. Loss and accuracy
    add up on the device until `reset_totals`.
    """

    def __init__(
        self,
        train_model: nn.Module,
        opt: torch.optim.Optimizer,
        images: torch.Tensor,
        labels: torch.Tensor,
        soft_targets: torch.Tensor | None,
        augment: AugmentConfig,
        gen: torch.Generator,
        loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        num_classes: int,
        batch_size: int,
        amp: bool = False,
        channels_last: bool = True,
        rank: int = 0,
        world: int = 1,
        eager_model: nn.Module | None = None,
        cuda_graph: bool = False,
        log: Callable[[str], None] | None = None,
    ):
        self.train_model, self.eager_model = train_model, eager_model or train_model
        self.opt, self.loss_fn = opt, loss_fn
        self.images, self.labels, self.soft_targets = images, labels, soft_targets
        self.cfg, self.gen, self.num_classes = augment, gen, num_classes
        self.amp, self.channels_last = amp, channels_last
        self.local = slice(rank * batch_size // world, (rank + 1) * batch_size // world)
        self.mixing = augment.mixup > 0 or augment.cutmix > 0
        self.device = images.device
        self.log = log or (lambda msg: print(f"ferkit: {msg}", file=sys.stderr, flush=True))
        self.loss_sum = torch.zeros((), device=self.device)
        self.correct = torch.zeros((), device=self.device)
        self.graph: torch.cuda.CUDAGraph | None = None
        self.graphing = False
        if cuda_graph:
            why_not = graph_support(self.device, world, augment, opt)
            if why_not:
                self.log(f"cuda_graph off: {why_not}; the step runs eagerly")
            else:
                self.graphing = True
                self.warm = 0
                self.replays_checked = False
                self.static_idx = torch.zeros(batch_size, dtype=torch.long, device=self.device)
                # a device learning rate: a recorded optimizer step reads it at every replay
                self.lr = torch.zeros((), device=self.device)
                for group in opt.param_groups:
                    group["lr"] = self.lr

    # ---- the step's parts (`body` is all of them; the benchmark times them one by one) ----

    def batch(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Augmented inputs, loss targets and labels of this process's share of `idx`.

        Every process draws and augments the whole global batch, then keeps its slice: the
        data a step sees does not depend on the number of processes (BatchNorm statistics
        do, per process, unless sync_bn is on).
        """
        x = augment_batch(self.images[idx], self.cfg, self.gen)
        labels = self.labels[idx]
        if self.soft_targets is not None:
            targets = self.soft_targets[idx]
        elif self.mixing:
            targets = F.one_hot(labels, self.num_classes).float()
        else:
            targets = labels
        if self.mixing:
            x, targets = mix_batch(x, targets, self.cfg, self.gen)
        x, targets, labels = x[self.local], targets[self.local], labels[self.local]
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x, targets, labels

    def forward_backward(self, x: torch.Tensor, targets: torch.Tensor):
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp,
                            cache_enabled=not self.graphing):
            logits = self.train_model(x)
        loss = self.loss_fn(logits, targets)
        loss.backward()
        return loss, logits

    def body(self, idx: torch.Tensor) -> None:
        """Everything a step does on the device (what a CUDA graph records)."""
        x, targets, labels = self.batch(idx)
        loss, logits = self.forward_backward(x, targets)
        self.opt.step()
        self.loss_sum += loss.detach()
        self.correct += (logits.detach().argmax(1) == labels).sum()

    # ---- running it ----

    def reset_totals(self) -> None:
        self.loss_sum.zero_()
        self.correct.zero_()

    def __call__(self, idx: torch.Tensor, lr: float) -> None:
        if self.graphing:
            self.lr.fill_(lr)
            self.static_idx.copy_(idx)
            if self.graph is None and self.warm >= WARMUP_STEPS:
                self._record()
            if self.graph is not None:
                self._replay()
            else:
                self._warmup_step()
        else:
            for group in self.opt.param_groups:
                group["lr"] = lr
            self._eager_step(idx)

    def _eager_step(self, idx: torch.Tensor) -> None:
        self.opt.zero_grad(set_to_none=True)
        try:
            self.body(idx)
        except Exception as exc:  # a torch.compile failure must not cost the run
            if self.train_model is self.eager_model:
                raise
            self.log(f"torch.compile failed ({type(exc).__name__}: {exc}); continuing in "
                     "eager mode")
            self.train_model = self.eager_model
            self.opt.zero_grad(set_to_none=True)
            self.body(idx)

    def _warmup_step(self) -> None:
        # on a side stream, as recording will be (the CUDA graphs notes of PyTorch's docs)
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            self._eager_step(self.static_idx)
        torch.cuda.current_stream(self.device).wait_stream(side)
        self.warm += 1

    def _replay(self) -> None:
        before = generator_offset(self.gen)
        self.graph.replay()
        if self.replays_checked:
            return
        self.replays_checked = True
        uses_generator = self.cfg.geometric or self.cfg.photometric or self.cfg.erasing > 0
        if uses_generator and before is not None and generator_offset(self.gen) == before:
            # a replay that draws the same random numbers every time would augment every
            # batch alike: this one step is harmless, the rest of the run is not
            self._stop_graphing("a replay does not advance the augmentation's generator")

    def _stop_graphing(self, why: str) -> None:
        self.log(f"cuda_graph: {why}; continuing eagerly")
        self.graph = None
        self.graphing = False
        for group in self.opt.param_groups:
            group["capturable"] = False
        self.opt.zero_grad(set_to_none=True)

    def _record(self) -> None:
        graph = torch.cuda.CUDAGraph()
        self.opt.zero_grad(set_to_none=True)  # backward allocates .grad inside the graph
        for group in self.opt.param_groups:
            group["capturable"] = True
        try:
            # the augmentation's seeded generator must advance at every replay; newer torch
            # registers a generator on its first use in a capture and drops this call
            register = getattr(graph, "register_generator_state", None)
            if register is not None:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", (DeprecationWarning, FutureWarning))
                    register(self.gen)
            with torch.cuda.graph(graph):
                self.body(self.static_idx)
        except Exception as exc:  # recording failed: the run goes on eagerly
            self._stop_graphing(f"recording the step failed ({type(exc).__name__}: {exc})")
            return
        self.graph = graph
