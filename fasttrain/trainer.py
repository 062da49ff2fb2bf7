"""The training loop: one stage = build the run, loop epochs, evaluate, save.

Multi-stage runs (GLMC -> MaxNorm, SSD I-IV, cRT/LWS) are a list of stages; each later stage
starts from the previous stage's model and lives in its own sub-directory of the run. The step
itself is `fasttrain.step.train_step`; building is `fasttrain.build`; everything written about
the run is `fasttrain.runlog.RunLog`; what a checkpoint holds and how a run resumes is
`fasttrain.recovery`; which evaluation picks best.pt is `fasttrain.selection`; NaN/inf losses and
out-of-memory steps are `fasttrain.guard`. Under torchrun every rank runs this loop
(`fasttrain.distributed`): rank 0 writes, all ranks agree on when to checkpoint or stop.
"""
from __future__ import annotations

import json
import logging
import shutil
import signal
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from fasttrain import distributed, provenance
from fasttrain.build import build_run, build_split_loader
from fasttrain.checkpoint import (CheckpointError, load_checkpoint, remove_stale_temp_files, save_checkpoint,
                                  write_text_atomic, writing)
from fasttrain.config import RunConfig, dump_config, stage_config, to_dict
from fasttrain.data import build_datasets
from fasttrain.schema import ConfigError
from fasttrain.environment import memory_peaks, versions
from fasttrain.evaluation import class_names, evaluate, evaluate_loader, head_scalars
from fasttrain.guard import DeviceOutOfMemory, LossGuard, check_finite_state, non_finite, out_of_memory_message
from fasttrain.meter import MeanLogs, ThroughputMeter
from fasttrain.methods import Progress
from fasttrain.recovery import SavePolicy, rank_state, restore
from fasttrain.runlog import EVAL_KEYS, RunLog
from fasttrain.schedules import learning_rate
from fasttrain.selection import better, selected_section, selection_split
from fasttrain.step import train_step
from fasttrain.textlog import etas, final_line, header_lines, progress_line

log = logging.getLogger("fasttrain")


@dataclass
class StageResult:
    model: torch.nn.Module
    summary: dict


# What a run leaves in its directory (a later stage's sub-directory is its own run).
RUN_FILES = ("config.yaml", "metrics.jsonl", "train.log", "last.pt", "best.pt", "summary.json", "tb",
             "per_class_accuracy.png", "per_class.csv", "top1_vs_time.png", "provenance.json")


class RunDirectoryInUse(ConfigError):
    """Starting a run in a directory that holds one, without --resume or --overwrite (a usage
    error: printed without a traceback, like a config error)."""


class _Stop(Exception):
    """Raised inside the loop when SIGTERM asked for a clean stop (last.pt is saved first)."""


def _due(every: int, epoch: int, epochs: int) -> bool:
    return (epoch + 1) % every == 0 or epoch + 1 == epochs


def _job_rate(rate: dict) -> dict:
    """A meter reading of this process as the job's: images/s summed over ranks, the data-wait
    fraction averaged (collectives under torchrun; the reading itself on one process)."""
    return {"img_per_s": distributed.sum_scalar(rate["img_per_s"]),
            "data_wait_frac": distributed.mean_scalars({"w": rate["data_wait_frac"]})["w"]}


def accumulation(step: int, steps: int, every: int) -> tuple[int, int]:
    """(micro-batch index, group size) of loader step `step` of `steps` with `every` batches per
    optimizer step; the epoch's last group may be shorter (its mean is over its own batches)."""
    if every == 1:
        return 0, 1
    first = step - step % every
    return step - first, min(every, steps - first)


class Trainer:
    def __init__(self, cfg: RunConfig, run_dir: Path, previous_model: torch.nn.Module | None = None,
                 resume: bool | str | Path = False, overwrite: bool = False):
        """`resume`: False, True (this run directory's last.pt) or a checkpoint path. A run directory
        that already holds a run is never reused silently: resume it, or pass `overwrite`.

        Under torchrun (WORLD_SIZE > 1) the process joins the job's process group here; rank 0
        writes everything, every rank trains its shard and evaluates its part of the eval set."""
        self.dist = distributed.init_from_env(cfg.device, cfg.train.dist_timeout_s)
        self.rank, self.world_size = self.dist.rank, self.dist.world_size
        self.cfg, self.run_dir = cfg, Path(run_dir)
        # Under torchrun rank 0 builds the datasets first (a generated corpus, downloads and caches are
        # written once), then the others read them; one process builds them inside build_run.
        datasets = distributed.main_first(build_datasets, cfg) if self.dist.enabled else None
        self.run = build_run(cfg, training=True, previous_model=previous_model, rank=self.rank,
                             world_size=self.world_size, local_rank=self.dist.local_rank, datasets=datasets)
        if cfg.train.sync_bn and self.world_size > 1 and self.run.device.type != "cuda":
            raise ConfigError("train.sync_bn=true needs CUDA devices (PyTorch's SyncBatchNorm is GPU-only); "
                              "set train.sync_bn=false on CPU")
        self.learner = self.run.learner
        self.method, self.model, self.loader = self.run.method, self.run.model, self.run.train_loader
        self.select = selection_split(cfg)
        self._split_loaders: dict = {}  # selection splits other than the eval split, built on first use
        self.start_epoch = 0
        self.best = {"top1": -1.0, "epoch": -1}
        self.history: list[dict] = []
        self._stop_requested = False
        self.guard = LossGuard()
        self._best: dict = {}  # the best epoch's report (and weights), see _keep_best
        self._resumed_from: Path | None = None
        self.saves = SavePolicy(cfg.train.save_every_steps, cfg.train.save_every_minutes)
        self._last_good = "No checkpoint of this run was written yet"
        self._resume_note: str | None = None  # "resumed from ...", logged once train.log is open
        self._eval_seconds: list[float] = []  # each evaluation's duration: the progress lines' ETA
        distributed.on_main(remove_stale_temp_files, self.run_dir)  # before anything is written here
        checkpoint = Path(resume) if isinstance(resume, (str, Path)) else self.run_dir / "last.pt"
        if resume and checkpoint.is_file():
            self._resume(checkpoint)
        elif isinstance(resume, (str, Path)):
            raise FileNotFoundError(f"--resume {resume}: no such checkpoint")
        elif not resume:
            distributed.on_main(self._claim_run_dir, overwrite)

    # --- the loop ------------------------------------------------------------------------------
    def train_epoch(self, epoch: int, runlog: RunLog, meter: ThroughputMeter) -> dict:
        cfg, loader = self.cfg, self.loader
        self.model.train()
        loader.set_epoch(epoch)
        steps = self._steps_per_epoch()
        start = step = loader.position
        progress = Progress(epoch, cfg.train.epochs, start, steps)
        lr = self._set_lr(epoch)
        logs = MeanLogs()
        bar = runlog.progress(epoch, steps, start)
        meter.start_window()
        started = time.perf_counter()
        try:  # the bar is closed however the epoch ends, so an error message starts on a clean line
            for batch in meter.timed(loader, steps - start):
                progress.step = step
                if cfg.schedule.per_step:
                    lr = self._set_lr(epoch + step / steps)
                micro, group = accumulation(step, steps, cfg.train.grad_accum_steps)
                try:
                    step_logs = train_step(self.learner, batch, progress, micro, group)
                except torch.OutOfMemoryError as exc:
                    raise DeviceOutOfMemory(out_of_memory_message(cfg, epoch, step, self.world_size, exc)) from None
                logs.add(step_logs)
                self.guard.watch(step_logs, batch, epoch, step)
                meter.count(batch.size)
                step += 1
                bar.update(1)
                if step % cfg.train.log_every == 0 or step == steps:
                    self.guard.check(self._last_good)
                    scalars = distributed.mean_scalars(logs.means())
                    rate = _job_rate(meter.read(self.run.device))
                    runlog.train(epoch * steps + step, scalars, rate, lr, bar)
                    per_step = (time.perf_counter() - started) / (step - start)
                    runlog.progress_line(self._progress_text(epoch, step, steps, scalars, rate, lr, per_step), bar)
                if micro == group - 1:  # an optimizer-step boundary: a consistent state to checkpoint
                    self._checkpoint_inside_epoch(epoch, step, steps)
        finally:
            bar.close()
        self.method.after_epoch(self.model, progress)
        # Each rank's forwards updated its own BatchNorm running statistics: from here on every rank
        # holds rank 0's, so all evaluate (and keep as best) the model that rank 0 saves.
        distributed.broadcast_buffers(self.model)
        out = distributed.mean_scalars(logs.means())  # training metrics: mean over ranks
        out.update({"lr": lr, **_job_rate(meter.epoch_rate(self.run.device)),
                    "steps": step - start, "train_loss": out.get("loss", float("nan"))})
        if start:  # resumed mid-epoch: loss, img/s and steps cover only steps start..steps of this epoch
            out["resumed_at_step"] = start
        out.update(memory_peaks(self.run.device))
        if hasattr(loader, "skipped"):  # DALI skip_corrupt: files dropped so far
            out["skipped_files"] = len(loader.skipped)
        return out

    def _checkpoint_inside_epoch(self, epoch: int, step: int, steps: int) -> None:
        """After step `step`: save last.pt if a signal asked to stop (then stop) or a mid-epoch
        checkpoint is due (train.save_every_steps / save_every_minutes). Under torchrun the ranks
        agree first (any rank's signal; rank 0's clock), so all save and stop at the same step."""
        by_steps, by_time = self.saves.due(step) if step < steps else (False, False)
        stop, by_time = distributed.any_flags(self._stop_requested, by_time and self.rank == 0)
        if not (stop or by_steps or by_time):
            return
        self._save_last(epoch, position=step)  # loader position + every RNG: an exact continuation
        if stop:
            distributed.barrier()  # rank 0 has finished writing before any rank exits
            raise _Stop()

    def fit(self) -> StageResult:
        cfg = self.cfg
        if self.rank == 0:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            with writing(self.run_dir / "config.yaml"):
                dump_config(cfg, self.run_dir / "config.yaml", self.world_size)
        meter, t0, report, selection_report = ThroughputMeter(), time.perf_counter(), None, None
        # SIGTERM (schedulers) and SIGINT (Ctrl-C): finish the step or evaluation, save last.pt, exit 143.
        old_handlers = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            with self._open_runlog() as runlog:
                for line in header_lines(provenance.command_line(), cfg, self.run, self.run_dir,
                                         self._steps_per_epoch(), len(self.method.streams()), self.world_size):
                    runlog.note(line)  # before the first step: what this run is about to do
                if self._resume_note:
                    log.info("%s", self._resume_note)  # once, on the console and in train.log
                for done_here, epoch in enumerate(range(self.start_epoch, cfg.train.epochs)):
                    if cfg.train.stop_after_epochs is not None and done_here >= cfg.train.stop_after_epochs:
                        log.warning("stopping after %d epochs as configured; continue with --resume", done_here)
                        return StageResult(self.model, {"stopped_at_epoch": epoch, "name": cfg.name})
                    record = {"epoch": epoch, **self.train_epoch(epoch, runlog, meter)}
                    if _due(cfg.train.eval_every, epoch, cfg.train.epochs):
                        evaluation_started = time.perf_counter()
                        report = evaluate(self.run)
                        record.update({k: report[k] for k in EVAL_KEYS})
                        record.update(head_scalars(report))  # top1_<head> of several-head methods (SSD III)
                        selection_report = self._selection_report(report)
                        if selection_report is not report:
                            record[f"{self.select}_top1"] = selection_report["top1"]
                        self._keep_best(selection_report, epoch)
                        self._eval_seconds.append(time.perf_counter() - evaluation_started)
                    record["wall_s"] = time.perf_counter() - t0  # since this invocation started
                    self.history.append(record)
                    runlog.epoch(record, self.method.prediction_head())
                    # A stop asked for during the evaluation (or any time after the epoch's last step)
                    # ends the run here, with this epoch's checkpoint: no step of the next epoch first.
                    (stop,) = distributed.any_flags(self._stop_requested)
                    if stop or _due(cfg.train.save_every, epoch, cfg.train.epochs):
                        self._save_last(epoch + 1)
                    if stop:
                        distributed.barrier()  # rank 0 has finished writing before any rank exits
                        raise _Stop()
                calibration = self._calibrate()
                if calibration or report is None:  # post-hoc choice, or resumed after the last epoch
                    report = evaluate(self.run)
                summary = self._summary(report, meter, time.perf_counter() - t0)
                summary["selected"] = self._selected(report)
                if calibration:
                    summary["calibration"] = calibration
                runlog.finish(summary, report, self.run.train_set)
                runlog.note(final_line(summary, self.method.prediction_head()))
        except _Stop:
            log.warning("stopped by signal; resume with --resume")
            raise SystemExit(143) from None
        finally:
            for sig, handler in old_handlers.items():
                signal.signal(sig, handler)
        return StageResult(self.model, summary)

    # --- pieces of the loop --------------------------------------------------------------------
    def _steps_per_epoch(self) -> int:
        return min(len(self.loader), self.cfg.train.max_steps_per_epoch or len(self.loader))

    def _progress_text(self, epoch: int, step: int, steps: int, scalars: dict, rate: dict, lr: float,
                       per_step: float) -> str:
        """The progress line after `step`, with the ETAs at this epoch's time per step so far (and
        the evaluations still due at their measured time)."""
        epochs, every = self.cfg.train.epochs, self.cfg.train.eval_every
        evals_left = sum(_due(every, e, epochs) for e in range(epoch, epochs))
        per_eval = sum(self._eval_seconds) / len(self._eval_seconds) if self._eval_seconds else 0.0
        eta_epoch, eta_all = etas(epoch, epochs, step, steps, per_step, evals_left, per_eval)
        return progress_line(epoch, epochs, step, steps, scalars, rate, lr, eta_epoch, eta_all,
                             eval_unknown=evals_left > 0 and not self._eval_seconds)

    def _open_runlog(self) -> RunLog:
        """The run's writers (rank 0's). Opening one writes too (provenance.json, TensorBoard's
        first event, train.log): a full disk there is a WriteError like any other write."""
        with writing(self.run_dir):
            return RunLog(self.run_dir, enabled=self.rank == 0, cfg=self.cfg)

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
        if self.rank == 0:
            with writing(self.run_dir / "config.yaml"):
                dump_config(self.cfg, self.run_dir / "config.yaml", self.world_size)
        self._save_last(self.cfg.train.epochs)
        return found

    # --- model selection (fasttrain.selection) -------------------------------------------------
    def _split_loader(self, split: str):
        """The eval-order loader of `split`: the run's own when it is the eval split, else built once."""
        if split == self.cfg.data.eval_split:
            return self.run.eval_loader
        if split not in self._split_loaders:
            self._split_loaders[split] = build_split_loader(self.run, split, sharded=True)
        return self._split_loaders[split]

    def _selection_report(self, report: dict) -> dict:
        """The evaluation that chooses best.pt: `report` itself (eval split = selection split, or
        `last`), else an evaluation of the selection split."""
        if self.select in ("last", self.cfg.data.eval_split):
            return report
        return evaluate_loader(self.run, self._split_loader(self.select))

    def _selects_on_test_report(self) -> bool:
        """best.pt is chosen on the very test report each epoch writes: nothing to re-evaluate."""
        return self.select == "test" and self.cfg.data.eval_split == "test"

    def _keep_best(self, report: dict, epoch: int) -> None:
        if better(report, self.best, self.select):  # the same answer on every rank (gathered report)
            check_finite_state(self.model, None, f"the end of epoch {epoch}", self._last_good)  # before best.pt
            self.best = {"top1": report["top1"], "epoch": epoch, **{k: report[k] for k in ("many", "medium", "few")},
                         "on": self.select}
            # Kept for the summary's `selected`: the report, and (selected on another split than the
            # test report's) the weights, on the host, so the end needs no file every rank can read.
            self._best = {"report": report}
            if self.select != "last" and not self._selects_on_test_report():
                self._best["weights"] = {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()}
            if self.rank == 0:
                save_checkpoint({"model": self.model.state_dict(), "epoch": epoch + 1, "report": report,
                                 "config": to_dict(self.cfg), "meta": self._meta()}, self.run_dir / "best.pt")

    def _selected(self, final_report: dict) -> dict:
        """summary.json's `selected`: the chosen checkpoint's test report. Chosen on val (or another
        split than the report's): best.pt's weights are evaluated on test once, then the final
        weights are put back (a later stage continues the final model, as before)."""
        if self.best["epoch"] < 0:
            return {"on": self.select, "note": "nothing was evaluated"}
        if self.select == "last":
            return selected_section(self.select, self.best, final_report)
        # A resumed run whose best epoch came before the resume reads best.pt (every rank: out_dir
        # is on a filesystem they all see, as for --resume).
        stored = self._best or self._stored_best()
        if not stored:
            return {"on": self.select, "epoch": self.best["epoch"], "selection_top1": self.best["top1"],
                    "note": "best.pt of that epoch is not in this run directory (resumed from another run's "
                            "checkpoint): not evaluated on test"}
        if self._selects_on_test_report():
            return selected_section(self.select, self.best, stored["report"])
        weights = stored["weights"]
        final = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        self.model.load_state_dict(weights)
        test_report = evaluate_loader(self.run, self._split_loader("test"))
        self.model.load_state_dict(final)
        return selected_section(self.select, self.best, test_report)

    def _stored_best(self) -> dict:
        """{report, weights} of best.pt in this run directory (or beside the resumed checkpoint)."""
        for path in (self.run_dir / "best.pt", self._resumed_from.with_name("best.pt") if self._resumed_from else None):
            if path is not None and path.is_file():
                state = load_checkpoint(path)
                if state.get("epoch") == self.best["epoch"] + 1:
                    return {"report": state["report"], "weights": state["model"]}
        return {}

    def _summary(self, report: dict, meter: ThroughputMeter, wall_s: float) -> dict:
        cfg = self.cfg
        return {"name": cfg.name, "method": cfg.method.name, "dataset": cfg.data.dataset,
                "final": {k: v for k, v in report.items() if k != "per_class"}, "best": self.best,
                "img_per_s": distributed.sum_scalar(meter.overall_rate()), "wall_s": wall_s, "epochs": self.history,
                "device": str(self.run.device), "amp": str(self.run.amp), "versions": versions(),
                "processes": self.world_size, "switches": to_dict(cfg.method)}

    def _claim_run_dir(self, overwrite: bool) -> None:
        """A fresh run must not append to, or overwrite, another run's artefacts, and must be able
        to write its directory before anything is written."""
        self._check_writable()
        held = [n for n in RUN_FILES if (self.run_dir / n).exists()]
        if not held:
            return
        # Only a checkpoint (or a finished run's summary) makes a directory "in use": what a run that
        # failed before its first checkpoint left (config.yaml, train.log, tb/) holds nothing to resume.
        in_use = [n for n in ("last.pt", "best.pt", "summary.json") if n in held]
        if in_use and not overwrite:
            raise RunDirectoryInUse(f"{self.run_dir} already holds a run ({', '.join(held)}): continue it with "
                                    "--resume, or start again with --overwrite (deletes those files)")
        for name in held:
            path = self.run_dir / name
            shutil.rmtree(path) if path.is_dir() else path.unlink()
        why = "--overwrite" if in_use else "left by a run that wrote no checkpoint"
        log.warning("%s: removed %s from %s", why, ", ".join(held), self.run_dir)

    def _check_writable(self) -> None:
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=self.run_dir, prefix=".write-test-"):
                pass
        except OSError as exc:
            raise ConfigError(f"out_dir: cannot write the run directory {self.run_dir} ({exc.strerror or exc}); "
                              "choose a writable out_dir (out_dir=/path/with/space)") from None

    def _on_signal(self, signum, frame) -> None:
        log.warning("signal %d received: finishing this step (or evaluation), then saving last.pt", signum)
        self._stop_requested = True

    # --- checkpoints (fasttrain.recovery) ------------------------------------------------------
    def _save_last(self, epoch_done: int, position: int | None = None) -> None:
        """last.pt after `epoch_done` epochs (+ `position` steps of the next). Never after a
        non-finite loss, nor with non-finite weights or optimizer state: both are checked first.
        A collective under torchrun; rank 0 writes."""
        self.guard.check(self._last_good)
        when = (f"the end of epoch {epoch_done - 1}" if position is None
                else f"epoch {epoch_done} step {position - 1} (0-indexed)")
        check_finite_state(self.model, self.learner.optimizer, when, self._last_good)
        state = self._state(epoch_done, position)
        if self.rank == 0:
            save_checkpoint(state, self.run_dir / "last.pt")
        self.saves.saved()
        where = f"epoch {epoch_done}" + (f", step {position}" if position is not None else "")
        self._last_good = f"last.pt holds the last good state ({where}); continue from it with --resume"

    def _state(self, epoch_done: int, position: int | None = None) -> dict:
        lr = self.learner
        own = rank_state(self.loader, self.method, position)
        state = {"model": self.model.state_dict(),
                 "optimizer": lr.optimizer.state_dict() if lr.optimizer is not None else None,
                 "scaler": lr.scaler.state_dict(), "method": own["method"], "loader": own["loader"], "rng": own["rng"],
                 "epoch": epoch_done,  # epochs fully completed
                 "best": self.best, "history": self.history, "config": to_dict(self.cfg), "meta": self._meta()}
        if self.world_size > 1:  # every rank's RNG streams and loader position (see fasttrain.recovery)
            state["ranks"] = distributed.gather_to_main(own)
            state["world_size"] = self.world_size
        return state

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
        bad = non_finite(state["model"])
        if bad:  # written by a diverging run before checkpoints were checked: it cannot be continued
            raise CheckpointError(f"--resume {path}: the checkpoint holds NaN/inf weights ({len(bad)} of "
                                  f"{len(state['model'])} tensors, e.g. {bad[0]}); resume from an earlier checkpoint, "
                                  "or start again with a lower optim.lr")
        self._resumed_from = path
        restore(path, state, model=self.model, learner=self.learner, method=self.method, loader=self.loader,
                current_config=to_dict(self.cfg), dctx=self.dist)
        self.start_epoch = state["epoch"]
        self.best, self.history = state["best"], state["history"]
        # The loader position counts steps of the epoch the loader was in: an epoch-end checkpoint's
        # is that finished epoch's last step, and the next epoch starts at step 0.
        step = int(state["loader"].get("position", 0) or 0) if state["loader"].get("epoch") == self.start_epoch else 0
        where = f"epoch {self.start_epoch}" + (f", step {step}" if step else "")
        name = "last.pt" if path == self.run_dir / "last.pt" else str(path)
        self._last_good = f"{name} holds the last good state ({where}); continue from it with --resume"
        self._resume_note = f"resumed from {path} at {where}"
        # metrics.jsonl holds each finished epoch once: the checkpoint's history, not what a killed
        # invocation appended after its last checkpoint.
        if self.rank == 0:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            write_text_atomic(self.run_dir / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in self.history))


def run_training(cfg: RunConfig, resume: bool | str | Path = False, overwrite: bool = False) -> dict:
    """Run every stage of `cfg`; returns the last stage's summary (with `stages` for all).

    `resume=True` continues the first stage's last.pt and then every later stage from its own;
    `resume=PATH` continues the first stage from that checkpoint."""
    root = Path(cfg.out_dir) / cfg.name
    if resume is True and not (root / "last.pt").is_file():
        raise FileNotFoundError(f"--resume: nothing to resume in {root} (no last.pt); start without --resume")
    joined = not distributed.active()  # this call joins a torchrun job's process group (Trainer) and leaves it
    try:
        result = _run_stages(cfg, root, resume, overwrite)
        if joined:  # leave together: a rank tearing its process group down while rank 0 still writes
            distributed.barrier()  # its files was seen to abort (SIGABRT) at exit under torchrun
        return result
    finally:
        if joined:
            distributed.shutdown()


def _run_stages(cfg: RunConfig, root: Path, resume: bool | str | Path, overwrite: bool) -> dict:
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
