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

from fasttrain.methods.base import register
from fasttrain.methods.ce import CEConfig, CrossEntropy
from fasttrain.methods.priors import log_count_offset


@dataclass
class BalancedSoftmaxConfig(CEConfig):  # CE's re-weighting / focal options apply too
    softmax_only = "Balanced Softmax"


@register("balanced_softmax", BalancedSoftmaxConfig)
class BalancedSoftmax(CrossEntropy):

    def __init__(self, cfg: BalancedSoftmaxConfig, ctx):
        super().__init__(cfg, ctx)
        self.offset = log_count_offset(ctx.train_counts).to(ctx.device)
        self.train_offset = self.offset  # CE's loss with logits + log n_c

    @torch.no_grad()
    def predict(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return model(x)  # plain logits: the offset only models the training prior
