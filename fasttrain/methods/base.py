"""The Method interface and the methods registry.

A method decides the model it trains (backbone + heads), which sample streams it needs, how
many augmented views per image, and the loss of one batch. Everything else (data, optimiser,
schedule, AMP, checkpoints, evaluation) belongs to the trainer. Each method is one file in this
package whose class is decorated with `@register`; `fasttrain/methods/__init__.py` imports the
file (one line), and `METHODS` — the one list of method names, keyed by the class's `name` — is
what the config, `fasttrain info` and the stage mechanism read.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn as nn

from fasttrain.augment import Augmenter
from fasttrain.schema import build_dataclass

METHODS: dict[str, type["Method"]] = {}


def register(cls: type["Method"]) -> type["Method"]:
    """Class decorator: add a method to `METHODS` under its `name`."""
    if cls.name in METHODS:
        raise ValueError(f"method name {cls.name!r} registered twice ({METHODS[cls.name].__name__}, {cls.__name__})")
    METHODS[cls.name] = cls
    return cls


@dataclass
class MethodConfig:
    """Base of every method's config section (`method:` in YAML). `name` is filled in from the
    method class (the registry key); a method's file never repeats it."""

    name: str = ""

    def validate(self) -> None:
        """Raise ValueError naming the key for impossible values."""


@dataclass
class StageMethodConfig(MethodConfig):
    """Config of a method that continues a previous stage (classifier re-training, distillation).

    Started alone (no previous stage in this run, weights from `model.init_from`), it builds the
    model structure of `base_method` with that method's config keys `base_config`, so the
    checkpoint of the earlier run loads strictly.
    """

    base_method: str = "glmc"
    base_config: dict = field(default_factory=dict)

    def validate(self) -> None:
        first_stage = sorted(n for n, m in METHODS.items() if not m.continues_stage)
        if self.base_method not in first_stage:
            raise ValueError(f"method.base_method: expected one of {first_stage}, got {self.base_method!r}")


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
    """What a method needs to know about the run (built once by the run builder)."""

    num_classes: int
    train_counts: torch.Tensor  # int64 (C,) on the training device
    augmenter: Augmenter  # uint8 views -> normalised / mixed model inputs (the one owner)
    device: torch.device
    loss_impl: str = "auto"  # fused loss kernel dispatch: auto | triton | torch
    seed: int = 0
    default_stream: StreamSpec | None = None  # from loader.sampler / sampler_q / class_aware_k


class Method:
    """Base class; subclasses set `name`, `config_class`, implement `new_model` and `loss`."""

    name: ClassVar[str] = "base"
    config_class: ClassVar[type] = MethodConfig
    num_views: ClassVar[int] = 1
    # True: the method continues the previous stage's model (MaxNorm, cRT, LWS, SSD II-IV);
    # False: it trains a fresh model and refuses to be a later stage.
    continues_stage: ClassVar[bool] = False
    # True: the method draws its own streams (GLMC, MaxNorm), so a loader.sampler setting
    # would be ignored — the config rejects one instead.
    fixed_streams: ClassVar[bool] = False
    # False: nothing to optimise (post-hoc methods such as τ-normalisation): the stage runs
    # with train.epochs: 0 and no optimizer is built.
    trains: ClassVar[bool] = True

    def __init__(self, cfg: MethodConfig, ctx: MethodContext):
        cfg.name = self.name
        self.cfg = cfg
        self.ctx = ctx
        # Host-side RNG for per-step draws (MixUp lambda, boxes): no device sync, and its
        # state goes into checkpoints so a resumed run draws the same numbers.
        self.generator = torch.Generator().manual_seed(ctx.seed + 17)

    # --- what the data pipeline must deliver ---------------------------------------------------
    def streams(self) -> list[StreamSpec]:
        return [self.ctx.default_stream or StreamSpec()]

    # --- model ---------------------------------------------------------------------------------
    def build_model(self, backbone: nn.Module | None, previous: nn.Module | None = None) -> nn.Module:
        """The model this method trains: the previous stage's model when there is one (only for
        `continues_stage` methods), else a fresh one on `backbone`."""
        if previous is not None:
            if not self.continues_stage:
                raise ValueError(f"method {self.name}: single-stage method, cannot continue from a previous "
                                 "stage's model (use model.init_from to start from a checkpoint)")
            model = previous
        else:
            model = self.new_model(backbone)
        self.check_model(model)
        return model

    def new_model(self, backbone: nn.Module) -> nn.Module:
        """A fresh model on `backbone` (backbone + this method's heads)."""
        raise NotImplementedError  # abstract: every registered method implements it

    def check_model(self, model: nn.Module) -> None:
        """Raise ValueError when `model` lacks what this method needs (e.g. a named head)."""

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

    # --- post-hoc calibration ------------------------------------------------------------------
    def calibration_split(self) -> str | None:
        """A data split (`test` | `val`) to calibrate on after training, or None (most methods)."""
        return None

    def calibrate(self, model: nn.Module, loader, augmenter) -> dict:
        """Fit post-hoc parameters on `loader` (the calibration split); returns what was chosen,
        for the run's log and summary. Must write the choice into `self.cfg` (the stage's
        resolved config) so an evaluation of the saved checkpoint applies it."""
        return {}

    # --- inference -----------------------------------------------------------------------------
    def predict(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return model(x)

    # --- resume --------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "generator" in state:
            self.generator.set_state(state["generator"])


class StageMethod(Method):
    """A method that continues the previous stage's model; alone, it builds `base_method`'s."""

    config_class: ClassVar[type] = StageMethodConfig
    continues_stage: ClassVar[bool] = True

    def new_model(self, backbone: nn.Module) -> nn.Module:
        base_cls = METHODS[self.cfg.base_method]
        base_cfg = build_dataclass(base_cls.config_class, dict(self.cfg.base_config), "method.base_config")
        return base_cls(base_cfg, self.ctx).new_model(backbone)
