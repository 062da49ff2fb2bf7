"""Every timm model by name (`timm/<name>` or `timm/<name>.<pretrained tag>`), without its
classifier (`num_classes=0`: timm's own pooled pre-logits features).

Library weights come from timm's sources through the local caches: a file already in the
Hugging Face cache (or torch.hub's, for older URL weights) is loaded without touching the
network; otherwise timm downloads it, and where that fails the error says which file to place
where. timm is imported inside the functions, so `import fasttrain.models` stays cheap.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn

from fasttrain.backbones.base import LibraryBackbone
from fasttrain.backbones.weights import WeightsError

HF_FILES = ("model.safetensors", "pytorch_model.bin")  # what timm publishes on the Hub, preferred first


def _timm():
    try:
        import timm
    except ImportError:  # a dependency in setup.py, but an environment may lack it
        raise WeightsError("model.arch: timm/<name> needs the timm package: pip install timm") from None
    return timm


def names() -> list[str]:
    return _timm().list_models()


def pretrained_names(base: str) -> list[str]:
    """`<base>.<tag>` of every pretrained weight set timm has for architecture `base`."""
    return _timm().list_pretrained(f"{base}.*")


class TimmBackbone(LibraryBackbone):
    def features(self, x: torch.Tensor) -> torch.Tensor:
        fmap = self.net.forward_features(x)
        if fmap.ndim != 4:  # ViTs give tokens (B, N, D)
            raise ValueError(f"{self.arch}: forward_features gives shape {tuple(fmap.shape)}, not a feature map")
        return fmap

    def pool(self, fmap: torch.Tensor) -> torch.Tensor:
        return self.net.forward_head(fmap, pre_logits=True)


def _wrap(net: nn.Module, arch: str) -> TimmBackbone:
    classifier = net.pretrained_cfg.get("classifier") or ()
    keys = (classifier,) if isinstance(classifier, str) else tuple(classifier)
    # Some models (MobileNetV3, EfficientNet-style heads) pool into a wider hidden layer.
    dim = getattr(net, "head_hidden_size", None) or net.num_features
    # forward_features of a CNN gives (B, num_features, h, w); a ViT's gives tokens, which
    # fasttrain.backbones.blocks finds out with a dry run before it adds a block.
    return TimmBackbone(net, dim, arch, keys, map_channels=net.num_features)


def _cached_file(cfg) -> str | None:
    """A local copy of the weights `cfg` (timm's PretrainedCfg) points to, or None."""
    if cfg.hf_hub_id:
        from huggingface_hub import try_to_load_from_cache

        repo, _, revision = cfg.hf_hub_id.partition("@")
        for filename in ((cfg.hf_hub_filename,) if cfg.hf_hub_filename else HF_FILES):
            found = try_to_load_from_cache(repo, filename, revision=revision or None)
            if isinstance(found, str):  # None: unknown; a sentinel object: known to be absent
                return found
    if cfg.url:
        from fasttrain.backbones.torchvision_family import cache_path

        path = cache_path(cfg.url)
        if path.is_file():
            return str(path)
    return None


def _hub_cache() -> str:
    from huggingface_hub import constants

    return str(constants.HF_HUB_CACHE)


def build(name: str, kwargs: dict, weights: str | None = None, *, library_weights: bool = False) -> TimmBackbone:
    """timm/<name>; with `library_weights`, timm's weights (tag `weights`, or the one in
    `name`, or timm's default) from the local cache, downloaded first when the machine can."""
    timm = _timm()
    arch = f"timm/{name}"
    if not library_weights:
        return _wrap(timm.create_model(name, pretrained=False, num_classes=0, **kwargs), arch)
    full = f"{name.partition('.')[0]}.{weights}" if weights else name
    cfg = timm.models.get_pretrained_cfg(full)
    if cfg is None:
        raise WeightsError(f"model.pretrained: timm has no pretrained weights for {full}")
    local = _cached_file(cfg)
    if local is not None:  # timm's own loader (checkpoint filters, classifier removal), no network
        net = timm.create_model(full, pretrained=True, num_classes=0, pretrained_cfg_overlay={"file": local},
                                **kwargs)
        return _wrap(net, arch)
    try:
        net = timm.create_model(full, pretrained=True, num_classes=0, **kwargs)
    except Exception as exc:  # offline, HTTP errors, timeouts
        where = cfg.hf_hub_id or cfg.url
        fname = cfg.hf_hub_filename or HF_FILES[0]
        source = (f"https://huggingface.co/{cfg.hf_hub_id}/resolve/main/{fname}" if cfg.hf_hub_id else cfg.url)
        raise WeightsError(
            f"model.pretrained: timm weights {full} ({where}) are not in the local cache and could not be "
            f"downloaded ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}). Either download "
            f"{source} and set model.pretrained=/path/to/{Path(source).name}, or fill the Hugging Face cache "
            f"{_hub_cache()} (follows $HF_HOME / $HF_HUB_CACHE) on this machine, e.g. copy the folder "
            f"models--{(cfg.hf_hub_id or '').partition('@')[0].replace('/', '--')} from a machine that ran "
            f"`hf download {cfg.hf_hub_id}`") from None
    return _wrap(net, arch)
