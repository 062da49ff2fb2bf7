"""What a checkpoint holds, when one is written inside an epoch, and how a run continues from one.

A `last.pt` holds everything an exact continuation needs: model, optimizer, grad scaler, the EMA
weights and their update count (train.ema), the method's state (its RNG generators, MaxNorm
thresholds, ...; SSD's queue is in the model), the loader state (epoch and step position:
mid-epoch checkpoints resume at the next step), every global RNG, the epoch count (the schedule
position follows from it and the step), best-so-far and history. The stage index is the run
directory: each later stage has its own sub-directory.

Under torchrun every rank has its own RNG streams and loader state (augmentation draws differ by
rank), so each rank's part is gathered to rank 0 (small: generator states and positions) and
stored in the one file as `ranks: [rank 0's, rank 1's, ...]`; rank 0 writes it; on resume every
rank reads the file (out_dir on a filesystem every node sees) and takes its own part. One file
rather than one per rank: a checkpoint is then complete or absent, never half a set.

`LastCheckpoint` is the trainer's one object for last.pt: it writes it (`save`), continues a run
from one (`resume`) and remembers which checkpoint holds the last good state (`last_good`, quoted
by every error that stops a run).
"""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from fasttrain import distributed
from fasttrain.checkpoint import CheckpointError, load_checkpoint, save_checkpoint, write_text_atomic
from fasttrain.config import to_dict
from fasttrain.ema import restore_ema
from fasttrain.environment import rng_state, set_rng_state
from fasttrain.evaluation import class_names
from fasttrain.guard import check_finite_state, non_finite
from fasttrain.model_state import checkpoint_weights, load_weights

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
        load_weights(model, state, "this run's model")
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
    restore_ema(learner.ema, state, model, log)  # train.ema: the average and its update count
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


def run_meta(run) -> dict:
    """What inference needs without the training data (fasttrain predict / export): stored in
    last.pt and best.pt."""
    ts = run.train_set
    meta = {"class_names": class_names(ts), "train_counts": [int(n) for n in ts.train_counts],
            "mean": list(run.augmenter.mean), "std": list(run.augmenter.std)}
    if ts.images is not None and run.cfg.augment.train != "imagenet":  # the model takes the arrays' size
        meta["image_size"] = list(ts.images.shape[1:3])
    return meta


class LastCheckpoint:
    """last.pt of one stage's run directory: written by rank 0, read by every rank on --resume."""

    def __init__(self, run, run_dir: Path, meta: dict):
        self.run, self.run_dir, self.meta = run, Path(run_dir), meta
        self.last_good = "No checkpoint of this run was written yet"

    def save(self, epoch_done: int, position: int | None, best: dict, history: list[dict]) -> None:
        """last.pt after `epoch_done` epochs (+ `position` steps of the next). Never with non-finite
        weights or optimizer state (checked first). A collective under torchrun; rank 0 writes."""
        run = self.run
        when = (f"the end of epoch {epoch_done - 1}" if position is None
                else f"epoch {epoch_done} step {position - 1} (0-indexed)")
        check_finite_state(run.model, run.learner.optimizer, when, self.last_good)
        state = self._state(epoch_done, position, best, history)
        if run.dist.rank == 0:
            save_checkpoint(state, self.run_dir / "last.pt")
        where = f"epoch {epoch_done}" + (f", step {position}" if position is not None else "")
        self.last_good = f"last.pt holds the last good state ({where}); continue from it with --resume"

    def _state(self, epoch_done: int, position: int | None, best: dict, history: list[dict]) -> dict:
        run, learner = self.run, self.run.learner
        own = rank_state(run.train_loader, run.method, position)
        state = {**checkpoint_weights(run.model, run.cfg.model),  # PEFT runs: trainable weights + reference
                 "optimizer": learner.optimizer.state_dict() if learner.optimizer is not None else None,
                 "scaler": learner.scaler.state_dict(), "method": own["method"], "loader": own["loader"],
                 "rng": own["rng"], "epoch": epoch_done,  # epochs fully completed
                 "best": best, "history": history, "config": to_dict(run.cfg), "meta": self.meta}
        if learner.ema is not None:  # train.ema: the EMA weights and their update count (exact resume)
            state["ema"] = learner.ema.state_dict()
        if run.dist.world_size > 1:  # every rank's RNG streams and loader position (see the module docstring)
            state["ranks"] = distributed.gather_to_main(own)
            state["world_size"] = run.dist.world_size
        return state

    def resume(self, path: Path) -> tuple[dict, str]:
        """Load `path` into the run's objects; returns (the checkpoint, the "resumed from" note)."""
        run = self.run
        state = load_checkpoint(path)
        bad = non_finite(state["model"])
        if bad:  # written by a diverging run before checkpoints were checked: it cannot be continued
            raise CheckpointError(f"--resume {path}: the checkpoint holds NaN/inf weights ({len(bad)} of "
                                  f"{len(state['model'])} tensors, e.g. {bad[0]}); resume from an earlier checkpoint, "
                                  "or start again with a lower optim.lr")
        restore(path, state, model=run.model, learner=run.learner, method=run.method, loader=run.train_loader,
                current_config=to_dict(run.cfg), dctx=run.dist)
        # The loader position counts steps of the epoch the loader was in: an epoch-end checkpoint's
        # is that finished epoch's last step, and the next epoch starts at step 0.
        epoch = state["epoch"]
        step = int(state["loader"].get("position", 0) or 0) if state["loader"].get("epoch") == epoch else 0
        where = f"epoch {epoch}" + (f", step {step}" if step else "")
        name = "last.pt" if path == self.run_dir / "last.pt" else str(path)
        self.last_good = f"{name} holds the last good state ({where}); continue from it with --resume"
        # metrics.jsonl holds each finished epoch once: the checkpoint's history, not what a killed
        # invocation appended after its last checkpoint.
        if run.dist.rank == 0:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            write_text_atomic(self.run_dir / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in state["history"]))
        return state, f"resumed from {path} at {where}"
