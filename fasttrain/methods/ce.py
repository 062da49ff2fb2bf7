"""Plain cross-entropy: instance-balanced sampling, one linear head."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from fasttrain.kernels.soft_ce import soft_target_cross_entropy
from fasttrain.methods.base import Method, MethodConfig, register
from fasttrain.models import Classifier


@dataclass
class CEConfig(MethodConfig):
    pass


@register
class CrossEntropy(Method):
    name = "ce"
    config_class = CEConfig
    num_views = 1
    # Per-class offset added to the logits in the training loss only (Balanced Softmax,
    # Logit Adjustment subclass this and set it); None = plain CE.
    train_offset: torch.Tensor | None = None

    def new_model(self, backbone: nn.Module) -> nn.Module:
        return Classifier(backbone, self.ctx.num_classes)

    def loss(self, model, batch, progress):
        (x,) = self.ctx.augmenter.views(batch)
        logits = model(x)
        loss = soft_target_cross_entropy(logits, y_a=batch.labels, logit_offset=self.train_offset,
                                         impl=self.ctx.loss_impl)
        return loss, {"loss": loss.detach()}
