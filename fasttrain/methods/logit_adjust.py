"""Logit Adjustment (Menon et al., "Long-tail learning via logit adjustment", ICLR 2021).

Two forms, chosen by `posthoc`:
- loss (default, `posthoc: false`): the logit-adjusted loss
      L = CE(z + τ·log π, y),   π_c = n_c / N (training label prior)
  and plain logits z at test time;
- post-hoc (`posthoc: true`): train with plain CE, predict with z − τ·log π.
τ = 1 is the paper's default (and the Bayes-optimal choice for the balanced error). The
offset goes through the fused soft-label CE as a per-class `logit_offset`.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from fasttrain.methods.base import register
from fasttrain.methods.ce import CEConfig, CrossEntropy
from fasttrain.methods.priors import log_prior
from fasttrain.schema import option


@dataclass
class LogitAdjustConfig(CEConfig):  # CE's re-weighting / focal options apply too
    softmax_only = "Logit Adjustment"
    tau: float = option(1.0, ge=0, finite=True)  # τ scaling the log prior
    # false: logit-adjusted loss, plain logits at test; true: plain CE, adjusted logits at test.
    posthoc: bool = False


@register("logit_adjust", LogitAdjustConfig)
class LogitAdjust(CrossEntropy):

    def __init__(self, cfg: LogitAdjustConfig, ctx):
        super().__init__(cfg, ctx)
        self.offset = (cfg.tau * log_prior(ctx.train_counts)).to(ctx.device)  # τ·log π, (C,)
        # CE's loss with logits + τ·log π, or plain CE when the adjustment is post-hoc.
        self.train_offset = None if cfg.posthoc else self.offset

    @torch.no_grad()
    def predict(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        logits = model(x)
        if self.cfg.posthoc:
            return logits.float() - self.offset  # fp32: the adjustment is a few units of logit
        return logits
