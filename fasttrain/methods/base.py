"""The Method interface and the methods registry.

A method decides the model it trains (backbone + heads), which sample streams it needs, how
many augmented views per image, and the loss of one batch. Everything else (data, optimiser,
schedule, AMP, checkpoints, evaluation) belongs to the trainer. Each method is one file in this
package whose class is decorated with `@register("name", ItsConfig)`; `fasttrain/methods/__init__.py`
imports the file (one line), and `METHODS` — the one list of method names — is what the config,
`fasttrain info` and the stage mechanism read. What a method does as a stage of a multi-stage run
is one declaration, `stage = Stage.X` (see `Stage`).
"""
from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn as nn

from fasttrain.augment import Augmenter
from fasttrain.models import HeadSpec, build_head
from fasttrain.schema import build_dataclass, check_fields, option

METHODS: dict[str, type["Method"]] = {}


def register(name: str, config_class: type["MethodConfig"]):
    """Class decorator: add a method to `METHODS` under `name`, with the dataclass of its `method:`
    config section (`@register("glmc", GLMCConfig)`): the one place both are written."""
    def add(cls: type["Method"]) -> type["Method"]:
        if name in METHODS:
            raise ValueError(f"method name {name!r} registered twice ({METHODS[name].__name__}, {cls.__name__})")
        cls.name, cls.config_class = name, config_class
        METHODS[name] = cls
        return cls
    return add


def first_stage_methods() -> list[str]:
    """The methods a later stage may name as `base_method` (read from the registry at call time)."""
    return sorted(n for n, m in METHODS.items() if m.stage.new_model)


class Stage(enum.Enum):
    """What a method does as a stage of a run: the one declaration (`Method.stage`) from which the
    config, the run builder, the trainer and evaluation read how a multi-stage run is wired."""

    SCRATCH = "trains a new model from scratch (a first stage: CE, GLMC, FBL, SSD I, ...)"
    TEACHER = "trains a new model taught by the previous stage's model (SSD III's distillation)"
    HEAD = "re-trains a head of the previous stage's model on its frozen backbone (cRT, LWS, MaxNorm)"
    POST_HOC = "adjusts the previous stage's model without training (τ-normalisation)"

    @property
    def continues(self) -> bool:
        """Uses the previous stage's model (alone: the structure of `base_method`, weights from
        `model.init_from`); a SCRATCH method refuses to be a later stage."""
        return self is not Stage.SCRATCH

    @property
    def new_model(self) -> bool:
        """Builds a model of its own on a fresh backbone: what later stages continue and record as
        their base structure (`base_method`)."""
        return self in (Stage.SCRATCH, Stage.TEACHER)

    @property
    def trains(self) -> bool:
        """False: nothing to optimise; the stage runs with train.epochs: 0 and no optimizer."""
        return self is not Stage.POST_HOC


@dataclass
class MethodConfig:
    """Base of every method's config section (`method:` in YAML). `name` is filled in from the
    method class (the registry key); a method's file never repeats it.

    A key with a closed set of values or a range declares it where it is defined,
    `key: float = option(1.0, gt=0)  # meaning` (fasttrain.schema.option): the schema checks it when
    the config is built, `validate` checks it on an instance, and `fasttrain config keys` lists it.
    A subclass overrides `validate` only for rules between keys."""

    name: str = ""  # which method (a name of the METHODS registry)

    def validate(self) -> None:
        """Raise ValueError (a ConfigError) naming the key for impossible values."""
        check_fields(self, "method")


@dataclass
class StageMethodConfig(MethodConfig):
    """Config of a method that continues a previous stage (classifier re-training, distillation).

    Started alone (no previous stage in this run, weights from `model.init_from`), it builds the
    model structure of `base_method` with that method's config keys `base_config`, so the
    checkpoint of the earlier run loads strictly.
    """

    # the model structure to build when started alone (model.init_from)
    base_method: str = option("glmc", choices=first_stage_methods)
    base_config: dict = field(default_factory=dict)  # base_method's own keys for that structure


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
    # loss.label_smoothing: eps of the method's soft-label CE terms (pass it as `label_smoothing=`)
    label_smoothing: float = 0.0
    seed: int = 0
    default_stream: StreamSpec | None = None  # from loader.sampler / sampler_q / class_aware_k
    # Rows per stream of one step over all processes (loader.batch_size x world size) when this
    # method is being trained; None when it only builds a structure (a later stage's base model,
    # evaluation), so checks that concern training (e.g. SSD's queue size) are skipped.
    stream_batch_size: int | None = None
    # model.head of the methods that build one `fc` head (`configurable_head`), and the class names
    # a text-initialised head prompts with (set only for model.head_init: text)
    head: HeadSpec = field(default_factory=HeadSpec)
    class_names: list[str] | None = None

    def new_head(self, backbone: nn.Module) -> nn.Module:
        """The `fc` head model.head asks for (fasttrain.models.build_head)."""
        return build_head(self.head, backbone, self.num_classes, self.class_names)


def handoff(model: nn.Module) -> nn.Module:
    """The part of a finished stage's model that a later stage continues: `model.handoff()` when the
    model defines it (SSD stage I: query encoder + classifier, without the key encoder, projections
    and queue; SSD stage III: the student with its hard head), else the model itself."""
    fn = getattr(model, "handoff", None)
    return fn() if callable(fn) else model


def _few(keys: list[str], n: int = 6) -> str:
    return ", ".join(keys[:n]) + (f", … ({len(keys)} in all)" if len(keys) > n else "")


def load_exactly(module: nn.Module, state: dict, what: str = "the model") -> None:
    """`module.load_state_dict(state)` (strict), but a mismatch is one line naming the missing and
    the unexpected weights (a wrong checkpoint says what it lacks)."""
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if missing or unexpected:
        parts = ([f"missing {len(missing)} weights of {what}: {_few(missing)}"] if missing else []) + \
                ([f"{len(unexpected)} weights {what} does not have: {_few(unexpected)}"] if unexpected else [])
        raise RuntimeError("; ".join(parts))
    bad = [f"{k} {tuple(v.shape)} vs {tuple(own[k].shape)}" for k, v in state.items()
           if hasattr(v, "shape") and tuple(v.shape) != tuple(own[k].shape)]
    if bad:
        raise RuntimeError(f"weights of {what} with another shape (checkpoint vs model): {_few(bad)}")
    module.load_state_dict(state)


class Method:
    """Base class; `@register(name, config_class)` names a subclass, which implements `new_model`
    and `loss` (and sets `num_views` and `stage` where they differ from the defaults)."""

    name: ClassVar[str] = "base"  # set by @register
    config_class: ClassVar[type] = MethodConfig  # set by @register
    num_views: ClassVar[int] = 1
    stage: ClassVar[Stage] = Stage.SCRATCH  # what the method does as a stage (see Stage)
    # Derived, never declared by a method (set by __init_subclass__ from `stage` and `streams`):
    continues_stage: ClassVar[bool] = False  # stage.continues
    trains: ClassVar[bool] = True  # stage.trains
    # The method draws its own streams (it overrides `streams`: GLMC, the head re-training stages),
    # so a loader.sampler setting would be ignored: the config rejects one instead.
    fixed_streams: ClassVar[bool] = False
    # Under torchrun: DDP's find_unused_parameters. False (every built-in method): each step's loss
    # reaches every trainable parameter, and the search over the graph DDP would do costs time
    # every step. A method whose loss skips some trainable parameters on some steps sets True.
    ddp_find_unused_parameters: ClassVar[bool] = False
    # The method's loss passes ctx.label_smoothing (loss.label_smoothing) to its soft-label
    # cross-entropy terms. False: the config refuses a non-zero value for this method rather than
    # ignore it (see `label_smoothing_refusal`).
    applies_label_smoothing: ClassVar[bool] = False
    # The method's model is backbone + one `fc` head built by `ctx.new_head` (model.head / head_init
    # apply); False: the config refuses a non-default model.head for this method.
    configurable_head: ClassVar[bool] = False

    @classmethod
    def label_smoothing_refusal(cls, cfg: MethodConfig) -> str | None:
        """Why this method, configured by `cfg`, cannot apply a non-zero loss.label_smoothing (the
        config refuses it with this reason), or None when its loss applies it."""
        if cls.applies_label_smoothing:
            return None
        return f"method {cls.name} has no soft-label cross-entropy term to smooth"

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        cls.continues_stage, cls.trains = cls.stage.continues, cls.stage.trains
        cls.fixed_streams = cls.streams is not Method.streams

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
    def needs_backbone(self, previous: nn.Module | None) -> bool:
        """Whether the builder must create a fresh backbone for `build_model`: for a new model (no
        previous stage), or for a stage that trains a new model next to the previous one."""
        return previous is None or self.stage is Stage.TEACHER

    def build_model(self, backbone: nn.Module | None, previous: nn.Module | None = None) -> nn.Module:
        """The model this method trains: the previous stage's model (its `handoff`) when there is
        one (only for `continues_stage` methods), else a fresh one on `backbone`."""
        if previous is not None:
            if not self.stage.continues:
                raise ValueError(f"method {self.name}: single-stage method, cannot continue from a previous "
                                 "stage's model (use model.init_from to start from a checkpoint)")
            model = handoff(previous)
        else:
            model = self.new_model(backbone)
        self.check_model(model)
        return model

    def new_model(self, backbone: nn.Module) -> nn.Module:
        """A fresh model on `backbone` (backbone + this method's heads)."""
        raise NotImplementedError  # abstract: every registered method implements it

    def check_model(self, model: nn.Module) -> None:
        """Raise ValueError when `model` lacks what this method needs (e.g. a named head)."""

    def load_init_state(self, model: nn.Module, state: dict) -> None:
        """Load the weights of `model.init_from` (the builder calls this after `build_model`, before
        `prepare`). Default: exactly the model's weights. A method whose checkpoint maps onto part of
        its model overrides it (SSD's distillation loads the teacher)."""
        load_exactly(model, state)

    def prepare(self, model: nn.Module) -> None:
        """Called once after the model's weights are final (after `model.init_from` or the
        previous stage), before the optimiser is built (e.g. MaxNorm's thresholds)."""

    def trainable_parameters(self, model: nn.Module) -> list[nn.Parameter]:
        """Parameters the optimiser updates (classifier-retraining stages return a subset)."""
        return [p for p in model.parameters() if p.requires_grad]

    def no_decay_parameters(self, model: nn.Module) -> set[str]:
        """Names of parameters of `model` that this method's recipe trains without weight decay,
        whatever `optim.no_decay` says (Cui et al.'s sigmoid loss: the classifier bias)."""
        return set()

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

    def prediction_head(self) -> str | None:
        """The head whose logits are the prediction (top-1, best.pt, predict), for the reports that
        name it; None for a model with one classifier."""
        return None

    def head_logits(self, model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(the prediction's logits, {head: logits} of each head when the method has several) from one
        forward; evaluation reports the accuracy of every head. Default: (`predict`, {})."""
        return self.predict(model, x), {}

    # --- resume --------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "generator" in state:
            self.generator.set_state(state["generator"])


class StageMethod(Method):
    """A method that continues the previous stage's model; alone, it builds `base_method`'s."""

    config_class: ClassVar[type] = StageMethodConfig
    stage: ClassVar[Stage] = Stage.HEAD

    def new_model(self, backbone: nn.Module) -> nn.Module:
        full = build_structure(self.cfg.base_method, self.cfg.base_config, self.ctx, backbone)
        model = handoff(full)
        # Weights of the base structure the hand-off leaves behind: a checkpoint of the earlier stage
        # holds them, and `load_init_state` drops exactly these (the official codes' key filter).
        self._handoff_dropped = set(full.state_dict()) - set(model.state_dict())
        return model

    def load_init_state(self, model: nn.Module, state: dict) -> None:
        dropped = getattr(self, "_handoff_dropped", set())
        try:
            load_exactly(model, {k: v for k, v in state.items() if k not in dropped})
        except RuntimeError as exc:
            raise RuntimeError(f"{exc} (expected a checkpoint of a method.base_method={self.cfg.base_method} "
                               "model)") from None


def build_structure(method: str, config: dict, ctx: MethodContext, backbone: nn.Module) -> nn.Module:
    """A fresh model of `method` with config keys `config` on `backbone`: the structure an earlier
    stage trained (its method object is built for the structure only, not to be trained)."""
    cls = METHODS[method]
    cfg = build_dataclass(cls.config_class, dict(config), "method.base_config")
    return cls(cfg, dataclasses.replace(ctx, stream_batch_size=None)).new_model(backbone)
