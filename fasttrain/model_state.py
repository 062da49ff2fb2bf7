"""What of a model a checkpoint stores, and loading it back.

A run that trains every weight stores them all. A parameter-efficient run (`model.peft` other than
none / full, on `model.pretrained` weights) trains adapters, prompts or biases and a head — often
well under 1 % of a ViT — so its checkpoints (last.pt, best.pt) hold only the trainable parameters
and the buffers, plus `weights_ref`: the pretrained weights the frozen rest is rebuilt from. Loading
such a checkpoint builds the model with those weights first (fasttrain.build), then lays the stored
tensors over it; a missing weights file is one line that says so.
"""
from __future__ import annotations

import torch.nn as nn

from fasttrain.checkpoint import CheckpointError
from fasttrain.methods.base import load_exactly

WEIGHTS_REF = "weights_ref"  # the checkpoint key of a trainable-only checkpoint's reference


def trainable_only(model_cfg) -> bool:
    """Whether a run of model section `model_cfg` stores only its trainable weights: PEFT on
    pretrained weights (without a weights source the frozen rest could not be rebuilt: stored whole)."""
    return model_cfg.peft not in ("none", "full") and model_cfg.pretrained is not None


def frozen_names(model: nn.Module) -> set[str]:
    return {name for name, p in model.named_parameters() if not p.requires_grad}


def checkpoint_weights(model: nn.Module, model_cfg) -> dict:
    """{"model": weights[, "weights_ref": {...}]}: the entries a checkpoint of `model` stores."""
    state = model.state_dict()
    if not trainable_only(model_cfg):
        return {"model": state}
    frozen = frozen_names(model)
    kept = {k: v for k, v in state.items() if k not in frozen}
    return {"model": kept, WEIGHTS_REF: {"pretrained": model_cfg.pretrained, "arch": model_cfg.arch,
                                          "peft": model_cfg.peft, "stored_tensors": len(kept),
                                          "frozen_tensors": len(state) - len(kept)}}


def load_weights(model: nn.Module, state: dict, what: str = "the model") -> None:
    """Load checkpoint `state`'s model weights into `model`: exactly (a whole checkpoint), or, for a
    trainable-only one, every stored tensor over a model whose frozen weights are already the
    referenced pretrained ones (only frozen parameters may be absent)."""
    ref = state.get(WEIGHTS_REF)
    if ref is None:
        load_exactly(model, state["model"], what)
        return
    stored = state["model"]
    own = model.state_dict()
    unexpected = [k for k in stored if k not in own]
    absent = [k for k in own if k not in stored and k not in frozen_names(model)]
    if unexpected or absent:
        raise CheckpointError(f"{what}: the checkpoint's trainable weights do not fit this model "
                              f"(unexpected: {', '.join(unexpected[:5]) or 'none'}; not stored: "
                              f"{', '.join(absent[:5]) or 'none'}); it was written for {ref.get('arch')} "
                              f"with model.peft={ref.get('peft')}")
    model.load_state_dict(stored, strict=False)
