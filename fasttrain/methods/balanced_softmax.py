"""Balanced Softmax (Ren et al., "Balanced Meta-Softmax for Long-Tailed Visual Recognition",
NeurIPS 2020), the loss without the meta sampler.

Training adds the log class count to every logit before the softmax cross-entropy:

    L = CE(z + log n, y),   n = per-class training counts

which makes the softmax model the *training* label distribution while z itself estimates the
balanced one; test time uses the plain logits z. log n_c differs from log π_c = log(n_c / N) by a
constant, which the softmax ignores. The offset goes through the fused soft-label CE as a
per-class `logit_offset`, so no B×C temporary is built.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from fasttrain.methods.base import MethodConfig, refuse_previous_stage
from fasttrain.methods.ce import CrossEntropy
from fasttrain.models import Classifier


@dataclass
class BalancedSoftmaxConfig(MethodConfig):
    name: str = "balanced_softmax"


def log_count_offset(counts: torch.Tensor) -> torch.Tensor:
    """log n_c as fp32 (computed in float64). A class absent from training (n_c = 0) gets the
    offset of a singleton class instead of −inf, so its logit stays trainable and finite."""
    return counts.double().clamp_min(1).log().float()


class BalancedSoftmax(CrossEntropy):
    name = "balanced_softmax"
    config_class = BalancedSoftmaxConfig
    num_views = 1

    def __init__(self, cfg: BalancedSoftmaxConfig, ctx):
        super().__init__(cfg, ctx)
        self.offset = log_count_offset(ctx.train_counts).to(ctx.device)
        self.train_offset = self.offset  # CE's loss with logits + log n_c

    def build_model(self, backbone: nn.Module, previous: nn.Module | None = None) -> nn.Module:
        refuse_previous_stage(self.name, previous)
        return Classifier(backbone, self.ctx.num_classes)

    @torch.no_grad()
    def predict(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return model(x)  # plain logits: the offset only models the training prior
