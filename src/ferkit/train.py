"""`fit(recipe, data, out)`: one readable training loop with AMP, channels_last, compile, DDP and resume.

The training images live on the training device as one uint8 tensor; every step (`step.py`)
indexes a batch, augments it there and runs the model. Nothing synchronises with the host
inside an epoch (except mixup/CutMix, which draw their mixing ratio on the host), so a GPU
is not starved by Python; with ``cuda_graph`` a step is one replayed CUDA graph.
"""

from __future__ import annotations

import copy
import gc
import hashlib
import json
import math
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from . import __version__
from .augment import PIXEL_MEAN, PIXEL_STD, normalize
from .checkpoint import read_metadata, weights_state, write_checkpoint
from .data import FERPLUS_CLASSES, DataError, FaceSet, load_ferplus
from .data.ferplus import find_ferplus_votes
from .data.readers import faces_from
from .devices import resolve_device
from .fileio import PROGRESS_SECONDS, check_out_folder, write_atomically
from .models import create_model
from .recipe import Recipe, apply_overrides, as_overrides
from .step import TrainStep
from .weights import load_model


@dataclass
class DistInfo:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup_distributed(device: torch.device) -> tuple[DistInfo, torch.device]:
    """Join the process group that torchrun describes in the environment (if any)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return DistInfo(), device
    info = DistInfo(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))
    if device.type == "cuda":
        torch.cuda.set_device(info.local_rank)
        device = torch.device("cuda", info.local_rank)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return info, device


def checkout_root() -> Path | None:
    """The git checkout ferkit runs from (``src/ferkit`` in it), or None when installed."""
    root = Path(__file__).resolve().parents[2]
    return root if (root / ".git").exists() else None


def code_version() -> str:
    """The package version, plus the git commit (and ``.dirty`` for uncommitted changes to
    tracked files) when ferkit runs from its own git checkout (not from an installed copy
    that happens to sit inside some other repository)."""
    root = checkout_root()
    if root is None:
        return __version__

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], capture_output=True, text=True, timeout=5, cwd=root
        ).stdout.strip()

    try:
        sha = git("rev-parse", "--short", "HEAD")
        dirty = sha and git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        sha = dirty = ""
    return f"{__version__}+{sha}{'.dirty' if dirty else ''}" if sha else __version__


def hold_out(part: FaceSet, fraction: float, seed: int) -> tuple[FaceSet, FaceSet]:
    """``(train, val)``: a `fraction` of `part` held out for selection, stratified by class
    (each class with two images or more gives at least one, and keeps at least one) and
    drawn from `seed`, so a resumed run holds out the very same images."""
    rng = np.random.default_rng(seed)
    chosen = np.zeros(len(part), dtype=bool)
    for label in np.unique(part.labels):
        rows = np.flatnonzero(part.labels == label)
        k = min(max(round(fraction * len(rows)), 1), len(rows) - 1)
        chosen[rng.permutation(rows)[:k]] = True
    if not chosen.any() or chosen.all():
        raise DataError(f"{part.source or 'data'}: {len(part)} training images are too few to "
                        f"hold out val_fraction {fraction:g} of them for selection")
    return part.select(~chosen), part.select(chosen)


def load_data(
    recipe: Recipe, data: str | os.PathLike | FaceSet
) -> tuple[FaceSet, FaceSet, str]:
    """``(train, val, val_name)``: the recipe's splits of `data` (a path any reader takes, or
    a `FaceSet`); ``val_name`` says what the selection split is (``val_split``, or the part
    of the training split held out by ``val_fraction`` where the data has no ``val_split``).
    A ``val_split`` without a single labelled row (Kaggle's test.csv taken as PublicTest)
    counts as absent: ``val_fraction`` then holds out part of the training split, never of a
    test split."""
    faces, data, base = faces_from(data)  # data: its name in messages from here on
    if recipe.dataset == "ferplus" and list(faces.class_names) != list(FERPLUS_CLASSES):
        # FER2013 faces get their FER+ labels; a FaceSet with FER+ labels keeps its own
        faces = load_ferplus(faces, find_ferplus_votes(recipe.ferplus_csv, base))
    missing = [s for s in recipe.train_splits if s not in faces.split_names]
    if missing:
        raise DataError(
            f"{data}: no training split {missing}; it has {faces.split_names}: set recipe key "
            f"train_splits (e.g. --set train_splits=[{faces.split_names[0]}])"
        )
    train = faces.subset(recipe.train_splits)
    if recipe.targets == "soft" and train.soft_labels is None:
        raise DataError(f"{data}: targets soft needs target distributions: dataset ferplus (the "
                        "votes), or data with soft_labels (a pack written with them, e.g. a "
                        "teacher's, for distillation)")
    wanted = [recipe.val_split] if isinstance(recipe.val_split, str) else list(recipe.val_split)
    absent = [s for s in wanted if s not in faces.split_names]
    # a split of no labels (Kaggle's test.csv) cannot select an epoch: as good as absent
    unlabelled = [s for s in wanted if s not in absent
                  and not (faces.labels[faces.splits == s] >= 0).any()]
    if not absent and not unlabelled:
        val, val_name = faces.subset(recipe.val_split), recipe.val_split
    elif recipe.val_fraction > 0:
        train, val = hold_out(train, recipe.val_fraction, recipe.seed)
        val_name = f"{recipe.val_fraction:.0%} of {'+'.join(recipe.train_splits)} (held out)"
    else:
        raise DataError(
            f"{data}: "
            + (f"no validation split {absent}; it has {faces.split_names}" if absent else
               f"the validation split {unlabelled} is unlabelled (not one row has a label, as "
               "in a Kaggle test.csv without an emotion column)")
            + ": set recipe key val_split to one of its labelled splits, or val_fraction to "
            "hold out part of the training split for selection (e.g. --set val_fraction=0.1)"
        )
    for name, part in (("training", train), ("validation", val)):
        if (part.labels < 0).any():
            raise DataError(
                f"{data}: the {name} split has {(part.labels < 0).sum()} unlabelled rows (a "
                "Kaggle test.csv has no labels): train and select on labelled splits"
            )
    return train, val, val_name


def data_fingerprint(train: FaceSet, val: FaceSet) -> str:
    """sha256 of the images, labels and classes a run trains and selects on: the same data
    read from any layout (CSV, pack, folders) gives the same fingerprint."""
    h = hashlib.sha256(json.dumps(list(train.class_names)).encode())
    for part in (train, val):
        for array in (part.images, part.labels, part.soft_labels):
            if array is not None:
                h.update(np.ascontiguousarray(array).tobytes())
    return h.hexdigest()


#: Files of a run that can be resumed, or has finished: a new run there would mix with it.
RUN_FILES = ("last.state.pt", "summary.json")
#: Recipe keys a resumed run may change silently: its length.
LENGTH_KEYS = ("epochs", "time_budget_minutes")
#: Recipe keys that the saved state depends on (the weights' shapes, the optimizer's state
#: and hyperparameters, which loading it restores, the steps per epoch, the RNG streams, the
#: data): a resume that changes one would not continue the run its files describe.
RESUME_FIXED_KEYS = (
    "model", "model_options", "optimizer", "momentum", "nesterov", "weight_decay",
    "batch_size", "seed", "ema", "dataset", "ferplus_csv", "targets", "train_splits",
    "val_split", "val_fraction",
)


def refuse_resume_with_init(resume: bool, init_from: str | None, out) -> None:
    """A resume continues the run's own saved weights: ``init_from`` with it is an error."""
    if resume and init_from:
        raise ValueError(
            f"--resume continues the run in {out} from its own saved weights; --init-from "
            f"{init_from} would not be used: leave out --init-from to resume (the run keeps "
            "the init_from it started with), or train into another --out to fine-tune"
        )


def refuse_old_run(out: Path) -> None:
    """A fresh run into a folder that holds a run is an error: its metrics.jsonl would get
    the new epochs appended to the old ones (and best/last mix two runs). A run that saved
    no state (killed in its first epoch) is not one: `Trainer.run` starts its log over."""
    found = [name for name in RUN_FILES if (out / name).exists()]
    if found == ["summary.json"]:  # finished, and its training state not kept (a packaged run)
        raise ValueError(
            f"{out} already holds a finished run (summary.json) without its training state "
            "(no last.state.pt), so it cannot be resumed: train into another --out (or an "
            "empty folder); --init-from it starts a new run from its best weights"
        )
    if found:
        raise ValueError(
            f"{out} already holds a run ({', '.join(found)}): continue it with --resume, or "
            "train into another --out (or an empty folder)"
        )


def saved_run(out: Path) -> dict:
    """The metadata of the run in `out` as last saved: last.json (written with each
    last.state.pt), else its recipe.json alone (an older or damaged run)."""
    try:
        return read_metadata(out / "last")
    except (FileNotFoundError, ValueError):
        recipe_file = out / "recipe.json"
        try:
            return {"recipe": json.loads(recipe_file.read_text())}
        except (OSError, ValueError):
            return {}


def run_recipe(out: str | os.PathLike, overrides: list[str] | str | dict | None = None) -> Recipe:
    """The recipe the run in ``out`` trains (as last saved), with ``overrides`` (as
    ``--set`` takes them, e.g. ``["epochs=400"]``) on top: what ``--resume`` without
    ``--recipe`` continues."""
    saved = resumable_run(Path(out))["recipe"]
    return Recipe.from_dict(apply_overrides(saved, as_overrides(overrides)))


def resumable_run(out: Path) -> dict:
    """`saved_run` of a run that can be resumed: one with a saved state and a recipe."""
    file = out / "last.state.pt"
    if not file.exists():
        raise FileNotFoundError(f"{file}: nothing to resume (no last.state.pt in {out})")
    saved = saved_run(out)
    if not isinstance(saved.get("recipe"), dict):
        raise ValueError(f"{out}: cannot resume: neither last.json nor recipe.json says which "
                         "recipe the saved run trained")
    return saved


def recipe_changes(saved: dict, recipe: Recipe) -> dict[str, tuple]:
    """``{key: (saved value, value now)}`` for each recipe key that differs."""
    try:  # the saved recipe with today's defaults filled in, as the one given now
        before = Recipe.from_dict(saved).to_dict()
    except (TypeError, ValueError):
        before = dict(saved)
    now = recipe.to_dict()
    return {k: (before.get(k), now.get(k)) for k in sorted(set(before) | set(now))
            if before.get(k) != now.get(k)}


def describe_changes(changes: dict[str, tuple]) -> str:
    return ", ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in changes.items())


def lr_at(recipe: Recipe, progress: float, epoch_progress: float, plateau_scale: float) -> float:
    """Learning rate at `progress` (0..1 of the run) / `epoch_progress` (epochs done)."""
    base, low = recipe.lr, recipe.min_lr
    if recipe.warmup_epochs and epoch_progress < recipe.warmup_epochs:
        return base * max(epoch_progress / recipe.warmup_epochs, 1e-3)
    if recipe.schedule == "constant":
        return base
    if recipe.schedule == "plateau":
        return max(base * plateau_scale, low)
    if recipe.schedule == "cosine":
        return low + (base - low) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
    # onecycle: cosine up from base/25 over the first 30%, then cosine down to base/1e4
    start, end, peak = base / 25, base / 1e4, 0.3
    if progress < peak:
        return start + (base - start) * 0.5 * (1 - math.cos(math.pi * progress / peak))
    p = min((progress - peak) / (1 - peak), 1.0)
    return end + (base - end) * 0.5 * (1 + math.cos(math.pi * p))


def make_optimizer(recipe: Recipe, model: nn.Module, device: torch.device) -> torch.optim.Optimizer:
    # no weight decay on biases and norm parameters
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    groups = [
        {"params": decay, "weight_decay": recipe.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    fused = {"fused": True} if device.type == "cuda" else {}
    if recipe.optimizer == "adam":
        # Adam's weight decay is L2 in the gradient, as in Keras/PyTorch Adam
        return torch.optim.Adam(groups, lr=recipe.lr, **fused)
    if recipe.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=recipe.lr, **fused)
    return torch.optim.SGD(
        groups, lr=recipe.lr, momentum=recipe.momentum, nesterov=recipe.nesterov, **fused
    )


def class_weight_tensor(recipe: Recipe, labels: np.ndarray, num_classes: int, device):
    if recipe.class_weights == "none":
        return None
    counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
    w = counts.sum() / (num_classes * np.maximum(counts, 1))
    return torch.tensor(w, dtype=torch.float32, device=device)


@torch.no_grad()
def predict_logits(
    model: nn.Module, images: torch.Tensor, batch_size: int, channels_last: bool
) -> torch.Tensor:
    """Logits (float32, on the images' device) for uint8 N x 48 x 48 images, eval mode,
    without autocast: the selection accuracy is then the one `ferkit eval` reports (bf16
    validation on an H200 said 67.23% where fp32 on a CPU says 67.15%); a few thousand
    images cost next to nothing even on a CPU."""
    was_training = model.training
    model.eval()
    out = []
    for i in range(0, len(images), batch_size):
        x = normalize(images[i : i + batch_size])
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        out.append(model(x).float())
    model.train(was_training)
    return torch.cat(out)


def cpu_copy(obj):
    """``obj`` (dicts, lists and tuples of tensors and plain values) with every tensor copied
    to the CPU: a snapshot that training on cannot change."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):  # of its own type, with its attributes (a state_dict's _metadata)
        out = copy.copy(obj)
        for k, v in obj.items():
            out[k] = cpu_copy(v)
        return out
    if isinstance(obj, list | tuple):
        return type(obj)(cpu_copy(v) for v in obj)
    return obj


class CheckpointWriter:
    """Writes an epoch's checkpoint files in a thread of their own while the next epoch
    trains (on a GPU an epoch can take a second; writing its files, a third of that).

    One epoch's files at a time, in order: `submit` waits for the last epoch's first. A
    write that failed raises here, in the training thread, at the next `submit` or `wait`
    (or, for a run stopping on an error of its own, is said on stderr), so no failure goes
    unsaid. The thread is not a daemon: a run that stops on an error still finishes the
    files it began, each written atomically."""

    def __init__(self) -> None:
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._what = ""

    def submit(self, jobs: list[Callable[[], object]], what: str = "checkpoint files") -> None:
        """Write ``jobs`` (each a call) in order, in a thread; ``what`` names them in an error."""
        self.wait()
        self._what = what

        def work() -> None:
            try:
                for job in jobs:
                    job()
            except BaseException as exc:  # raised again in the training thread
                self._error = exc

        self._thread = threading.Thread(target=work, name="ferkit-checkpoints")
        self._thread.start()

    def wait(self, quiet: bool = False) -> None:
        """Until the files handed over are written; then raise a failed write's error
        (``quiet``: not, for a run that is already stopping on an error of its own)."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        error, self._error = self._error, None
        if error is None:
            return
        if not quiet:
            raise error
        print(f"ferkit: {self._what} not written: {type(error).__name__}: {error}",
              file=sys.stderr, flush=True)


class Trainer:
    """State of one run; `fit` below is the entry point."""

    def __init__(
        self,
        recipe: Recipe | str | os.PathLike | dict,
        data: str | os.PathLike | FaceSet,
        out: str | os.PathLike,
        device: str = "auto",
        resume: bool = False,
        max_minutes: float | None = None,
        init_from: str | None = None,
        progress: bool | None = None,
    ):
        check_out_folder(out)
        refuse_resume_with_init(resume, init_from, out)
        if recipe is None:
            if not resume:
                raise ValueError("a recipe is needed to train (None only resumes the run in "
                                 "out, with its own recipe)")
            recipe = run_recipe(out)
        self.recipe = recipe = as_recipe(recipe)
        self.out = Path(out)
        self.checkpoints = CheckpointWriter()
        self.code_version = code_version()  # of the code this run started with
        if max_minutes is not None and not 0 < max_minutes < math.inf:
            raise ValueError(f"max_minutes (--max-minutes) {max_minutes}: expected minutes > 0 "
                             "(None, or leave the option out, for no limit)")
        self.dist, self.device = setup_distributed(resolve_device(device))
        self.max_minutes = max_minutes
        self.resumed = resume
        self.saved: dict = {}
        self.length_change: dict = {}
        if resume:  # the recipe first: no data is read for a resume that cannot be
            self.saved = self._check_resumable()
        else:
            refuse_old_run(self.out)
        self.progress = sys.stderr.isatty() if progress is None else progress
        r = recipe
        if r.batch_size % self.dist.world:
            raise ValueError(
                f"batch_size {r.batch_size} must divide evenly over {self.dist.world} processes"
            )
        torch.manual_seed(r.seed)
        self.gen = torch.Generator(self.device).manual_seed(r.seed)

        self._setup_data(data)
        self._setup_model(init_from)

        self.steps_per_epoch = len(self.x_train) // r.batch_size
        if self.steps_per_epoch == 0:
            raise ValueError(f"{len(self.x_train)} training images < batch_size {r.batch_size}")
        self.epoch = 0
        self.global_step = 0
        self.best = -1.0
        self.plateau_scale = 1.0
        self.plateau_bad = 0
        self.planned_epochs = r.epochs
        self.elapsed = 0.0
        self.history: list[dict] = []
        if resume:
            self._resume()
        # after resuming: the optimizer's state must be in place before a graph records it
        self.train_step = TrainStep(
            self.train_model, self.opt, self.x_train, self.y_train, self.soft_train,
            r.augment_config, self.gen, self.loss_fn, len(self.class_names), r.batch_size,
            amp=self.amp, channels_last=r.channels_last, rank=self.dist.rank,
            world=self.dist.world,
            eager_model=self.eager_model, cuda_graph=r.cuda_graph,
            log=self._note,
        )

    def _setup_data(self, data: str | os.PathLike | FaceSet) -> None:
        """The recipe's training and selection splits, on the training device as uint8
        tensors, and what identifies them in the checkpoints (``data_info``)."""
        r = self.recipe
        train, val, self.val_name = load_data(r, data)
        self.class_names = train.class_names
        # what identifies the data; not the reader's lists of files it skipped or ignored,
        # nor its remarks (paths of this machine, in every checkpoint)
        self.data_info = {k: v for k, v in train.info.items()
                          if k not in ("skipped", "ignored", "notes")}
        if isinstance(self.data_info.get("ferplus"), str):  # the votes file's name, no folder
            self.data_info["ferplus"] = Path(self.data_info["ferplus"]).name
        self.data_info["content_sha256"] = data_fingerprint(train, val)
        if self.val_name != r.val_split:  # held out by val_fraction: which part, how many
            self.data_info["held_out"] = {
                "from": list(r.train_splits), "fraction": r.val_fraction, "seed": r.seed,
                "train_images": len(train), "val_images": len(val),
            }
        self.x_train = torch.from_numpy(train.images).to(self.device)
        self.y_train = torch.from_numpy(train.labels).to(self.device)
        self.soft_train = (
            torch.from_numpy(train.soft_labels).to(self.device) if r.targets == "soft" else None
        )
        self.x_val = torch.from_numpy(val.images).to(self.device)
        self.y_val = torch.from_numpy(val.labels).to(self.device)
        self.class_weight = class_weight_tensor(r, train.labels, len(self.class_names),
                                                self.device)

    def _setup_model(self, init_from: str | None) -> None:
        """The model (fine-tuned from ``init_from`` where given), its optimizer and EMA, and
        the module the steps run: wrapped for DDP and compiled as the recipe says."""
        r = self.recipe
        self.model = create_model(r.model, num_classes=len(self.class_names), **r.model_options)
        # a resumed run keeps the source it was fine-tuned from (its saved metadata; the saved
        # state, read in `_resume`, has the last word)
        self.init_source = self.saved.get("init_from") if self.resumed else None
        if init_from:
            self.init_source = self._init_from(init_from)
        if r.sync_bn and self.dist.world > 1:
            self.model = nn.SyncBatchNorm.convert_sync_batchnorm(self.model)
        self.model.to(self.device)
        if r.channels_last:
            self.model.to(memory_format=torch.channels_last)
        self.opt = make_optimizer(r, self.model, self.device)
        self.ema = None
        if r.ema > 0:
            self.ema = torch.optim.swa_utils.AveragedModel(
                self.model, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(r.ema),
                use_buffers=True,
            )
        self.train_model: nn.Module = self.model
        if self.dist.world > 1:
            self.train_model = nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None
            )
        self.eager_model = self.train_model
        if r.compile:
            self.train_model = torch.compile(self.train_model, mode=r.compile_mode)
        self.amp = r.amp if self.device.type == "cuda" else r.amp_cpu

    def _note(self, message: str) -> None:
        if self.dist.main:
            print(f"ferkit: {message}", file=sys.stderr, flush=True)

    # ---- checkpoints ----

    def _init_from(self, path: str) -> dict:
        """Load the weights that fit; returns what the run's metadata records of the source.

        `path`: what ``predict --model`` takes (shipped weights by name, a checkpoint, a run
        folder). Where not even half of the model's tensors fit, the source is another
        architecture: an error, not a run from scratch under a fine-tuning label."""
        source, meta = load_model(path)
        own = self.model.state_dict()
        state = {k: v for k, v in source.state_dict().items() if k in own and own[k].shape == v.shape}
        if len(state) < len(own) / 2:
            r = self.recipe
            raise ValueError(
                f"--init-from {path}: only {len(state)} of the {len(own)} tensors of model "
                f"{r.model!r} (options {r.model_options}) fit the checkpoint's model "
                f"{meta['model']!r} (options {meta.get('model_options', {})}): fine-tune the "
                "checkpoint's own model (recipe keys model, model_options)"
            )
        skipped = sorted(set(own) - set(state))
        self.model.load_state_dict(state, strict=False)
        if skipped:
            theirs = source.state_dict()
            shapes = ", ".join(
                f"{k} {tuple(own[k].shape)} vs {tuple(theirs[k].shape)}" if k in theirs
                else f"{k} (not in the checkpoint)" for k in skipped
            )
            why = f"the shapes differ (model vs checkpoint): {shapes}"
            if list(meta.get("class_names", [])) != list(self.class_names):
                why += f"; class set {meta.get('class_names')} -> {list(self.class_names)}"
            self._note(f"--init-from {path}: re-initialised {skipped} ({why})")
        # the file's name, not its path (no machine's folders in shipped metadata)
        return {"checkpoint": Path(path).name, "model": meta.get("model"),
                "recipe": meta.get("recipe", {}).get("name"),
                "code_version": meta.get("code_version"), "reinitialised": skipped}

    def metadata(self, metrics: dict) -> dict:
        r = self.recipe
        return {
            "model": r.model,
            "model_options": r.model_options,
            "class_names": list(self.class_names),
            "preprocessing": {"size": 48, "gray": True, "mean": PIXEL_MEAN, "std": PIXEL_STD},
            "recipe": r.to_dict(),
            "metrics": metrics,
            "data": self.data_info,
            "code_version": self.code_version,
            "torch": torch.__version__,
            **({"init_from": self.init_source} if self.init_source else {}),
        }

    def _eval_model(self) -> nn.Module:
        return self.ema.module if self.ema is not None else self.model

    def _save_epoch(self, metrics: dict, improved: bool) -> None:
        """Hand this epoch's files to the writer thread: ``best`` (when `improved`), ``last``
        and the training state for ``--resume``, from copies taken now."""
        self.checkpoints.wait()  # the last epoch's copies go before these are taken
        weights = weights_state(self._eval_model(), copy=True)
        meta = self.metadata(metrics)
        state = cpu_copy(self._training_state())
        names = ["best", "last"] if improved else ["last"]
        jobs = [lambda name=name: write_checkpoint(weights, self.out / name, meta)
                for name in names]
        jobs.append(lambda: write_atomically(self.out / "last.state.pt",
                                             lambda tmp: torch.save(state, tmp)))
        self.checkpoints.submit(jobs, f"epoch {self.epoch}'s checkpoint files ({self.out})")

    def _training_state(self) -> dict:
        return {
            "epoch": self.epoch,
            "global_step": self.global_step,
            "best": self.best,
            "plateau_scale": self.plateau_scale,
            "plateau_bad": self.plateau_bad,
            "planned_epochs": self.planned_epochs,
            "elapsed": self.elapsed,
            "history": list(self.history),
            "init_from": self.init_source,
            "model": self.model.state_dict(),
            "optimizer": self.opt.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "gen": self.gen.get_state(),
            "cpu_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None,
        }

    def _check_resumable(self) -> dict:
        """The saved run's metadata, where the recipe given now may continue it: only its
        length (and keys that do not touch the saved state, with a note) may change."""
        saved = resumable_run(self.out)
        changes = recipe_changes(saved["recipe"], self.recipe)
        fixed = {k: v for k, v in changes.items() if k in RESUME_FIXED_KEYS}
        old_votes = saved["recipe"].get("ferplus_csv")
        if ("ferplus_csv" in fixed and old_votes and self.recipe.ferplus_csv
                and Path(old_votes).name == Path(self.recipe.ferplus_csv).name):
            del fixed["ferplus_csv"]  # the same votes file, given from another folder
        if fixed:
            raise ValueError(
                f"{self.out}: cannot resume: the saved run differs in {describe_changes(fixed)} "
                f"(saved -> now): resume with the run's own recipe (leave out --recipe, and "
                f"--set only what changes: {', '.join(LENGTH_KEYS)} or keys that leave the "
                "saved state as it is), or train into another --out"
            )
        # said once the new length is found possible (`_check_new_length`), not before
        self.length_change = {k: v for k, v in changes.items() if k in LENGTH_KEYS}
        other = {k: v for k, v in changes.items() if k not in LENGTH_KEYS}
        if other:
            self._note(f"resuming {self.out} with changed recipe keys: "
                       f"{describe_changes(other)} (the first recipe is kept in "
                       "recipe-first.json)")
        return saved

    def _check_resumed_data(self) -> None:
        """The data given now must be the data the saved run trained and selected on."""
        before = self.saved.get("data") or {}
        names = self.saved.get("class_names")
        if names is not None and list(names) != list(self.class_names):
            raise ValueError(f"{self.out}: cannot resume: the saved run's classes {names} differ "
                             f"from the data's {list(self.class_names)}")
        for key in ("content_sha256", "md5"):  # the images themselves; else the file's md5
            if key in before and key in self.data_info:
                if before[key] != self.data_info[key]:
                    raise ValueError(
                        f"{self.out}: cannot resume: the data differs from the saved run's "
                        f"({key} {before[key]} then, {self.data_info[key]} now): resume with "
                        "the same data (splits, held-out part), or train into another --out"
                    )
                return

    def _resume(self) -> None:
        self._check_resumed_data()
        file = self.out / "last.state.pt"
        try:
            s = torch.load(file, map_location=self.device, weights_only=False)
        except Exception as exc:  # truncated (a copy cut short) or not a saved state at all
            raise ValueError(
                f"{file}: unreadable training state ({type(exc).__name__}: "
                f"{str(exc).splitlines()[0] if str(exc) else 'no detail'}); the run cannot "
                "resume from it. Its best/last checkpoints are separate files: --init-from "
                "the run folder starts a new run from its best weights"
            ) from None
        self.model.load_state_dict(s["model"])
        self.opt.load_state_dict(s["optimizer"])
        if self.ema is not None and s["ema"] is not None:
            self.ema.load_state_dict(s["ema"])
        self.gen.set_state(s["gen"].cpu() if hasattr(s["gen"], "cpu") else s["gen"])
        torch.set_rng_state(s["cpu_rng"].cpu())
        if s["cuda_rng"] is not None and self.device.type == "cuda":
            torch.cuda.set_rng_state(s["cuda_rng"].cpu(), self.device)
        for key in ("epoch", "global_step", "best", "plateau_scale", "plateau_bad",
                    "planned_epochs", "elapsed", "history"):
            setattr(self, key, s[key])
        if s.get("init_from"):  # states saved before it was kept there: last.json's
            self.init_source = s["init_from"]
        self._check_new_length()
        if self.length_change:
            self._note(f"resuming {self.out} with a new length: "
                       f"{describe_changes(self.length_change)}")
        if self.dist.main:
            # epochs logged after the last saved state are trained again: drop their rows
            with open(self.out / "metrics.jsonl", "w") as f:
                f.writelines(json.dumps(row) + "\n" for row in self.history)
        # the recipe given now sets the run's length (e.g. --set epochs=N to extend a run);
        # with a time budget, re-fit the plan to the time left at the mean epoch time so far
        if self.recipe.time_budget_minutes and self.epoch:
            self._plan(self.elapsed / self.epoch, reopen=True)
        else:
            self.planned_epochs = self.recipe.epochs

    def _check_new_length(self) -> None:
        """A resume that asks for a length the run cannot take is an error, not a run that
        trains nothing: fewer epochs than it has done, or more epochs while its time budget
        (unchanged) is spent and so still fixes its length."""
        r, done = self.recipe, self.epoch
        if r.epochs < done:
            raise ValueError(
                f"{self.out}: cannot resume with epochs {r.epochs}: the run has trained {done} "
                f"epoch{'s' if done != 1 else ''} already (its checkpoints are as they are; give epochs > {done} to go on)"
            )
        saved = self.saved.get("recipe", {})
        budget = r.time_budget_minutes
        if not (budget and done and r.epochs > saved.get("epochs", r.epochs)
                and budget == saved.get("time_budget_minutes")):
            return
        epoch_seconds = self.elapsed / done
        if (budget * 60 - self.elapsed) < epoch_seconds:  # `_plan` would fit no more epochs
            raise ValueError(
                f"{self.out}: cannot resume with epochs {r.epochs}: the run's "
                f"{budget:g}-minute time budget is spent ({done} epochs in "
                f"{self.elapsed / 60:.1f} min) and keeps its length at {done}; give a new "
                f"budget too, e.g. --set epochs={r.epochs} time_budget_minutes=null (none)"
            )

    # ---- one epoch ----

    def loss_fn(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(
            logits.float(), targets, weight=self.class_weight,
            label_smoothing=self.recipe.label_smoothing,
        )

    def train_epoch(self) -> dict:
        r, d = self.recipe, self.dist
        self.train_model.train()
        perm = torch.randperm(len(self.x_train), generator=self.gen, device=self.device)
        self.train_step.reset_totals()
        steps = range(self.steps_per_epoch)
        if self.progress and d.main:
            from tqdm import tqdm

            steps = tqdm(steps, desc=f"epoch {self.epoch + 1}/{self.planned_epochs}",
                         leave=False, dynamic_ncols=True)
        t0 = last_note = time.perf_counter()
        for step in steps:
            progress = self.global_step / (self.planned_epochs * self.steps_per_epoch)
            lr = lr_at(r, progress, self.global_step / self.steps_per_epoch, self.plateau_scale)
            self.train_step(perm[step * r.batch_size : (step + 1) * r.batch_size], lr)
            if self.ema is not None:
                self.ema.update_parameters(self.model)
            self.global_step += 1
            if not self.progress and d.main and time.perf_counter() - last_note > PROGRESS_SECONDS:
                # no progress bar in a log file: a line every minute instead
                last_note = time.perf_counter()
                rate = (step + 1) * r.batch_size / (last_note - t0)
                eta = (self.steps_per_epoch - step - 1) * r.batch_size / rate
                print(f"epoch {self.epoch + 1}: step {step + 1}/{self.steps_per_epoch}, "
                      f"{rate:.0f} img/s, epoch ETA {eta / 60:.1f} min", file=sys.stderr, flush=True)
        n_local = self.steps_per_epoch * (r.batch_size // d.world)
        totals = self.train_step
        stats = torch.stack([totals.loss_sum / self.steps_per_epoch, totals.correct / n_local])
        if d.world > 1:
            dist.all_reduce(stats)
            stats /= d.world
        seconds = time.perf_counter() - t0
        return {
            "train_loss": float(stats[0]),
            "train_acc": float(stats[1]),
            "lr": lr,
            "epoch_seconds": seconds,
            "images_per_s": self.steps_per_epoch * r.batch_size / seconds,
        }

    def validate(self) -> dict:
        logits = predict_logits(
            self._eval_model(), self.x_val, self.recipe.eval_batch_size, self.recipe.channels_last
        )
        loss = F.cross_entropy(logits, self.y_val).item()
        acc = (logits.argmax(1) == self.y_val).float().mean().item()
        return {"val_loss": loss, "val_acc": acc}

    # ---- the run ----

    def _log(self, row: dict, writer) -> None:
        self.history.append(row)
        with open(self.out / "metrics.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")
        if writer is not None:
            for k, v in row.items():
                if k != "epoch" and isinstance(v, float | int):
                    writer.add_scalar(k, v, row["epoch"])
        line = (f"epoch {row['epoch']}/{self.planned_epochs} loss {row['train_loss']:.4f} "
                f"acc {row['train_acc']:.4f} val_loss {row['val_loss']:.4f} "
                f"val_acc {row['val_acc']:.4f} lr {row['lr']:.2e} "
                f"{row['images_per_s']:.0f} img/s {row['epoch_seconds']:.1f}s")
        print(line, file=sys.stderr, flush=True)

    def _write_recipe(self) -> None:
        """recipe.json: the recipe of the run as it now goes on; a resume with other keys
        keeps the run's first recipe beside it (recipe-first.json), once."""
        file, first = self.out / "recipe.json", self.out / "recipe-first.json"
        text = json.dumps(self.recipe.to_dict(), indent=2)
        if self.resumed and file.exists() and not first.exists():
            try:
                before = json.loads(file.read_text())
            except (OSError, ValueError):
                before = None
            if before is not None and recipe_changes(before, self.recipe):
                file.replace(first)
        write_atomically(file, lambda tmp: tmp.write_text(text))

    def _start_line(self) -> str:
        """One line that says what is about to run (a log file otherwise stays silent until
        the first epoch ends, minutes on a CPU)."""
        r = self.recipe
        params = sum(p.numel() for p in self.model.parameters())
        device = f"{self.device}" + (f" x {self.dist.world} processes" if self.dist.world > 1
                                     else "")
        line = (f"training {r.model} ({params:,} parameters) on {device}: "
                f"{len(self.x_train):,} training images ({'+'.join(r.train_splits)}), "
                f"{len(self.x_val):,} validation ({self.val_name}), {self.steps_per_epoch:,} "
                f"step{'s' if self.steps_per_epoch != 1 else ''} of {r.batch_size} per epoch, "
                f"{self.planned_epochs} epoch{'s' if self.planned_epochs != 1 else ''} planned")
        if r.time_budget_minutes:
            line += f" (fewer if the {r.time_budget_minutes:g}-minute budget is shorter)"
        if self.epoch:
            line += f"; resuming after epoch {self.epoch}"
        if self.max_minutes:
            line += (f"; stops after an epoch where another would end past {self.max_minutes:g} "
                     "minutes (at least one epoch)")
        return line

    def _from_rank0(self, value: float) -> float:
        if self.dist.world == 1:
            return value
        t = torch.tensor([value], dtype=torch.float64, device=self.device)
        dist.broadcast(t, src=0)
        return float(t.item())

    def _plan(self, epoch_seconds: float, reopen: bool = False) -> None:
        """Fit the schedule's length to the time budget (recipe.time_budget_minutes).

        A run that has reached its planned length keeps it: its schedule has ended (a
        cosine at its floor), and a faster last epoch must not reopen it for one more at a
        raised rate. ``reopen``: a resume, which may give the run a new length."""
        budget = self.recipe.time_budget_minutes
        if not budget or (self.epoch >= self.planned_epochs and not reopen):
            return
        left = budget * 60 - self.elapsed
        fits = self.epoch + max(int(left // max(epoch_seconds, 1e-6)), 0)
        self.planned_epochs = max(min(self.recipe.epochs, fits), self.epoch, 1)

    def run(self) -> dict:
        r, d = self.recipe, self.dist
        if d.main:
            self.out.mkdir(parents=True, exist_ok=True)
            self._write_recipe()
            log = self.out / "metrics.jsonl"
            if not self.resumed and log.exists():  # of a run that never saved its state
                self._note(f"{log}: the log of an earlier run that saved no state; starting "
                           "it over")
                log.unlink()
            self._note(self._start_line())
        writer = None
        if d.main:
            try:
                from torch.utils.tensorboard import SummaryWriter

                writer = SummaryWriter(str(self.out / "tb"))
            except ImportError:
                pass
        stop_reason = "epochs"
        invocation_start = time.perf_counter()
        start_wall = time.perf_counter() - self.elapsed
        try:
            while self.epoch < self.planned_epochs:
                t0 = time.perf_counter()
                row = {"epoch": self.epoch + 1, **self.train_epoch(), **self.validate()}
                self.epoch += 1
                self.elapsed = time.perf_counter() - start_wall
                row["elapsed_s"] = self.elapsed
                # every process must take the same decisions below: rank 0's clock decides
                epoch_total = self._from_rank0(time.perf_counter() - t0)
                this_run = self._from_rank0(time.perf_counter() - invocation_start)
                if r.schedule == "plateau":
                    if row["val_acc"] > self.best + 1e-4:
                        self.plateau_bad = 0
                    else:
                        self.plateau_bad += 1
                        if self.plateau_bad > r.plateau_patience:
                            self.plateau_scale *= r.plateau_factor
                            self.plateau_bad = 0
                improved = row["val_acc"] > self.best
                self.best = max(self.best, row["val_acc"])
                if self.epoch > 1:
                    self._plan(epoch_total)
                if d.main:
                    self._log(row, writer)
                    metrics = {**row, "best_val_acc": self.best, "val_split": self.val_name}
                    self._save_epoch(metrics, improved)
                if self.max_minutes and self.epoch < self.planned_epochs:
                    # --max-minutes boxes this invocation (a resumed run gets a fresh box)
                    if this_run + epoch_total > self.max_minutes * 60:
                        stop_reason = "max_minutes"
                        break
        except BaseException:
            self.checkpoints.wait(quiet=True)  # the files it began, before the error goes up
            raise
        self.checkpoints.wait()
        if writer is not None:
            writer.close()
        summary = {
            "recipe": r.name,
            "model": r.model,
            "epochs_done": self.epoch,
            "epochs_planned": self.planned_epochs,
            "best_val_acc": self.best,
            "best_epoch": int(np.argmax([h["val_acc"] for h in self.history])) + 1 if self.history else 0,
            "val_split": self.val_name,
            "wall_seconds": self.elapsed,
            "stop_reason": stop_reason,
            "device": str(self.device),
            "world_size": d.world,
            "out": str(self.out),
        }
        if d.main:
            (self.out / "summary.json").write_text(json.dumps(summary, indent=2))
        return summary


def as_recipe(recipe: Recipe | str | os.PathLike | dict) -> Recipe:
    """A `Recipe` from itself, a shipped recipe's name or a YAML file (`Recipe.from_yaml`),
    or a mapping of recipe keys (`Recipe.from_dict`)."""
    if isinstance(recipe, Recipe):
        return recipe
    if isinstance(recipe, dict):
        return Recipe.from_dict(recipe)
    if isinstance(recipe, (str, os.PathLike)):
        return Recipe.from_yaml(recipe)
    raise TypeError(f"recipe must be a Recipe, a recipe name or file, or a dict of recipe "
                    f"keys, not {type(recipe).__name__}")


def fit(
    recipe: Recipe | str | os.PathLike | dict | None,
    data: str | os.PathLike | FaceSet,
    out: str | os.PathLike,
    device: str = "auto",
    resume: bool = False,
    max_minutes: float | None = None,
    init_from: str | None = None,
    progress: bool | None = None,
) -> dict:
    """Train `recipe` on `data`, writing checkpoints and logs under `out`; returns the run's
    summary (also in ``out/summary.json``; per-epoch metrics are in ``out/metrics.jsonl``).

    ``recipe``: a `Recipe`, a shipped recipe's name (``"paper"``), a YAML file, or a dict of
    recipe keys; None with ``resume=True``: the run's own recipe (`run_recipe`; pass
    ``run_recipe(out, ["epochs=400"])`` to lengthen it). ``data``: a dataset path (any layout `ferkit.data.load` reads) or a
    `FaceSet` (e.g. built from numpy arrays). The rest as the ``ferkit train`` options of the
    same names (``init_from``: weights to fine-tune from, as ``--init-from``; not with
    ``resume=True``, which continues the saved weights and keeps the run's own ``init_from``).
    ``out`` must be a folder (or not there yet): an empty one, or a file, is a ValueError.
    """
    trainer = Trainer(recipe, data, out, device, resume, max_minutes, init_from, progress)
    try:
        result = trainer.run()
    except BaseException:
        if dist.is_initialized():
            dist.destroy_process_group()
        raise
    if dist.is_initialized():
        # every rank done with the group (rank 0 with its files too) before any tears it
        # down, and the DDP wrapper (its reducer holds gloo work and tensors) freed while
        # the interpreter is alive: either left to exit could abort a rank (SIGABRT)
        dist.barrier()
        del trainer
        gc.collect()
        dist.destroy_process_group()
    return result
