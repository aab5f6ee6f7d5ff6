"""BlazeFace, MediaPipe's face detector, in PyTorch: the networks, their SSD anchors and decoding.

References:
- V. Bazarevsky et al., "BlazeFace: Sub-millisecond Neural Face Detection on Mobile GPUs",
  CVPR Workshop on Computer Vision for AR/VR 2019 (the BlazeBlock and the anchor scheme).
- MediaPipe's face detection models and their graph options (input range [-1, 1], letterboxed
  square input; SSD anchors of fixed size; 4 box + 6 keypoint offsets per anchor in input
  pixels, x before y; sigmoid scores; weighted non-maximum suppression at IoU 0.3).

Two networks with MediaPipe's weights, converted from its ``.tflite`` files by
``scripts/convert_blazeface.py`` and shipped in ``ferkit/weights/`` (Apache-2.0, see
``NOTICE.txt`` there):

- ``full_range`` (192 x 192 input, one 48 x 48 grid of anchors): a BlazeBlock backbone with a
  feature pyramid, for faces up to about 5 m from the camera: group photos and scenes.
- ``short_range`` (128 x 128 input, 896 anchors on 16 x 16 and 8 x 8 grids): the original
  BlazeFace, for faces that fill a good part of the picture (selfies, webcams), faster.

Deviations from the paper, following the released models: 3 x 3 depthwise kernels (not
5 x 5); TensorFlow's "same" padding, which pads stride-2 convolutions on the bottom/right only.
Keypoints, in order: right eye, left eye (the person's), nose tip, mouth centre, right ear
tragion, left ear tragion.
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache
from importlib.resources import as_file, files

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .faces import Detection, FaceDetector, resize

NUM_KEYPOINTS = 6


def _same_padding(kernel_size: int, stride: int) -> tuple[int, int, int, int]:
    """F.pad amounts of TensorFlow's "same" padding for inputs divisible by ``stride``."""
    total = max(kernel_size - stride, 0)
    return (total // 2, total - total // 2) * 2


class SameConv2d(nn.Conv2d):
    """A convolution with TensorFlow's "same" padding (asymmetric when the stride is 2)."""

    def __init__(
        self, in_chans: int, out_chans: int, kernel_size: int, stride: int = 1, groups: int = 1
    ):
        super().__init__(in_chans, out_chans, kernel_size, stride, groups=groups)
        self.same = _same_padding(kernel_size, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(F.pad(x, self.same))


class BlazeBlock(nn.Module):
    """BlazeFace's residual block: ``relu(shortcut(x) + branch(x))``.

    The branch is a 3 x 3 depthwise convolution (carrying the stride) and a 1 x 1 projection
    to ``out_chans``; with ``mid_chans`` ("double" block) it projects to ``mid_chans``
    instead, then applies ReLU, a second depthwise convolution and a projection to
    ``out_chans``. The shortcut max-pools 2 x 2 when the stride is 2 and pads the extra
    output channels with zeros.
    """

    def __init__(
        self, in_chans: int, out_chans: int, stride: int = 1, mid_chans: int | None = None
    ):
        super().__init__()
        layers: list[nn.Module] = [SameConv2d(in_chans, in_chans, 3, stride, groups=in_chans)]
        if mid_chans is None:
            layers.append(nn.Conv2d(in_chans, out_chans, 1))
        else:
            layers += [
                nn.Conv2d(in_chans, mid_chans, 1),
                nn.ReLU(inplace=True),
                SameConv2d(mid_chans, mid_chans, 3, groups=mid_chans),
                nn.Conv2d(mid_chans, out_chans, 1),
            ]
        self.branch = nn.Sequential(*layers)
        self.stride = stride
        self.extra_chans = out_chans - in_chans

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = F.max_pool2d(x, 2) if self.stride == 2 else x
        if self.extra_chans:
            shortcut = F.pad(shortcut, (0, 0, 0, 0, 0, self.extra_chans))
        return F.relu(shortcut + self.branch(x))


def _stem(out_chans: int, kernel_size: int) -> nn.Sequential:
    return nn.Sequential(SameConv2d(3, out_chans, kernel_size, 2), nn.ReLU(inplace=True))


def _conv1x1_relu(in_chans: int, out_chans: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_chans, out_chans, 1), nn.ReLU(inplace=True))


def _flatten_anchors(x: torch.Tensor, values: int) -> torch.Tensor:
    """N x (A*values) x H x W head output -> N x (H*W*A) x values, anchors ordered y, x, a."""
    n = x.shape[0]
    return x.permute(0, 2, 3, 1).reshape(n, -1, values)


class BlazeFaceShortRange(nn.Module):
    """MediaPipe's short-range BlazeFace: 128 x 128 RGB in [-1, 1] -> (N x 896 x 16 box and
    keypoint offsets, N x 896 score logits), anchors of 16 x 16 (2 each) then 8 x 8 (6 each)."""

    input_size = 128

    def __init__(self) -> None:
        super().__init__()
        widths = [24, 24, 28, 32, 36, 42, 48, 56, 64, 72, 80, 88]
        strides = [1, 1, 2, 1, 1, 2, 1, 1, 1, 1, 1]
        self.stem = _stem(24, 5)
        self.stage16 = nn.Sequential(
            *(BlazeBlock(a, b, s) for a, b, s in zip(widths[:-1], widths[1:], strides, strict=True))
        )
        self.stage8 = nn.Sequential(BlazeBlock(88, 96, 2), *(BlazeBlock(96, 96) for _ in range(4)))
        self.classifiers = nn.ModuleList([nn.Conv2d(88, 2, 1), nn.Conv2d(96, 6, 1)])
        self.regressors = nn.ModuleList([nn.Conv2d(88, 32, 1), nn.Conv2d(96, 96, 1)])

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f16 = self.stage16(self.stem(x))
        features = (f16, self.stage8(f16))
        logits = [
            _flatten_anchors(c(f), 1) for c, f in zip(self.classifiers, features, strict=True)
        ]
        boxes = [_flatten_anchors(r(f), 16) for r, f in zip(self.regressors, features, strict=True)]
        return torch.cat(boxes, 1), torch.cat(logits, 1)[..., 0]


class TopDownStep(nn.Module):
    """One feature-pyramid level: ``blocks(lateral(skip) + upsample2x(top(coarse)))``,
    ``top`` and ``lateral`` being 1 x 1 convolutions with ReLU to ``chans`` channels."""

    def __init__(self, coarse_chans: int, skip_chans: int, chans: int, blocks: int) -> None:
        super().__init__()
        self.top = _conv1x1_relu(coarse_chans, chans)
        self.lateral = _conv1x1_relu(skip_chans, chans)
        self.blocks = nn.Sequential(
            *(BlazeBlock(chans, chans, mid_chans=chans // 2) for _ in range(blocks))
        )

    def forward(self, coarse: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        top = F.interpolate(self.top(coarse), scale_factor=2, mode="bilinear", align_corners=False)
        return self.blocks(self.lateral(skip) + top)


class BlazeFaceFullRange(nn.Module):
    """MediaPipe's full-range BlazeFace: 192 x 192 RGB in [-1, 1] -> (N x 2304 x 16 box and
    keypoint offsets, N x 2304 score logits), one anchor per cell of a 48 x 48 grid.

    A backbone of "double" BlazeBlocks down to 6 x 6, then a top-down feature pyramid back to
    48 x 48 (stride 4), where one 1 x 1 head predicts.
    """

    input_size = 192

    def __init__(self) -> None:
        super().__init__()

        def stage(*specs: tuple[int, int, int, int]) -> nn.Sequential:
            return nn.Sequential(*(BlazeBlock(i, o, s, m) for i, m, o, s in specs))

        self.stem = _stem(32, 3)
        # (in, mid, out, stride) per block
        self.stage48 = stage(
            (32, 8, 32, 1), (32, 8, 32, 1), (32, 12, 48, 2), (48, 12, 48, 1), (48, 16, 64, 1)
        )
        self.stage24 = stage((64, 24, 96, 2), (96, 32, 128, 1), (128, 32, 128, 1))
        self.stage12 = stage((128, 36, 144, 2), (144, 48, 192, 1), (192, 64, 256, 1))
        self.stage6 = stage((256, 96, 384, 2), *[(384, 96, 384, 1)] * 3)
        self.up12 = TopDownStep(384, 256, 96, blocks=2)
        self.up24 = TopDownStep(96, 128, 64, blocks=2)
        self.up48 = TopDownStep(64, 64, 48, blocks=1)
        self.classifier = nn.Conv2d(48, 1, 1)
        self.regressor = nn.Conv2d(48, 16, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        c48 = self.stage48(self.stem(x))
        c24 = self.stage24(c48)
        c12 = self.stage12(c24)
        c6 = self.stage6(c12)
        p48 = self.up48(self.up24(self.up12(c6, c12), c24), c48)
        logits = _flatten_anchors(self.classifier(p48), 1)[..., 0]
        return _flatten_anchors(self.regressor(p48), 16), logits


@dataclass(frozen=True)
class Variant:
    """A shipped BlazeFace: its network, anchor grids ((stride, anchors per cell), ...),
    and MediaPipe's score threshold for it."""

    network: type[nn.Module]
    grids: tuple[tuple[int, int], ...]
    min_score: float

    @property
    def input_size(self) -> int:
        return self.network.input_size


VARIANTS = {
    "full_range": Variant(BlazeFaceFullRange, ((4, 1),), 0.6),
    "short_range": Variant(BlazeFaceShortRange, ((8, 2), (16, 6)), 0.5),
}


def anchor_centres(input_size: int, grids: Sequence[tuple[int, int]]) -> np.ndarray:
    """A x 2 (x, y) anchor centres in [0, 1], in the networks' output order.

    MediaPipe's SSD anchors for these models have a fixed size of 1 x 1 (the offsets are in
    input pixels), so only their centres matter: the cell centres of each grid, each
    repeated once per anchor of the cell.
    """
    out = []
    for stride, per_cell in grids:
        cells = -(-input_size // stride)
        c = (np.arange(cells, dtype=np.float32) + 0.5) / cells
        ys, xs = np.meshgrid(c, c, indexing="ij")
        centres = np.stack([xs.ravel(), ys.ravel()], axis=1)
        out.append(np.repeat(centres, per_cell, axis=0))
    return np.concatenate(out)


def decode(
    regressors: np.ndarray, anchors: np.ndarray, input_size: int
) -> tuple[np.ndarray, np.ndarray]:
    """Boxes (A x 4: x0, y0, x1, y1) and keypoints (A x 6 x 2: x, y), in [0, 1] of the input,
    from A x 16 offsets (box centre x, y, width, height, then x, y of each keypoint, in input
    pixels; centres and keypoints relative to the anchor's centre)."""
    r = regressors.astype(np.float32) / input_size
    centre = anchors + r[:, :2]
    half = r[:, 2:4] / 2
    boxes = np.concatenate([centre - half, centre + half], axis=1)
    keypoints = anchors[:, None, :] + r[:, 4:].reshape(-1, NUM_KEYPOINTS, 2)
    return boxes, keypoints


def box_iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU of one (x0, y0, x1, y1) box with each of N x 4 boxes."""
    wh = np.clip(np.minimum(box[2:], boxes[:, 2:]) - np.maximum(box[:2], boxes[:, :2]), 0, None)
    inter = wh[:, 0] * wh[:, 1]
    area = np.prod(box[2:] - box[:2]) + np.prod(boxes[:, 2:] - boxes[:, :2], axis=1) - inter
    return np.where(area > 0, inter / np.where(area > 0, area, 1), 0.0)


def non_max_suppression(
    boxes: np.ndarray,
    scores: np.ndarray,
    keypoints: np.ndarray | None = None,
    iou_threshold: float = 0.3,
    weighted: bool = True,
) -> list[tuple[np.ndarray, float, np.ndarray | None]]:
    """(box, score, keypoints) of each face, best first.

    The best remaining box takes every remaining box that overlaps it by more than
    ``iou_threshold`` out of the running. ``weighted`` (MediaPipe's choice for BlazeFace):
    the face's box and keypoints are the score-weighted mean of that group's, which steadies
    them; its score stays the best one's. Otherwise the best box is kept as it is.
    """
    order = np.argsort(-scores, kind="stable")
    out = []
    while order.size:
        best = order[0]
        overlap = box_iou(boxes[best], boxes[order]) > iou_threshold
        overlap[0] = True
        group = order[overlap]
        if weighted and group.size > 1:
            w = scores[group] / scores[group].sum()
            box = w @ boxes[group]
            points = None if keypoints is None else np.tensordot(w, keypoints[group], axes=1)
        else:
            box = boxes[best]
            points = None if keypoints is None else keypoints[best]
        out.append((box, float(scores[best]), points))
        order = order[~overlap]
    return out


_threads_lock = threading.Lock()
_threads_users = 0
_threads_saved = 0


@contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Run torch with ``n`` intra-op threads, restoring the previous count afterwards.

    `torch.set_num_threads` is process-wide: while any caller is inside, all of torch (other
    threads too) uses the count set by the first one in; the last one out restores it.
    ``None`` leaves torch alone.
    """
    global _threads_users, _threads_saved
    if n is None:
        yield
        return
    with _threads_lock:
        if _threads_users == 0:
            _threads_saved = torch.get_num_threads()
            if _threads_saved != n:
                torch.set_num_threads(n)
        _threads_users += 1
    try:
        yield
    finally:
        with _threads_lock:
            _threads_users -= 1
            if _threads_users == 0 and torch.get_num_threads() != _threads_saved:
                torch.set_num_threads(_threads_saved)


@cache
def load_network(variant: str = "full_range") -> nn.Module:
    """The BlazeFace network with MediaPipe's weights (``ferkit/weights/blazeface_VARIANT``),
    in eval mode, float32, channels-last; shared by all detectors of the process (do not
    train it)."""
    from safetensors.torch import load_file

    if variant not in VARIANTS:
        raise ValueError(f"unknown BlazeFace variant {variant!r}; use one of {sorted(VARIANTS)}")
    net = VARIANTS[variant].network()
    with as_file(files("ferkit").joinpath("weights", f"blazeface_{variant}.safetensors")) as p:
        state = load_file(str(p))
    net.load_state_dict({k: v.float() for k, v in state.items()})
    # channels-last runs these depthwise convolutions about 1.5x faster on CPUs
    return net.to(memory_format=torch.channels_last).eval().requires_grad_(False)


def letterbox(image: np.ndarray, size: int) -> tuple[np.ndarray, float, float, float, float]:
    """The image scaled to fit ``size`` x ``size`` (aspect kept), centred on black, as uint8
    size x size x 3 RGB; and (x0, y0, sx, sy) that map model-input pixels back to image
    pixels: ``x_image = (x_input - x0) * sx``."""
    h, w = image.shape[:2]
    scale = size / max(h, w)
    nw, nh = max(1, min(size, round(w * scale))), max(1, min(size, round(h * scale)))
    small = resize(image, nw, nh)
    if small.ndim == 2:
        small = small[:, :, None]
    x0, y0 = (size - nw) // 2, (size - nh) // 2
    out = np.zeros((size, size, 3), dtype=np.uint8)
    out[y0 : y0 + nh, x0 : x0 + nw] = small  # gray broadcasts to the 3 channels
    return out, x0, y0, w / nw, h / nh


def tile_grid(width: int, height: int, tiles: int) -> list[tuple[int, int, int]]:
    """(x, y, side) of square tiles, ``1/tiles`` of the longer side, that overlap by half
    and cover a width x height image (tiles are cut short where the image is narrower);
    none for ``tiles`` <= 1, and none where a tile would be one pixel (a tiny image: the
    whole-image pass covers it)."""
    if tiles <= 1:
        return []
    side = -(-max(width, height) // tiles)
    if side < 2:
        return []

    def starts(extent: int) -> list[int]:
        return [*range(0, extent - side, side // 2), extent - side] if extent > side else [0]

    return [(x, y, side) for y in starts(height) for x in starts(width)]


class BlazeFaceDetector(FaceDetector):
    """MediaPipe BlazeFace: boxes, scores (probabilities) and 6 keypoints per face.

    ``model``: "full_range" (default; 192 x 192, faces from about 1/10 of the image's longer
    side up) or "short_range" (128 x 128, faster; faces from about 1/6 of it).
    ``min_score``: the probability a face must reach (default: MediaPipe's, 0.6 and 0.5).
    ``iou_threshold`` and ``weighted``: see `non_max_suppression`. ``threads``: torch
    threads for the network (see `torch_threads`; 1 by default, because a small network
    gains little from more and a busy machine loses much; None leaves torch as it is).

    The whole image is letterboxed into the network's square input, so faces much smaller
    than the image are missed. ``tiles`` > 1 also searches the half-overlapping square tiles
    of `tile_grid` (2: 1/2 of the longer side, faces down to half that size, at up to 9 more
    network passes); all the candidates then go through one non-maximum suppression.
    Landmarks are the 6 keypoints in image pixels, the two eye centres first (see the module
    docstring).
    """

    name = "blazeface"
    # its boxes are about 1.13 x the Haar cascade's on the same face (measured on the sample),
    # so a smaller margin gives the same FER2013-like crop as Haar's boxes with 0.2
    crop_margin = 0.06

    def __init__(
        self,
        model: str = "full_range",
        min_score: float | None = None,
        iou_threshold: float = 0.3,
        weighted: bool = True,
        tiles: int = 1,
        threads: int | None = 1,
    ) -> None:
        self.network = load_network(model)
        self.variant = VARIANTS[model]
        self.anchors = anchor_centres(self.variant.input_size, self.variant.grids)
        self.min_score = self.variant.min_score if min_score is None else min_score
        self.iou_threshold = iou_threshold
        self.weighted = weighted
        self.tiles = tiles
        self.threads = threads

    def clone(self) -> BlazeFaceDetector:
        # clones run in concurrent threads: toggling torch's process-wide thread count from
        # several of them would change other threads' arithmetic mid-call, so leave it alone
        twin = copy.copy(self)
        twin.threads = None
        return twin

    def raw_outputs(self, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The network's (A x 16 offsets, A logits) for a uint8 size x size x 3 RGB input."""
        # a channels-last view of the H x W x 3 pixels, as the network's weights
        x = torch.from_numpy(pixels)[None].permute(0, 3, 1, 2).float().div_(127.5).sub_(1.0)
        with torch_threads(self.threads), torch.inference_mode():
            regressors, logits = self.network(x)
        return regressors[0].numpy(), logits[0].numpy()

    def candidates(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Boxes (N x 4: x0, y0, x1, y1), keypoints (N x 6 x 2) in image pixels and scores
        (N) of the anchors that reach ``min_score``, before non-maximum suppression."""
        size = self.variant.input_size
        pixels, x0, y0, sx, sy = letterbox(image, size)
        regressors, logits = self.raw_outputs(pixels)
        # MediaPipe clips the logits to +-100: float64 keeps exp() finite there
        scores = 1.0 / (1.0 + np.exp(-np.clip(logits.astype(np.float64), -100.0, 100.0)))
        keep = scores >= self.min_score
        boxes, keypoints = decode(regressors[keep], self.anchors[keep], size)
        offset, scale = np.array([x0, y0]), np.array([sx, sy])
        boxes = ((boxes.reshape(-1, 2, 2) * size - offset) * scale).reshape(-1, 4)
        return boxes, (keypoints * size - offset) * scale, scores[keep]

    def detect(self, image: np.ndarray) -> list[Detection]:
        h, w = image.shape[:2]
        found = [self.candidates(image)]
        for x, y, side in tile_grid(w, h, self.tiles):
            boxes, keypoints, scores = self.candidates(image[y : y + side, x : x + side])
            found.append((boxes + [x, y, x, y], keypoints + [x, y], scores))
        boxes, keypoints, scores = (np.concatenate(parts) for parts in zip(*found, strict=True))
        out = []
        for box, score, points in non_max_suppression(
            boxes, scores, keypoints, self.iou_threshold, self.weighted
        ):
            x0, y0 = max(0, round(box[0])), max(0, round(box[1]))
            x1, y1 = min(w, round(box[2])), min(h, round(box[3]))
            if x1 > x0 and y1 > y0:
                landmarks = tuple((float(px), float(py)) for px, py in points)
                out.append(Detection((x0, y0, x1 - x0, y1 - y0), score, landmarks))
        return out
