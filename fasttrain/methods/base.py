"""The Method interface: one file per method, registered in `fasttrain.methods.METHODS`.

A method decides the model it trains (backbone + heads), which sample streams it needs,
how many augmented views per image, and the loss of one batch. Everything else (data,
optimiser, schedule, AMP, checkpoints, evaluation) is the trainer's job.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn as nn


@dataclass
class MethodConfig:
    """Base of every method's config section (`method:` in YAML)."""

    name: str = "ce"

    def validate(self) -> None:
        """Raise ValueError naming the key for impossible values."""


@dataclass
class StreamSpec:
    """One sample stream: the sampler kind and its parameters (see fasttrain.samplers)."""

    sampler: str = "instance"
    q: float = 1.0
    k: int = 2


@dataclass
class Progress:
    """Where training is: 0-indexed epoch of `epochs`, step within the epoch."""

    epoch: int
    epochs: int
    step: int = 0
    steps_per_epoch: int = 1

    @property
    def fraction(self) -> float:
        return (self.epoch + self.step / max(self.steps_per_epoch, 1)) / self.epochs


@dataclass
class MethodContext:
    """What a method needs to know about the run (built by the trainer)."""

    num_classes: int
    train_counts: torch.Tensor  # int64 (C,) on the training device
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    device: torch.device
    compute_dtype: torch.dtype  # dtype of the normalised views fed to the model
    mix_impl: str = "auto"  # fused mix kernel dispatch: auto | triton | torch
    loss_impl: str = "auto"  # fused loss kernel dispatch: auto | triton | torch
    seed: int = 0
    default_stream: StreamSpec | None = None  # from the loader config


def refuse_previous_stage(method: str, previous: nn.Module | None) -> None:
    """Single-stage (first-stage) methods build a fresh model: they cannot continue a stage."""
    if previous is not None:
        raise ValueError(f"method {method}: single-stage method, cannot continue from a previous stage's "
                         "model (use model.init_from to start from a checkpoint)")


class Method:
    """Base class; subclasses set `name`, `config_class` and implement `build_model` and `loss`."""

    name: ClassVar[str] = "base"
    config_class: ClassVar[type] = MethodConfig
    num_views: int = 1

    def __init__(self, cfg: MethodConfig, ctx: MethodContext):
        self.cfg = cfg
        self.ctx = ctx
        # Host-side RNG for per-step draws (MixUp lambda, boxes): no device sync, and its
        # state goes into checkpoints so a resumed run draws the same numbers.
        self.generator = torch.Generator().manual_seed(ctx.seed + 17)

    # --- what the data pipeline must deliver ---------------------------------------------------
    def streams(self) -> list[StreamSpec]:
        return [self.ctx.default_stream or StreamSpec()]

    # --- model ---------------------------------------------------------------------------------
    def build_model(self, backbone: nn.Module, previous: nn.Module | None = None) -> nn.Module:
        raise NotImplementedError  # abstract: every registered method implements it

    def prepare(self, model: nn.Module) -> None:
        """Called once after the model's weights are final (after `model.init_from` or the
        previous stage), before the optimiser is built (e.g. MaxNorm's thresholds)."""

    def trainable_parameters(self, model: nn.Module) -> list[nn.Parameter]:
        """Parameters the optimiser updates (classifier-retraining stages return a subset)."""
        return [p for p in model.parameters() if p.requires_grad]

    # --- training --------------------------------------------------------------------------------
    def loss(self, model: nn.Module, batch, progress: Progress) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(scalar loss, logs of detached scalar tensors). No host syncs in here."""
        raise NotImplementedError  # abstract: every registered method implements it

    def after_step(self, model: nn.Module, progress: Progress) -> None:
        """Called after each optimiser step (e.g. per-step weight projection)."""

    def after_epoch(self, model: nn.Module, progress: Progress) -> None:
        """Called after each epoch's updates, before evaluation."""

    # --- inference -----------------------------------------------------------------------------
    def predict(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return model(x)

    # --- resume --------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "generator" in state:
            self.generator.set_state(state["generator"])
