"""The multi-branch attention CNN (MBA-CNN) of Y. He, IEEE Access 11 (2023) 1244-1253."""

from __future__ import annotations

import torch
from torch import nn

from .layers import DSCCBAM, ConvBNReLU, DepthwiseSeparableConv, check_faces


class MBACNN(nn.Module):
    """Multi-branch attention CNN for 48 x 48 gray faces.

    Topology (default options; spatial size in brackets)::

        stem: conv3x3 32, conv3x3 64                                     [48]
        module 1: DSCCBAM 64->128          -> attended -> DSC 512 /2 -> DSC 512 /2   (branch 1) [6]
           pooled -> module 2: DSCCBAM 128->256 -> attended -> DSC 512 /2 (branch 2) [6]
              pooled -> module 3: DSCCBAM 256->512 -> attended            (branch 3) [6]
        branch 1 + branch 2 + branch 3 -> DSC 1024 -> DSC 1024 -> global average pool
        -> dropout -> FC 1024 -> ReLU -> dropout -> FC num_classes (logits)

    Where the paper is ambiguous, each choice is an option (defaults and why):

    - ``stem_channels=(32, 64)``: one figure shows 32/64, another 64/64; 32/64 matches the
      layer table and the reference Keras implementation's parameter count.
    - ``cbam_ratio=8``: unstated in the paper; 8 is CBAM's usual choice for narrow layers and
      lands the parameter count within 1% of the reference (3,772,253 trainable).
    - ``branch2_pointwise=False``: the table lists branch 2's last layer as a 1x1 convolution
      while the text calls every reducing layer a DSC; ``True`` uses a strided 1x1 convolution
      with BN and ReLU instead of the DSC.
    - ``dropout=0.0``: rates and positions are unstated; when set, dropout is applied before
      each of the two fully connected layers.

    Ablations: ``separable=False`` (standard 3x3 convolutions everywhere a DSC was),
    ``attention=False`` (no CBAM), ``branches=1`` (module 1 -> 2 -> 3 -> head, no sum; each
    module's attended output feeds the next, so every CBAM stays in use).
    """

    def __init__(
        self,
        num_classes: int = 7,
        in_chans: int = 1,
        stem_channels: tuple[int, int] = (32, 64),
        cbam_ratio: int = 8,
        branch2_pointwise: bool = False,
        dropout: float = 0.0,
        separable: bool = True,
        attention: bool = True,
        branches: int = 3,
    ):
        super().__init__()
        if branches not in (1, 3):
            raise ValueError(f"branches must be 1 or 3, got {branches}")
        self.in_chans = in_chans
        conv = DepthwiseSeparableConv if separable else ConvBNReLU
        if len(stem_channels) != 2:
            raise ValueError(f"stem_channels must be two widths (first conv, second conv), "
                             f"got {len(stem_channels)}")
        c0, c1 = stem_channels
        self.stem = nn.Sequential(ConvBNReLU(in_chans, c0), ConvBNReLU(c0, c1))
        self.module1 = DSCCBAM(c1, 128, cbam_ratio, separable, attention)
        self.module2 = DSCCBAM(128, 256, cbam_ratio, separable, attention)
        self.module3 = DSCCBAM(256, 512, cbam_ratio, separable, attention)
        self.branches = branches
        if branches == 3:
            self.branch1 = nn.Sequential(conv(128, 512, stride=2), conv(512, 512, stride=2))
            if branch2_pointwise:
                self.branch2 = ConvBNReLU(256, 512, kernel_size=1, stride=2)
            else:
                self.branch2 = conv(256, 512, stride=2)
        else:  # unused; present (without weights) so that torch.jit.script compiles forward
            self.branch1 = self.branch2 = nn.Identity()
        self.fuse = nn.Sequential(conv(512, 1024), conv(1024, 1024))
        self.head = nn.Sequential(
            nn.Dropout(dropout),
            nn.Linear(1024, 1024),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(1024, num_classes),
        )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """He initialisation of the convolutions (as torchvision's CNNs), BN to identity."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The fused N x 1024 x 6 x 6 feature map before pooling (used by Grad-CAM)."""
        x = self.stem(x)
        pooled1, attended1 = self.module1(x)
        if self.branches == 1:
            # one chain: each module's attended output feeds the next
            _, attended2 = self.module2(attended1)
            _, attended3 = self.module3(attended2)
            return self.fuse(attended3)
        pooled2, attended2 = self.module2(pooled1)
        _, attended3 = self.module3(pooled2)
        fused = self.branch1(attended1) + self.branch2(attended2) + attended3
        return self.fuse(fused)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.jit.is_scripting():
            # three branches of different strides meet in a sum: sides divisible by 8; one
            # branch takes any side from 8 pixels
            check_faces(x, self.in_chans, "MBA-CNN", multiple=8 if self.branches == 3 else 1,
                        min_size=8)
        return self.head(self.features(x).mean(dim=(2, 3)))
