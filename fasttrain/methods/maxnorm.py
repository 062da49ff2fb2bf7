"""MaxNorm classifier re-training (Alshammari et al., "Long-Tailed Recognition via Weight
Balancing", CVPR 2022 — second stage), as GLMC's authors point to for "GLMC + MaxNorm".

Specification: the reference second stage of LTR-weight-balancing (ShadeAlsha/LTR-weight-balancing,
demo2_second-stage-training.py; docs: user-guide/methods/glmc.md, MaxNorm second stage):
- start from a trained model; freeze everything except one classifier head (`head`,
  default GLMC's `fc_cb`): its weight and bias are the only trainable parameters;
- threshold computed once from the starting head: δ = min_c ‖w_c‖ + τ·(max_c ‖w_c‖ −
  min_c ‖w_c‖), τ = `thresh`; the bias is unconstrained (threshold +∞);
- class-balanced loss of Cui et al. (effective number, β = `cb_beta`); the reference's
  "softmax" variant is a binary cross-entropy between softmax probabilities and the one-hot
  label, weighted per sample by its class weight (`loss: cb_softmax_bce`); `cb_ce` is the
  weighted softmax CE of Cui et al.'s paper;
- PGD: every row with ‖w_c‖ > δ is rescaled to norm δ — once per epoch after its updates in
  the reference code (`pgd_every: epoch`), after every SGD step as the paper words it (`step`).
The optimiser recipe (SGD lr 0.01, wd 0.1, 10 epochs, cosine, B 64, instance sampling) lives
in the run config (configs/glmc/*_maxnorm.yaml).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from fasttrain.kernels.soft_ce import soft_target_cross_entropy
from fasttrain.methods.base import Progress, register
from fasttrain.methods.priors import effective_number_weights
from fasttrain.methods.retrain import HeadRetrainConfig, HeadRetraining
from fasttrain.schema import option

PGD_EVERY = ("epoch", "step")
LOSSES = ("cb_softmax_bce", "cb_ce")


@dataclass
class MaxNormConfig(HeadRetrainConfig):
    # base_method / base_config: the model structure to build when there is no previous stage
    # (a standalone run from a checkpoint via model.init_from). HeadRetrainConfig also has
    # bn_mode (train = reference: whole model in train mode, batch statistics, running stats
    # keep updating) and the stage's sampler (instance, as the reference).
    head: str = "fc_cb"  # the Linear head to re-train (and to predict with): GLMC's reweighted head
    thresh: float = option(0.1, ge=0, le=1)  # τ of the per-layer max-norm threshold
    pgd_every: str = option("epoch", choices=PGD_EVERY)  # epoch (reference code) | step (paper wording)
    loss: str = option("cb_softmax_bce", choices=LOSSES)  # cb_softmax_bce (reference code) | cb_ce
    cb_beta: float = option(0.9999, ge=0, lt=1)  # effective-number β of the class-balanced weights


def cb_softmax_bce(logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """The reference's "softmax" CB loss: mean over B×C of w_{y_i}·BCE(softmax(z_i)_c, onehot_ic).

    Written with log-softmax (autocast-safe, unlike F.binary_cross_entropy); the logs are
    clamped at −100 like PyTorch's BCE, which is what the reference calls. log(1 − p) comes
    from expm1 (accurate for p near 1) with 1 − p floored at 1e-38 (smallest normal fp32) so
    a saturated softmax gives a finite loss and gradient instead of NaN.
    """
    z = logits.float()
    logp = torch.log_softmax(z, dim=1)
    log1mp = torch.log((-torch.expm1(logp)).clamp_min(1e-38)).clamp_min(-100.0)
    logp = logp.clamp_min(-100.0)
    onehot = torch.zeros_like(z).scatter_(1, labels[:, None], 1.0)
    bce = -(onehot * logp + (1.0 - onehot) * log1mp)
    return (bce * weights[labels][:, None]).mean()


def maxnorm_threshold(weight: torch.Tensor, thresh: float) -> torch.Tensor:
    """δ = min_c ‖w_c‖ + τ (max_c ‖w_c‖ − min_c ‖w_c‖) as a 0-dim fp32 tensor (no host sync)."""
    norms = weight.detach().float().norm(dim=1)
    lo, hi = norms.min(), norms.max()
    return lo + thresh * (hi - lo)


@torch.no_grad()
def project_rows(weight: torch.Tensor, delta: torch.Tensor) -> None:
    """PGD step: rows with ‖w_c‖ > δ are rescaled to norm δ, the others are left unchanged."""
    norms = weight.float().norm(dim=1, keepdim=True)
    scale = torch.where(norms > delta, delta / norms.clamp_min(1e-12), torch.ones_like(norms))
    weight.mul_(scale.to(weight.dtype))


@register("maxnorm", MaxNormConfig)
class MaxNorm(HeadRetraining):
    applies_label_smoothing = True  # the cb_ce loss; cb_softmax_bce refuses it

    def __init__(self, cfg: MaxNormConfig, ctx):
        super().__init__(cfg, ctx)
        self.weights = effective_number_weights(ctx.train_counts, cfg.cb_beta).to(ctx.device)
        self.delta: torch.Tensor | None = None

    @classmethod
    def label_smoothing_refusal(cls, cfg: MaxNormConfig) -> str | None:
        if cfg.loss != "cb_ce":
            return (f"method {cls.name} with method.loss={cfg.loss} trains a binary cross-entropy, not the "
                    "soft-label cross-entropy (method.loss: cb_ce does)")
        return super().label_smoothing_refusal(cfg)

    def prepare(self, model: nn.Module) -> None:
        head = self.head_of(model)
        self.freeze_all_but(model, [p for p in (head.weight, head.bias) if p is not None])
        # Computed once from the starting classifier (the reference code's behaviour).
        self.delta = maxnorm_threshold(head.weight, self.cfg.thresh)

    def loss(self, model, batch, progress: Progress):
        (x,) = self.ctx.augmenter.views(batch)
        logits = self.head_of(model)(self.features(model, x))
        if self.cfg.loss == "cb_softmax_bce":
            loss = cb_softmax_bce(logits, batch.labels, self.weights)
        else:
            loss = soft_target_cross_entropy(logits, y_a=batch.labels, class_weights=self.weights,
                                             impl=self.ctx.loss_impl, label_smoothing=self.ctx.label_smoothing)
        return loss, {"loss": loss.detach()}

    def _project(self, model: nn.Module) -> None:
        if self.delta is None:
            raise RuntimeError("method maxnorm: prepare(model) must run before training")
        project_rows(self.head_of(model).weight, self.delta)

    def after_step(self, model: nn.Module, progress: Progress) -> None:
        if self.cfg.pgd_every == "step":
            self._project(model)

    def after_epoch(self, model: nn.Module, progress: Progress) -> None:
        if self.cfg.pgd_every == "epoch":
            self._project(model)

    def state_dict(self) -> dict:
        state = super().state_dict()
        state["delta"] = self.delta
        return state

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        if state.get("delta") is not None:
            self.delta = state["delta"].to(self.ctx.device)
