"""Changing a trunk's blocks: removing trunk modules (`model.drop_modules`) and adding an extra
trainable block on its last feature map (`model.extra_block`).

The FBL Places-LT protocol uses both: its ResNet-152 trunk is torchvision's with the last
Bottleneck of layer4 removed (`drop_modules: [layer4.2]`; the code builds layers [3, 8, 36, 2]
and deletes layer4.2 from the ImageNet weights), frozen, followed by a new trainable Bottleneck
(`extra_block: bottleneck`, 2048 -> 512 -> 2048, stride 1), average pooling and the linear head.

`bottleneck`: torchvision's Bottleneck class, d -> d/4 -> d, identity shortcut, with PyTorch's
default initialisation of a freshly built module (FBL builds its block so).
"""
from __future__ import annotations

import difflib
from collections.abc import Callable

import torch
import torch.nn as nn

from fasttrain.schema import ConfigError

PROBE_SIZE = 64  # side of the dry-run input that checks the trunk has a feature map


def bottleneck(channels: int) -> nn.Module:
    from torchvision.models.resnet import Bottleneck

    if channels % Bottleneck.expansion:
        raise ConfigError(f"model.extra_block: bottleneck needs channels divisible by 4, got {channels}")
    return Bottleneck(channels, channels // Bottleneck.expansion)


# model.extra_block -> builder(channels of the feature map) -> block keeping those channels.
EXTRA_BLOCKS: dict[str, Callable[[int], nn.Module]] = {"bottleneck": bottleneck}


def drop_modules(backbone, names: list[str]) -> None:
    """Replace trunk modules by Identity (each must map its input shape to itself, like the last
    block of a stage); their checkpoint keys become `removed_keys`, dropped on load."""
    trunk = backbone.trunk
    known = [n for n, _ in trunk.named_modules() if n]
    for name in names:
        if name not in known:
            close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
            hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
            raise ConfigError(f"model.drop_modules: {backbone.arch} has no trunk module {name!r}{hint}")
        parent, _, attr = name.rpartition(".")
        setattr(trunk.get_submodule(parent), attr, nn.Identity())
    backbone.removed_keys = tuple(backbone.removed_keys) + tuple(names)


def _probe_channels(backbone) -> int | None:
    """Channels of the trunk's feature map from a tiny eval-mode forward (no RNG, no BN update)."""
    was_training = backbone.training
    backbone.eval()
    try:
        with torch.no_grad():
            fmap = backbone.features(torch.zeros(1, 3, PROBE_SIZE, PROBE_SIZE))
    except Exception:  # no feature-map access, or a trunk that wants another input size (ViTs)
        return None
    finally:
        backbone.train(was_training)
    return int(fmap.shape[1]) if fmap.ndim == 4 else None


def add_extra_block(backbone, kind: str) -> nn.Module:
    """Put block `kind` between `backbone`'s feature map and its pooling; returns the block."""
    if kind not in EXTRA_BLOCKS:
        raise ConfigError(f"model.extra_block: expected one of {list(EXTRA_BLOCKS)} or null, got {kind!r}")
    channels = backbone.map_channels and _probe_channels(backbone)
    if not channels or not hasattr(backbone, "extra"):
        raise ConfigError(f"model.extra_block: {backbone.arch} gives no spatial feature map to put a block on "
                          "(supported: torchvision ResNet-family trunks and convolutional timm models)")
    backbone.extra = EXTRA_BLOCKS[kind](channels)
    return backbone.extra
