"""Comparison models for 48 x 48 gray faces: a plain CNN, ResNet-18 and a VGG variant.

References:
- C. Vulpe-Grigorasi and O. Grigore, "Convolutional Neural Network Hyperparameters
  optimization for Facial Emotion Recognition", ATEE 2021 (``VulpeCNN``).
- K. He et al., "Deep Residual Learning for Image Recognition", CVPR 2016 (``ResNet18``).
- Y. Khaireddin and Z. Chen, "Facial Emotion Recognition: State of the Art Performance on
  FER2013", arXiv:2105.03588, 2021 (``VGGFer``).
"""

from __future__ import annotations

import torch
from torch import nn

from .layers import ConvBNReLU, check_faces


class VulpeBlock(nn.Sequential):
    """3x3 'same' convolutions with ReLU, then BatchNorm, 2x2 max-pool and dropout."""

    def __init__(self, in_chans: int, widths: tuple[int, ...], dropout: float):
        layers: list[nn.Module] = []
        for width in widths:
            layers += [nn.Conv2d(in_chans, width, 3, padding=1), nn.ReLU(inplace=True)]
            in_chans = width
        layers += [nn.BatchNorm2d(in_chans), nn.MaxPool2d(2), nn.Dropout(dropout)]
        super().__init__(*layers)


class VulpeCNN(nn.Module):
    """The plain CNN of Vulpe-Grigorasi & Grigore (ATEE 2021), for 48 x 48 inputs.

    Topology (spatial size in brackets)::

        conv 256, conv 512, BN, max-pool, dropout           [24]
        conv 384, BN, max-pool, dropout                     [12]
        conv 192, BN, max-pool, dropout                     [6]
        conv 384, BN, max-pool, dropout                     [3]
        flatten, dense 256, ReLU, BN, dropout, dense num_classes (logits)

    Interpretation: every convolution is 3x3 with 'same' padding and a bias and is followed
    by its ReLU, with the BatchNorm after the activation (Keras ``Conv2D(activation='relu')``
    then ``BatchNormalization``); the dense 256 layer is likewise followed by ReLU, then BN.
    ``dropout`` is the rate after each convolutional block (0.4), ``head_dropout`` the rate
    before the classifier (0.3). The softmax is left to the loss.
    """

    def __init__(
        self,
        num_classes: int = 7,
        in_chans: int = 1,
        dropout: float = 0.4,
        head_dropout: float = 0.3,
        img_size: int = 48,
    ):
        super().__init__()
        self.in_chans, self.img_size = in_chans, img_size
        self.features = nn.Sequential(
            VulpeBlock(in_chans, (256, 512), dropout),
            VulpeBlock(512, (384,), dropout),
            VulpeBlock(384, (192,), dropout),
            VulpeBlock(192, (384,), dropout),
        )
        feat_size = img_size // 16
        self.head = nn.Sequential(
            nn.Flatten(),
            nn.Linear(384 * feat_size * feat_size, 256),
            nn.ReLU(inplace=True),
            nn.BatchNorm1d(256),
            nn.Dropout(head_dropout),
            nn.Linear(256, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.jit.is_scripting():  # the flattened features fix the input size
            check_faces(x, self.in_chans, "vulpe_cnn", size=self.img_size)
        return self.head(self.features(x))


class BasicBlock(nn.Module):
    """ResNet basic block: two 3x3 conv + BN, identity (or 1x1 conv + BN) shortcut, ReLU."""

    def __init__(self, in_chans: int, out_chans: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_chans, out_chans, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_chans)
        self.conv2 = nn.Conv2d(out_chans, out_chans, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_chans)
        self.act = nn.ReLU(inplace=True)
        if stride != 1 or in_chans != out_chans:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_chans, out_chans, 1, stride, bias=False),
                nn.BatchNorm2d(out_chans),
            )
        else:
            self.downsample = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = self.downsample(x)
        x = self.act(self.bn1(self.conv1(x)))
        x = self.bn2(self.conv2(x))
        return self.act(x + shortcut)


class ResNet18(nn.Module):
    """ResNet-18 (He et al., CVPR 2016) adapted to 48 x 48 gray faces, trained from scratch.

    BasicBlock stages of depths ``(2, 2, 2, 2)`` and widths ``(64, 128, 256, 512)`` with
    strides 1, 2, 2, 2, global average pooling, dropout, then the classifier.

    Interpretation (the usual small-image adaptation, not from the paper): the 7x7 stride-2
    stem and its max-pool become one 3x3 stride-1 conv + BN + ReLU, so the stages see
    48, 24, 12 and 6 pixels. Weights are initialised as in torchvision (He normal, fan-out).
    """

    def __init__(
        self,
        num_classes: int = 7,
        in_chans: int = 1,
        dropout: float = 0.0,
        depths: tuple[int, ...] = (2, 2, 2, 2),
        widths: tuple[int, ...] = (64, 128, 256, 512),
    ):
        super().__init__()
        self.in_chans = in_chans
        if len(depths) != len(widths):
            raise ValueError(f"depths and widths must be as long (one of each per stage), "
                             f"got {len(depths)} and {len(widths)}")
        self.stem = ConvBNReLU(in_chans, widths[0])
        stages = []
        prev = widths[0]
        for i, (depth, width) in enumerate(zip(depths, widths, strict=True)):
            stride = 1 if i == 0 else 2
            blocks = [BasicBlock(prev, width, stride)]
            blocks += [BasicBlock(width, width) for _ in range(depth - 1)]
            stages.append(nn.Sequential(*blocks))
            prev = width
        self.stages = nn.Sequential(*stages)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(prev, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The last stage's N x C x 6 x 6 feature map before pooling (used by Grad-CAM)."""
        return self.stages(self.stem(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.jit.is_scripting():
            check_faces(x, self.in_chans, "resnet18")
        x = self.features(x).mean(dim=(2, 3))
        return self.fc(self.dropout(x))


class VGGFer(nn.Module):
    """The VGG variant of Khaireddin & Chen (arXiv:2105.03588, 2021; 73.28% on FER2013).

    Four stages of two 3x3 conv + BN + ReLU layers (widths 64, 128, 256, 512), each stage
    followed by a 2x2 max-pool; then flatten, two fully connected layers of 4096 units with
    ReLU and dropout, and the classifier.

    Interpretation: the authors train and test on 40 x 40 crops (flattened features
    512 x 2 x 2); here the input is the whole 48 x 48 face, so the first fully connected
    layer takes 512 x 3 x 3 features. The convolutions carry no bias (the BatchNorm that
    follows has one). The default ``dropout=0.2`` is the default of the authors' model
    class; their training script's default is 0.1.
    """

    def __init__(
        self,
        num_classes: int = 7,
        in_chans: int = 1,
        dropout: float = 0.2,
        widths: tuple[int, ...] = (64, 128, 256, 512),
        hidden: int = 4096,
        img_size: int = 48,
    ):
        super().__init__()
        self.in_chans, self.img_size = in_chans, img_size
        stages = []
        prev = in_chans
        for width in widths:
            stages.append(
                nn.Sequential(ConvBNReLU(prev, width), ConvBNReLU(width, width), nn.MaxPool2d(2))
            )
            prev = width
        self.features = nn.Sequential(*stages)
        feat_size = img_size // 2 ** len(widths)
        self.head = nn.Sequential(
            nn.Flatten(),
            nn.Linear(prev * feat_size * feat_size, hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(hidden, hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.jit.is_scripting():  # the flattened features fix the input size
            check_faces(x, self.in_chans, "vgg_fer", size=self.img_size)
        return self.head(self.features(x))
