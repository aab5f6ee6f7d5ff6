"""`evaluate(checkpoint, data, split, tta)`: metrics JSON, plots and a Markdown report."""

from __future__ import annotations

import hashlib
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from .argtypes import BACKENDS, TTA_MODES
from .augment import normalize, tta_views
from .data import DataError, FaceSet, load_ferplus
from .data.check import warn_if_resplit
from .data.readers import data_label, faces_from
from .fileio import check_out_folder
from .metrics import (
    classification_report,
    plot_confusion_matrix,
    plot_reliability,
    plot_training_curves,
    write_markdown_report,
)
from .train import find_ferplus_votes, resolve_device
from .weights import available_weights, load_model


@torch.no_grad()
def predict_probs(
    model: torch.nn.Module | Callable[[torch.Tensor], np.ndarray | torch.Tensor],
    images: np.ndarray | torch.Tensor,
    tta: str = "none",
    batch_size: int | None = None,
    device: str | torch.device = "cpu",
    progress: bool = False,
) -> np.ndarray:
    """Class probabilities (N x C) for uint8 N x 48 x 48 faces, averaged over TTA views.

    ``images``: a numpy array (shared with torch, not copied; a read-only one is copied a
    batch at a time) or a tensor.

    ``model``: a torch module (moved to ``device`` and channels_last, in eval mode), or any
    callable from a normalised float N x 1 x 48 x 48 tensor to N x C logits, such as
    `ferkit.export.OnnxClassifier`; both share the normalisation, TTA and softmax here.
    ``batch_size``: faces per forward pass (times the TTA views); by default 32 on a CPU
    (bigger batches run slower there: `mba_cnn` at 640 inputs 73 views/s, at 2,560 47,
    on 2 cores) and 512 on a GPU.
    """
    if tta not in TTA_MODES:
        raise ValueError(f"unknown TTA mode {tta!r}; use one of {TTA_MODES}")
    device = torch.device(device)
    if batch_size is None:
        batch_size = 512 if device.type == "cuda" else 32
    is_module = isinstance(model, torch.nn.Module)
    if is_module:
        model = channels_last_on(model, device).eval()
    data = images if isinstance(images, torch.Tensor) else np.asarray(images)
    # torch warns on read-only numpy memory (a PIL image's, np.frombuffer's), which it would
    # share: such data is copied a batch at a time as it goes in; writable data is not copied
    copy = isinstance(data, np.ndarray) and not data.flags.writeable
    batches = range(0, len(data), batch_size)
    if progress:
        from tqdm import tqdm

        batches = tqdm(batches, desc=f"predict (tta {tta})", unit="batch", file=sys.stderr)
    out = []
    for i in batches:
        batch = data[i : i + batch_size]
        x = normalize(torch.as_tensor(batch.copy() if copy else batch).to(device))
        views = tta_views(x, tta)
        v, n = views.shape[:2]
        flat = views.reshape(v * n, *views.shape[2:])
        if is_module:
            flat = flat.contiguous(memory_format=torch.channels_last)
        logits = torch.as_tensor(model(flat), device=device).float()
        probs = torch.softmax(logits, dim=1).reshape(v, n, -1).mean(0)
        out.append(probs.cpu())
    return torch.cat(out).numpy()


def channels_last_on(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """`model` on `device` with channels_last weights (about 1.6x faster inference on a CPU
    than the default layout: `mba_cnn` 82 vs 51 images/s at batch 256); a no-op when it is
    already there."""
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    weights = [p for p in model.parameters() if p.dim() == 4]
    if any(p.device != device or not p.is_contiguous(memory_format=torch.channels_last)
           for p in weights):
        model.to(device, memory_format=torch.channels_last)
    return model


def load_eval_data(
    meta: dict, data: str | os.PathLike | FaceSet, ferplus: str | None = None
) -> FaceSet:
    """The dataset the checkpoint's class set needs (FER2013, or FER+ joined by row index);
    ``data``: a path any reader takes, or a `FaceSet` (used as it is where its classes are
    the checkpoint's already)."""
    faces, data, base = faces_from(data)  # data: its name in messages from here on
    if (meta.get("recipe", {}).get("dataset") == "ferplus"
            and list(faces.class_names) != list(meta["class_names"])):
        name = ferplus or meta["recipe"].get("ferplus_csv") or "fer2013new.csv"
        faces = load_ferplus(faces, find_ferplus_votes(name, base))
    elif ferplus:  # given, and not used: said, not dropped silently
        why = ("the data has the checkpoint's classes already"
               if meta.get("recipe", {}).get("dataset") == "ferplus"
               else f"the checkpoint is not a FER+ model (classes {list(meta['class_names'])})")
        print(f"ferkit: --ferplus {ferplus} not used: {why}", file=sys.stderr, flush=True)
    if list(faces.class_names) != list(meta["class_names"]):
        raise DataError(
            f"{data}: classes {list(faces.class_names)} differ from the checkpoint's "
            f"{meta['class_names']}"
        )
    return faces


def evaluate(
    checkpoint: str | os.PathLike | tuple[torch.nn.Module, dict],
    data: str | os.PathLike | FaceSet,
    split: str = "PrivateTest",
    tta: str = "none",
    device: str = "auto",
    out: str | os.PathLike | None = None,
    ferplus: str | None = None,
    progress: bool | None = None,
    backend: str = "torch",
) -> dict:
    """Metrics of `checkpoint` on `split` of `data`; with `out`, also JSON, PNGs, report.md.

    ``backend="onnx"`` runs the checkpoint exported to ONNX in onnxruntime on the CPU
    (needs ``ferkit[export]``): on 2 CPU cores 2.5x (single crop) to 3.5x (ten-crop) the
    speed of torch, with the same accuracy on the shipped model. The report says which
    backend scored it.

    ``checkpoint``: shipped weights by name, a checkpoint, a run folder, or ``(model,
    metadata)`` as `ferkit.load_model` returns them (the model is moved to ``device`` in
    channels_last layout; its train/eval mode is kept). ``data``: a dataset path, or a
    `FaceSet` (e.g. made from numpy arrays).
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; use one of {BACKENDS}")
    if tta not in TTA_MODES:  # before any loading
        raise ValueError(f"unknown TTA mode {tta!r}; use one of {TTA_MODES}")
    if out is not None:
        out = check_out_folder(out)
    dev = torch.device("cpu") if backend == "onnx" else resolve_device(device)
    if isinstance(checkpoint, tuple):
        model, meta = checkpoint
        if not isinstance(model, torch.nn.Module) or not {"class_names", "model"} <= set(meta):
            raise TypeError("checkpoint must be a weights name, a path, or (nn.Module, "
                            "metadata with class_names and model)")
        checkpoint = meta.get("name") or meta.get("model") or "<model>"
        run = None
    else:  # a shipped name, a checkpoint, a run folder
        model, meta = load_model(checkpoint, dev)
        run = run_folder(checkpoint)
    weights_sha = weights_sha256(model)
    if out is not None:  # before scoring: a folder holds the reports of one checkpoint
        refuse_other_checkpoint(out, weights_sha, str(checkpoint))
    if backend == "onnx":  # the checkpoint just loaded, exported (once, into the cache)
        from .export import onnx_backend

        model, _ = onnx_backend((model, meta))
    faces = load_eval_data(meta, data, ferplus)
    subset = faces.subset(split)  # a split the data lacks: the error, before any warning
    warn_if_resplit(faces, split)
    if (subset.labels < 0).any():
        raise DataError(f"{data_label(data)}: split {split} has unlabelled rows; it cannot be "
                        "scored")
    show = sys.stderr.isatty() if progress is None else progress
    if not show:  # no progress bar (a log file): one line, so a long TTA is not silent
        print(f"ferkit: scoring {checkpoint} on {len(subset):,} images of {split} (TTA {tta}, "
              f"{backend} on {dev})", file=sys.stderr, flush=True)
    was_training = isinstance(model, torch.nn.Module) and model.training
    probs = predict_probs(model, subset.images, tta, device=dev, progress=show)
    if was_training:  # a model given by the caller, e.g. during training: as it was
        model.train()
    report = classification_report(probs, subset.labels, list(meta["class_names"]))
    report.update(
        split=split,
        tta=tta,
        backend=backend,
        checkpoint=str(checkpoint),
        model=meta["model"],
        data=data_label(data),
        data_md5=faces.info.get("md5"),
        weights_sha256=weights_sha,
        **epochs_of(meta, run),
        val_acc=meta.get("metrics", {}).get("val_acc"),
    )
    if out is not None:
        write_outputs(report, Path(out), run)
    return report


def weights_sha256(model: torch.nn.Module) -> str:
    """A sha256 of the model's tensors (names, dtypes, shapes, values): what identifies a
    checkpoint, however its path is spelled."""
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def epochs_of(meta: dict, run: Path | None) -> dict:
    """``best_epoch`` (the epoch the weights are from, where their metrics say they are the
    run's best: ``best`` checkpoints, shipped weights) and ``epochs_done`` (the epochs the run
    trained, from its folder's summary.json); each only where known."""
    metrics = meta.get("metrics") or {}
    file = run / "summary.json" if run is not None else None
    try:
        summary = json.loads(file.read_text()) if file is not None and file.is_file() else {}
    except (OSError, ValueError):
        summary = {}
    summary = summary if isinstance(summary, dict) else {}
    found = {}
    epoch = metrics.get("epoch")
    if isinstance(summary.get("best_epoch"), int):  # the run's first epoch at its best
        best = epoch == summary["best_epoch"]
    else:  # shipped weights, a checkpoint without its run: as its own metrics say
        best = metrics.get("val_acc") is not None and metrics.get("val_acc") == metrics.get(
            "best_val_acc")
    if epoch is not None and best:
        found["best_epoch"] = epoch
    if isinstance(summary.get("epochs_done"), int):
        found["epochs_done"] = summary["epochs_done"]
    return found


def refuse_other_checkpoint(out: Path, sha: str, checkpoint: str) -> None:
    """An ``--out`` folder holds the reports of one checkpoint (report.md, the training
    curves): one that holds another's is an error naming the folder and that checkpoint."""
    if not out.is_dir():
        return
    for file in sorted(out.glob("*.json")):
        try:
            report = json.loads(file.read_text())
        except (OSError, ValueError):
            continue
        if not isinstance(report, dict) or report.get("tta") not in TTA_MODES:
            continue
        theirs = report.get("weights_sha256")
        if theirs == sha or (theirs is None and report.get("checkpoint") == checkpoint):
            continue
        raise ValueError(
            f"--out {out} holds the reports of another checkpoint ({report.get('checkpoint')}, "
            f"in {file.name}), not of {checkpoint}: a folder holds the reports of one "
            "checkpoint; use another --out (or remove that folder)"
        )


def run_folder(checkpoint: str | os.PathLike) -> Path | None:
    """The training run a checkpoint belongs to (its metrics.jsonl there), or None for
    shipped weights given by name."""
    if str(checkpoint) in available_weights():  # load_model's order: a name wins
        return None
    path = Path(checkpoint)
    return path if path.is_dir() else path.parent


def write_outputs(report: dict, out: Path, run: Path | None) -> None:
    """``SPLIT-TTA.json`` / ``.md`` and plots per TTA mode (scoring several modes into one
    folder keeps them all; a later report of the same split and mode replaces the earlier
    one, whichever backend scored it), and ``report.md``: every mode's report in the folder.
    `evaluate` has checked the folder before scoring (`refuse_other_checkpoint`)."""
    out.mkdir(parents=True, exist_ok=True)
    stem = f"{report['split']}-{report['tta']}"
    (out / f"{stem}.json").write_text(json.dumps(report, indent=2))
    images = {}
    try:
        plot_confusion_matrix(report, out / f"{stem}-confusion.png",
                              title=f"{report['model']} on {report['split']} (TTA {report['tta']})")
        plot_reliability(report, out / f"{stem}-reliability.png")
        images = {"Confusion matrix": f"{stem}-confusion.png",
                  "Reliability diagram": f"{stem}-reliability.png"}
        log = run / "metrics.jsonl" if run is not None else None
        if log is not None and log.exists():
            rows = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
            plot_training_curves(rows, out / "training-curves.png")
            images["Training curves"] = "training-curves.png"
    except ImportError as exc:
        print(f"ferkit: plots skipped ({exc})", file=sys.stderr)
    write_markdown_report(
        report, out / f"{stem}.md", title=f"{report['model']}: {report['split']}, TTA {report['tta']}",
        extra={k: report[k] for k in ("split", "tta", "backend", "checkpoint", "data",
                                      "best_epoch", "epochs_done") if k in report},
        images=images,
    )
    write_report_index(out)


def write_report_index(out: Path) -> Path:
    """``report.md``: the reports of every split and TTA mode scored into `out`, in TTA
    order (none, flip, ten-crop), one after the other."""
    parts = []
    for file in sorted(out.glob("*.json")):
        try:
            report = json.loads(file.read_text())
        except (OSError, ValueError):
            continue
        md = file.with_name(file.stem + ".md")
        if isinstance(report, dict) and report.get("tta") in TTA_MODES and md.exists():
            parts.append(((report.get("split", ""), TTA_MODES.index(report["tta"])), md))
    text = "\n".join(md.read_text(encoding="utf-8") for _, md in sorted(parts))
    index = out / "report.md"
    index.write_text(text, encoding="utf-8")
    return index
