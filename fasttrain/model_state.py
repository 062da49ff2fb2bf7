"""What of a model a checkpoint stores, and loading it back.

A run that trains every weight stores them all. A parameter-efficient run (`model.peft` other than
none / full, on `model.pretrained` weights) trains adapters, prompts or biases and a head — often
well under 1 % of a ViT — so its checkpoints (last.pt, best.pt) hold every weight except the
pretrained ones model.peft froze (adapters, head, buffers; a later stage keeps the adapters it froze
in turn), plus `weights_ref`: the pretrained weights the frozen rest is rebuilt from and the keys left
out. Loading such a checkpoint builds the model with those weights first (fasttrain.build), then lays
the stored tensors over it; a missing weights file is one line that says so.
"""
from __future__ import annotations

import logging

import torch.nn as nn

from fasttrain.checkpoint import CheckpointError
from fasttrain.methods.base import load_exactly

WEIGHTS_REF = "weights_ref"  # the checkpoint key of a trainable-only checkpoint's reference
# The model attribute naming the state keys that are pretrained and frozen by model.peft, set once
# when a parameter-efficient model is built (before any stage freezes more): what requires_grad says at
# save time is no guide (a cRT stage freezes the trained adapters too, an EMA copy freezes everything).
FROZEN_KEYS = "_fasttrain_pretrained_frozen"

log = logging.getLogger("fasttrain")


def trainable_only(model_cfg) -> bool:
    """Whether a run of model section `model_cfg` stores only its trainable weights: PEFT on
    pretrained weights (without a weights source the frozen rest could not be rebuilt: stored whole)."""
    return model_cfg.peft not in ("none", "full") and model_cfg.pretrained is not None


def mark_pretrained_frozen(model: nn.Module) -> None:
    """Record on `model` which of its weights are pretrained and frozen now (right after the build,
    model.peft applied): the weights its checkpoints leave to model.pretrained."""
    frozen = sorted(n for n, p in model.named_parameters(remove_duplicate=False) if not p.requires_grad)
    object.__setattr__(model, FROZEN_KEYS, frozen)


def checkpoint_weights(model: nn.Module, model_cfg) -> dict:
    """{"model": weights[, "weights_ref": {...}]}: the entries a checkpoint of `model` stores."""
    state = model.state_dict()
    frozen = set(getattr(model, FROZEN_KEYS, None) or ())
    if not trainable_only(model_cfg) or not frozen:
        return {"model": state}
    kept = {k: v for k, v in state.items() if k not in frozen}
    return {"model": kept, WEIGHTS_REF: {"pretrained": model_cfg.pretrained, "arch": model_cfg.arch,
                                          "peft": model_cfg.peft, "stored_tensors": len(kept),
                                          "frozen_tensors": len(state) - len(kept), "frozen_keys": sorted(frozen)}}


def load_weights(model: nn.Module, state: dict, what: str = "the model", model_cfg=None) -> None:
    """Load checkpoint `state`'s model weights into `model`: exactly (a whole checkpoint), or, for a
    trainable-only one, every stored tensor over a model whose frozen weights are already the
    referenced pretrained ones (only the checkpoint's `frozen_keys` may be absent). With `model_cfg`
    (the section the model was built from), a trainable-only checkpoint needs the same arch and
    model.peft and some model.pretrained (another path than the recorded one is logged)."""
    load_exactly(model, complete_weights(model, state, what, model_cfg), what)
    ref = state.get(WEIGHTS_REF)
    if ref is not None:
        frozen = ref.get("frozen_keys") or ()
        object.__setattr__(model, FROZEN_KEYS, sorted(frozen))  # its own checkpoints leave the same weights out


def _check_reference(ref: dict, what: str, model_cfg) -> None:
    """A trainable-only checkpoint's reference against the model section the model was built from
    (same arch and model.peft, some pretrained weights; another path is logged)."""
    written = f"written for {ref.get('arch')} with model.peft={ref.get('peft')} on model.pretrained={ref.get('pretrained')}"
    if model_cfg is not None:
        if model_cfg.pretrained is None or (model_cfg.arch, model_cfg.peft) != (ref.get("arch"), ref.get("peft")):
            raise CheckpointError(f"{what}: the checkpoint stores only the trainable weights ({written}); build the "
                                  "model with that arch, model.peft and pretrained weights (model.pretrained), not "
                                  f"{model_cfg.arch} / {model_cfg.peft} / {model_cfg.pretrained}")
        if model_cfg.pretrained != ref.get("pretrained"):
            log.warning("%s: frozen weights from model.pretrained=%s; the checkpoint was written with %s",
                        what, model_cfg.pretrained, ref.get("pretrained"))


def complete_weights(model: nn.Module, state: dict, what: str = "the model", model_cfg=None) -> dict:
    """Every weight of checkpoint `state` as one dict: its own tensors, and for a trainable-only one
    the frozen ones taken from `model`, built on the referenced pretrained weights — for loaders that
    map a whole checkpoint themselves (`Method.load_init_state` of model.init_from: a stage started
    alone, SSD's teacher)."""
    ref = state.get(WEIGHTS_REF)
    if ref is None:
        return state["model"]
    _check_reference(ref, what, model_cfg)
    own = model.state_dict()
    frozen = ref.get("frozen_keys") or ()
    missing = [k for k in frozen if k not in own]
    if missing:
        raise CheckpointError(f"{what}: its frozen pretrained weights ({', '.join(missing[:5])}, ...) have no place in "
                              "this model: build it with the checkpoint's structure (method.base_method)")
    return {**{k: own[k] for k in frozen}, **state["model"]}
