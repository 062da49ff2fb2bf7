"""THE training step, shared by the trainer and every benchmark, so what is timed is what trains.

    autocast → method loss → backward → [clip] → grad scaler / optimizer → method hook → [EMA]

(with gradient accumulation, the optimizer part runs on the last micro-batch of each group;
under torchrun the loss runs inside DistributedDataParallel, see `MethodLoss`).

`Learner` holds what a step touches; the run builder makes it (fasttrain.build). The step does no
host↔device sync: the logs it returns are detached device tensors.
"""
from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass

import torch
import torch.nn as nn

from fasttrain.methods import Method, Progress


class MethodLoss(nn.Module):
    """`method.loss(model, batch, progress)` as a module: what DistributedDataParallel wraps under
    torchrun. DDP then sees every trainable parameter of `model` however the method reaches it (a
    forward, a head called on frozen features, a teacher), and all-reduces their gradients."""

    def __init__(self, method: Method, model: nn.Module):
        super().__init__()
        self.method = method
        self.model = model

    def forward(self, batch, progress: Progress):
        return self.method.loss(self.model, batch, progress)


@dataclass
class Learner:
    method: Method
    model: nn.Module  # the module whose weights are trained and saved
    forward_model: nn.Module  # what the loss calls: `model`, or its torch.compile wrapper
    optimizer: torch.optim.Optimizer | None  # None for methods with nothing to train (no steps run)
    scaler: torch.amp.GradScaler  # enabled only for fp16
    amp: torch.dtype | None  # autocast dtype; None = fp32
    device: torch.device
    accum_steps: int = 1  # train.grad_accum_steps: micro-batches per optimizer step
    ddp: nn.Module | None = None  # DistributedDataParallel(MethodLoss) under torchrun, else None
    clip_grad_norm: float | None = None  # optim.clip_grad_norm: max global gradient norm (unscaled), or None
    ema: object | None = None  # fasttrain.ema.ModelEma of `model` (train.ema), updated after each optimizer step


def train_step(learner: Learner, batch, progress: Progress, micro: int = 0, group: int = 1) -> dict[str, torch.Tensor]:
    """One micro-batch `micro` of an accumulation group of `group` batches; the optimizer steps
    after the group's last one (the default, micro 0 of 1, is a plain optimisation step on `batch`).
    Each micro-batch's loss is divided by `group`, so the accumulated gradient is the mean over
    the group's rows, as one step on their union would have it. Under DDP the gradients are
    all-reduced only on the last micro-batch (`no_sync` before). Returns the method's logs
    (detached, on device)."""
    batch.step_key = (progress.epoch, progress.step)  # a training batch: keys the augmenter's draws
    last = micro == group - 1
    sync = learner.ddp.no_sync() if learner.ddp is not None and not last else nullcontext()
    with sync:
        with torch.autocast(learner.device.type, dtype=learner.amp or torch.float32, enabled=learner.amp is not None):
            if learner.ddp is not None:
                loss, logs = learner.ddp(batch, progress)
            else:
                loss, logs = learner.method.loss(learner.forward_model, batch, progress)
        if micro == 0:
            learner.optimizer.zero_grad(set_to_none=True)
        learner.scaler.scale(loss if group == 1 else loss / group).backward()
    if last:
        if learner.clip_grad_norm is not None:  # on the true gradients: unscaled first (a no-op unless fp16)
            learner.scaler.unscale_(learner.optimizer)
            params = [p for group in learner.optimizer.param_groups for p in group["params"]]
            torch.nn.utils.clip_grad_norm_(params, learner.clip_grad_norm)
        learner.scaler.step(learner.optimizer)
        learner.scaler.update()
        learner.method.after_step(learner.model, progress)
        if learner.ema is not None:
            learner.ema.update(learner.model)
    return logs
