"""Batched augmentation on the training device, and the one input normalisation.

Every sample of a batch draws its own random parameters from a `torch.Generator`, so a run
is repeatable from its seed, and the whole batch is warped in one `grid_sample` call: the
training images never leave the device as anything but uint8.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

#: Input normalisation shared by training, evaluation and recognition.
PIXEL_MEAN = 0.5
PIXEL_STD = 0.25


def normalize(images: torch.Tensor) -> torch.Tensor:
    """uint8 (or 0..255 float) N x 48 x 48 or N x 1 x 48 x 48 -> float N x 1 x 48 x 48."""
    x = images.float() if images.dtype == torch.uint8 else images
    if x.dim() == 3:
        x = x.unsqueeze(1)
    return (x / 255.0 - PIXEL_MEAN) / PIXEL_STD


@dataclass
class AugmentConfig:
    """Random geometric, photometric and erasing augmentation (defaults: the paper's
    Keras-style set; photometric changes off).

    Angles in degrees; ``scale`` a zoom range; ``translate`` and ``shear`` fractions of the
    image size / shear slope; probabilities in 0..1. Photometric, per image, in this order:
    ``gamma`` g raises the 0..1 pixels to exp(U(-g, g)); ``contrast`` c scales them around
    the image's mean by 1 + U(-c, c); ``brightness`` b multiplies them by 1 + U(-b, b);
    then clipped to 0..1 (c and b in 0..1).
    """

    hflip: float = 0.5
    vflip: float = 0.0  # off by default: upside-down faces do not occur
    rotation: float = 10.0
    scale: tuple[float, float] = (0.9, 1.1)
    shear: float = 0.1
    translate: float = 0.1
    erasing: float = 0.0
    erasing_area: tuple[float, float] = (0.02, 0.2)
    mixup: float = 0.0  # Beta(alpha, alpha) mixing; 0 disables
    cutmix: float = 0.0  # Beta(alpha, alpha) box mixing; 0 disables
    brightness: float = 0.0
    contrast: float = 0.0
    gamma: float = 0.0

    @classmethod
    def from_dict(cls, d: dict | None) -> AugmentConfig:
        d = dict(d or {})
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown augmentation option(s) {sorted(unknown)}")
        try:
            for key, value in d.items():
                if key in ("scale", "erasing_area"):
                    lo, hi = value
                    d[key] = (float(lo), float(hi))
                else:
                    d[key] = float(value)
        except (TypeError, ValueError):
            raise ValueError(
                f"augmentation option {key}={value!r}: expected a number"
                + (" pair [low, high]" if key in ("scale", "erasing_area") else "")
            ) from None
        return cls(**d)

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def photometric(self) -> bool:
        return bool(self.brightness or self.contrast or self.gamma)

    @property
    def geometric(self) -> bool:
        return bool(
            self.hflip or self.vflip or self.rotation or self.shear or self.translate
            or self.scale != (1.0, 1.0)
        )


def _uniform(n: int, lo: float, hi: float, gen: torch.Generator, device) -> torch.Tensor:
    return torch.rand(n, generator=gen, device=device) * (hi - lo) + lo


def random_photometric(x: torch.Tensor, cfg: AugmentConfig, gen: torch.Generator) -> torch.Tensor:
    """Random gamma, contrast and brightness per image of a float N x 1 x H x W batch in
    0..1, clipped to 0..1; each change draws its numbers only when it is on, so a recipe
    without them keeps its random stream."""
    n, dev = len(x), x.device
    if cfg.gamma > 0:
        x = x.clamp_min(0) ** torch.exp(_uniform(n, -cfg.gamma, cfg.gamma, gen, dev)).view(n, 1, 1, 1)
    if cfg.contrast > 0:
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        x = mean + (x - mean) * (1 + _uniform(n, -cfg.contrast, cfg.contrast, gen, dev)).view(n, 1, 1, 1)
    if cfg.brightness > 0:
        x = x * (1 + _uniform(n, -cfg.brightness, cfg.brightness, gen, dev)).view(n, 1, 1, 1)
    return x.clamp(0, 1)


def sample_affine(n: int, cfg: AugmentConfig, gen: torch.Generator, device) -> torch.Tensor:
    """N x 2 x 3 affine matrices (output -> input coordinates, in [-1, 1] units)."""
    flip_x = torch.where(torch.rand(n, generator=gen, device=device) < cfg.hflip, -1.0, 1.0)
    flip_y = torch.where(torch.rand(n, generator=gen, device=device) < cfg.vflip, -1.0, 1.0)
    angle = _uniform(n, -cfg.rotation, cfg.rotation, gen, device) * (math.pi / 180)
    zoom = _uniform(n, cfg.scale[0], cfg.scale[1], gen, device)
    shear = _uniform(n, -cfg.shear, cfg.shear, gen, device)
    tx = _uniform(n, -cfg.translate, cfg.translate, gen, device) * 2
    ty = _uniform(n, -cfg.translate, cfg.translate, gen, device) * 2
    cos, sin = torch.cos(angle), torch.sin(angle)
    # inverse map: sample the input at R(-a) S(1/zoom) Sh(-shear) * out, then flip
    a = cos / zoom
    b = (sin - shear * cos) / zoom
    c = -sin / zoom
    d = (cos + shear * sin) / zoom
    theta = torch.stack(
        [
            torch.stack([a * flip_x, b * flip_x, tx], dim=1),
            torch.stack([c * flip_y, d * flip_y, ty], dim=1),
        ],
        dim=1,
    )
    return theta


def random_erasing(x: torch.Tensor, cfg: AugmentConfig, gen: torch.Generator) -> torch.Tensor:
    """Zero (the mean after normalisation) one random rectangle per chosen sample."""
    n, _, h, w = x.shape
    dev = x.device
    apply = torch.rand(n, generator=gen, device=dev) < cfg.erasing
    area = _uniform(n, cfg.erasing_area[0], cfg.erasing_area[1], gen, dev) * h * w
    log_ratio = _uniform(n, math.log(0.3), math.log(3.3), gen, dev)
    ratio = torch.exp(log_ratio)
    eh = torch.sqrt(area * ratio).clamp(1, h)
    ew = torch.sqrt(area / ratio).clamp(1, w)
    y0 = torch.rand(n, generator=gen, device=dev) * (h - eh)
    x0 = torch.rand(n, generator=gen, device=dev) * (w - ew)
    rows = torch.arange(h, device=dev).view(1, h, 1)
    cols = torch.arange(w, device=dev).view(1, 1, w)
    inside = (
        (rows >= y0.view(n, 1, 1)) & (rows < (y0 + eh).view(n, 1, 1))
        & (cols >= x0.view(n, 1, 1)) & (cols < (x0 + ew).view(n, 1, 1))
        & apply.view(n, 1, 1)
    )
    return x.masked_fill(inside.unsqueeze(1), 0.0)


def augment_batch(
    images: torch.Tensor, cfg: AugmentConfig, gen: torch.Generator
) -> torch.Tensor:
    """uint8 N x 48 x 48 on any device -> augmented, normalised float N x 1 x 48 x 48."""
    if cfg.photometric:
        x01 = images.float().div(255)
        x = normalize(random_photometric(x01 if x01.dim() == 4 else x01.unsqueeze(1), cfg, gen) * 255)
    else:
        x = normalize(images)
    if cfg.geometric:
        theta = sample_affine(len(x), cfg, gen, x.device)
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        # 'border' repeats the edge pixels, like Keras' default fill_mode='nearest'
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    if cfg.erasing > 0:
        x = random_erasing(x, cfg, gen)
    return x


def mix_batch(
    x: torch.Tensor, targets: torch.Tensor, cfg: AugmentConfig, gen: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mixup or CutMix (one per batch, chosen at random when both are on) on soft targets."""
    use = [(name, a) for name, a in (("mixup", cfg.mixup), ("cutmix", cfg.cutmix)) if a > 0]
    if not use:
        return x, targets
    pick = int(torch.randint(len(use), (1,), generator=gen, device=x.device).item())
    name, alpha = use[pick]
    # Beta(alpha, alpha) from two Gamma draws with the run's generator (Beta has none)
    g = torch._standard_gamma(torch.full((2,), float(alpha), device=x.device), generator=gen)
    lam = float(g[0] / g.sum())
    perm = torch.randperm(len(x), generator=gen, device=x.device)
    if name == "mixup":
        x = lam * x + (1 - lam) * x[perm]
    else:
        h, w = x.shape[-2:]
        ch, cw = int(h * math.sqrt(1 - lam)), int(w * math.sqrt(1 - lam))
        cy = int(torch.randint(h, (1,), generator=gen, device=x.device).item())
        cx = int(torch.randint(w, (1,), generator=gen, device=x.device).item())
        y0, y1 = max(cy - ch // 2, 0), min(cy + ch // 2, h)
        x0, x1 = max(cx - cw // 2, 0), min(cx + cw // 2, w)
        x = x.clone()
        x[..., y0:y1, x0:x1] = x[perm][..., y0:y1, x0:x1]
        lam = 1 - (y1 - y0) * (x1 - x0) / (h * w)
    return x, lam * targets + (1 - lam) * targets[perm]


def tta_views(x: torch.Tensor, mode: str) -> torch.Tensor:
    """Test-time views of a normalised N x 1 x 48 x 48 batch: V x N x 1 x 48 x 48.

    ``none``: the image; ``flip``: image and mirror; ``ten-crop``: four corner and centre
    crops of 44 x 44 resized back to 48 x 48 (a 9% zoom, within the training scale range),
    each with its mirror.
    """
    if mode == "none":
        return x.unsqueeze(0)
    if mode == "flip":
        return torch.stack([x, x.flip(-1)])
    if mode != "ten-crop":
        raise ValueError(f"unknown TTA mode {mode!r}; use none, flip or ten-crop")
    size, crop = x.shape[-1], 44
    m = size - crop
    crops = [
        x[..., t : t + crop, s : s + crop] for t, s in ((0, 0), (0, m), (m, 0), (m, m), (m // 2, m // 2))
    ]
    crops = [F.interpolate(c, size=(size, size), mode="bilinear", align_corners=False) for c in crops]
    return torch.stack(crops + [c.flip(-1) for c in crops])
