"""The ImageNet networks of the paper's Table 1, with torchvision's module names."""

import torch
import torch.nn as nn

from orchestrator.models.blocks import init_weights, make_layer


class ResNet(nn.Module):
    """7x7 stem, max pool, four stages of 64/128/256/512 planes, global average pool, fc.

    `block_options` go to every block: `shortcut` (None for the plain nets) and, for
    bottlenecks, `stride_in`.
    """

    def __init__(
        self,
        block: type[nn.Module],
        layers: list[int],
        num_classes: int = 1000,
        in_channels: int = 3,
        zero_init_residual: bool = False,
        **block_options,
    ) -> None:
        super().__init__()
        width = block.expansion
        self.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = make_layer(block, 64, 64, layers[0], **block_options)
        self.layer2 = make_layer(block, 64 * width, 128, layers[1], stride=2, **block_options)
        self.layer3 = make_layer(block, 128 * width, 256, layers[2], stride=2, **block_options)
        self.layer4 = make_layer(block, 256 * width, 512, layers[3], stride=2, **block_options)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(512 * width, num_classes)
        init_weights(self, zero_init_residual)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))
