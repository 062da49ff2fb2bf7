"""LDAM-DRW (Cao et al., "Learning Imbalanced Datasets with Label-Distribution-Aware Margin
Loss", NeurIPS 2019), as its official code (kaidic/LDAM-DRW) runs it.

- Margins: m_c ∝ n_c^{-1/4}, rescaled so that max_c m_c = `max_margin` (0.5).
- Loss: L = CE(s·(z − m_y·e_y), y; weight w) with s = `scale` (30) and z the logits of a
  cosine ("NormedLinear") classifier: z_c = cos(f, W_c), no bias (`normed_classifier`).
  Through the fused soft-label CE this is `logit_offset = −m_y·e_y` (a per-sample (B, C) offset
  that only touches the true class) with `temperature = 1/s`: (z + b)/T = s·(z − m_y·e_y).
- Re-weighting (`reweight`):
    none — w = 1;
    drw  — deferred re-weighting: w = 1 for epochs < `drw_start` (0-indexed; the code's
           `epoch // 160` with betas [0, 0.9999]), then the class-balanced weights below;
    cb   — the class-balanced weights from the first epoch (the code's "Reweight" rule).
  Class-balanced weights (Cui et al., effective number): w_c = (1 − β)/(1 − β^{n_c}), β =
  `cb_beta` (0.9999), normalised to sum to C.
- Reduction: the code calls F.cross_entropy(weight=w), i.e. the WEIGHTED MEAN
  Σ_i w_{y_i}·l_i / Σ_i w_{y_i}. The fused loss never renormalises weights, so this file asks it
  for the weighted sum and divides by Σ_i w_{y_i} itself (`weighted_mean: true`, default);
  `weighted_mean: false` divides by the batch size instead (not what the code does; usually a
  smaller step, since instance-sampled batches are head-heavy and so Σ_i w_{y_i} < B).
- Test time: s·z (no margin). The code evaluates z itself; the argmax is the same, and the
  scale keeps the softmax probabilities the trainer reports on the trained temperature.

With `max_margin: 0, scale: 1, normed_classifier: false` this is plain CE with the same
re-weighting switches (the code's CE-DRW / CE-Reweight baselines).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from fasttrain.methods.base import Method, MethodConfig, Progress, register
from fasttrain.methods.ce import weighted_cross_entropy
from fasttrain.methods.priors import effective_number_weights, ldam_margins
from fasttrain.models import Classifier
from fasttrain.schema import option

REWEIGHTS = ("none", "drw", "cb")


@dataclass
class LDAMDRWConfig(MethodConfig):
    max_margin: float = option(0.5, ge=0, finite=True)  # largest margin (the rarest class's); 0 disables the margin
    scale: float = option(30.0, gt=0, finite=True)  # s multiplying the (cosine) logits inside the loss
    normed_classifier: bool = True  # cosine head without bias (code: use_norm for LDAM)
    reweight: str = option("drw", choices=REWEIGHTS)  # none | drw | cb
    drw_start: int = option(160, ge=0)  # first 0-indexed epoch with class-balanced weights (reweight: drw)
    cb_beta: float = option(0.9999, ge=0, lt=1)  # effective-number β of the class-balanced weights
    weighted_mean: bool = True  # divide by Σ w_y as F.cross_entropy(weight=) does (code)


def margin_offset(labels: torch.Tensor, margins: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(B, C) fp32 offset that is −m_{y_i} at (i, y_i) and 0 elsewhere."""
    idx = labels.long()[:, None]  # scatter_ wants int64 indices; loaders may hand int32 labels
    offset = torch.zeros(labels.shape[0], num_classes, dtype=torch.float32, device=labels.device)
    return offset.scatter_(1, idx, -margins[idx])


class NormedLinear(nn.Module):
    """Cosine classifier: out_ic = cos(x_i, W_c), no bias. W is (C, d) like nn.Linear's weight.

    Init as the LDAM code's NormedLinear: entries U(−1, 1), then every class vector rescaled to
    unit norm. The product runs in fp32 with autocast off: under bf16 the cosines would carry
    ~3 significant digits, and the loss multiplies them by s = 30.
    """

    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        with torch.no_grad():
            self.weight.uniform_(-1.0, 1.0)
            self.weight.div_(self.weight.norm(dim=1, keepdim=True).clamp_min(1e-12))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=x.device.type, enabled=False):
            return F.normalize(x.float(), dim=1) @ F.normalize(self.weight.float(), dim=1).t()

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}"


@register("ldam_drw", LDAMDRWConfig)
class LDAMDRW(Method):
    applies_label_smoothing = True

    def __init__(self, cfg: LDAMDRWConfig, ctx):
        super().__init__(cfg, ctx)
        self.margins = ldam_margins(ctx.train_counts, cfg.max_margin).to(ctx.device)
        self.cb_weights = effective_number_weights(ctx.train_counts, cfg.cb_beta).to(ctx.device)

    def new_model(self, backbone: nn.Module) -> nn.Module:
        model = Classifier(backbone, self.ctx.num_classes)
        if self.cfg.normed_classifier:
            model.fc = NormedLinear(backbone.feature_dim, self.ctx.num_classes)
        return model

    def class_weights_at(self, epoch: int) -> torch.Tensor | None:
        """The per-class loss weights of 0-indexed `epoch` (None = all ones)."""
        rw = self.cfg.reweight
        if rw == "cb" or (rw == "drw" and epoch >= self.cfg.drw_start):
            return self.cb_weights
        return None

    def loss(self, model, batch, progress: Progress):
        cfg, ctx = self.cfg, self.ctx
        (x,) = ctx.augmenter.views(batch)
        logits = model(x)
        y = batch.labels
        offset = margin_offset(y, self.margins, ctx.num_classes) if cfg.max_margin > 0 else None
        weights = self.class_weights_at(progress.epoch)  # host-side decision: no device sync
        loss = weighted_cross_entropy(logits, y, weights, cfg.weighted_mean, impl=ctx.loss_impl,
                                      logit_offset=offset, temperature=1.0 / cfg.scale,
                                      label_smoothing=ctx.label_smoothing)
        return loss, {"loss": loss.detach()}

    @torch.no_grad()
    def predict(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return model(x).float() * self.cfg.scale  # no margin at test; scale keeps the trained softmax
