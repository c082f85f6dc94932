"""The CIFAR-10 networks of the paper's section 4.2: depth 6n+2 on 32x32 inputs."""

import torch
import torch.nn as nn

from orchestrator.models.blocks import BasicBlock, conv3x3, init_weights, make_layer


class CifarResNet(nn.Module):
    """3x3 stem of 16 channels, three stages of n basic blocks at 16/32/64 planes (feature maps
    32, 16, 8 on a 32x32 input), global average pool, fc.

    `shortcut` is the paper's option ("A" there), or None for the plain nets.
    """

    def __init__(
        self,
        n: int,
        num_classes: int = 10,
        in_channels: int = 3,
        zero_init_residual: bool = False,
        shortcut: str | None = "A",
    ) -> None:
        super().__init__()
        self.conv1 = conv3x3(in_channels, 16)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = make_layer(BasicBlock, 16, 16, n, shortcut=shortcut)
        self.layer2 = make_layer(BasicBlock, 16, 32, n, stride=2, shortcut=shortcut)
        self.layer3 = make_layer(BasicBlock, 32, 64, n, stride=2, shortcut=shortcut)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(64, num_classes)
        init_weights(self, zero_init_residual)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(self.avgpool(x), 1))
