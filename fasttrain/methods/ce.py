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
- `sigmoid: true` — the one-vs-all sigmoid form of Cui et al.'s official code (`--loss-type sigmoid`,
  or `focal` with γ > 0), where the CB Focal number of the LDAM-DRW paper's Table 2 comes from:
  l = Σ_{i,c} w_{y_i} · (1 − p_ic)^γ · BCE(z_ic, [c = y_i]) / B, with p_ic the sigmoid probability of
  the right answer for class c (σ(z) for the label, 1 − σ(z) for the others). Every class term of
  sample i carries w_{y_i}, and the sum is divided by the batch size (the code's count of positive
  labels), so `weighted_mean` does not apply. As in that code the classifier's bias starts at
  −log(C − 1) (each class's sigmoid at its prior 1/C) and gets no weight decay. Prediction stays the
  argmax of the logits.
Balanced Softmax and Logit Adjustment subclass this method and set `train_offset` (softmax only).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn as nn
import torch.nn.functional as F

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
    sigmoid: bool = False  # one-vs-all sigmoid (focal) loss of Cui et al.'s code instead of the softmax
    # A subclass whose loss only exists in softmax form names itself here (sigmoid is refused).
    softmax_only: ClassVar[str | None] = None

    def validate(self) -> None:
        super().validate()
        if self.sigmoid and self.softmax_only:
            raise ValueError(f"method.sigmoid: {self.softmax_only} adjusts the softmax logits; it has no "
                             "sigmoid form (set method.sigmoid: false)")
        if self.sigmoid and self.focal_pt:
            raise ValueError("method.focal_pt: true picks p of the softmax focal loss; with method.sigmoid: true "
                             "p is each class's sigmoid (set method.focal_pt: false)")


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


def sigmoid_focal_loss(logits: torch.Tensor, labels: torch.Tensor, gamma: float,
                       weights: torch.Tensor | None = None) -> torch.Tensor:
    """Σ_{i,c} w_{y_i} (1 − p_ic)^γ BCE(z_ic, t_ic) / B in fp32 (Cui et al.'s sigmoid / focal loss;
    the module docstring). (1 − p)^γ = exp(−γ (t·z + log(1 + e^{−z}))) is the code's stable form."""
    z = logits.float()
    t = F.one_hot(labels.long(), z.shape[1]).to(z.dtype)
    loss = F.binary_cross_entropy_with_logits(z, t, reduction="none")
    if gamma > 0:
        loss = torch.exp(-gamma * (t * z + F.softplus(-z))) * loss
    if weights is not None:
        loss = loss * weights[labels][:, None]
    return loss.sum() / z.shape[0]


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
        if cfg.focal_gamma > 0 or cfg.sigmoid:
            what = "the sigmoid loss" if cfg.sigmoid else "the focal loss"
            key = "method.sigmoid: true" if cfg.sigmoid else "method.focal_gamma > 0"
            return f"method {cls.name} with {key} trains {what}, not the soft-label cross-entropy"
        return super().label_smoothing_refusal(cfg)

    def new_model(self, backbone: nn.Module) -> nn.Module:
        model = Classifier(backbone, self.ctx.num_classes, self.ctx.new_head(backbone))
        if self.cfg.sigmoid:
            bias = getattr(model.fc, "bias", None)
            if not isinstance(bias, torch.Tensor):
                raise ValueError(f"method.sigmoid: true starts the classifier bias at −log(C − 1), but the "
                                 f"model.head ({type(model.fc).__name__}) has no bias; use model.head: linear")
            with torch.no_grad():  # each class's sigmoid starts at its prior 1/C (Cui et al.'s code)
                bias.fill_(-math.log(max(self.ctx.num_classes - 1, 1)))
        return model

    def no_decay_parameters(self, model: nn.Module) -> set[str]:
        # Cui et al.'s code leaves the last layer's bias out of the weight decay in the sigmoid forms
        return {"fc.bias"} if self.cfg.sigmoid else set()

    def loss(self, model, batch, progress):
        (x,) = self.ctx.augmenter.views(batch)
        logits = model(x)
        cfg = self.cfg
        if cfg.sigmoid:
            loss = sigmoid_focal_loss(logits, batch.labels, cfg.focal_gamma, self.class_weights)
        elif cfg.focal_gamma > 0:
            loss = focal_loss(logits, batch.labels, cfg.focal_gamma, self.class_weights, self.train_offset,
                              cfg.focal_pt)
        else:
            loss = weighted_cross_entropy(logits, batch.labels, self.class_weights, cfg.weighted_mean,
                                          impl=self.ctx.loss_impl, logit_offset=self.train_offset,
                                          label_smoothing=self.ctx.label_smoothing)
        return loss, {"loss": loss.detach()}
