"""Cross-entropy with the standard re-weighting options: instance-balanced sampling, one linear head.

Options of the plain method (the LDAM-DRW code base's CE variants, which FBL's code also carries):
- `reweight: cb` — class-balanced loss (Cui et al., CVPR 2019): per-class weights from the
  effective number of samples, w_c = (1 − β)/(1 − β^{n_c}) normalised to sum C (β = `cb_beta`),
  through the fused loss as `class_weights`. `weighted_mean: true` divides by Σ_i w_{y_i} as
  `F.cross_entropy(weight=w)` (the code), false divides by B.
- `focal_gamma: γ > 0` — focal loss (Lin et al., ICCV 2017) as the LDAM code's `FocalLoss`:
  l_i = (1 − p_i)^γ · ce_i with ce_i = w_{y_i}·CE_i and p_i = exp(−ce_i), mean over the batch.
  With class weights p_i is therefore exp(−w·CE), the code's quirk (`focal_pt: true` uses the
  softmax probability of the true class instead). Not a soft-target loss, so it runs in plain
  torch (fp32) rather than the fused kernel; γ = 0 is CE and takes the fused path.
Balanced Softmax and Logit Adjustment subclass this method and set `train_offset`.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from fasttrain.kernels.soft_ce import soft_target_cross_entropy
from fasttrain.methods.base import Method, MethodConfig, register
from fasttrain.methods.priors import effective_number_weights
from fasttrain.models import Classifier
from fasttrain.schema import option

REWEIGHTS = ("none", "cb")


@dataclass
class CEConfig(MethodConfig):
    reweight: str = option("none", choices=REWEIGHTS)  # none | cb (effective-number class-balanced weights)
    cb_beta: float = option(0.9999, ge=0, lt=1)  # β of the effective number
    weighted_mean: bool = True  # reweight cb: divide by Σ w_y (F.cross_entropy(weight=)) instead of B
    focal_gamma: float = option(0.0, ge=0, finite=True)  # γ of the focal loss; 0 = cross-entropy
    focal_pt: bool = False  # focal: p from the softmax instead of exp(−weighted CE) (code: false)


def weighted_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor | None,
                           weighted_mean: bool, impl: str = "auto", **kwargs) -> torch.Tensor:
    """CE through the fused loss with optional class weights; `weighted_mean` divides the weighted
    sum by Σ_i w_{y_i} (what F.cross_entropy(weight=) does) instead of by the batch size."""
    if weights is not None and weighted_mean:
        loss = soft_target_cross_entropy(logits, y_a=labels, class_weights=weights, reduction="sum",
                                         impl=impl, **kwargs)
        return loss / weights[labels].sum()
    return soft_target_cross_entropy(logits, y_a=labels, class_weights=weights, impl=impl, **kwargs)


def focal_loss(logits: torch.Tensor, labels: torch.Tensor, gamma: float, weights: torch.Tensor | None = None,
               logit_offset: torch.Tensor | None = None, pt_from_softmax: bool = False) -> torch.Tensor:
    """mean_i (1 − p_i)^γ · w_{y_i} · CE_i in fp32 (see the module docstring for p_i)."""
    z = logits.float()
    if logit_offset is not None:
        z = z + logit_offset
    logp = torch.log_softmax(z, dim=1).gather(1, labels[:, None].long())[:, 0]
    ce = -logp if weights is None else -logp * weights[labels]
    p = logp.exp() if pt_from_softmax else torch.exp(-ce)
    return ((1.0 - p).pow(gamma) * ce).mean()


@register("ce", CEConfig)
class CrossEntropy(Method):
    applies_label_smoothing = True
    configurable_head = True
    # Per-class offset added to the logits in the training loss only (Balanced Softmax,
    # Logit Adjustment subclass this and set it); None = plain CE.
    train_offset: torch.Tensor | None = None

    def __init__(self, cfg: CEConfig, ctx):
        super().__init__(cfg, ctx)
        self.class_weights = None
        if cfg.reweight == "cb":
            self.class_weights = effective_number_weights(ctx.train_counts, cfg.cb_beta).to(ctx.device)

    @classmethod
    def label_smoothing_refusal(cls, cfg: CEConfig) -> str | None:
        if cfg.focal_gamma > 0:
            return (f"method {cls.name} with method.focal_gamma > 0 trains the focal loss, not the soft-label "
                    "cross-entropy")
        return super().label_smoothing_refusal(cfg)

    def new_model(self, backbone: nn.Module) -> nn.Module:
        return Classifier(backbone, self.ctx.num_classes, self.ctx.new_head(backbone))

    def loss(self, model, batch, progress):
        (x,) = self.ctx.augmenter.views(batch)
        logits = model(x)
        cfg = self.cfg
        if cfg.focal_gamma > 0:
            loss = focal_loss(logits, batch.labels, cfg.focal_gamma, self.class_weights, self.train_offset,
                              cfg.focal_pt)
        else:
            loss = weighted_cross_entropy(logits, batch.labels, self.class_weights, cfg.weighted_mean,
                                          impl=self.ctx.loss_impl, logit_offset=self.train_offset,
                                          label_smoothing=self.ctx.label_smoothing)
        return loss, {"loss": loss.detach()}
