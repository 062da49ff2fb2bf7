"""Plain cross-entropy: instance-balanced sampling, one linear head."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from fasttrain.augment import normalize_views
from fasttrain.kernels.soft_ce import soft_target_cross_entropy
from fasttrain.methods.base import Method, MethodConfig
from fasttrain.models import Classifier


@dataclass
class CEConfig(MethodConfig):
    name: str = "ce"


class CrossEntropy(Method):
    name = "ce"
    config_class = CEConfig
    num_views = 1
    # Per-class offset added to the logits in the training loss only (Balanced Softmax,
    # Logit Adjustment subclass this and set it); None = plain CE.
    train_offset: torch.Tensor | None = None

    def build_model(self, backbone: nn.Module, previous: nn.Module | None = None) -> nn.Module:
        return Classifier(backbone, self.ctx.num_classes)

    def loss(self, model, batch, progress):
        (x,) = normalize_views(batch, self.ctx.mean, self.ctx.std, self.ctx.compute_dtype, self.ctx.mix_impl)
        logits = model(x)
        loss = soft_target_cross_entropy(logits, y_a=batch.labels, logit_offset=self.train_offset,
                                         impl=self.ctx.loss_impl)
        return loss, {"loss": loss.detach()}
