"""Freezing a backbone's trunk, or the part of it up to a named module (`model.freeze`).

`trunk` freezes every trunk parameter; a module name (e.g. `layer3`, `stages.2`, `blocks.5`)
freezes what the trunk registers up to and including that module, in registration order: for
a torchvision ResNet `layer3` freezes conv1, bn1, layer1, layer2 and layer3. Frozen parameters
get `requires_grad=False`, so methods leave them out of the optimiser (no update, no weight
decay) and autograd builds no graph through a frozen prefix. Extra blocks
(fasttrain.backbones.blocks) and the method's heads are outside the trunk and stay trainable.

`model.freeze_bn` is the frozen part's mode while the model trains:
- `eval` (default; the OLTR / FBL Places-LT protocol): the frozen modules stay in eval mode,
  so BatchNorm normalises with its (pretrained) running statistics and never updates them, and
  dropout / drop-path are off: the frozen part is a fixed function;
- `train`: they follow the model's mode, so BatchNorm uses batch statistics and keeps updating
  its running statistics (what MaxNorm's reference does with its frozen backbone).
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass

import torch.nn as nn

from fasttrain.schema import ConfigError

TRUNK = "trunk"
FREEZE_BN_MODES = ("eval", "train")


@dataclass
class FrozenPart:
    upto: str
    frozen_parameters: int  # number of scalars
    trainable_parameters: int  # the rest of the backbone
    kept_in_eval: tuple[str, ...]

    def describe(self) -> str:
        mode = f"{len(self.kept_in_eval)} module(s) kept in eval mode" if self.kept_in_eval else "BN in train mode"
        return (f"model.freeze={self.upto}: {self.frozen_parameters:,} backbone parameters frozen, "
                f"{self.trainable_parameters:,} trainable; {mode}")


def _span_end(names: list[str], upto: str, arch: str) -> int:
    """Index one past the last module of `upto`'s subtree in pre-order (`named_modules`)."""
    if upto not in names or upto == "":
        tops = [n for n in names if n and "." not in n]
        close = difflib.get_close_matches(upto, [n for n in names if n], n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
        raise ConfigError(f"model.freeze: {arch} has no trunk module {upto!r}{hint} (`trunk` = all of it; "
                          f"top-level modules: {', '.join(tops)})")
    end = names.index(upto) + 1
    while end < len(names) and names[end].startswith(upto + "."):
        end += 1
    return end


def freeze(backbone, upto: str, bn_mode: str = "eval") -> FrozenPart:
    """Freeze `backbone.trunk` up to `upto` (`trunk` = all); see the module docstring."""
    if bn_mode not in FREEZE_BN_MODES:
        raise ConfigError(f"model.freeze_bn: expected one of {list(FREEZE_BN_MODES)}, got {bn_mode!r}")
    trunk: nn.Module = backbone.trunk
    modules = list(trunk.named_modules())
    names = [n for n, _ in modules]
    end = len(modules) if upto == TRUNK else _span_end(names, upto, backbone.arch)
    span = modules[:end]
    for _, module in span:  # parameters registered directly on each module of the span
        for p in module.parameters(recurse=False):
            p.requires_grad_(False)
    kept: list[str] = []
    if bn_mode == "eval":
        # Ancestors of `upto` hold unfrozen modules too: only whole frozen subtrees go to eval,
        # and only the top-most of them (eval() recurses).
        whole = [n for n, _ in span if upto == TRUNK or not (n == "" or upto.startswith(n + "."))]
        for n in whole:
            if not any(n != k and (k == "" or n.startswith(k + ".")) for k in kept):
                kept.append(n)
        base = backbone.trunk_name
        kept = [".".join(p for p in (base, n) if p) for n in kept]
    backbone.kept_in_eval = tuple(kept)
    backbone.train(backbone.training)  # apply the mode now
    frozen = sum(p.numel() for p in backbone.parameters() if not p.requires_grad)
    trainable = sum(p.numel() for p in backbone.parameters() if p.requires_grad)
    return FrozenPart(upto, frozen, trainable, backbone.kept_in_eval)
