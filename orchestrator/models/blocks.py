"""Building blocks of the ResNet paper's networks, laid out as torchvision's resnet.py.

A block's `shortcut` is the paper's option: "A" (zero-padding identity), "B" (projection
where the shape changes), "C" (projection on every block), or None for a plain block, which
adds nothing back. Projections live under `downsample` (a 1x1 conv and a BatchNorm), as in
torchvision, so state_dicts are interchangeable.
"""

import torch
import torch.nn as nn
import torch.nn.functional as F

SHORTCUTS = ("A", "B", "C")
STRIDE_IN = ("v1", "v1.5")


def conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    """3x3 convolution with padding"""
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


def conv1x1(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    """1x1 convolution"""
    return nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False)


class ZeroPadShortcut(nn.Module):
    """Option A: the identity on a strided subsample, the extra channels zero. No parameters."""

    def __init__(self, out_planes: int, stride: int) -> None:
        super().__init__()
        self.out_planes = out_planes
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, 0, self.out_planes - x.shape[1]))

    def extra_repr(self) -> str:
        return f"out_planes={self.out_planes}, stride={self.stride}"


def make_shortcut(shortcut: str | None, in_planes: int, out_planes: int, stride: int) -> nn.Module | None:
    """The module that maps a block's input onto its output's shape; None for the identity
    (or, with shortcut=None, for no shortcut at all)."""
    if shortcut not in (None, *SHORTCUTS):
        raise ValueError(f"shortcut must be one of {', '.join(SHORTCUTS)} or None, got {shortcut!r}")
    reshapes = stride != 1 or in_planes != out_planes
    if shortcut == "C" or (shortcut == "B" and reshapes):
        return nn.Sequential(conv1x1(in_planes, out_planes, stride), nn.BatchNorm2d(out_planes))
    if shortcut == "A" and reshapes:
        return ZeroPadShortcut(out_planes, stride)
    return None


class BasicBlock(nn.Module):
    """Two 3x3 convs (ResNet-18/34 and the CIFAR nets)."""

    expansion: int = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, shortcut: str | None = "B") -> None:
        super().__init__()
        self.conv1 = conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.residual = shortcut is not None
        self.downsample = make_shortcut(shortcut, inplanes, planes, stride)
        self.stride = stride

    @property
    def last_bn(self) -> nn.BatchNorm2d:
        return self.bn2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.residual:
            out += x if self.downsample is None else self.downsample(x)
        return self.relu(out)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3, 1x1 expand (ResNet-50/101/152).

    stride_in "v1" strides the first 1x1 as the paper does, which drops 3/4 of its input;
    "v1.5" (torchvision's) strides the 3x3 instead: about 0.5% better top-1 (NVIDIA's
    measurement) for 6% more MACs on ResNet-50 (4.09 G instead of 3.86 G).
    """

    expansion: int = 4

    def __init__(
        self, inplanes: int, planes: int, stride: int = 1, shortcut: str | None = "B", stride_in: str = "v1.5"
    ) -> None:
        super().__init__()
        if stride_in not in STRIDE_IN:
            raise ValueError(f"stride_in must be one of {', '.join(STRIDE_IN)}, got {stride_in!r}")
        stride1, stride2 = (stride, 1) if stride_in == "v1" else (1, stride)
        self.conv1 = conv1x1(inplanes, planes, stride1)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes, stride2)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = conv1x1(planes, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.residual = shortcut is not None
        self.downsample = make_shortcut(shortcut, inplanes, planes * self.expansion, stride)
        self.stride = stride

    @property
    def last_bn(self) -> nn.BatchNorm2d:
        return self.bn3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.residual:
            out += x if self.downsample is None else self.downsample(x)
        return self.relu(out)


def make_layer(
    block: type[nn.Module], inplanes: int, planes: int, blocks: int, stride: int = 1, **block_options
) -> nn.Sequential:
    """A stage of `blocks` blocks; only the first one changes the resolution and the width."""
    layers = [block(inplanes, planes, stride, **block_options)]
    layers += [block(planes * block.expansion, planes, **block_options) for _ in range(1, blocks)]
    return nn.Sequential(*layers)


def init_weights(model: nn.Module, zero_init_residual: bool = False) -> None:
    """torchvision's initialization: He normal (fan_out) convs, BatchNorm weight 1 and bias 0."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d) and not m.weight.is_meta:
            # Meta tensors hold no values, and normal_ on them runs Python reference code
            # (~1 ms per tensor): building resnet152 on "meta" would take 1.7 s instead of 0.1.
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    if zero_init_residual:
        # Each residual block then starts as the identity (Goyal et al., 2017).
        for m in model.modules():
            if isinstance(m, (BasicBlock, Bottleneck)) and m.residual:
                nn.init.zeros_(m.last_bn.weight)
