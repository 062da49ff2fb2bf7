"""The CIFAR ResNets of the official long-tailed codes (LDAM-DRW, GLMC, FBL): ResNet-6n+2 for
32x32 inputs, 3 stages of n BasicBlocks with option-A (parameter-free) shortcuts.

resnet32 = widths 16/32/64 (≈0.46 M parameters), resnet32_w4 = 64/128/256 (GLMC's 4x wide,
≈7.4 M). The construction and init order here fix the random init of every CIFAR run: keep it.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from fasttrain.backbones.base import Backbone


class _OptionAShortcut(nn.Module):
    """Parameter-free shortcut: subsample by 2 and zero-pad channels (planes/4 on each side)."""

    def __init__(self, planes: int):
        super().__init__()
        self.pad = planes // 4

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad))


class _BasicBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_planes != planes:
            self.shortcut = _OptionAShortcut(planes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(Backbone):
    """ResNet-6n+2 for 32x32 inputs; n=5 gives ResNet-32. Its own trunk (checkpoint keys
    conv1.*, bn1.*, layers.*)."""

    def __init__(self, widths: tuple[int, int, int] = (16, 32, 64), blocks: int = 5):
        super().__init__()
        self.conv1 = nn.Conv2d(3, widths[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        layers, in_planes = [], widths[0]
        for i, w in enumerate(widths):
            for j in range(blocks):
                layers.append(_BasicBlock(in_planes, w, 2 if (j == 0 and i > 0) else 1))
                in_planes = w
        self.layers = nn.Sequential(*layers)
        self.feature_dim = widths[-1]
        for m in self.modules():  # Kaiming-normal fan-in (the official CIFAR codes' init)
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layers(x)
        return F.adaptive_avg_pool2d(x, 1).flatten(1)
