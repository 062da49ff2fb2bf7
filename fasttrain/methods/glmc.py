"""GLMC — Global and Local Mixture Consistency cumulative learning (CVPR 2023).

Specification: the official code, ynu-yangpeng/GLMC (docs: user-guide/methods/glmc.md). The official
code's behaviour is the default; every paper-vs-code difference is a switch in `GLMCConfig` (same
page, Switches and their official defaults).

One step (the official `Trainer.train` loop): the batch holds two streams of b rows each (stream 0
uniform/instance, stream 1 re-sampled with per-sample weight n_c^-q), two augmented views per row.
Row i of stream 0 is paired with row i of stream 1; view 0 of the pair is MixUp-ed and view 1
CutMix-ed with the same λ (fasttrain.augment, so the fused kernel can replace it). Both mixed
batches go through the backbone (two forwards by default, as the code: per-batch BN stats):

    L = α(e)·(L_mix + L_cut) + (1 − α(e))·(L^w_mix + L^w_cut) + λ_c·L_sim
    α(e) = 1 − (e / E)²,  L_sim = D(p_g, sg z_l) + D(p_l, sg z_g),  D = −mean cos

The plain terms train head `fc`, the reweighted terms (soft labels weighted by
w_c = C·n_c^-γ / Σ_k n_k^-γ, not renormalised) train head `fc_cb`; inference uses `fc_cb`.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from fasttrain.augment import sample_mix
from fasttrain.kernels.soft_ce import soft_target_cross_entropy
from fasttrain.methods.base import Method, MethodConfig, Progress, StreamSpec, register
from fasttrain.methods.priors import power_weights as class_weights  # w_c ∝ n_c^-γ, mean 1 (update_weight)
from fasttrain.models import CifarResNet
from fasttrain.schema import option

PREDICT_HEADS = ("fc_cb", "fc", "sum")
HEAD_INITS = ("auto", "kaiming", "default")
WEIGHTED_LOSS_NORMS = ("batch", "expected")


@dataclass
class GLMCConfig(MethodConfig):
    # Re-sampled stream: per-sample weight n_c^-q (code's --resample_weighting; 0.0 or 0.2).
    resample_q: float = option(0.0, ge=0)
    # Soft-label class weights w_c ∝ n_c^-γ, mean 1 over classes (code's --label_weighting).
    label_weight_gamma: float = 1.2
    # λ_c of the SimSiam consistency term (the code parses an int; floats are allowed here).
    consistency_weight: float = option(1.0, ge=0)
    # λ ~ Beta(β, β). 1.0 = Uniform(0, 1) = what the code runs (its --beta is never used).
    mix_beta: float = option(1.0, gt=0)
    # CutMix label weight from the pasted area (standard CutMix) instead of λ (code: false).
    cutmix_area_correct: bool = False
    # Reweighted terms train their own head fc_cb (code: true); false = both terms on fc.
    separate_cb_head: bool = True
    # One 2B forward of [MixUp; CutMix] instead of two B forwards (faster; changes BN stats).
    fuse_two_forwards: bool = False
    # Logits used at test time: fc_cb (code) | fc | sum (fc + fc_cb).
    predict_head: str = option("fc_cb", choices=PREDICT_HEADS)
    # Projector/predictor width k; None = the code's choice (128 for d <= 256, else 256).
    proj_dim: int | None = option(None, gt=0)
    # Scale of the reweighted terms: batch = their mean over the B rows (code) | expected = divided by
    # the two streams' mean label weight (a constant from the train counts, q and γ), so both terms
    # carry one scale.
    #
    # Why: an instance-sampled row carries on average Σ_c P(c) w_c of the plain terms' label mass
    # (0.16 on CIFAR-10-LT ρ=100 at γ = 1), so under `batch` the backbone's gradient shrinks ~6x as
    # α(e) hands the loss to fc_cb; 200 epochs absorb that, a few do not.
    weighted_loss_norm: str = option("batch", choices=WEIGHTED_LOSS_NORMS)
    # Exponent p of the cumulative coefficient α(e) = 1 − (e/E)^p (code: 2). A smaller p hands the
    # loss to the reweighted head fc_cb earlier: in a run of a few epochs p = 2 leaves fc_cb, the
    # only head used at test time, trained on a few low-lr epochs at the end.
    cumulative_power: float = option(2.0, gt=0)
    # Head init: auto = Kaiming-normal fan-in on the CIFAR ResNet (its code inits every
    # Linear so), PyTorch default on torchvision trunks (their init loop skips Linear).
    head_init: str = option("auto", choices=HEAD_INITS)


def default_proj_dim(feature_dim: int) -> int:
    """k = 128 for GLMC's ResNet-32 (d = 256), 256 for ResNeXt-50 / ImageNet-style ResNets."""
    return 128 if feature_dim <= 256 else 256


class GLMCNet(nn.Module):
    """backbone → (fc, fc_cb, projector, predictor); all heads are plain Linear with bias.

    forward(x) -> (fc logits, fc_cb logits, z = projector(h), p = predictor(z)). With
    `separate_cb_head=False` there is no fc_cb and the second output is the fc logits.
    """

    def __init__(self, backbone: nn.Module, num_classes: int, proj_dim: int,
                 separate_cb_head: bool = True, kaiming_heads: bool = True):
        super().__init__()
        d = backbone.feature_dim
        self.backbone = backbone
        self.fc = nn.Linear(d, num_classes)
        self.fc_cb = nn.Linear(d, num_classes) if separate_cb_head else None
        self.projector = nn.Linear(d, proj_dim)
        self.predictor = nn.Linear(proj_dim, proj_dim)
        if kaiming_heads:
            for m in (self.fc, self.fc_cb, self.projector, self.predictor):
                if m is not None:
                    nn.init.kaiming_normal_(m.weight)  # fan-in, gain √2; bias keeps the default

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        h = self.backbone(x)
        logits = self.fc(h)
        logits_cb = self.fc_cb(h) if self.fc_cb is not None else logits
        z = self.projector(h)
        return logits, logits_cb, z, self.predictor(z)


def cumulative_alpha(epoch: int, epochs: int, power: float = 2.0) -> float:
    """α(e) = 1 − (e/E)^p, e 0-indexed, constant within an epoch (official code: p = 2)."""
    return 1.0 - (epoch / epochs) ** power


def expected_label_weight(counts: torch.Tensor, weights: torch.Tensor, q: float) -> float:
    """E[λ w_{y_a} + (1 − λ) w_{y_b}] of a mixed row: y_a ∝ n_c (instance stream), y_b ∝ n_c^(1−q)
    (re-sampled stream), E[λ] = 1/2 for λ ~ Beta(β, β)."""
    n = counts.double()
    p_a, p_b = n / n.sum(), n ** (1.0 - q) / (n ** (1.0 - q)).sum()
    return float(0.5 * ((p_a + p_b) * weights.double().cpu()).sum())


def negative_cosine(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """SimSiam D(p, z) = −mean_i cos(p_i, sg(z_i)); fp32, eps 1e-8 (nn.CosineSimilarity's)."""
    return -F.cosine_similarity(p.float(), z.detach().float(), dim=1, eps=1e-8).mean()


def consistency_loss(p_g: torch.Tensor, z_g: torch.Tensor, p_l: torch.Tensor, z_l: torch.Tensor) -> torch.Tensor:
    """L_sim = D(p_g, sg z_l) + D(p_l, sg z_g): each branch predicts the other's projection."""
    return negative_cosine(p_g, z_l) + negative_cosine(p_l, z_g)


def select_logits(logits: torch.Tensor, logits_cb: torch.Tensor, head: str) -> torch.Tensor:
    if head == "fc_cb":
        return logits_cb
    if head == "fc":
        return logits
    if head == "sum":
        return logits + logits_cb
    raise ValueError(f"method.predict_head: expected one of {list(PREDICT_HEADS)}, got {head!r}")


@register("glmc", GLMCConfig)
class GLMC(Method):
    num_views = 2
    applies_label_smoothing = True  # the four mixed-label CE terms (the weighted ones too)

    def __init__(self, cfg: GLMCConfig, ctx):
        super().__init__(cfg, ctx)
        # Constant for the whole run, computed once from the train counts (already on device).
        self.weights = class_weights(ctx.train_counts, cfg.label_weight_gamma).to(ctx.device)
        self.weighted_scale = 1.0 if cfg.weighted_loss_norm == "batch" else \
            1.0 / expected_label_weight(ctx.train_counts.cpu(), self.weights, cfg.resample_q)

    def streams(self) -> list[StreamSpec]:
        return [StreamSpec(sampler="instance"), StreamSpec(sampler="power", q=self.cfg.resample_q)]

    def new_model(self, backbone: nn.Module) -> nn.Module:
        cfg = self.cfg
        proj = cfg.proj_dim or default_proj_dim(backbone.feature_dim)
        kaiming = cfg.head_init == "kaiming" or (cfg.head_init == "auto" and isinstance(backbone, CifarResNet))
        return GLMCNet(backbone, self.ctx.num_classes, proj, cfg.separate_cb_head, kaiming)

    def _forward_pair(self, model: nn.Module, x_g: torch.Tensor, x_l: torch.Tensor):
        if not self.cfg.fuse_two_forwards:
            return model(x_g), model(x_l)
        both = model(torch.cat([x_g, x_l]))
        n = x_g.shape[0]
        return tuple(t[:n] for t in both), tuple(t[n:] for t in both)

    def loss(self, model, batch, progress: Progress):
        cfg, ctx = self.cfg, self.ctx
        if batch.num_streams != 2 or len(batch.views) != 2:
            raise ValueError(f"method glmc: needs batches of 2 streams x 2 views, got "
                             f"{batch.num_streams} streams x {len(batch.views)} views")
        height, width = batch.views[0].shape[-2:]
        spec = sample_mix(int(height), int(width), beta=cfg.mix_beta,
                          area_correct=cfg.cutmix_area_correct, generator=self.generator)
        x_g, x_l, y_a, y_b = ctx.augmenter.mix_streams(batch, spec)
        (o_g, ocb_g, z_g, p_g), (o_l, ocb_l, z_l, p_l) = self._forward_pair(model, x_g, x_l)

        def sce(logits: torch.Tensor, lam: float, weights: torch.Tensor | None = None) -> torch.Tensor:
            loss = soft_target_cross_entropy(logits, y_a=y_a, y_b=y_b, lam=lam, class_weights=weights,
                                             impl=ctx.loss_impl, label_smoothing=ctx.label_smoothing)
            return loss if weights is None else loss * self.weighted_scale

        loss_mix, loss_cut = sce(o_g, spec.lam), sce(o_l, spec.lam_cut)
        loss_mix_w = sce(ocb_g, spec.lam, self.weights)
        loss_cut_w = sce(ocb_l, spec.lam_cut, self.weights)
        loss_sim = consistency_loss(p_g, z_g, p_l, z_l)
        alpha = cumulative_alpha(progress.epoch, progress.epochs, cfg.cumulative_power)  # host float: no sync
        loss = (alpha * (loss_mix + loss_cut) + (1.0 - alpha) * (loss_mix_w + loss_cut_w)
                + cfg.consistency_weight * loss_sim)
        logs = {"loss": loss.detach(), "loss_mix": loss_mix.detach(), "loss_cut": loss_cut.detach(),
                "loss_mix_w": loss_mix_w.detach(), "loss_cut_w": loss_cut_w.detach(),
                "loss_sim": loss_sim.detach()}
        return loss, logs

    @torch.no_grad()
    def predict(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        logits, logits_cb, _, _ = model(x)
        return select_logits(logits, logits_cb, self.cfg.predict_head)

    def prediction_head(self) -> str | None:
        return self.cfg.predict_head if self.cfg.separate_cb_head else None

    @torch.no_grad()
    def head_logits(self, model: nn.Module, x: torch.Tensor):
        """The prediction plus both heads (and their sum), so every evaluation reports fc and fc_cb."""
        logits, logits_cb, _, _ = model(x)
        heads = {"fc": logits, "fc_cb": logits_cb, "sum": logits + logits_cb} if self.cfg.separate_cb_head else {}
        return select_logits(logits, logits_cb, self.cfg.predict_head), heads
