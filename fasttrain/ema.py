"""Weight EMA (`train.ema`): an exponential moving average of the model, with timm's ModelEmaV3
semantics, evaluated beside the raw model and stored in last.pt for an exact resume.

The average covers the whole state dict: floating-point entries (parameters and buffers such as
BatchNorm's running statistics) move as `ema += (1 - d_t) * (model - ema)` (a lerp), the others
(`num_batches_tracked`) are copied. After optimizer step t (counted from 1):

    s   = max(0, t - update_after_step - 1)
    d_t = 0                                                   if s == 0 (the EMA copies the model)
          clamp(1 - (1 + s / warmup_gamma)^-warmup_power, min_decay, decay)   with warmup
          decay                                               otherwise

The update runs on the device, inside the step (`fasttrain.step.train_step`, after the optimizer
and the method's hook), and reads nothing back to the host. The EMA is evaluated every evaluation
(`top1_ema`, `many_ema`, ... in the epoch's record) and, with `train.select_model: ema`, is what
best.pt holds (`selection_run`).
"""
from __future__ import annotations

import copy
import dataclasses

import torch
import torch.nn as nn

EMA_SUFFIX = "_ema"  # the metric suffix of the EMA model's evaluation: top1_ema, many_ema, ...


class ModelEma:
    """The EMA copy of a model (`module`, in eval mode, no gradients) and its update count."""

    def __init__(self, model: nn.Module, decay: float, *, warmup: bool = False, warmup_gamma: float = 1.0,
                 warmup_power: float = 2 / 3, min_decay: float = 0.0, update_after_step: int = 0):
        self.module = copy.deepcopy(model).eval()
        self.module.requires_grad_(False)
        self.decay, self.warmup, self.min_decay = decay, warmup, min_decay
        self.warmup_gamma, self.warmup_power, self.update_after_step = warmup_gamma, warmup_power, update_after_step
        self.updates = 0  # optimizer steps seen

    def decay_at(self, step: int) -> float:
        """d_t after optimizer step `step` (1-based; see the module docstring)."""
        s = max(0, step - self.update_after_step - 1)
        if s == 0:
            return 0.0
        if not self.warmup:
            return self.decay
        ramp = 1.0 - (1.0 + s / self.warmup_gamma) ** -self.warmup_power
        return max(self.min_decay, min(ramp, self.decay))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """One update after an optimizer step of `model` (the raw, unwrapped model)."""
        self.updates += 1
        weight = 1.0 - self.decay_at(self.updates)
        ema_float, model_float = [], []
        for e, m in zip(self.module.state_dict().values(), model.state_dict().values()):
            if e.is_floating_point():
                ema_float.append(e)
                model_float.append(m.detach())
            else:
                e.copy_(m)
        if ema_float:
            torch._foreach_lerp_(ema_float, model_float, weight)

    def state_dict(self) -> dict:
        return {"weights": self.module.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: dict) -> None:
        self.module.load_state_dict(state["weights"])
        self.updates = int(state["updates"])

    def restart_from(self, model: nn.Module) -> None:
        """Start over from `model`'s weights (a resumed run whose checkpoint has no EMA)."""
        self.module.load_state_dict(model.state_dict())
        self.updates = 0


def build_ema(ema_cfg, model: nn.Module) -> ModelEma | None:
    """The run's EMA (`train.ema`), or None when `train.ema.decay` is null."""
    if ema_cfg.decay is None:
        return None
    return ModelEma(model, ema_cfg.decay, warmup=ema_cfg.warmup, warmup_gamma=ema_cfg.warmup_gamma,
                    warmup_power=ema_cfg.warmup_power, min_decay=ema_cfg.min_decay,
                    update_after_step=ema_cfg.update_after_step)


def ema_run(run):
    """The run with the EMA weights as its model (what evaluation and best.pt read), or None."""
    ema = run.learner.ema if run.learner is not None else None
    return dataclasses.replace(run, model=ema.module) if ema is not None else None


def selection_run(run) -> tuple:
    """(the run whose model best.pt is chosen on and holds, its metric label): the EMA view and
    "_ema" under `train.select_model: ema` when the stage keeps an EMA (a post-hoc stage trains
    nothing and has none), else the run itself and ""."""
    view = ema_run(run) if run.cfg.train.select_model == "ema" else None
    return (view, EMA_SUFFIX) if view is not None else (run, "")


def evaluate_ema(run, evaluate, record: dict, keys=()) -> dict | None:
    """Evaluate the EMA weights with `evaluate(run)`; each of the report's `keys` goes into `record`
    with the suffix (`top1_ema`, `many_ema`, ...), and `top1_<head>_ema` for several heads. The
    report, or None without an EMA."""
    view = ema_run(run)
    if view is None:
        return None
    report = evaluate(view)
    record.update({k + EMA_SUFFIX: report[k] for k in keys})
    record.update({f"top1_{name}{EMA_SUFFIX}": r["top1"] for name, r in report.get("heads", {}).items()})
    return report


def summary_section(report: dict | None) -> dict:
    """summary.json's `final_ema`: the EMA model's final report without its per-class list ({} without EMA)."""
    if report is None:
        return {}
    return {"final_ema": {k: v for k, v in report.items() if k != "per_class"}}


def restore_ema(ema: ModelEma | None, state: dict, model: nn.Module, log) -> None:
    """Load last.pt's EMA (`state["ema"]`) on --resume; a checkpoint written without EMA starts it
    from the resumed weights (said once)."""
    if ema is None:
        return
    if state.get("ema") is None:
        log.warning("--resume: the checkpoint holds no EMA weights (train.ema was off); the EMA starts from the "
                    "resumed weights")
        ema.restart_from(model)
        return
    ema.load_state_dict(state["ema"])
