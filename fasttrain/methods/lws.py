"""LWS — learnable weight scaling (Kang et al., ICLR 2020), the calibration SSD's stages II / IV use.

Second stage on a trained model: the head's weights and bias stay fixed; learnable per-class
scales s (init 1) multiply the logits including the bias, z = s ⊙ (W f + b), and only s is
trained, with class-balanced sampling (class-aware, `class_aware_k` per class: 4 in the decoupling
code, 2 in SSD's stage II) and CE, on the frozen backbone. Weight decay applies to s as in the
codes (it pulls the scales toward 0, not toward 1). The head becomes a `ScaledLinear` (keys
`<head>.linear.weight/bias`, `<head>.scales`) when the stage starts.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch.nn as nn

from fasttrain.methods.base import register
from fasttrain.methods.retrain import HeadRetrainConfig, HeadRetraining, ScaledLinear


@dataclass
class LWSConfig(HeadRetrainConfig):
    sampler: str = "class_aware"
    class_aware_k: int = 4


@register("lws", LWSConfig)
class LWS(HeadRetraining):
    head_types = (nn.Linear, ScaledLinear)
    applies_label_smoothing = True

    def prepare(self, model: nn.Module) -> None:
        head = self.head_of(model)
        if not isinstance(head, ScaledLinear):
            head = ScaledLinear(head)
            setattr(model, self.cfg.head, head)
        self.freeze_all_but(model, [head.scales])
