"""Classifier re-training on a frozen backbone: the shared machinery of the second stages
(MaxNorm, cRT, LWS, τ-normalisation).

Such a stage continues a trained model (the previous stage's, or `model.init_from` with the
structure of `base_method`): every parameter except one named head (`head`, a Linear; LWS wraps
it in `ScaledLinear`) is frozen, features are computed without a graph, and the stage draws its
own sample stream (`sampler`, default instance). `bn_mode` says what the frozen backbone's
BatchNorm does: `train` (the reference codes: the whole model in train mode, so batch statistics
are used and running statistics keep updating) or `eval` (frozen statistics).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from fasttrain.kernels.soft_ce import soft_target_cross_entropy
from fasttrain.methods.base import Progress, StageMethod, StageMethodConfig, StreamSpec
from fasttrain.samplers import SAMPLERS
from fasttrain.schema import option

BN_MODES = ("train", "eval")


@dataclass
class HeadRetrainConfig(StageMethodConfig):
    head: str = "fc"  # the Linear head to re-train (and to predict with)
    bn_mode: str = option("train", choices=BN_MODES)  # frozen backbone's BN: train (reference codes) | eval
    sampler: str = option("instance", choices=lambda: SAMPLERS)  # this stage's sample stream (see fasttrain.samplers)
    sampler_q: float = 1.0  # sampler power: weights n_c^-q
    class_aware_k: int = option(2, gt=0)  # sampler class_aware: samples per drawn class


class ScaledLinear(nn.Module):
    """A Linear head whose logits are multiplied by learnable per-class scales s (init 1):
    z = s ⊙ (W f + b) — the bias is scaled too, as the LWS codes do."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.linear = linear
        self.scales = nn.Parameter(torch.ones(linear.out_features, device=linear.weight.device,
                                              dtype=linear.weight.dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x) * self.scales


class HeadRetraining(StageMethod):
    """Base of the frozen-backbone stages; subclasses pick the trainable parameters (MaxNorm also its loss)."""

    config_class = HeadRetrainConfig
    head_types: tuple[type, ...] = (nn.Linear,)

    def streams(self) -> list[StreamSpec]:
        return [StreamSpec(self.cfg.sampler, self.cfg.sampler_q, self.cfg.class_aware_k)]

    def check_model(self, model: nn.Module) -> None:
        self.head_of(model)  # fail early on a wrong `head`

    def prediction_head(self) -> str | None:
        return self.cfg.head

    def head_of(self, model: nn.Module) -> nn.Module:
        head = getattr(model, self.cfg.head, None)
        if not isinstance(head, self.head_types):
            heads = [n for n, m in model.named_children() if isinstance(m, self.head_types)]
            raise ValueError(f"method.head: model has no Linear head {self.cfg.head!r}; heads: {heads}")
        return head

    def freeze_all_but(self, model: nn.Module, trainable: list[nn.Parameter]) -> None:
        for p in model.parameters():
            p.requires_grad_(False)
        for p in trainable:
            p.requires_grad_(True)

    def trainable_parameters(self, model: nn.Module) -> list[nn.Parameter]:
        return [p for p in model.parameters() if p.requires_grad]

    def features(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """Backbone features without a graph (train-mode BN still updates its statistics)."""
        if self.cfg.bn_mode == "eval":
            model.backbone.eval()  # the trainer puts the whole model in train mode per epoch
        with torch.no_grad():
            return model.backbone(x)

    def loss(self, model: nn.Module, batch, progress: Progress):
        """Plain (soft-label) cross-entropy of the head on the frozen features: cRT's and LWS's loss
        (MaxNorm adds its own terms)."""
        (x,) = self.ctx.augmenter.views(batch)
        logits = self.head_of(model)(self.features(model, x))
        loss = soft_target_cross_entropy(logits, y_a=batch.labels, impl=self.ctx.loss_impl,
                                         label_smoothing=self.ctx.label_smoothing)
        return loss, {"loss": loss.detach()}

    @torch.no_grad()
    def predict(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return self.head_of(model)(model.backbone(x))
