"""The optimizer of a run (`optim.*`): SGD or AdamW over the method's trainable parameters, and the
parameter groups that weight-decay exclusion and layer-wise lr decay need.

- `optim.name: sgd | adamw` — torch's SGD / AdamW, fused on CUDA (`optim.fused`); apex FusedSGD for
  SGD with `optim.apex`.
- `optim.no_decay` (auto: on for AdamW, off for SGD): norm weights and biases (every parameter of
  ndim <= 1, and every `*.bias`), the backbone's own no-decay parameters (timm's `no_weight_decay()`:
  class / register / distillation tokens, position embeddings) and `nn.Embedding` weights go into a
  group with weight decay 0.
- `optim.layer_decay` (timm backbones): the trunk's layers as timm groups them
  (`timm.models.group_parameters` with the model's `group_matcher`); parameters outside the trunk
  (the method's heads) form the last layer, as an unmatched head does in timm. Layer l of L (0 =
  stem, L - 1 = the heads) gets `lr_scale = layer_decay ** (L - 1 - l)`; the trainer sets each
  group's lr to the schedule's lr x its `lr_scale`.

- a method's own no-decay parameters (`Method.no_decay_parameters`: CE's `sigmoid` form leaves
  the classifier bias undecayed, as Cui et al.'s code) join the weight-decay-0 group.

With none of these (every other shipped SGD recipe) the optimizer gets the plain parameter list,
exactly as before these options existed, so those runs are bit-identical.
"""
from __future__ import annotations

import fnmatch
import logging

import torch
import torch.nn as nn

from fasttrain.schema import ConfigError

log = logging.getLogger("fasttrain")


def uses_no_decay(optim_cfg) -> bool:
    """`optim.no_decay` resolved: auto is on for AdamW and off for SGD."""
    if optim_cfg.no_decay == "auto":
        return optim_cfg.name == "adamw"
    return bool(optim_cfg.no_decay)


def _timm_trunks(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(prefix, module) of every timm model inside `model` (what has timm's `group_matcher`), outermost only."""
    found: list[tuple[str, nn.Module]] = []
    for name, module in model.named_modules():
        if callable(getattr(module, "group_matcher", None)) and not any(name.startswith(p) for p, _ in found):
            found.append((name + "." if name else "", module))
    return found


def no_decay_names(model: nn.Module, named: list[tuple[str, nn.Parameter]]) -> set[str]:
    """Names of the parameters in `named` that get no weight decay (see the module docstring)."""
    patterns = []
    for prefix, trunk in _timm_trunks(model):
        listed = trunk.no_weight_decay() if callable(getattr(trunk, "no_weight_decay", None)) else ()
        patterns += [prefix + p for p in listed]
    embeddings = {f"{name}.weight" if name else "weight" for name, m in model.named_modules()
                  if isinstance(m, nn.Embedding)}
    return {name for name, p in named
            if p.ndim <= 1 or name.endswith(".bias") or name in embeddings
            or any(fnmatch.fnmatch(name, pat) or name.startswith(pat + ".") for pat in patterns)}


class _Names:
    """What timm's `group_parameters` reads of a model: its named parameters (here: names only)."""

    def __init__(self, names: list[str]):
        self.names = names

    def named_parameters(self):
        return ((name, None) for name in self.names)


HEAD = "<head>/"  # prefix of the names outside the trunk: no timm matcher pattern matches it


def layer_ids(model: nn.Module, arch: str, trainable: set[str] | None = None) -> tuple[dict[str, int], int]:
    """({parameter name: layer id}, number of layers) of `model` by its timm trunk's grouping
    (`group_matcher(coarse=False)` through `timm.models.group_parameters`). The parameters outside
    the trunk (the method's heads) are unmatched names, which timm puts in one last layer, as it does
    a timm model's own classifier. A backbone without a layer grouping is a ConfigError naming it.
    `trainable`: the names trained (the trunk holding them is the one grouped)."""
    trunks = [(prefix, t) for prefix, t in _timm_trunks(model)
              if trainable is None or any(n.startswith(prefix) for n in trainable)]
    if not trunks:
        raise ConfigError(f"optim.layer_decay: backbone {arch!r} has no layer grouping (timm's group_matcher); "
                          "layer-wise lr decay needs a timm backbone such as timm/vit_base_patch16_224")
    if len(trunks) > 1:
        raise ConfigError(f"optim.layer_decay: the model trains {len(trunks)} timm backbones "
                          f"({', '.join(p.rstrip('.') for p, _ in trunks)}); layer-wise lr decay groups one")
    from timm.models import group_parameters

    prefix, trunk = trunks[0]
    names = [n for n, _ in model.named_parameters()]
    local = [n[len(prefix):] if n.startswith(prefix) else HEAD + n for n in names]
    by_local = group_parameters(_Names(local), trunk.group_matcher(coarse=False), reverse=True)
    ids = {name: by_local[loc] for name, loc in zip(names, local)}
    count = max(ids.values()) + 1
    if count < 2:
        raise ConfigError(f"optim.layer_decay: backbone {arch!r} has a single layer group in timm's grouping; "
                          "layer-wise lr decay needs a backbone with blocks (set optim.layer_decay: null)")
    return ids, count


def parameter_groups(cfg, model: nn.Module, params: list[nn.Parameter],
                     method_no_decay: set[str] | frozenset[str] = frozenset()) -> list[dict]:
    """The optimizer's parameter groups for `params` (trainable parameters of `model`): each
    {params, names, weight_decay[, lr_scale, layer]}; one group `{params}` when neither
    `optim.no_decay` nor `optim.layer_decay` applies and the method names no parameter of its own
    to train without decay (`method_no_decay`, Method.no_decay_parameters)."""
    o = cfg.optim
    if not uses_no_decay(o) and o.layer_decay is None and not method_no_decay:
        return [{"params": list(params)}]
    wanted = {id(p) for p in params}
    named = [(n, p) for n, p in model.named_parameters() if id(p) in wanted]
    if len(named) != len(wanted):
        raise ValueError("optimizer: some trainable parameters are not parameters of the model")
    unknown = sorted(set(method_no_decay) - {n for n, _ in model.named_parameters()})
    if unknown:
        raise ValueError(f"optimizer: the method's no-decay parameters {unknown} are not parameters of the model")
    skip = (no_decay_names(model, named) if uses_no_decay(o) else set()) | set(method_no_decay)
    layers, count = (layer_ids(model, cfg.model.arch, {n for n, _ in named}) if o.layer_decay is not None
                     else ({}, 1))
    groups: dict[tuple[int, bool], dict] = {}
    for name, p in named:
        layer, decay = layers.get(name, 0), name not in skip
        group = groups.setdefault((layer, decay), {"params": [], "names": [],
                                                   "weight_decay": o.weight_decay if decay else 0.0})
        if o.layer_decay is not None:
            group.update(layer=layer, lr_scale=o.layer_decay ** (count - 1 - layer))
        group["params"].append(p)
        group["names"].append(name)
    return [groups[k] for k in sorted(groups, key=lambda k: (k[0], not k[1]))]


def build_optimizer(cfg, params, device: torch.device, model: nn.Module | None = None,
                    method_no_decay: set[str] | frozenset[str] = frozenset()) -> torch.optim.Optimizer:
    """The run's optimizer over `params` (the method's trainable parameters of `model`); groups by
    `parameter_groups` (needs `model` for optim.no_decay / optim.layer_decay / `method_no_decay`)."""
    o = cfg.optim
    params = list(params)
    if model is not None:
        groups = [{k: v for k, v in g.items() if k not in ("names", "layer")}
                  for g in parameter_groups(cfg, model, params, method_no_decay)]
        # the initial lr of each group; the trainer sets lr x lr_scale at every schedule update
        for g in groups:
            if "lr_scale" in g:
                g["lr"] = o.lr * g["lr_scale"]
        params = groups if len(groups) > 1 or len(groups[0]) > 1 else params
    elif uses_no_decay(o) or o.layer_decay is not None or method_no_decay:
        raise ValueError("build_optimizer: optim.no_decay / optim.layer_decay need the model (parameter names)")
    fused = (o.fused and device.type == "cuda") or None
    if o.name == "adamw":
        return torch.optim.AdamW(params, lr=o.lr, betas=tuple(o.betas), eps=o.eps, weight_decay=o.weight_decay,
                                 fused=fused)
    if o.apex:
        try:
            from apex.optimizers import FusedSGD  # type: ignore

            return FusedSGD(params, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay, nesterov=o.nesterov)
        except ImportError:
            log.warning("optim.apex=true but apex is not importable; using torch SGD")
    return torch.optim.SGD(params, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay,
                           nesterov=o.nesterov, fused=fused)
