"""The model a later stage continues when a stage's own model holds more than an encoder and its
classifier (SSD: stage I's key encoder, projections and queue; stage III's soft head and teacher).

`EncoderClassifier` shares the modules of the finished stage (nothing is copied or re-initialised)
and has the keys of `fasttrain.models.Classifier` (`backbone.*`, `fc.*`), so the classifier stages
(LWS, cRT, MaxNorm, τ-norm) work on it unchanged. A model opts in by defining `handoff()`
(see `fasttrain.methods.base.handoff`).
"""
from __future__ import annotations

import torch
import torch.nn as nn


class EncoderClassifier(nn.Module):
    """backbone → fc, built from existing modules (no new weights)."""

    def __init__(self, backbone: nn.Module, fc: nn.Module):
        super().__init__()
        self.backbone = backbone
        self.fc = fc

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.backbone(x))
