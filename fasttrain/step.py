"""THE training step, shared by the trainer and every benchmark, so what is timed is what trains.

    autocast → method loss → backward → grad scaler / optimizer → method hook

`Learner` holds what a step touches; the run builder makes it (fasttrain.build). The step does no
host↔device sync: the logs it returns are detached device tensors.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from fasttrain.methods import Method, Progress


@dataclass
class Learner:
    method: Method
    model: nn.Module  # the module whose weights are trained and saved
    forward_model: nn.Module  # what the loss calls: `model`, or its torch.compile wrapper
    optimizer: torch.optim.Optimizer | None  # None for methods with nothing to train (no steps run)
    scaler: torch.amp.GradScaler  # enabled only for fp16
    amp: torch.dtype | None  # autocast dtype; None = fp32
    device: torch.device


def train_step(learner: Learner, batch, progress: Progress) -> dict[str, torch.Tensor]:
    """One optimisation step on `batch`; returns the method's logs (detached, on device)."""
    with torch.autocast(learner.device.type, dtype=learner.amp or torch.float32, enabled=learner.amp is not None):
        loss, logs = learner.method.loss(learner.forward_model, batch, progress)
    learner.optimizer.zero_grad(set_to_none=True)
    learner.scaler.scale(loss).backward()
    learner.scaler.step(learner.optimizer)
    learner.scaler.update()
    learner.method.after_step(learner.model, progress)
    return logs
