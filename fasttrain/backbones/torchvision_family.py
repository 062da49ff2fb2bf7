"""torchvision classification models by name (`torchvision/<name>`), without their classifier.

Every model of `torchvision.models.list_models(module=torchvision.models)` whose classifier ends
in a Linear layer works: the last Linear is replaced by Identity, so the backbone returns what
fed it (ResNets: the pooled 2048-d feature; VGG / MobileNet: the penultimate hidden layer; ViT:
the class token). Inception / GoogLeNet lose their auxiliary heads (they would change the
training-mode output). ResNet-family trunks also expose their last feature map, which the
Places-LT protocol's extra block needs.

torchvision is imported inside the functions, so `import fasttrain.models` stays cheap.
"""
from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlparse

import torch
import torch.nn as nn

from fasttrain.backbones.base import LibraryBackbone
from fasttrain.backbones.weights import WeightsError
from fasttrain.schema import ConfigError

AUX_HEADS = ("AuxLogits", "aux1", "aux2")  # Inception v3 / GoogLeNet auxiliary classifiers


def names() -> list[str]:
    import torchvision.models as tvm

    return sorted(tvm.list_models(module=tvm))


class TorchvisionBackbone(LibraryBackbone):
    def _is_resnet(self) -> bool:
        import torchvision.models as tvm

        return isinstance(self.net, tvm.ResNet)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        if not self._is_resnet():
            return super().features(x)
        n = self.net  # torchvision ResNet._forward_impl up to layer4
        x = n.maxpool(n.relu(n.bn1(n.conv1(x))))
        return n.layer4(n.layer3(n.layer2(n.layer1(x))))

    def pool(self, fmap: torch.Tensor) -> torch.Tensor:
        if not self._is_resnet():
            return super().pool(fmap)
        return torch.flatten(self.net.avgpool(fmap), 1)


def wrap(net: nn.Module, arch: str) -> TorchvisionBackbone:
    """`net` without its classifier (last Linear -> Identity) and auxiliary heads."""
    import torchvision.models as tvm

    linears = [(name, m) for name, m in net.named_modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ConfigError(f"model.arch: {arch} has no Linear classifier to remove (e.g. SqueezeNet's "
                           "convolutional classifier), so it cannot serve as a feature extractor here")
    key, fc = linears[-1]
    parent, _, attr = key.rpartition(".")
    setattr(net.get_submodule(parent), attr, nn.Identity())
    removed = [key]
    if getattr(net, "aux_logits", False):
        net.aux_logits = False
    for aux in AUX_HEADS:
        if getattr(net, aux, None) is not None:
            setattr(net, aux, None)
            removed.append(aux)
    channels = fc.in_features if isinstance(net, tvm.ResNet) else None
    return TorchvisionBackbone(net, fc.in_features, arch, tuple(removed), map_channels=channels)


def weight_names(name: str) -> list[str]:
    import torchvision.models as tvm

    return ["DEFAULT"] + [w.name for w in tvm.get_model_weights(name)]


def _weights_enum(name: str, tag: str | None):
    import torchvision.models as tvm

    tag = tag or "DEFAULT"
    valid = weight_names(name)
    if tag not in valid:
        raise WeightsError(f"model.pretrained: torchvision/{name} has no weights {tag!r}; expected "
                           f"library or library:<one of {', '.join(valid)}>")
    return tvm.get_model_weights(name)[tag]


def cache_path(url: str) -> Path:
    """Where torch.hub keeps (and looks for) a downloaded checkpoint: $TORCH_HOME/hub/checkpoints."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(url).path)


def build(name: str, kwargs: dict, weights: str | None = None, *, library_weights: bool = False) -> TorchvisionBackbone:
    """torchvision/<name>; with `library_weights`, torchvision's weights `weights` (default
    DEFAULT) from the torch.hub cache, downloaded there first when the machine can."""
    import torchvision.models as tvm

    arch = f"torchvision/{name}"
    if not library_weights:
        return wrap(tvm.get_model(name, weights=None, **kwargs), arch)
    w = _weights_enum(name, weights)
    cached = cache_path(w.url)
    try:
        net = tvm.get_model(name, weights=w, **kwargs)
    except Exception as exc:  # URLError, HTTPError, timeouts, hash or unpickling errors
        what = f"torchvision weights {type(w).__name__}.{w.name} for {arch}"
        if cached.is_file():
            raise WeightsError(f"model.pretrained: {what}: the cached file {cached} does not load "
                               f"({type(exc).__name__}: {exc}); delete it and place a good copy of {w.url} "
                               "there") from None
        raise WeightsError(
            f"model.pretrained: {what} are not in the local cache and could not be downloaded "
            f"({type(exc).__name__}: {exc}). Place the file {cached.name} (from {w.url}) at {cached} "
            f"(torch.hub's cache, under $TORCH_HOME), or put it anywhere and set "
            f"model.pretrained=/path/to/{cached.name}") from None
    return wrap(net, arch)


def build_resnet10(kwargs: dict) -> TorchvisionBackbone:
    """ResNet-10 of OLTR / the decoupling paper (their ImageNet-LT backbone): torchvision's ResNet
    with one BasicBlock per stage (7x7 stem, widths 64-512), 512-d feature. No library weights."""
    from torchvision.models.resnet import BasicBlock, ResNet

    return wrap(ResNet(BasicBlock, [1, 1, 1, 1], **kwargs), "resnet10")
