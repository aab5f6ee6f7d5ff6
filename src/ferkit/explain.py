"""Why the model said so: CBAM attention maps and Grad-CAM for each face (``ferkit explain``).

`explain` detects the faces of an image as `Recognizer.predict` does and, for each face,
returns the spatial attention maps of the model's CBAM modules (read with forward hooks on
their ``spatial`` part) and a Grad-CAM heat map of the predicted class, computed on the
output of the model's ``features()`` method (R. R. Selvaraju et al., "Grad-CAM", ICCV
2017). `render_explanations` draws them into one PNG.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .faces import FACE_SIZE, faces_to_tensor
from .fileio import no_folders_left_on_failure, output_file
from .models.info import check_class_names, class_scores, eval_mode, model_device
from .models.layers import SpatialAttention
from .predict_cli import recognizer_from_args
from .recognize import (
    Face,
    LoadedImage,
    Recognizer,
    as_face_crops,
    lift_contrast,
    load_image,
)

_CHUNK = 32


@dataclass
class FaceExplanation:
    """One face and what its prediction rests on.

    ``crop``: the uint8 gray face the model saw (48 x 48). ``attention_maps``: for each CBAM
    (named by its module path, e.g. ``module1``), its spatial attention map at its own
    resolution (H x W, values in [0, 1]: the weights CBAM multiplied the features by).
    ``gradcam``: Grad-CAM of class ``gradcam_class`` at the crop's size, normalised to
    [0, 1]; None when the model has no ``features()``. ``gradcam_note``: set when that map
    is all zero because nothing in the face raises the class's score (often so for a
    ``target`` the model did not predict): "no positive evidence for sad"; else None.
    """

    face: Face
    crop: np.ndarray
    attention_maps: dict[str, np.ndarray]
    gradcam: np.ndarray | None
    gradcam_class: str | None = None
    gradcam_note: str | None = None


def _spatial_modules(model: nn.Module) -> list[tuple[str, SpatialAttention]]:
    out = []
    for name, module in model.named_modules():
        if isinstance(module, SpatialAttention):
            short = name
            for suffix in (".spatial", ".cbam"):
                short = short.removesuffix(suffix)
            out.append((short or name or "spatial", module))
    return out


def _unwrap(model):
    """The network inside an EMA (`torch.optim.swa_utils.AveragedModel`, as ferkit's
    trainer keeps) or (Distributed)DataParallel wrapper; any other model as it is."""
    from torch.optim.swa_utils import AveragedModel

    wrappers = (AveragedModel, nn.DataParallel, nn.parallel.DistributedDataParallel)
    while isinstance(model, wrappers):
        model = model.module
    return model


def _has_features(model: nn.Module) -> bool:
    return callable(getattr(model, "features", None))


def check_explainable(model: nn.Module) -> None:
    """Raise ValueError naming what is missing when ``model`` has nothing to explain with."""
    if not _spatial_modules(model) and not _has_features(model):
        raise ValueError(
            f"{type(model).__name__} has no CBAM spatial attention (for attention maps) and "
            "no features() method (for Grad-CAM): nothing to explain it with"
        )


class _FeatureCapture:
    """Records the output of ``model.features`` while the model's forward runs."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.output: torch.Tensor | None = None
        self._handle = None
        self._patched = False

    def _record(self, value):
        self.output = value
        return value

    def __enter__(self) -> _FeatureCapture:
        features = self.model.features
        if isinstance(features, nn.Module):
            self._handle = features.register_forward_hook(lambda m, i, o: self._record(o))
        else:

            def wrapped(*args, **kwargs):
                return self._record(features(*args, **kwargs))

            object.__setattr__(self.model, "features", wrapped)
            self._patched = True
        return self

    def __exit__(self, *exc) -> None:
        if self._handle is not None:
            self._handle.remove()
        if self._patched:
            del self.model.__dict__["features"]


def _normalise(maps: torch.Tensor) -> torch.Tensor:
    """Each N x H x W map scaled to [0, 1] (min-max); constant maps become zeros."""
    flat = maps.flatten(1)
    lo = flat.min(dim=1).values[:, None, None]
    hi = flat.max(dim=1).values[:, None, None]
    span = hi - lo
    return torch.where(span > 0, (maps - lo) / span.clamp_min(1e-12), torch.zeros_like(maps))


def _target_index(target: str | int | None, class_names: Sequence[str]) -> int | None:
    """The class index of ``target`` (a class name, or an index as int or digits)."""
    if target is None:
        return None
    if isinstance(target, str):
        if target in class_names:
            return list(class_names).index(target)
        if not target.isdigit():
            raise ValueError(f"unknown class {target!r}; classes: {', '.join(class_names)}")
        target = int(target)
    if not 0 <= target < len(class_names):
        raise ValueError(f"class index {target} out of range 0..{len(class_names) - 1}")
    return int(target)


def _explain_batch(
    model: nn.Module, x: torch.Tensor, targets: torch.Tensor | None
) -> tuple[
    torch.Tensor, dict[str, torch.Tensor], torch.Tensor | None, torch.Tensor, torch.Tensor | None
]:
    """(logits, attention maps N x H x W by name, Grad-CAM N x S x S or None, targets,
    which Grad-CAMs are empty (N booleans) or None).

    ``targets``: the class of each input Grad-CAM explains (default: the top logit's). A
    Grad-CAM is empty (all zero) when no location has positive evidence for its class.
    """
    maps: dict[str, torch.Tensor] = {}
    handles = []
    for name, module in _spatial_modules(model):

        def hook(m, inputs, output, name=name):
            with torch.no_grad():
                maps[name] = m.attention(inputs[0]).detach()[:, 0].float().cpu()

        handles.append(module.register_forward_hook(hook))
    try:
        if not _has_features(model):
            with torch.no_grad():
                logits = model(x).float()
            if targets is None:
                targets = logits.argmax(1)
            return logits.cpu(), maps, None, targets.cpu(), None
        # gradients wherever explain is called from (torch.no_grad(), inference mode)
        with torch.enable_grad():
            with _FeatureCapture(model) as cap:
                # a graph even when the weights are frozen
                logits = model(x.detach().clone().requires_grad_(True))
            feats = cap.output
            if (not isinstance(feats, torch.Tensor) or feats.dim() != 4
                    or not feats.requires_grad):
                raise ValueError(
                    f"{type(model).__name__}.forward() did not call features(), or features() "
                    "did not return an N x C x H x W tensor on the path to the logits; "
                    "Grad-CAM needs that feature map"
                )
            if targets is None:
                targets = logits.detach().argmax(1)
            targets = targets.to(logits.device)
            chosen = logits.gather(1, targets[:, None]).sum()
            (grads,) = torch.autograd.grad(chosen, feats)
        weights = grads.mean(dim=(2, 3), keepdim=True)
        raw = (weights * feats).sum(dim=1, keepdim=True).detach().float()
        cam = F.relu(raw)
        # no positive evidence anywhere (up to rounding): an empty map, not stretched noise
        empty = cam.flatten(1).amax(1) <= 1e-6 * raw.abs().flatten(1).amax(1)
        cam = F.interpolate(cam, size=x.shape[-2:], mode="bilinear", align_corners=False)
        cam = torch.where(empty[:, None, None], 0.0, _normalise(cam[:, 0]))
        return (
            logits.detach().float().cpu(),
            maps,
            cam.cpu(),
            targets.cpu(),
            empty.cpu(),
        )
    finally:
        for h in handles:
            h.remove()


def _explanations(
    model: nn.Module,
    crops: np.ndarray,
    class_names: Sequence[str],
    target: int | None,
    faces,
    device: torch.device,
    probs_override: np.ndarray | None = None,
) -> list[FaceExplanation]:
    """Explain N uint8 crops; ``faces(k, probs)`` builds face k's `Face`. The model runs
    in eval mode and is left in the mode it was in."""
    # outside inference mode: its tensors cannot enter the graph Grad-CAM differentiates
    with torch.inference_mode(False), eval_mode(model):
        return _explain_all(model, crops, class_names, target, faces, device, probs_override)


def _explain_all(model, crops, class_names, target, faces, device, probs_override):
    out: list[FaceExplanation] = []
    for start in range(0, len(crops), _CHUNK):
        chunk = crops[start : start + _CHUNK]
        x = faces_to_tensor(chunk, chunk.shape[-1]).to(device)
        if probs_override is not None and target is None:
            targets = torch.from_numpy(probs_override[start : start + _CHUNK].argmax(1)).long()
        elif target is not None:
            targets = torch.full((len(chunk),), target, dtype=torch.long)
        else:
            targets = None
        logits, maps, cams, targets, empty = _explain_batch(model, x, targets)
        probs = torch.softmax(logits, dim=1).numpy()
        if probs_override is not None:
            probs = probs_override[start : start + _CHUNK]
        for k, crop in enumerate(chunk):
            cam_class = None if cams is None else class_names[int(targets[k])]
            out.append(
                FaceExplanation(
                    face=faces(start + k, probs[k]),
                    crop=crop,
                    attention_maps={n: m[k].numpy() for n, m in maps.items()},
                    gradcam=None if cams is None else cams[k].numpy(),
                    gradcam_class=cam_class,
                    gradcam_note=(
                        f"no positive evidence for {cam_class}"
                        if empty is not None and bool(empty[k])
                        else None
                    ),
                )
            )
    return out


def explain_crops(
    model: nn.Module,
    crops: np.ndarray | Sequence[np.ndarray],
    class_names: Sequence[str] | None = None,
    target: str | int | None = None,
    auto_contrast: bool = True,
) -> list[FaceExplanation]:
    """`FaceExplanation` of face crops (no detection; each box, [0, 0, 48, 48], covers
    the crop as the model saw it).

    ``crops``: what `Recognizer.classify` takes (gray or colour, uint8, 16-bit or float in
    0..1, any size; one crop or a batch or list of them), made 48 x 48 gray as it makes
    them. ``class_names``: default "0", "1", ... ``target``: the class (name or index)
    Grad-CAM explains; default each face's predicted class. ``auto_contrast``: crops of
    very low contrast are lifted first, as `Recognizer` does
    (`ferkit.recognize.lift_contrast`); False explains them as they are. The model runs in
    eval mode on its own device and is left in the mode it was in; an EMA
    (``AveragedModel``) or DataParallel wrapper is explained through the network inside.
    """
    model = _unwrap(model)
    check_explainable(model)
    crops = as_face_crops(crops, FACE_SIZE)
    if not len(crops):
        return []
    if auto_contrast:
        crops = lift_contrast(crops)
    if class_names:
        check_class_names(model, class_names, crops.shape[-1], given="class_names has")
    names = list(class_names or [str(i) for i in range(class_scores(model, crops.shape[-1]))])
    target_idx = _target_index(target, names)

    def face(k: int, probs: np.ndarray) -> Face:
        best = int(np.argmax(probs))
        return Face(
            box=[0, 0, int(crops.shape[2]), int(crops.shape[1])],
            landmarks=None,
            scores={c: float(p) for c, p in zip(names, probs, strict=True)},
            label=names[best],
            confidence=float(probs[best]),
        )

    return _explanations(model, crops, names, target_idx, face, model_device(model))


def _as_recognizer(obj, detector) -> Recognizer:
    if isinstance(obj, Recognizer):
        return obj
    if isinstance(obj, tuple) and len(obj) == 2 and isinstance(obj[0], nn.Module):
        model, meta = _unwrap(obj[0]), obj[1]
    elif isinstance(obj, nn.Module):
        model, meta = _unwrap(obj), {}
    else:
        raise TypeError(
            "explain() takes a Recognizer, an nn.Module or (nn.Module, metadata), not "
            f"{type(obj).__name__}"
        )
    check_explainable(model)
    meta = dict(meta)
    if "class_names" not in meta:
        meta["class_names"] = [str(i) for i in range(class_scores(model))]
    return Recognizer(model=(model, meta), detector=detector, device=str(model_device(model)))


def explain(
    recognizer_or_model,
    image,
    *,
    color: str = "rgb",
    target: str | int | None = None,
    detector: str = "blazeface",
) -> list[FaceExplanation]:
    """Attention maps and Grad-CAM for each face of ``image``, sorted left to right.

    ``recognizer_or_model``: a `Recognizer` (its detector, crop and device are used), an
    ``nn.Module``, or ``(nn.Module, metadata)`` (faces found with ``detector``; the model
    stays on its device; class names from ``metadata["class_names"]``, else "0", "1",
    ...). The model runs in eval mode and is left in the mode it was in; an EMA
    (``AveragedModel``) or DataParallel wrapper is explained through the network inside.
    ``image``: anything `ferkit.recognize.load_image` takes (``color`` is the channel order
    of arrays). ``target``: the class (name or index) Grad-CAM explains; default each
    face's predicted class. Each explanation's ``face`` has its box in full-image pixels,
    as `Recognizer.predict` gives. Attention maps need a model with CBAM, Grad-CAM one with
    ``features()``; a model with neither raises ValueError. Works under ``torch.no_grad()``
    and ``torch.inference_mode()`` too (Grad-CAM turns gradients on for itself).

    The scores come from the single view the maps explain; with ``tta`` set on the
    recognizer they are its test-time-augmented scores instead, and the default Grad-CAM
    class is their top class.
    """
    given = recognizer_or_model
    module = given.model if isinstance(given, Recognizer) else given
    module = module[0] if isinstance(module, tuple) and module else module
    was_training = module.training if isinstance(module, nn.Module) else None
    try:
        # outside inference mode: weights laid out anew in it could not enter Grad-CAM's graph
        with torch.inference_mode(False):
            return _explain(given, image, color, target, detector)
    finally:
        if was_training is not None:  # a Recognizer (made here, or TTA) sets eval mode
            module.train(was_training)


def _explain(recognizer_or_model, image, color, target, detector) -> list[FaceExplanation]:
    rec = _as_recognizer(recognizer_or_model, detector)
    if not isinstance(rec.model, nn.Module):
        raise ValueError(
            f"explanations need the torch model, but this Recognizer runs a "
            f"{type(rec.model).__name__} (backend={rec.backend!r}); make one with "
            "backend='torch' from the same weights (a checkpoint or shipped weights name, "
            "not an .onnx file)"
        )
    model = _unwrap(rec.model)
    check_explainable(model)
    target_idx = _target_index(target, rec.class_names)
    loaded = load_image(image, color, rec.max_side)
    found, crops = rec.faces_in(loaded)
    if not found:
        return []
    crops = rec.prepare(crops)  # the faces as the model sees them (low contrast lifted)
    tta_probs = rec._probs(crops) if rec.tta != "none" else None
    return _explanations(
        model,
        crops,
        rec.class_names,
        target_idx,
        lambda k, probs: rec._face(found[k], probs, loaded.scale),
        rec.device,
        tta_probs,
    )


def upsample(heatmap: np.ndarray, size: int = FACE_SIZE) -> np.ndarray:
    """A map resized bilinearly to size x size (as Grad-CAM is)."""
    t = torch.as_tensor(np.asarray(heatmap, dtype=np.float32))[None, None]
    return F.interpolate(t, size=(size, size), mode="bilinear", align_corners=False)[0, 0].numpy()


def _overview(image) -> tuple[np.ndarray, float, float]:
    """Pixels to show the whole image (longer side <= 800) and full-image px per shown px."""
    loaded = image if isinstance(image, LoadedImage) else load_image(image)
    pixels = loaded.pixels
    sx, sy = loaded.scale
    h, w = pixels.shape[:2]
    shrink = min(1.0, 800 / max(h, w))
    if shrink < 1.0:
        from .faces import resize

        pixels = resize(pixels, max(1, round(w * shrink)), max(1, round(h * shrink)))
        sx, sy = sx * w / pixels.shape[1], sy * h / pixels.shape[0]
    return pixels, sx, sy


def _matplotlib():
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        from matplotlib.patches import Rectangle
    except ImportError as exc:
        raise ImportError(
            "drawing explanations needs matplotlib: pip install 'ferkit[plots]'"
        ) from exc
    return FigureCanvasAgg, Figure, Rectangle


def _pgf_texsystem() -> str:
    import matplotlib

    return str(matplotlib.rcParams.get("pgf.texsystem", "xelatex"))


def render_explanations(
    image, explanations: Sequence[FaceExplanation], path: str | os.PathLike
) -> Path:
    """Draw ``explanations`` into one image file (PNG unless ``path`` names another format).

    On top, ``image`` (anything `load_image` takes; None to leave it out) with the faces
    numbered; then one row per face: the crop the model saw, each attention map and the
    Grad-CAM overlaid on it, and the class scores. Needs matplotlib (``pip install
    'ferkit[plots]'``); draws off screen (Agg), leaving pyplot's backend alone.
    """
    FigureCanvasAgg, Figure, Rectangle = _matplotlib()
    if not explanations:
        raise ValueError("no explanations to draw (no face found?)")
    map_names = list(explanations[0].attention_maps)
    has_cam = explanations[0].gradcam is not None
    ncols = 1 + len(map_names) + int(has_cam) + 1
    rows = len(explanations)
    show_image = image is not None
    row_h, col_w, top_h = 2.3, 2.2, 4.2
    fig = Figure(figsize=(ncols * col_w, rows * row_h + (top_h if show_image else 0)), dpi=100)
    FigureCanvasAgg(fig)
    heights = ([top_h] if show_image else []) + [row_h] * rows
    grid = fig.add_gridspec(
        len(heights),
        ncols,
        height_ratios=heights,
        hspace=0.9 / (sum(heights) / len(heights)),  # about 0.9 inch between rows
        wspace=0.35,
    )
    if show_image:
        pixels, sx, sy = _overview(image)
        ax = fig.add_subplot(grid[0, :])
        ax.imshow(pixels, cmap="gray" if pixels.ndim == 2 else None, vmin=0, vmax=255)
        for k, e in enumerate(explanations, 1):
            x, y, w, h = e.face.box
            ax.add_patch(
                Rectangle((x / sx, y / sy), w / sx, h / sy, fill=False, color="yellow", lw=2)
            )
            ax.text(
                x / sx,
                y / sy - 3,
                f"{k}: {e.face.label} {e.face.confidence:.0%}",
                color="black",
                fontsize=9,
                va="bottom",
                bbox={"facecolor": "yellow", "edgecolor": "none", "pad": 1.5},
            )
        ax.set_axis_off()
        ax.set_title(f"{len(explanations)} face(s)", fontsize=10)
    for r, e in enumerate(explanations):
        row = r + int(show_image)
        crop = np.asarray(e.crop)
        size = crop.shape[0]
        ax = fig.add_subplot(grid[row, 0])
        ax.imshow(crop, cmap="gray", vmin=0, vmax=255)
        ax.set_title(
            f"face {r + 1}: {e.face.label} {e.face.confidence:.0%}",
            fontsize=9,
            fontweight="bold",
        )
        ax.set_axis_off()
        panels = [
            (f"{n} attention\n{m.shape[0]}x{m.shape[1]}, {m.min():.3f}-{m.max():.3f}", m)
            for n, m in e.attention_maps.items()
        ]
        if e.gradcam is not None:
            if e.gradcam_note is not None:  # an all-zero map: said, not drawn as a blue panel
                panels.append((f"Grad-CAM ({e.gradcam_class}):\n{e.gradcam_note}", None))
            else:
                panels.append((f"Grad-CAM\n({e.gradcam_class})", e.gradcam))
        for c, (title, heat) in enumerate(panels, 1):
            ax = fig.add_subplot(grid[row, c])
            ax.imshow(crop, cmap="gray", vmin=0, vmax=255)
            # attention maps are gates on one fixed 0..1 scale (a map that passes nearly
            # everything looks uniform, as it acts); Grad-CAM is min-max scaled per face
            if heat is not None:
                ax.imshow(upsample(heat, size), cmap="jet", alpha=0.45, vmin=0.0, vmax=1.0)
            ax.set_title(title, fontsize=8)
            ax.set_axis_off()
        ax = fig.add_subplot(grid[row, ncols - 1])
        names = list(e.face.scores)
        values = [e.face.scores[n] for n in names]
        colours = ["tab:orange" if n == e.face.label else "tab:blue" for n in names]
        ax.barh(range(len(names)), values, color=colours)
        ax.set_yticks(range(len(names)), names, fontsize=7)
        ax.invert_yaxis()
        ax.set_xlim(0, 1)
        ax.tick_params(axis="x", labelsize=7)
        ax.set_title("scores", fontsize=8)
    bottom = ax.get_position().y0 - 0.45 / fig.get_figheight()  # below the last row's ticks
    fig.text(
        0.5,
        bottom,
        "overlays: red = high, blue = low; attention: the gate's value on a fixed 0-1 "
        "scale (1 = passes the feature unchanged; ranges in the titles); Grad-CAM: stretched "
        "over its own range",
        ha="center",
        va="top",
        fontsize=8,
        color="0.3",
    )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format=None if path.suffix else "png", bbox_inches="tight")
    return path


# ---- the command ----


def _output_path(out: str, image: str) -> Path:
    """``--out`` checked before any work: a file (PNG unless it names another format) in a
    format matplotlib writes, writable, that is not the input photo."""
    path = Path(out)
    if not path.suffix and not path.is_dir():
        path = path.with_suffix(".png")
    if path.suffix and not path.is_dir():
        FigureCanvasAgg = _matplotlib()[0]
        formats = FigureCanvasAgg.get_supported_filetypes()
        # .pgf is drawn through a TeX system (xelatex by default): offered where it is there
        tex = _pgf_texsystem()
        if shutil.which(tex) is None:
            formats = {f: d for f, d in formats.items() if f != "pgf"}
        if path.suffix[1:].lower() not in formats:
            why = (f"matplotlib writes .pgf through {tex}, which is not installed"
                   if path.suffix[1:].lower() == "pgf" else f"cannot write a {path.suffix} image")
            raise ValueError(
                f"--out {out}: {why}; use one of "
                + ", ".join(f".{f}" for f in sorted(formats))
            )
    return output_file(path, "--out", [image])


class _NoFace(Exception):
    """A photo without a face: nothing to write (raised inside, to undo the output's folders)."""


def run_explain(args: argparse.Namespace) -> int:
    if args.model is not None and Path(args.model).suffix.lower() == ".onnx":
        raise ValueError(
            f"--model {args.model}: explain needs torch weights (a checkpoint, a run folder or "
            "a shipped weights name), not an ONNX model"
        )
    _matplotlib()  # missing: say so before the work, not after it
    # a run that fails (a model or image that cannot load) or finds no face leaves no
    # empty folders behind
    try:
        with no_folders_left_on_failure(files=[args.out]):
            out = _output_path(args.out, args.image)
            recognizer = recognizer_from_args(args)
            loaded = load_image(args.image, max_side=recognizer.max_side)
            explanations = explain(recognizer, loaded, target=args.target)
            if not explanations:
                raise _NoFace
            for k, e in enumerate(explanations, 1):
                box = ", ".join(str(v) for v in e.face.box)
                note = f" (Grad-CAM: {e.gradcam_note})" if e.gradcam_note else ""
                print(f"face {k} ({box}): {e.face.label} {e.face.confidence:.1%}{note}")
            render_explanations(loaded, explanations, out)
    except _NoFace:
        print(f"{args.image}: no face found")
        return 0
    print(f"explanation written to {out}")
    sys.stdout.flush()
    return 0
