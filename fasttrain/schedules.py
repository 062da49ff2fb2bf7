"""Learning-rate schedules as a multiplier of the base lr, a function of the (fractional) epoch.

`epoch` is 0-indexed; with `per_step` the trainer passes epoch + step/steps_per_epoch and the width
of a step (1/steps_per_epoch). The linear warm-up gives each unit the ramp's value at the unit's end,
(e + width)/W: per epoch (width 1) that is (e+1)/W as before; per step it rises from 1/(steps·W) to 1
at the last step of epoch W-1 (the per-epoch value at each epoch's last step) and the cosine or
multistep part follows from epoch W on: the smooth per-step warm-up of AdamW recipes.
- constant
- cosine:           ½(1 + cos(π e / E)) (CIFAR recipes: CosineAnnealingLR stepped per epoch)
- warmup_cosine:    linear warm-up (e+width)/W for e < W, then cosine over the remaining epochs
                    (PaCo's intended schedule; GLMC's `imagenet_lr_schedule: warmup_cosine`)
- multistep:        γ^(number of milestones m with e >= m)
- warmup_multistep: (e+width)/W for e < W, then multistep (LDAM-DRW / FBL recipes)
- code_offbyone:    GLMC's ImageNet-LT/iNat schedule exactly as its code runs it
                    (`Trainer.paco_adjust_learning_rate`): epoch 0 at lr0, epochs 1..11 at
                    e/10·lr0 (1.1·lr0 at epoch 11), then ½(1 + cos(π (e − 10) / (E − 9))).
`min_lr` is a floor in absolute units applied as lr = min_lr + (lr0 − min_lr)·factor for the
cosine family.
"""
from __future__ import annotations

import math


def _constant(e: float, epochs: int, warmup: int, milestones, gamma: float, width: float = 1.0) -> float:
    return 1.0


def _cosine(e: float, epochs: int, warmup: int, milestones, gamma: float, width: float = 1.0) -> float:
    return 0.5 * (1 + math.cos(math.pi * e / epochs))


def _warmup_cosine(e: float, epochs: int, warmup: int, milestones, gamma: float, width: float = 1.0) -> float:
    if e < warmup:
        return min(1.0, (e + width) / warmup)
    return 0.5 * (1 + math.cos(math.pi * (e - warmup) / max(epochs - warmup, 1)))


def _multistep(e: float, epochs: int, warmup: int, milestones, gamma: float, width: float = 1.0) -> float:
    return gamma ** sum(1 for m in milestones if e >= m)


def _warmup_multistep(e: float, epochs: int, warmup: int, milestones, gamma: float, width: float = 1.0) -> float:
    if e < warmup:
        return min(1.0, (e + width) / warmup)
    return _multistep(e, epochs, warmup, milestones, gamma)


def _code_offbyone(e: float, epochs: int, warmup: int, milestones, gamma: float, width: float = 1.0) -> float:
    k = math.floor(e)
    if k == 0:
        return 1.0
    if k <= 11:
        return k / 10
    return 0.5 * (1 + math.cos(math.pi * (k - 10) / (epochs - 9)))


# The one list of schedule names (`schedule.name`): name -> lr multiplier of the epoch.
SCHEDULES = {
    "constant": _constant,
    "cosine": _cosine,
    "warmup_cosine": _warmup_cosine,
    "multistep": _multistep,
    "warmup_multistep": _warmup_multistep,
    "code_offbyone": _code_offbyone,
}
FLOORED = ("cosine", "warmup_cosine")  # schedules that decay towards `min_lr` instead of 0


def lr_factor(name: str, epoch: float, epochs: int, warmup: int = 0, milestones=(), gamma: float = 0.1,
              width: float = 1.0) -> float:
    if name not in SCHEDULES:
        raise ValueError(f"schedule.name: unknown schedule {name!r}; choose from {sorted(SCHEDULES)}")
    return SCHEDULES[name](epoch, epochs, warmup, milestones, gamma, width)


def learning_rate(cfg_schedule, base_lr: float, epoch: float, epochs: int, width: float = 1.0) -> float:
    """The lr at (fractional) `epoch`; `width`: the length of the unit it holds for (1 epoch, or
    1/steps with schedule.per_step), which places the linear warm-up at the unit's end."""
    f = lr_factor(cfg_schedule.name, epoch, epochs, cfg_schedule.warmup_epochs, cfg_schedule.milestones,
                  cfg_schedule.gamma, width)
    if cfg_schedule.name in FLOORED:
        return cfg_schedule.min_lr + (base_lr - cfg_schedule.min_lr) * f
    return base_lr * f
