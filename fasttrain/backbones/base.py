"""The backbone interface: a feature extractor (B, 3, H, W) -> (B, feature_dim) that knows
nothing about training. Methods put their heads on `feature_dim`; pretrained weights load into
`trunk`; freezing works on `trunk`'s modules; an extra block works on the feature map.
"""
from __future__ import annotations

import torch
import torch.nn as nn


class Backbone(nn.Module):
    """Base of every backbone. Subclasses set `feature_dim` and implement `forward`.

    `trunk` is the module laid out like the library's checkpoints (a torchvision / timm model
    without its classifier, or the CIFAR ResNet itself), so a library state dict loads into it
    key for key. `removed_keys` name the trunk modules removed by design (the library's
    classifier, Inception's auxiliary heads, `model.drop_modules`): a checkpoint's weights for
    them are expected and dropped, not reported as unexpected.
    """

    feature_dim: int
    arch: str = ""
    trunk_name: str = ""  # path of the trunk inside this module ("" = the backbone itself)
    removed_keys: tuple[str, ...] = ()
    map_channels: int | None = None  # channels of `features(x)`; None = no feature-map access

    def __init__(self) -> None:
        super().__init__()
        # Modules of a frozen part that stay in eval mode while the model trains (see
        # fasttrain.backbones.freeze); a plain tuple of names so the state dict is unchanged.
        self.kept_in_eval: tuple[str, ...] = ()

    @property
    def trunk(self) -> nn.Module:
        return self.get_submodule(self.trunk_name)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The trunk's last feature map (B, map_channels, h, w), before pooling."""
        raise NotImplementedError(f"{self.arch or type(self).__name__} gives pooled features only")

    def pool(self, fmap: torch.Tensor) -> torch.Tensor:
        """Feature map -> (B, feature_dim), as the trunk pools its own map."""
        raise NotImplementedError(f"{self.arch or type(self).__name__} gives pooled features only")

    def on_weights_file(self, path: str) -> None:
        """Called after `model.pretrained: FILE` loaded into the trunk (open_clip towers note the
        file for their text tower)."""

    def train(self, mode: bool = True) -> "Backbone":
        # The trainer calls model.train() every epoch; nn.Module.train recurses through this
        # override, so a frozen part in eval mode stays there whatever the caller does.
        super().train(mode)
        if mode:
            for name in self.kept_in_eval:
                self.get_submodule(name).eval()
        return self


class LibraryBackbone(Backbone):
    """A library classification model (`net`) whose classifier was replaced by Identity, plus an
    optional extra block on its feature map (`extra`, outside the trunk: never loaded from a
    library checkpoint, never part of a frozen trunk)."""

    trunk_name = "net"

    def __init__(self, net: nn.Module, feature_dim: int, arch: str, removed_keys: tuple[str, ...],
                 map_channels: int | None = None):
        super().__init__()
        self.net = net
        self.feature_dim = int(feature_dim)
        self.arch = arch
        self.removed_keys = tuple(removed_keys)
        self.map_channels = map_channels
        self.extra: nn.Module | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.extra is None:
            return self.net(x)  # the library's own forward, minus the classifier
        return self.pool(self.extra(self.features(x)))
