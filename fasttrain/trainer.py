"""The training loop: one stage = build the run, then per epoch train → evaluate → keep → save → log.

Multi-stage runs (GLMC -> MaxNorm, SSD I-IV, cRT/LWS) are a list of stages; each later stage
starts from the previous stage's model and lives in its own sub-directory of the run. The Trainer
only trains; the jobs around it are objects of their own:
- the step: `fasttrain.step.train_step`; building the run: `fasttrain.build`;
- best.pt (which evaluation picks it, writing it, summary.json's `selected`):
  `fasttrain.selection.BestKeeper`;
- last.pt (what it holds, writing it, --resume): `fasttrain.recovery.LastCheckpoint`;
- everything written about the run: `fasttrain.runlog.RunLog`; the run directory's claim:
  `fasttrain.rundir`; NaN/inf losses and out-of-memory steps: `fasttrain.guard`.
Under torchrun every rank runs this loop (`fasttrain.distributed`): rank 0 writes, all ranks agree
on when to checkpoint or stop.
"""
from __future__ import annotations

import logging
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from fasttrain import distributed, provenance
from fasttrain.build import build_run, build_split_loader
from fasttrain.checkpoint import remove_stale_temp_files, writing
from fasttrain.config import RunConfig, dump_config, stage_config, to_dict
from fasttrain.data import build_datasets
from fasttrain.ema import evaluate_ema, selection_run, summary_section
from fasttrain.schema import ConfigError
from fasttrain.environment import memory_peaks, versions
from fasttrain.evaluation import evaluate, head_scalars
from fasttrain.guard import DeviceOutOfMemory, LossGuard, out_of_memory_message
from fasttrain.meter import MeanLogs, ThroughputMeter
from fasttrain.methods import Progress
from fasttrain.recovery import LastCheckpoint, SavePolicy, run_meta
from fasttrain.rundir import RUN_FILES, RunDirectoryInUse, claim_run_dir  # noqa: F401 - the trainer's public names
from fasttrain.runlog import EVAL_KEYS, RunLog
from fasttrain.schedules import learning_rate
from fasttrain.selection import BestKeeper
from fasttrain.step import train_step
from fasttrain.textlog import etas, final_line, header_lines, progress_line

log = logging.getLogger("fasttrain")


@dataclass
class StageResult:
    model: torch.nn.Module
    summary: dict


class _Stop(Exception):
    """Raised inside the loop when SIGTERM asked for a clean stop (last.pt is saved first)."""


def _due(every: int, epoch: int, epochs: int) -> bool:
    return (epoch + 1) % every == 0 or epoch + 1 == epochs


def _job_rate(rate: dict) -> dict:
    """A meter reading of this process as the job's: images/s summed over ranks, the data-wait
    fraction averaged (collectives under torchrun; the reading itself on one process)."""
    return {"img_per_s": distributed.sum_scalar(rate["img_per_s"]),
            "data_wait_frac": distributed.mean_scalars({"w": rate["data_wait_frac"]})["w"]}


def _progress_text(cfg: RunConfig, epoch: int, step: int, steps: int, scalars: dict, rate: dict, lr: float,
                   per_step: float, eval_seconds: list[float]) -> str:
    """The progress line after `step`, with the ETAs at this epoch's time per step so far (and the
    evaluations still due at their measured time, `eval_seconds` of each one so far)."""
    epochs, every = cfg.train.epochs, cfg.train.eval_every
    evals_left = sum(_due(every, e, epochs) for e in range(epoch, epochs))
    per_eval = sum(eval_seconds) / len(eval_seconds) if eval_seconds else 0.0
    eta_epoch, eta_all = etas(epoch, epochs, step, steps, per_step, evals_left, per_eval)
    return progress_line(epoch, epochs, step, steps, scalars, rate, lr, eta_epoch, eta_all,
                         eval_unknown=evals_left > 0 and not eval_seconds)


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
        meta = run_meta(self.run)
        chosen, label = selection_run(self.run)  # best.pt: the raw or the EMA weights (train.select_model)
        self.keeper = BestKeeper(chosen, self.run_dir, meta, self.rank, label)
        self.checkpoints = LastCheckpoint(self.run, self.run_dir, meta)  # last.pt
        self.saves = SavePolicy(cfg.train.save_every_steps, cfg.train.save_every_minutes)
        self.guard = LossGuard()
        self.start_epoch = 0
        self.history: list[dict] = []
        self._stop_requested = False
        self._resume_note: str | None = None  # "resumed from ...", logged once train.log is open
        self._eval_seconds: list[float] = []  # each evaluation's duration: the progress lines' ETA
        self._ema_report: dict | None = None  # the EMA weights' last evaluation (train.ema)
        distributed.on_main(remove_stale_temp_files, self.run_dir)  # before anything is written here
        checkpoint = Path(resume) if isinstance(resume, (str, Path)) else self.run_dir / "last.pt"
        if resume and checkpoint.is_file():
            self._resume(checkpoint)
        elif isinstance(resume, (str, Path)):
            raise FileNotFoundError(f"--resume {resume}: no such checkpoint")
        elif not resume:
            distributed.on_main(claim_run_dir, self.run_dir, overwrite)

    # --- the loop ------------------------------------------------------------------------------
    def fit(self) -> StageResult:
        cfg = self.cfg
        self._write_config()
        meter, t0, report = ThroughputMeter(), time.perf_counter(), None
        # SIGTERM (schedulers) and SIGINT (Ctrl-C): finish the step or evaluation, save last.pt, exit 143.
        old_handlers = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            with self._open_runlog() as runlog:
                self._announce(runlog)
                for done_here, epoch in enumerate(range(self.start_epoch, cfg.train.epochs)):
                    if cfg.train.stop_after_epochs is not None and done_here >= cfg.train.stop_after_epochs:
                        log.warning("stopping after %d epochs as configured; continue with --resume", done_here)
                        return StageResult(self.model, {"stopped_at_epoch": epoch, "name": cfg.name})
                    record = {"epoch": epoch, **self.train_epoch(epoch, runlog, meter)}
                    if _due(cfg.train.eval_every, epoch, cfg.train.epochs):
                        report = self._evaluate(epoch, record)  # and keep best.pt
                    record["wall_s"] = time.perf_counter() - t0  # since this invocation started
                    self.history.append(record)
                    runlog.epoch(record, self.method.prediction_head())
                    self._end_epoch(epoch)  # last.pt when due; a stop asked for ends the run here
                summary = self._finish(runlog, report, meter, t0)
        except _Stop:
            log.warning("stopped by signal; resume with --resume")
            raise SystemExit(143) from None
        finally:
            for sig, handler in old_handlers.items():
                signal.signal(sig, handler)
        return StageResult(self.model, summary)

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
                    lr = self._set_lr(epoch + step / steps, 1 / steps)
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
                    self.guard.check(self.checkpoints.last_good)
                    scalars = distributed.mean_scalars(logs.means())
                    rate = _job_rate(meter.read(self.run.device))
                    runlog.train(epoch * steps + step, scalars, rate, lr, bar)
                    per_step = (time.perf_counter() - started) / (step - start)
                    line = _progress_text(cfg, epoch, step, steps, scalars, rate, lr, per_step, self._eval_seconds)
                    runlog.progress_line(line, bar)
                if micro == group - 1:  # an optimizer-step boundary: a consistent state to checkpoint
                    self._checkpoint_inside_epoch(epoch, step, steps)
        finally:
            bar.close()
        self.method.after_epoch(self.model, progress)
        # Each rank's forwards updated its own BatchNorm running statistics: from here on every rank
        # holds rank 0's, so all evaluate (and keep as best) the model that rank 0 saves.
        distributed.broadcast_buffers(self.model)
        if self.learner.ema is not None:  # the EMA's buffers followed this rank's: rank 0's too
            distributed.broadcast_buffers(self.learner.ema.module)
        out = distributed.mean_scalars(logs.means())  # training metrics: mean over ranks
        out.update({"lr": lr, **_job_rate(meter.epoch_rate(self.run.device)),
                    "steps": step - start, "train_loss": out.get("loss", float("nan"))})
        if start:  # resumed mid-epoch: loss, img/s and steps cover only steps start..steps of this epoch
            out["resumed_at_step"] = start
        out.update(memory_peaks(self.run.device))
        out.update(loader.epoch_counters())  # what the backend reports per epoch (DALI: skipped files)
        return out

    # --- pieces of the loop --------------------------------------------------------------------
    def _evaluate(self, epoch: int, record: dict) -> dict:
        """Evaluate the model after `epoch` into `record`, and let the keeper choose best.pt."""
        started = time.perf_counter()
        report = evaluate(self.run)
        record.update({k: report[k] for k in EVAL_KEYS})
        record.update(head_scalars(report))  # top1_<head> of several-head methods (SSD III)
        self._ema_report = evaluate_ema(self.run, evaluate, record, EVAL_KEYS)  # top1_ema, ... (train.ema)
        self.keeper.update(epoch, self._chosen(report), record, self.checkpoints.last_good)
        self._eval_seconds.append(time.perf_counter() - started)
        return report

    def _end_epoch(self, epoch: int) -> None:
        """last.pt when due. A stop asked for during the evaluation (or any time after the epoch's
        last step) ends the run here, with this epoch's checkpoint: no step of the next epoch first."""
        (stop,) = distributed.any_flags(self._stop_requested)
        self._save_or_stop(stop, stop or _due(self.cfg.train.save_every, epoch, self.cfg.train.epochs), epoch + 1)

    def _finish(self, runlog: RunLog, report: dict | None, meter: ThroughputMeter, t0: float) -> dict:
        """After the last epoch: post-hoc calibration, the final report and summary.json."""
        calibration = self._calibrate()
        if calibration or report is None:  # post-hoc choice, or resumed after the last epoch
            report = evaluate(self.run)
        summary = {"name": self.cfg.name, "method": self.cfg.method.name, "dataset": self.cfg.data.dataset,
                   "final": {k: v for k, v in report.items() if k != "per_class"}, "best": self.keeper.best,
                   "img_per_s": distributed.sum_scalar(meter.overall_rate()), "wall_s": time.perf_counter() - t0,
                   "epochs": self.history, "device": str(self.run.device), "amp": str(self.run.amp),
                   "versions": versions(), "processes": self.world_size, "switches": to_dict(self.cfg.method)}
        self._ema_report = self._ema_report or evaluate_ema(self.run, evaluate, {})
        summary.update(summary_section(self._ema_report))  # final_ema
        summary["selected"] = self.keeper.selected(self._chosen(report))
        if calibration:
            summary["calibration"] = calibration
        runlog.finish(summary, report, self.run.train_set)
        runlog.note(final_line(summary, self.method.prediction_head()))
        return summary

    def _chosen(self, report: dict) -> dict:
        """The report best.pt is chosen on: the raw model's, or the EMA's (train.select_model: ema)."""
        return self._ema_report if self.keeper.label else report

    def _checkpoint_inside_epoch(self, epoch: int, step: int, steps: int) -> None:
        """After step `step`: save last.pt if a signal asked to stop (then stop) or a mid-epoch
        checkpoint is due (train.save_every_steps / save_every_minutes). Under torchrun the ranks
        agree first (any rank's signal; rank 0's clock), so all save and stop at the same step."""
        by_steps, by_time = self.saves.due(step) if step < steps else (False, False)
        stop, by_time = distributed.any_flags(self._stop_requested, by_time and self.rank == 0)
        # with the loader position and every RNG: an exact continuation
        self._save_or_stop(stop, stop or by_steps or by_time, epoch, position=step)

    def _save_or_stop(self, stop: bool, save: bool, epoch_done: int, position: int | None = None) -> None:
        if save:
            self._save_last(epoch_done, position=position)
        if stop:
            distributed.barrier()  # rank 0 has finished writing before any rank exits
            raise _Stop()

    def _steps_per_epoch(self) -> int:
        return min(len(self.loader), self.cfg.train.max_steps_per_epoch or len(self.loader))

    def _write_config(self) -> None:
        if self.rank == 0:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            with writing(self.run_dir / "config.yaml"):
                dump_config(self.cfg, self.run_dir / "config.yaml", self.world_size)

    def _open_runlog(self) -> RunLog:
        """The run's writers (rank 0's). Opening one writes too (provenance.json, TensorBoard's
        first event, train.log): a full disk there is a WriteError like any other write."""
        with writing(self.run_dir):
            return RunLog(self.run_dir, enabled=self.rank == 0, cfg=self.cfg)

    def _announce(self, runlog: RunLog) -> None:
        """Before the first step: what this run is about to do (and where a resumed one continues)."""
        for line in header_lines(provenance.command_line(), self.cfg, self.run, self.run_dir,
                                 self._steps_per_epoch(), len(self.method.streams()), self.world_size):
            runlog.note(line)
        if self._resume_note:
            log.info("%s", self._resume_note)  # once, on the console and in train.log

    def _set_lr(self, epoch: float, width: float = 1.0) -> float:
        lr = learning_rate(self.cfg.schedule, self.cfg.optim.lr, epoch, self.cfg.train.epochs, width)
        for group in self.learner.optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)  # optim.layer_decay's per-layer factor
        return lr

    def _calibrate(self) -> dict:
        """Post-hoc methods (τ-norm) choose their parameters on a split once the epochs are done;
        the choice goes into the resolved config and last.pt, so the stage's checkpoint carries it."""
        split = self.method.calibration_split()
        if split is None:
            return {}
        # Calibrated on single centre crops: the method's pass knows nothing of augment.eval_tte's five.
        found = self.method.calibrate(self.model, build_split_loader(self.run, split, tte=False), self.run.augmenter)
        log.info("calibrated on the %s split: %s", split, found)
        self._write_config()
        self._save_last(self.cfg.train.epochs)
        return found

    def _on_signal(self, signum, frame) -> None:
        log.warning("signal %d received: finishing this step (or evaluation), then saving last.pt", signum)
        self._stop_requested = True

    # --- checkpoints (fasttrain.recovery) ------------------------------------------------------
    def _save_last(self, epoch_done: int, position: int | None = None) -> None:
        """last.pt after `epoch_done` epochs (+ `position` steps of the next); never after a
        non-finite loss (checked first). A collective under torchrun; rank 0 writes."""
        self.guard.check(self.checkpoints.last_good)
        self.checkpoints.save(epoch_done, position, self.keeper.best, self.history)
        self.saves.saved()

    def _resume(self, path: Path) -> None:
        self.keeper.resumed_from = path
        state, self._resume_note = self.checkpoints.resume(path)
        self.start_epoch = state["epoch"]
        self.keeper.best, self.history = state["best"], state["history"]


def run_training(cfg: RunConfig, resume: bool | str | Path = False, overwrite: bool = False) -> dict:
    """Run every stage of `cfg`; returns the last stage's summary, with `stages` (every stage's
    summary) and `stage_results` (each stage's name, method, directory and top-1).

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
    dirs = [root]
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
        dirs.append(root / stage.name)
    out = dict(summaries[-1])
    out["stages"] = summaries
    out["stage_results"] = stage_results(summaries, dirs)
    # rank 0 only: under torchrun the other ranks print warnings, and this one would repeat per rank
    if len(summaries) > 1 and "stopped_at_epoch" not in out and distributed.rank() == 0:
        _log_stage_results(out["stage_results"])
    return out


def stage_results(summaries: list[dict], dirs: list[Path]) -> list[dict]:
    """Each finished stage's name, method, directory and top-1 (last epoch, and best on the evaluation
    split where the stage trained)."""
    rows = []
    for summary, where in zip(summaries, dirs):
        if "final" not in summary:  # a stage stopped by a signal: it has no result yet
            continue
        rows.append({"name": summary["name"], "method": summary["method"], "dir": str(where),
                     "top1": summary["final"]["top1"], "best_top1": (summary.get("best") or {}).get("top1")})
    return rows


def _log_stage_results(rows: list[dict]) -> None:
    """One line with every stage's top-1, and a warning where an earlier stage beat the last one: the
    run's final model is its last stage's, which need not be its best (measured: SSD's CIFAR port,
    stage III 79.61 and stage IV 67.27)."""
    def top1(row: dict) -> str:
        return "–" if row["top1"] is None else f"{row['top1']:.2f} %"

    log.info("stages: %s", " · ".join(f"{r['name']} ({r['method']}) {top1(r)}" for r in rows))
    scored = [r for r in rows if r["top1"] is not None]
    if not scored or rows[-1]["top1"] is None:
        return
    best = max(scored, key=lambda r: r["top1"])
    if best["top1"] > rows[-1]["top1"]:
        log.warning("the last stage (%s, %s) is the run's final model, but stage %s scored higher (%s): its "
                    "model is %s/last.pt", rows[-1]["name"], top1(rows[-1]), best["name"], top1(best),
                    best["dir"])
