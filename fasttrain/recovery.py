"""What a checkpoint holds, when one is written inside an epoch, and how a run continues from one.

A `last.pt` holds everything an exact continuation needs: model, optimizer, grad scaler, the
method's state (its RNG generators, MaxNorm thresholds, ...; SSD's queue is in the model), the
loader state (epoch and step position: mid-epoch checkpoints resume at the next step), every
global RNG, the epoch count (the schedule position follows from it and the step), best-so-far and
history. The stage index is the run directory: each later stage has its own sub-directory.

Under torchrun every rank has its own RNG streams and loader state (augmentation draws differ by
rank), so each rank's part is gathered to rank 0 (small: generator states and positions) and
stored in the one file as `ranks: [rank 0's, rank 1's, ...]`; rank 0 writes it; on resume every
rank reads the file (out_dir on a filesystem every node sees) and takes its own part. One file
rather than one per rank: a checkpoint is then complete or absent, never half a set.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path

from fasttrain import distributed
from fasttrain.checkpoint import CheckpointError
from fasttrain.environment import rng_state, set_rng_state
from fasttrain.methods.base import load_exactly

log = logging.getLogger("fasttrain")

# Keys whose change between the checkpoint's config and this one is expected on a resume.
RESUME_FREE_KEYS = ("out_dir", "name", "train.epochs", "train.stop_after_epochs", "train.max_steps_per_epoch",
                    "train.save_every", "train.save_every_steps", "train.save_every_minutes", "train.log_every",
                    "train.eval_every", "train.dist_timeout_s", "data.root", "loader.num_workers", "log.")


class SavePolicy:
    """Mid-epoch checkpoints: every `every_steps` steps of an epoch and/or every `every_minutes`
    of wall time (rank 0's clock decides, so every rank saves at the same step)."""

    def __init__(self, every_steps: int | None, every_minutes: float | None, clock=time.monotonic):
        self.every_steps, self.every_minutes = every_steps, every_minutes
        self.clock = clock  # seconds, monotonic (a test passes a fake one)
        self.last_save = clock()

    def due(self, step: int) -> tuple[bool, bool]:
        """(due by steps, due by time) after `step` steps of the epoch (the time part is only
        meaningful on rank 0; the trainer agrees on it across ranks)."""
        by_steps = bool(self.every_steps) and step % self.every_steps == 0
        by_time = bool(self.every_minutes) and self.clock() - self.last_save >= 60.0 * self.every_minutes
        return by_steps, by_time

    def saved(self) -> None:
        self.last_save = self.clock()


def rank_state(loader, method, position: int | None) -> dict:
    """This rank's part of a checkpoint: loader state (at step `position` when given), method state
    (its generators), every global RNG."""
    loader_state = dict(loader.state_dict())
    if position is not None:  # a mid-epoch checkpoint resumes at the next step
        loader_state["position"] = position
    return {"loader": loader_state, "method": method.state_dict(), "rng": rng_state()}


def flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flat(v, key + "."))
        else:
            out[key] = v
    return out


def config_differences(saved: dict, current: dict, limit: int = 10) -> list[str]:
    """`key: saved → current` for every leaf that differs, keys a resume may change left out."""
    a, b = flat(saved or {}), flat(current or {})
    rows = []
    for key in sorted(set(a) | set(b)):
        if any(key == free or (free.endswith(".") and key.startswith(free)) for free in RESUME_FREE_KEYS):
            continue
        if a.get(key, "<absent>") != b.get(key, "<absent>"):
            rows.append(f"{key}: {a.get(key, '<absent>')!r} → {b.get(key, '<absent>')!r}")
    return rows[:limit] + ([f"… {len(rows) - limit} more"] if len(rows) > limit else [])


def restore(path: Path, state: dict, *, model, learner, method, loader, current_config: dict,
            dctx: distributed.DistContext) -> None:
    """Load checkpoint `state` (read from `path`) into this rank's objects. A checkpoint of another
    model is a CheckpointError that names what differs (weights and config)."""
    diffs = config_differences(state.get("config", {}), current_config)
    try:
        load_exactly(model, state["model"], "this run's model")
        if learner.optimizer is not None:
            learner.optimizer.load_state_dict(state["optimizer"])
    except (RuntimeError, ValueError, KeyError) as exc:
        differs = "; its config differs in " + ", ".join(diffs) if diffs else ""
        raise CheckpointError(f"--resume {path}: written by a different model/config — "
                              f"{str(exc).splitlines()[0]}{differs}. Resume with the config it was written with, "
                              "or start a new run (another name, or --overwrite)") from None
    if diffs:
        log.warning("--resume %s: the config differs from the checkpoint's in %s", path, ", ".join(diffs))
    learner.scaler.load_state_dict(state["scaler"])
    ranks = state.get("ranks") or [{"loader": state["loader"], "method": state["method"], "rng": state["rng"]}]
    mine = ranks[dctx.rank] if len(ranks) == dctx.world_size else None
    position = int(state["loader"].get("position", 0) or 0)
    if mine is None:
        if position:
            raise CheckpointError(f"--resume {path}: written mid-epoch (step {position}) by {len(ranks)} process(es); "
                                  f"resume it with {len(ranks)} (this job has {dctx.world_size}), or from an "
                                  "epoch-end checkpoint")
        log.warning("--resume %s: written by %d process(es), resumed by %d: the epoch order is the same, the "
                    "augmentation draws are not (not a bit-exact continuation)", path, len(ranks), dctx.world_size)
        method.load_state_dict(ranks[0]["method"])
        loader.set_epoch(int(state["epoch"]))
        return
    method.load_state_dict(mine["method"])
    loader.load_state_dict(mine["loader"])
    set_rng_state(mine["rng"])
