"""The training loop: one stage = build the run, loop epochs, evaluate, save.

Multi-stage runs (GLMC -> MaxNorm, SSD I-IV, cRT/LWS) are a list of stages; each later stage
starts from the previous stage's model and lives in its own sub-directory of the run. The step
itself is `fasttrain.step.train_step`; building is `fasttrain.build`; everything written about
the run is `fasttrain.runlog.RunLog`.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from fasttrain.build import build_run, build_split_loader
from fasttrain.checkpoint import load_checkpoint, save_checkpoint
from fasttrain.config import RunConfig, dump_config, stage_config, to_dict
from fasttrain.schema import ConfigError
from fasttrain.environment import memory_peaks, rng_state, set_rng_state, versions
from fasttrain.evaluation import class_names, evaluate, head_scalars
from fasttrain.meter import MeanLogs, ThroughputMeter
from fasttrain.methods import Progress
from fasttrain.runlog import EVAL_KEYS, RunLog
from fasttrain.schedules import learning_rate
from fasttrain.step import train_step

log = logging.getLogger("fasttrain")


@dataclass
class StageResult:
    model: torch.nn.Module
    summary: dict


# What a run leaves in its directory (a later stage's sub-directory is its own run).
RUN_FILES = ("config.yaml", "metrics.jsonl", "train.log", "last.pt", "best.pt", "summary.json", "tb",
             "per_class_accuracy.png", "per_class.csv", "top1_vs_time.png")


class RunDirectoryInUse(ConfigError):
    """Starting a run in a directory that holds one, without --resume or --overwrite (a usage
    error: printed without a traceback, like a config error)."""


class _Stop(Exception):
    """Raised inside the loop when SIGTERM asked for a clean stop (last.pt is saved first)."""


def _due(every: int, epoch: int, epochs: int) -> bool:
    return (epoch + 1) % every == 0 or epoch + 1 == epochs


class Trainer:
    def __init__(self, cfg: RunConfig, run_dir: Path, previous_model: torch.nn.Module | None = None,
                 resume: bool | str | Path = False, overwrite: bool = False):
        """`resume`: False, True (this run directory's last.pt) or a checkpoint path. A run directory
        that already holds a run is never reused silently: resume it, or pass `overwrite`."""
        self.rank = int(os.environ.get("RANK", 0))
        self.world_size = int(os.environ.get("WORLD_SIZE", 1))
        if self.world_size > 1:
            # Samplers already shard by (rank, world_size), but gradients are not synchronised
            # yet: refuse rather than train W independent models on W shards.
            raise RuntimeError("WORLD_SIZE > 1: multi-process (torchrun/DDP) training is not supported yet; "
                               "run a single process")
        self.cfg, self.run_dir = cfg, Path(run_dir)
        self.run = build_run(cfg, training=True, previous_model=previous_model, rank=self.rank,
                             world_size=self.world_size)
        self.learner = self.run.learner
        self.method, self.model, self.loader = self.run.method, self.run.model, self.run.train_loader
        self.start_epoch = 0
        self.best = {"top1": -1.0, "epoch": -1}
        self.history: list[dict] = []
        self._stop_requested = False
        checkpoint = Path(resume) if isinstance(resume, (str, Path)) else self.run_dir / "last.pt"
        if resume and checkpoint.is_file():
            self._resume(checkpoint)
        elif isinstance(resume, (str, Path)):
            raise FileNotFoundError(f"--resume {resume}: no such checkpoint")
        elif not resume:
            self._claim_run_dir(overwrite)

    # --- the loop ------------------------------------------------------------------------------
    def train_epoch(self, epoch: int, runlog: RunLog, meter: ThroughputMeter) -> dict:
        cfg, loader = self.cfg, self.loader
        self.model.train()
        loader.set_epoch(epoch)
        steps = min(len(loader), cfg.train.max_steps_per_epoch or len(loader))
        start = step = loader.position
        progress = Progress(epoch, cfg.train.epochs, start, steps)
        lr = self._set_lr(epoch)
        logs = MeanLogs()
        bar = runlog.progress(epoch, steps, start)
        meter.start_window()
        for batch in meter.timed(loader, steps - start):
            progress.step = step
            if cfg.schedule.per_step:
                lr = self._set_lr(epoch + step / steps)
            logs.add(train_step(self.learner, batch, progress))
            meter.count(batch.size)
            step += 1
            bar.update(1)
            if step % cfg.train.log_every == 0 or step == steps:
                runlog.train(epoch * steps + step, logs.means(), meter.read(self.run.device), lr, bar)
            if self._stop_requested:  # save mid-epoch: loader position + RNG give an exact continuation
                loader.position = step
                save_checkpoint(self._state(epoch), self.run_dir / "last.pt")
                bar.close()
                raise _Stop()
        bar.close()
        self.method.after_epoch(self.model, progress)
        rate = meter.epoch_rate(self.run.device)
        out = logs.means()
        out.update({"lr": lr, "img_per_s": rate["img_per_s"], "data_wait_frac": rate["data_wait_frac"],
                    "steps": step - start, "train_loss": out.get("loss", float("nan"))})
        out.update(memory_peaks(self.run.device))
        if hasattr(loader, "skipped"):  # DALI skip_corrupt: files dropped so far
            out["skipped_files"] = len(loader.skipped)
        return out

    def fit(self) -> StageResult:
        cfg = self.cfg
        self.run_dir.mkdir(parents=True, exist_ok=True)
        dump_config(cfg, self.run_dir / "config.yaml")
        meter, t0, report = ThroughputMeter(), time.perf_counter(), None
        # SIGTERM (schedulers) and SIGINT (Ctrl-C): finish the step, save last.pt, exit cleanly.
        old_handlers = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            with RunLog(self.run_dir, enabled=self.rank == 0, cfg=cfg) as runlog:
                for done_here, epoch in enumerate(range(self.start_epoch, cfg.train.epochs)):
                    if cfg.train.stop_after_epochs is not None and done_here >= cfg.train.stop_after_epochs:
                        log.warning("stopping after %d epochs as configured; continue with --resume", done_here)
                        return StageResult(self.model, {"stopped_at_epoch": epoch, "name": cfg.name})
                    record = {"epoch": epoch, **self.train_epoch(epoch, runlog, meter)}
                    if _due(cfg.train.eval_every, epoch, cfg.train.epochs):
                        report = evaluate(self.run)
                        record.update({k: report[k] for k in EVAL_KEYS})
                        record.update(head_scalars(report))  # top1_<head> of several-head methods (SSD III)
                        self._keep_best(report, epoch)
                    record["wall_s"] = time.perf_counter() - t0  # since this invocation started
                    self.history.append(record)
                    runlog.epoch(record)
                    if _due(cfg.train.save_every, epoch, cfg.train.epochs):
                        save_checkpoint(self._state(epoch + 1), self.run_dir / "last.pt")
                calibration = self._calibrate()
                if calibration or report is None:  # post-hoc choice, or resumed after the last epoch
                    report = evaluate(self.run)
                summary = self._summary(report, meter, time.perf_counter() - t0)
                if calibration:
                    summary["calibration"] = calibration
                runlog.finish(summary, report, self.run.train_set)
        except _Stop:
            log.warning("stopped by signal; resume with --resume")
            raise SystemExit(143) from None
        finally:
            for sig, handler in old_handlers.items():
                signal.signal(sig, handler)
        return StageResult(self.model, summary)

    # --- pieces of the loop --------------------------------------------------------------------
    def _set_lr(self, epoch: float) -> float:
        lr = learning_rate(self.cfg.schedule, self.cfg.optim.lr, epoch, self.cfg.train.epochs)
        for group in self.learner.optimizer.param_groups:
            group["lr"] = lr
        return lr

    def _calibrate(self) -> dict:
        """Post-hoc methods (τ-norm) choose their parameters on a split once the epochs are done;
        the choice goes into the resolved config and last.pt, so the stage's checkpoint carries it."""
        split = self.method.calibration_split()
        if split is None:
            return {}
        found = self.method.calibrate(self.model, build_split_loader(self.run, split), self.run.augmenter)
        log.info("calibrated on the %s split: %s", split, found)
        dump_config(self.cfg, self.run_dir / "config.yaml")
        save_checkpoint(self._state(self.cfg.train.epochs), self.run_dir / "last.pt")
        return found

    def _keep_best(self, report: dict, epoch: int) -> None:
        if report["top1"] > self.best["top1"]:
            self.best = {"top1": report["top1"], "epoch": epoch, **{k: report[k] for k in ("many", "medium", "few")}}
            save_checkpoint({"model": self.model.state_dict(), "epoch": epoch + 1, "report": report,
                             "config": to_dict(self.cfg), "meta": self._meta()}, self.run_dir / "best.pt")

    def _summary(self, report: dict, meter: ThroughputMeter, wall_s: float) -> dict:
        cfg = self.cfg
        return {"name": cfg.name, "method": cfg.method.name, "dataset": cfg.data.dataset,
                "final": {k: v for k, v in report.items() if k != "per_class"}, "best": self.best,
                "img_per_s": meter.overall_rate(), "wall_s": wall_s, "epochs": self.history,
                "device": str(self.run.device), "amp": str(self.run.amp), "versions": versions(),
                "switches": to_dict(cfg.method)}

    def _claim_run_dir(self, overwrite: bool) -> None:
        """A fresh run must not append to, or overwrite, another run's artefacts."""
        held = [n for n in RUN_FILES if (self.run_dir / n).exists()]
        if not held:
            return
        if not overwrite:
            raise RunDirectoryInUse(f"{self.run_dir} already holds a run ({', '.join(held)}): continue it with "
                                    "--resume, or start again with --overwrite (deletes those files)")
        for name in held:
            path = self.run_dir / name
            shutil.rmtree(path) if path.is_dir() else path.unlink()
        log.warning("--overwrite: removed %s from %s", ", ".join(held), self.run_dir)

    def _on_signal(self, signum, frame) -> None:
        log.warning("signal %d received: finishing this step, then saving last.pt", signum)
        self._stop_requested = True

    # --- checkpoints ---------------------------------------------------------------------------
    def _state(self, epoch_done: int) -> dict:
        lr = self.learner
        return {"model": self.model.state_dict(),
                "optimizer": lr.optimizer.state_dict() if lr.optimizer is not None else None,
                "scaler": lr.scaler.state_dict(), "method": self.method.state_dict(),
                "loader": self.loader.state_dict(), "rng": rng_state(),
                "epoch": epoch_done,  # epochs fully completed
                "best": self.best, "history": self.history, "config": to_dict(self.cfg), "meta": self._meta()}

    def _meta(self) -> dict:
        """What inference needs without the training data (fasttrain predict / export)."""
        ts = self.run.train_set
        meta = {"class_names": class_names(ts), "train_counts": [int(n) for n in ts.train_counts],
                "mean": list(self.run.augmenter.mean), "std": list(self.run.augmenter.std)}
        if ts.images is not None:
            meta["image_size"] = list(ts.images.shape[1:3])
        return meta

    def _resume(self, path: Path) -> None:
        state = load_checkpoint(path)
        self.model.load_state_dict(state["model"])
        if self.learner.optimizer is not None:
            self.learner.optimizer.load_state_dict(state["optimizer"])
        self.learner.scaler.load_state_dict(state["scaler"])
        self.method.load_state_dict(state["method"])
        self.loader.load_state_dict(state["loader"])
        set_rng_state(state["rng"])
        self.start_epoch = state["epoch"]
        self.best, self.history = state["best"], state["history"]
        # metrics.jsonl holds each finished epoch once: the checkpoint's history, not what a killed
        # invocation appended after its last checkpoint.
        self.run_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.run_dir / "metrics.jsonl.tmp"
        tmp.write_text("".join(json.dumps(r) + "\n" for r in self.history))
        tmp.replace(self.run_dir / "metrics.jsonl")
        log.info("resumed from %s at epoch %d (step %d)", path, self.start_epoch, state["loader"].get("position", 0))


def run_training(cfg: RunConfig, resume: bool | str | Path = False, overwrite: bool = False) -> dict:
    """Run every stage of `cfg`; returns the last stage's summary (with `stages` for all).

    `resume=True` continues the first stage's last.pt and then every later stage from its own;
    `resume=PATH` continues the first stage from that checkpoint."""
    root = Path(cfg.out_dir) / cfg.name
    if resume is True and not (root / "last.pt").is_file():
        raise FileNotFoundError(f"--resume: nothing to resume in {root} (no last.pt); start without --resume")
    result = Trainer(cfg, root, resume=resume, overwrite=overwrite).fit()
    summaries = [result.summary]
    for i, stage in enumerate(cfg.stages):
        if "stopped_at_epoch" in result.summary:
            break
        scfg = stage_config(cfg, i)
        if "init_from" not in stage.overrides.get("model", {}):
            scfg.model.init_from = None  # the stage starts from the previous stage's model
        stage_resume = bool(resume) and (root / stage.name / "last.pt").is_file()  # else the stage starts
        result = Trainer(scfg, root / stage.name, previous_model=result.model, resume=stage_resume,
                         overwrite=overwrite).fit()
        summaries.append(result.summary)
    out = dict(summaries[-1])
    out["stages"] = summaries
    return out
