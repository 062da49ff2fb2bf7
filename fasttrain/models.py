"""Backbones (feature extractors that know nothing about training) and a plain classifier.

- resnet32 / resnet32_w4: CIFAR ResNet-32 (3 stages x 5 BasicBlocks, option-A shortcuts),
  widths 16/32/64 (standard, ≈0.46 M params) or 64/128/256 (GLMC's 4x wide, ≈7.4 M).
- resnet50 / resnext50_32x4d: torchvision layouts (Kaiming fan-out init), 2048-d feature.
Every backbone maps (B, 3, H, W) -> (B, feature_dim) pooled features. Models are built in
channels_last memory format by `to_channels_last` (the trainer calls it).
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F


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


class CifarResNet(nn.Module):
    """ResNet-6n+2 for 32x32 inputs; n=5 gives ResNet-32."""

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


class _TorchvisionTrunk(nn.Module):
    """A torchvision ResNet/ResNeXt without its fc: returns the pooled 2048-d feature."""

    def __init__(self, name: str):
        super().__init__()
        import torchvision

        net = getattr(torchvision.models, name)(weights=None)
        self.feature_dim = net.fc.in_features
        net.fc = nn.Identity()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


BACKBONES: dict[str, Callable[[], nn.Module]] = {
    "resnet32": lambda: CifarResNet((16, 32, 64)),
    "resnet32_w4": lambda: CifarResNet((64, 128, 256)),
    "resnet50": lambda: _TorchvisionTrunk("resnet50"),
    "resnext50_32x4d": lambda: _TorchvisionTrunk("resnext50_32x4d"),
}


def create_backbone(arch: str) -> nn.Module:
    """Build a backbone by name; it has a `feature_dim` attribute."""
    if arch not in BACKBONES:
        raise ValueError(f"model.arch: unknown architecture {arch!r}; choose from {sorted(BACKBONES)}")
    return BACKBONES[arch]()


def linear_head(in_dim: int, num_classes: int) -> nn.Linear:
    """A Linear head with Kaiming-normal weight (as the official CIFAR codes initialise it)."""
    fc = nn.Linear(in_dim, num_classes)
    nn.init.kaiming_normal_(fc.weight)
    return fc


class Classifier(nn.Module):
    """backbone -> fc. The plain model used by CE and the logit-adjusting baselines."""

    def __init__(self, backbone: nn.Module, num_classes: int):
        super().__init__()
        self.backbone = backbone
        self.fc = linear_head(backbone.feature_dim, num_classes)

    def forward(self, x: torch.Tensor, with_features: bool = False):
        """Logits; with `with_features`, (logits, pooled features) — for losses of the feature
        (FBL's norm stimulus) through the same (possibly compiled) forward."""
        h = self.backbone(x)
        logits = self.fc(h)
        return (logits, h) if with_features else logits


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def to_channels_last(model: nn.Module) -> nn.Module:
    return model.to(memory_format=torch.channels_last)
