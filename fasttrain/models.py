"""The backbone registry and factory, and the plain classifier.

`BACKBONES` is the one list of `model.arch` names and name families:

- `resnet32` / `resnet32_w4`: the CIFAR ResNet-32 (16/32/64) and GLMC's 4x wide one
  (64/128/256), fasttrain.backbones.cifar;
- `resnet10`: the ImageNet-LT ResNet-10 of OLTR / the decoupling paper (torchvision's ResNet
  class, one BasicBlock per stage, 512-d);
- `resnet50` / `resnext50_32x4d`: aliases of `torchvision/resnet50` / `torchvision/resnext50_32x4d`
  (the same construction as before, so their random init and checkpoint keys are unchanged);
- `timm/<name>`: every timm model (`timm.list_models()`), optionally `<name>.<pretrained tag>`;
- `torchvision/<name>`: every torchvision classification model whose classifier ends in a Linear;
- `open_clip/<arch>`: the image tower of an open_clip CLIP model (`open_clip.list_models()`),
  optional (`fasttrain[clip]`).

Every backbone maps (B, 3, H, W) -> (B, feature_dim) pooled features (fasttrain.backbones.base).
`build_backbone(model_cfg, ...)` applies `model.pretrained`, `model.drop_modules`,
`model.extra_block` and `model.freeze` on top of `create_backbone`. Library imports happen only
for library names (and the aliases of them).
"""
from __future__ import annotations

import difflib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from fasttrain.backbones import open_clip_family, timm_family, torchvision_family
from fasttrain.backbones.base import Backbone
from fasttrain.backbones.blocks import EXTRA_BLOCKS, add_extra_block, drop_modules
from fasttrain.backbones.cifar import CifarResNet  # noqa: F401  (GLMC's head_init reads the type)
from fasttrain.backbones.freeze import FREEZE_BN_MODES, TRUNK, freeze
from fasttrain.backbones.peft import PEFT_MODES, apply_peft
from fasttrain.backbones.weights import WeightsError, load_weights_file
from fasttrain.schema import ConfigError, suggest

log = logging.getLogger("fasttrain")

NAME = "<name>"  # the placeholder of a family key: "timm/<name>"
LIBRARY = "library"  # model.pretrained: library | library:<tag>


@dataclass(frozen=True)
class BackboneEntry:
    """One registry entry: a single model, an alias of another arch, or a family of names.

    build(name, kwargs, weights, library_weights) -> Backbone; `name` is the part after
    `family/` (empty for single models); `weights` the library tag of `model.pretrained`."""

    description: str
    build: Callable[..., Backbone] | None = None
    alias_of: str | None = None
    names: Callable[[], list[str]] | None = None  # a family: every name it accepts (imports the library)
    library_weights: bool = False  # can `model.pretrained: library` give weights?


def _single(factory: Callable[[dict], Backbone]) -> Callable[..., Backbone]:
    return lambda name, kwargs, weights=None, library_weights=False: factory(kwargs)


BACKBONES: dict[str, BackboneEntry] = {
    "resnet32": BackboneEntry("CIFAR ResNet-32, widths 16/32/64, 64-d",
                              _single(lambda kw: CifarResNet((16, 32, 64), **kw))),
    "resnet32_w4": BackboneEntry("CIFAR ResNet-32 4x wide (GLMC), widths 64/128/256, 256-d",
                                 _single(lambda kw: CifarResNet((64, 128, 256), **kw))),
    "resnet10": BackboneEntry("ResNet-10 of OLTR / decoupling (BasicBlock x [1,1,1,1]), 512-d",
                              _single(torchvision_family.build_resnet10)),
    "resnet50": BackboneEntry("alias of torchvision/resnet50", alias_of="torchvision/resnet50"),
    "resnext50_32x4d": BackboneEntry("alias of torchvision/resnext50_32x4d", alias_of="torchvision/resnext50_32x4d"),
    f"timm/{NAME}": BackboneEntry("every timm model: timm/<name> or timm/<name>.<pretrained tag>",
                                  timm_family.build, names=timm_family.names, library_weights=True),
    f"torchvision/{NAME}": BackboneEntry("torchvision classification models (Linear classifier)",
                                         torchvision_family.build, names=torchvision_family.names,
                                         library_weights=True),
    f"open_clip/{NAME}": BackboneEntry("CLIP image towers of open_clip (pip install fasttrain[clip]): open_clip/<arch>, "
                                       "weights by model.pretrained: library:<tag>",
                                       open_clip_family.build, names=open_clip_family.names, library_weights=True),
}


# --------------------------------------------------------------------------------------------
# Names
# --------------------------------------------------------------------------------------------


def _closest(word: str, candidates: list[str], n: int = 3) -> list[str]:
    return difflib.get_close_matches(word, candidates, n=n, cutoff=0.5)


def _family_key(arch: str) -> tuple[str, str]:
    family, sep, name = arch.partition("/")
    return (f"{family}/{NAME}", name) if sep else (arch, "")


def resolve_arch(arch: str) -> tuple[str, BackboneEntry, str]:
    """(canonical arch, entry, name within the family) for `arch`, aliases followed. An unknown
    name is a ConfigError naming model.arch and the closest names."""
    key, name = _family_key(arch)
    entry = BACKBONES.get(key)
    if entry is None:
        raise ConfigError(f"model.arch: unknown architecture {arch!r}{_unknown_hint(arch, key)}")
    if entry.alias_of is not None:
        return resolve_arch(entry.alias_of)
    if entry.names is not None:
        base = name.partition(".")[0]
        known = entry.names()
        if base not in known:
            close = [key.replace(NAME, n) for n in _closest(base, known)]
            hint = f"; closest: {', '.join(close)}" if close else ""
            raise ConfigError(f"model.arch: {key.split('/')[0]} has no model {base!r}{hint}")
        if name != base:  # a pretrained tag in the name (timm/<name>.<tag>)
            _check_timm_tag(key, name)
    return arch, entry, name


def _check_timm_tag(key: str, name: str) -> None:
    if not key.startswith("timm/"):
        raise ConfigError(f"model.arch: {key.split('/')[0]} model names have no '.<tag>' part, got {name!r}; "
                          "choose weights with model.pretrained: library:<tag>")
    tagged = timm_family.pretrained_names(name.partition(".")[0])
    if name not in tagged:
        raise ConfigError(f"model.arch: timm has no pretrained tag {name!r}; tags: {', '.join(tagged) or 'none'}")


def _unknown_hint(arch: str, key: str) -> str:
    singles = [k for k, e in BACKBONES.items() if NAME not in k]
    families = [k for k in BACKBONES if NAME in k]
    if "/" in arch:
        return f"; families: {', '.join(families)}"
    # A library model written without its family prefix (`resnet152`): name the prefixed forms.
    found = []
    for fam in families:
        try:
            if arch in BACKBONES[fam].names():
                found.append(fam.replace(NAME, arch))
        except ConfigError:  # the family's library is not installed
            continue
    close = found + _closest(arch, singles)
    shown = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
    return f"{shown} (names: {', '.join(singles)}; families: {', '.join(families)})"


def parse_pretrained(value: str | None) -> tuple[str | None, str | None]:
    """model.pretrained -> (None, None) | ("library", tag or None) | ("file", path)."""
    if value is None or value == "":
        return None, None
    head, sep, tag = value.partition(":")
    if head == LIBRARY:
        if sep and not tag:
            raise ConfigError("model.pretrained: `library:` needs a tag, e.g. library:IMAGENET1K_V1")
        return LIBRARY, tag or None
    return "file", value


def check_model_config(m: Any) -> None:
    """Check the model section (a fasttrain.config.ModelConfig) at config load: the arch name,
    the pretrained source's form, the freeze/extra-block choices. Weight files and module names
    are checked when the model is built (they need the files / the built trunk)."""
    arch, entry, name = resolve_arch(m.arch)
    kind, tag = parse_pretrained(m.pretrained)
    if kind == LIBRARY:
        if not entry.library_weights:
            raise ConfigError(f"model.pretrained: {m.arch} has no library weights; give a weights file "
                              "(.pth / .pt / .safetensors) instead")
        if tag is not None and arch.startswith("torchvision/"):
            valid = torchvision_family.weight_names(name)
            if tag not in valid:
                raise ConfigError(f"model.pretrained: {arch} has no weights {tag!r}; tags: {', '.join(valid)}")
        if tag is not None and arch.startswith("timm/"):
            if "." in name:
                raise ConfigError(f"model.pretrained: the tag is given twice ({m.arch} and library:{tag}); keep one")
            _check_timm_tag("timm/", f"{name}.{tag}")
        if tag is not None and arch.startswith("open_clip/"):
            tags = open_clip_family.pretrained_tags(name)
            if tag not in tags:
                raise ConfigError(f"model.pretrained: open_clip has no weights {tag!r} for {name}; tags: "
                                  f"{', '.join(tags) or 'none'}")
    if m.freeze_bn not in FREEZE_BN_MODES:
        raise ConfigError(f"model.freeze_bn: expected one of {list(FREEZE_BN_MODES)}, got {m.freeze_bn!r}"
                          f"{suggest(str(m.freeze_bn), list(FREEZE_BN_MODES))}")
    if m.extra_block is not None and m.extra_block not in EXTRA_BLOCKS:
        raise ConfigError(f"model.extra_block: expected one of {list(EXTRA_BLOCKS)} or null, got {m.extra_block!r}"
                          f"{suggest(str(m.extra_block), list(EXTRA_BLOCKS))}")
    if m.freeze == "":
        raise ConfigError(f"model.freeze: expected null, `{TRUNK}` or a trunk module name, got ''")
    if m.peft not in ("none",) and m.freeze is not None:
        raise ConfigError(f"model.freeze and model.peft={m.peft} both choose what of the backbone trains; "
                          "keep one (model.peft freezes everything but its modules)")
    if getattr(m, "head_init", "random") == "text" and "{}" not in m.head_prompt:
        raise ConfigError(f"model.head_prompt: needs a {{}} where the class name goes, got {m.head_prompt!r}")
    if "num_classes" in m.arch_kwargs:
        raise ConfigError("model.arch_kwargs: num_classes is not a backbone argument (the method's heads "
                          "take the dataset's class count)")


# --------------------------------------------------------------------------------------------
# Building
# --------------------------------------------------------------------------------------------


def create_backbone(arch: str, *, kwargs: dict | None = None, library_weights: bool = False,
                    weights: str | None = None) -> Backbone:
    """Build backbone `arch` (random init, or the library's weights `weights` / its default)."""
    canonical, entry, name = resolve_arch(arch)
    if library_weights and not entry.library_weights:
        raise ConfigError(f"model.pretrained: {arch} has no library weights; give a weights file instead")
    try:
        backbone = entry.build(name, dict(kwargs or {}), weights, library_weights=library_weights)
    except TypeError as exc:  # a constructor argument the model does not take
        if not kwargs:
            raise
        raise ConfigError(f"model.arch_kwargs: {canonical} does not accept {kwargs} ({exc})") from None
    backbone.arch = arch
    return backbone


def build_backbone(m: Any, *, load_pretrained: bool = True, num_classes: int | None = None) -> Backbone:
    """The backbone of model section `m` (a ModelConfig), in this order: created (with the
    library's weights for `model.pretrained: library`), `model.drop_modules` removed, a weights
    file loaded (`load_pretrained` false skips both kinds of weights: a run that starts from a
    checkpoint, evaluation), the extra block added (its random init after the trunk's), then
    `model.freeze` applied, then `model.peft` (fasttrain.backbones.peft; `num_classes` feeds its
    LIFT-rule defaults)."""
    kind, value = parse_pretrained(m.pretrained)
    library = load_pretrained and kind == LIBRARY
    backbone = create_backbone(m.arch, kwargs=m.arch_kwargs, library_weights=library, weights=value if library else None)
    if library:
        log.info("model.pretrained: %s with the library's weights (%s)", m.arch, value or "default")
    if m.drop_modules:
        drop_modules(backbone, m.drop_modules)
    if load_pretrained and kind == "file":
        report = load_weights_file(backbone, value, ignore=m.pretrained_ignore, prefix=m.pretrained_prefix,
                                   strict=m.pretrained_strict)
        (log.info if report.ok else log.warning)("model.pretrained: %s", report.describe())
        backbone.on_weights_file(value)
    if m.extra_block is not None:
        add_extra_block(backbone, m.extra_block)
    if m.freeze is not None:
        log.info("%s", freeze(backbone, m.freeze, m.freeze_bn).describe())
    if getattr(m, "peft", "none") != "none":
        apply_peft(backbone, m, num_classes)
    return backbone


def linear_head(in_dim: int, num_classes: int) -> nn.Linear:
    """A Linear head with Kaiming-normal weight (as the official CIFAR codes initialise it)."""
    fc = nn.Linear(in_dim, num_classes)
    nn.init.kaiming_normal_(fc.weight)
    return fc


class CosineClassifier(nn.Module):
    """Cosine-similarity head: logits = scale · <x / |x|, w_c / |w_c|>. LIFT's classifier (its code:
    fixed scale 25, weights from the class prompts' text features); `learn_scale` makes the scale a
    trainable scalar starting at `scale`."""

    def __init__(self, in_dim: int, num_classes: int, scale: float = 25.0, learn_scale: bool = False):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_classes, in_dim))
        nn.init.kaiming_normal_(self.weight)
        if learn_scale:
            self.scale = nn.Parameter(torch.tensor(float(scale)))
        else:
            self.register_buffer("scale", torch.tensor(float(scale)))

    @classmethod
    def from_text(cls, backbone: Backbone, class_names: list[str], template: str = "a photo of a {}.",
                  **kwargs) -> "CosineClassifier":
        """Weights = the normalised text features of `template` filled with each class name, from
        the text tower of an open_clip backbone (`encode_class_prompts`)."""
        feats = text_features(backbone, class_names, template)
        head = cls(feats.shape[1], feats.shape[0], **kwargs)
        with torch.no_grad():
            head.weight.copy_(feats)
        return head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = F.normalize(self.weight, dim=-1)
        return F.linear(F.normalize(x, dim=-1), w.to(x.dtype)) * self.scale.to(x.dtype)


HEAD_KINDS = ("linear", "cosine")
HEAD_INITS = ("random", "text")


@dataclass(frozen=True)
class HeadSpec:
    """The `fc` head a CE-family method builds (model.head / head_scale / head_learn_scale /
    head_init / head_prompt)."""

    kind: str = "linear"  # linear: nn.Linear | cosine: CosineClassifier
    scale: float = 25.0  # cosine: logit scale
    learn_scale: bool = False  # cosine: the scale trains
    init: str = "random"  # random | text: the class prompts' text features (open_clip backbones)
    prompt: str = "a photo of a {}."

    @property
    def is_default(self) -> bool:
        return self.kind == "linear" and self.init == "random"


def build_head(spec: HeadSpec, backbone: Backbone, num_classes: int, class_names: list[str] | None = None
               ) -> nn.Module:
    """The head of `spec` on `backbone`'s features. A text-initialised head takes the normalised
    text features of `spec.prompt` per class name as its weights (a linear head's bias starts at 0),
    as LIFT initialises its classifier."""
    if spec.kind == "cosine":
        if spec.init == "text":
            return CosineClassifier.from_text(backbone, _names(class_names), spec.prompt, scale=spec.scale,
                                              learn_scale=spec.learn_scale)
        return CosineClassifier(backbone.feature_dim, num_classes, spec.scale, spec.learn_scale)
    fc = linear_head(backbone.feature_dim, num_classes)
    if spec.init == "text":
        feats = text_features(backbone, _names(class_names), spec.prompt)
        with torch.no_grad():
            fc.weight.copy_(feats)
            fc.bias.zero_()
    return fc


def _names(class_names: list[str] | None) -> list[str]:
    if not class_names:
        raise ConfigError("model.head_init: text needs the dataset's class names (none were given)")
    return class_names


def text_features(backbone: Backbone, class_names: list[str], template: str) -> torch.Tensor:
    """(C, feature_dim) normalised prompt features from the text tower of an open_clip backbone."""
    encode = getattr(backbone, "encode_class_prompts", None)
    if encode is None:
        raise ConfigError(f"model.head_init: text needs a CLIP backbone (open_clip/<arch>) with its text tower, "
                          f"not {getattr(backbone, 'arch', type(backbone).__name__)}")
    return encode(list(class_names), template)


class Classifier(nn.Module):
    """backbone -> fc. The plain model used by CE and the logit-adjusting baselines; `fc` is a
    linear head unless given (model.head, `build_head`)."""

    def __init__(self, backbone: nn.Module, num_classes: int, fc: nn.Module | None = None):
        super().__init__()
        self.backbone = backbone
        self.fc = fc if fc is not None else linear_head(backbone.feature_dim, num_classes)

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


def to_contiguous(model: nn.Module) -> nn.Module:
    """4-D weights back to contiguous NCHW (the inverse of `to_channels_last`)."""
    return model.to(memory_format=torch.contiguous_format)


__all__ = ["BACKBONES", "HEAD_INITS", "HEAD_KINDS", "PEFT_MODES", "BackboneEntry", "Backbone", "CifarResNet", "Classifier",
           "HeadSpec", "WeightsError", "build_backbone", "build_head", "text_features",
           "check_model_config", "CosineClassifier", "count_parameters", "create_backbone", "linear_head", "parse_pretrained",
           "resolve_arch", "to_channels_last", "to_contiguous"]
