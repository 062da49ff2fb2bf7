"""FBL — Feature-Balanced Loss (Li, Cheung, Jiang, ICME 2022), as its official code runs it.

Specification: the official code, juyongjiang/FBL (docs: user-guide/methods/fbl.md). For a sample
with pooled (post-ReLU) feature f and logits z:

    z'_c = z_c − t(e) · A · a_c / (‖f‖₂ + 1e-12)        for every class c
    a_c  = (log n_max − log n_c) / (log n_max − log n_min)   (float32, `stimulus_norm: max`)
    t(e) = (e / (E − 10))²                                (`curriculum: code`; > 1 in the last 9
                                                          of 200 epochs, as in the code)
    L    = CE(z', y)

The stimulus depends on ‖f‖ and the gradient flows through it — pushing tail samples towards
larger feature norms is the method's whole mechanism — so z' is formed with autograd ops before
the fused loss (whose `logit_offset` is a detached constant). Plain logits at test time.
A (`stimulus_scale`, the code's `--lambda_`) is 60 on CIFAR and 150 on ImageNet-LT / iNat /
Places-LT (set in the configs). Optional MixUp as the code's `--mixup`: λ ~ Beta(1, 1), a random
partner per row, loss λ·FBL(y_a) + (1 − λ)·FBL(y_b) on the mixed images' own features.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from fasttrain.augment import MixSpec, permutation_pairs, sample_lambda
from fasttrain.kernels.soft_ce import soft_target_cross_entropy
from fasttrain.methods.base import Method, MethodConfig, Progress, register
from fasttrain.methods.priors import fbl_stimulus
from fasttrain.models import Classifier
from fasttrain.schema import option

CURRICULA = ("code", "e_over_E")
STIMULUS_NORMS = ("max", "none")


@dataclass
class FBLConfig(MethodConfig):
    stimulus_scale: float = option(60.0, ge=0, finite=True)  # A (code: --lambda_; 60 CIFAR, 150 large-scale)
    curriculum: str = option("code", choices=CURRICULA)  # code: t = (e/(E−10))² | e_over_E: t = (e/E)²
    # max: a_c divided by its maximum (code) | none: log n_max − log n_c
    stimulus_norm: str = option("max", choices=STIMULUS_NORMS)
    mixup: bool = False  # the code's --mixup (off by default)
    mixup_beta: float = option(1.0, gt=0)  # λ ~ Beta(β, β)


def curriculum(epoch: int, epochs: int, kind: str = "code") -> float:
    """t(e), e 0-indexed and constant within an epoch. `code`: (e/(E−10))² (the denominator is
    floored at 1 for runs of <= 10 epochs, where the code's formula is undefined or negative)."""
    if kind == "code":
        return (epoch / max(epochs - 10, 1)) ** 2
    return (epoch / epochs) ** 2


def balanced_logits(logits: torch.Tensor, features: torch.Tensor, stimulus: torch.Tensor,
                    strength: float) -> torch.Tensor:
    """z' = z − strength · a / (‖f‖₂ + 1e-12), fp32, differentiable in z and f."""
    norm = features.float().norm(dim=1, keepdim=True)
    return logits.float() - strength * stimulus / (norm + 1e-12)


@register("fbl", FBLConfig)
class FBL(Method):
    applies_label_smoothing = True
    configurable_head = True

    def __init__(self, cfg: FBLConfig, ctx):
        super().__init__(cfg, ctx)
        self.stimulus = fbl_stimulus(ctx.train_counts, cfg.stimulus_norm == "max").to(ctx.device)

    def new_model(self, backbone: nn.Module) -> nn.Module:
        return Classifier(backbone, self.ctx.num_classes, self.ctx.new_head(backbone))

    def loss(self, model, batch, progress: Progress):
        cfg, aug = self.cfg, self.ctx.augmenter
        y_a, y_b, lam = batch.labels, None, 1.0
        if cfg.mixup:  # host-side draws from the checkpointed generator, then one copy to the device
            dev = batch.labels.device
            idx_a, idx_b = (i.to(dev) for i in permutation_pairs(batch.size, self.generator, "cpu"))
            lam = sample_lambda(cfg.mixup_beta, self.generator)
            # The mix kernel also returns a CutMix image (empty box here: a copy); only MixUp is used.
            x, _ = aug.mix_pairs(batch, MixSpec(lam, (0, 0, 0, 0), lam), idx_a, idx_b)
            y_a, y_b = batch.labels[idx_a], batch.labels[idx_b]
        else:
            (x,) = aug.views(batch)
        logits, features = model(x, with_features=True)
        t = curriculum(progress.epoch, progress.epochs, cfg.curriculum)  # host float: no sync
        z = balanced_logits(logits, features, self.stimulus, t * cfg.stimulus_scale)
        loss = soft_target_cross_entropy(z, y_a=y_a, y_b=y_b, lam=lam, impl=self.ctx.loss_impl,
                                         label_smoothing=self.ctx.label_smoothing)
        return loss, {"loss": loss.detach(), "feature_norm": features.detach().float().norm(dim=1).mean()}
