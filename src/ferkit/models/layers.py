"""Building blocks of the MBA-CNN: depthwise separable convolution and CBAM attention.

References:
- Y. He, "Facial Expression Recognition Using Multi-Branch Attention Convolutional Neural
  Network", IEEE Access 11 (2023) 1244-1253 (the DSC + CBAM modules and their arrangement).
- S. Woo et al., "CBAM: Convolutional Block Attention Module", ECCV 2018 (the attention).
"""

from __future__ import annotations

import torch
from torch import nn


def check_faces(x: torch.Tensor, in_chans: int, name: str, multiple: int = 1,
                size: int | None = None, min_size: int = 1) -> None:
    """A clear error for input a model cannot take (instead of a shape mismatch deep inside
    it): ``x`` must be N x in_chans x H x W, with H and W multiples of ``multiple`` and at
    least ``min_size``, or both ``size`` when the model has a fixed input size. Models call
    it from ``forward`` (shapes only: no cost worth measuring; skipped while tracing, e.g.
    an ONNX export)."""
    if torch.jit.is_tracing():
        return
    if x.dim() != 4 or x.shape[1] != in_chans:
        raise ValueError(
            f"{name}: expected a batch of faces N x {in_chans} x H x W (normalised 48 x 48 "
            f"crops, as ferkit.augment.normalize makes them), got shape {tuple(x.shape)}"
        )
    h, w = x.shape[2], x.shape[3]
    if size is not None and (h, w) != (size, size):
        raise ValueError(f"{name}: expected {size} x {size} faces, got {h} x {w}")
    if h % multiple or w % multiple or min(h, w) < max(multiple, min_size):
        need = (f"multiples of {multiple}" if multiple > 1
                else f"at least {min_size} pixels")
        raise ValueError(f"{name}: expected faces whose sides are {need} (48 x 48 as "
                         f"trained), got {h} x {w}")


class ConvBNReLU(nn.Sequential):
    """k x k convolution (no bias: the BatchNorm that follows has one), BatchNorm, ReLU."""

    def __init__(self, in_chans: int, out_chans: int, kernel_size: int = 3, stride: int = 1):
        super().__init__(
            nn.Conv2d(in_chans, out_chans, kernel_size, stride, kernel_size // 2, bias=False),
            nn.BatchNorm2d(out_chans),
            nn.ReLU(inplace=True),
        )


class DepthwiseSeparableConv(nn.Module):
    """Depthwise 3x3 convolution, BN, ReLU, then pointwise 1x1 convolution, BN, ReLU.

    Weights: ``k*k*C_in + C_in*C_out`` (the convolutions carry no bias; each BatchNorm adds
    ``2*C`` trainable parameters). ``stride`` applies to the depthwise convolution.
    """

    def __init__(self, in_chans: int, out_chans: int, stride: int = 1, kernel_size: int = 3):
        super().__init__()
        pad = kernel_size // 2
        self.depthwise = nn.Conv2d(
            in_chans, in_chans, kernel_size, stride, pad, groups=in_chans, bias=False
        )
        self.bn1 = nn.BatchNorm2d(in_chans)
        self.pointwise = nn.Conv2d(in_chans, out_chans, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_chans)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.bn1(self.depthwise(x)))
        return self.act(self.bn2(self.pointwise(x)))


class ChannelAttention(nn.Module):
    """CBAM channel attention: ``x * sigmoid(MLP(avgpool(x)) + MLP(maxpool(x)))``.

    The MLP (C -> C/ratio -> C, ReLU between, shared by both pooled vectors) is made of 1x1
    convolutions with bias, as in the CBAM paper's reference code.
    """

    def __init__(self, channels: int, ratio: int = 8):
        super().__init__()
        hidden = max(channels // ratio, 1)
        self.mlp = nn.Sequential(
            nn.Conv2d(channels, hidden, 1),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, channels, 1),
        )

    def attention(self, x: torch.Tensor) -> torch.Tensor:
        """The N x C x 1 x 1 weights, in (0, 1)."""
        avg = x.mean(dim=(2, 3), keepdim=True)
        mx = x.amax(dim=(2, 3), keepdim=True)
        return torch.sigmoid(self.mlp(avg) + self.mlp(mx))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.attention(x)


class SpatialAttention(nn.Module):
    """CBAM spatial attention: ``x * sigmoid(conv7x7([mean_c(x), max_c(x)]))``."""

    def __init__(self, kernel_size: int = 7):
        super().__init__()
        self.conv = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2)

    def attention(self, x: torch.Tensor) -> torch.Tensor:
        """The N x 1 x H x W map, in (0, 1)."""
        pooled = torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1)
        return torch.sigmoid(self.conv(pooled))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.attention(x)


class CBAM(nn.Module):
    """Channel attention, then spatial attention (the order CBAM found best)."""

    def __init__(self, channels: int, ratio: int = 8, kernel_size: int = 7):
        super().__init__()
        self.channel = ChannelAttention(channels, ratio)
        self.spatial = SpatialAttention(kernel_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.spatial(self.channel(x))


class DSCCBAM(nn.Module):
    """Two convolutions, 2x2 max-pool, then CBAM on the pooled tensor.

    Returns ``(pooled, attended)``: the MBA-CNN feeds the attended tensor to this module's
    branch and the pooled one (without attention) to the next module.

    ``separable=False`` uses standard 3x3 convolutions (the Conv2D ablation) and
    ``attention=False`` replaces CBAM by the identity (the no-CBAM ablation).
    """

    def __init__(
        self,
        in_chans: int,
        out_chans: int,
        cbam_ratio: int = 8,
        separable: bool = True,
        attention: bool = True,
    ):
        super().__init__()
        conv = DepthwiseSeparableConv if separable else ConvBNReLU
        self.conv1 = conv(in_chans, out_chans)
        self.conv2 = conv(out_chans, out_chans)
        self.pool = nn.MaxPool2d(2)
        self.cbam = CBAM(out_chans, cbam_ratio) if attention else nn.Identity()

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pooled = self.pool(self.conv2(self.conv1(x)))
        return pooled, self.cbam(pooled)
