"""The training loop: one stage = build data, model, optimiser; loop epochs; evaluate; save.

Multi-stage runs (GLMC -> MaxNorm, SSD I-IV, cRT/LWS) are a list of stages; each later stage
starts from the previous stage's model and lives in its own sub-directory of the run.
"""
from __future__ import annotations

import json
import logging
import os
import platform
import random
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from fasttrain import __version__
from fasttrain.checkpoint import load_checkpoint, save_checkpoint
from fasttrain.config import RunConfig, dump_config, stage_config, to_dict
from fasttrain.data import build_datasets
from fasttrain.evaluation import accuracy_report, collect_predictions, plot_per_class
from fasttrain.loaders import build_loader
from fasttrain.methods import METHODS, MethodContext, Progress, StreamSpec
from fasttrain.meter import ThroughputMeter
from fasttrain.models import create_backbone, to_channels_last
from fasttrain.samplers import build_sampler
from fasttrain.schedules import learning_rate

log = logging.getLogger("fasttrain")


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device: {name!r} requested but CUDA is not available (use device=cpu)")
    return dev


def amp_dtype(cfg: RunConfig, device: torch.device) -> torch.dtype | None:
    """Autocast dtype, or None for fp32. `auto` = bf16 on CUDA, fp32 on CPU."""
    amp = cfg.train.amp
    if amp == "auto":
        return torch.bfloat16 if device.type == "cuda" else None
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}[amp]


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def versions() -> dict:
    info = {"fasttrain": __version__, "torch": torch.__version__, "python": platform.python_version()}
    try:
        import torchvision

        info["torchvision"] = torchvision.__version__
    except ImportError:
        pass
    if torch.cuda.is_available():
        info["cuda_device"] = torch.cuda.get_device_name()
        info["cuda"] = torch.version.cuda
    return info


def build_optimizer(cfg: RunConfig, params, device: torch.device) -> torch.optim.Optimizer:
    o = cfg.optim
    if o.apex:
        try:
            from apex.optimizers import FusedSGD  # type: ignore

            return FusedSGD(params, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay, nesterov=o.nesterov)
        except ImportError:
            log.warning("optim.apex=true but apex is not importable; using torch SGD")
    fused = o.fused and device.type == "cuda"
    return torch.optim.SGD(params, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay,
                           nesterov=o.nesterov, fused=fused or None)


@dataclass
class StageResult:
    model: torch.nn.Module
    summary: dict


class _Stop(Exception):
    """Raised inside the loop when SIGTERM/SIGINT asked for a clean stop."""


class Trainer:
    def __init__(self, cfg: RunConfig, run_dir: Path, previous_model: torch.nn.Module | None = None,
                 resume: bool = False):
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.device = resolve_device(cfg.device)
        self.amp = amp_dtype(cfg, self.device)
        self.rank = int(os.environ.get("RANK", 0))
        self.world_size = int(os.environ.get("WORLD_SIZE", 1))
        if self.world_size > 1:
            # Samplers already shard by (rank, world_size), but gradients are not synchronised
            # yet: refuse rather than train W independent models on W shards.
            raise RuntimeError("WORLD_SIZE > 1: multi-process (torchrun/DDP) training is not supported yet; "
                               "run a single process")
        seed_everything(cfg.seed)
        if cfg.train.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)

        self.train_set, self.eval_set = build_datasets(cfg)
        counts = torch.as_tensor(self.train_set.train_counts, dtype=torch.long)
        aug = cfg.augment
        mean = tuple(aug.mean) if aug.mean else self.train_set.mean
        std = tuple(aug.std) if aug.std else self.train_set.std
        self.ctx = MethodContext(
            num_classes=self.train_set.num_classes, train_counts=counts.to(self.device), mean=mean, std=std,
            device=self.device, compute_dtype=self.amp or torch.float32, mix_impl=cfg.loader.mix_impl,
            loss_impl=cfg.train.loss_impl, seed=cfg.seed,
            default_stream=StreamSpec(cfg.loader.sampler, cfg.loader.sampler_q, cfg.loader.class_aware_k))
        self.method = METHODS[cfg.method.name](cfg.method, self.ctx)

        # Data: one sampler per stream, all from the samplers module.
        samplers = [build_sampler(s.sampler, torch.as_tensor(self.train_set.labels), self.train_set.num_classes,
                                  seed=cfg.seed + 1000 * i, rank=self.rank, world_size=self.world_size,
                                  q=s.q, k=s.k, drop_last=False)
                    for i, s in enumerate(self.method.streams())]
        per_stream = cfg.loader.batch_size
        self.train_loader = build_loader(cfg.loader.backend, self.train_set, samplers,
                                         batch_size=per_stream * len(samplers), num_views=self.method.num_views,
                                         device=self.device, augment=aug, loader=cfg.loader, train=True, seed=cfg.seed)
        self.eval_loader = build_loader(cfg.loader.backend, self.eval_set, None, batch_size=cfg.loader.eval_batch_size,
                                        num_views=1, device=self.device, augment=aug, loader=cfg.loader,
                                        train=False, seed=cfg.seed)

        # Model.
        backbone = create_backbone(cfg.model.arch)
        model = self.method.build_model(backbone, previous_model)
        if cfg.model.init_from:
            state = load_checkpoint(cfg.model.init_from)
            try:
                model.load_state_dict(state["model"])
            except RuntimeError as exc:
                raise RuntimeError(f"model.init_from={cfg.model.init_from}: weights do not fit the model "
                                   f"({str(exc).splitlines()[0]})") from None
        model = model.to(self.device)
        if cfg.model.channels_last:
            model = to_channels_last(model)
        self.method.prepare(model)
        self.model = model
        self.forward_model = torch.compile(model) if cfg.train.compile else model
        self.optimizer = build_optimizer(cfg, self.method.trainable_parameters(model), self.device)
        self.scaler = torch.amp.GradScaler(enabled=self.amp == torch.float16)
        self.start_epoch = 0
        self.best = {"top1": -1.0, "epoch": -1}
        self.history: list[dict] = []
        self._stop_requested = False
        if resume and (self.run_dir / "last.pt").is_file():
            self._resume(self.run_dir / "last.pt")

    # ------------------------------------------------------------------------------------------
    def _state(self, epoch_done: int) -> dict:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "method": self.method.state_dict(),
            "loader": self.train_loader.state_dict(),
            "rng": rng_state(),
            "epoch": epoch_done,  # epochs fully completed
            "best": self.best,
            "history": self.history,
            "config": to_dict(self.cfg),
        }

    def _resume(self, path: Path) -> None:
        state = load_checkpoint(path)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        self.method.load_state_dict(state["method"])
        self.train_loader.load_state_dict(state["loader"])
        set_rng_state(state["rng"])
        self.start_epoch = state["epoch"]
        self.best, self.history = state["best"], state["history"]
        log.info("resumed from %s at epoch %d (step %d)", path, self.start_epoch,
                 state["loader"].get("position", 0))

    def _set_lr(self, epoch: float) -> float:
        lr = learning_rate(self.cfg.schedule, self.cfg.optim.lr, epoch, self.cfg.train.epochs)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        return lr

    def _on_signal(self, signum, frame) -> None:
        log.warning("signal %d received: finishing this step, then saving last.pt", signum)
        self._stop_requested = True

    # ------------------------------------------------------------------------------------------
    def train_epoch(self, epoch: int, writer, meter: ThroughputMeter) -> dict:
        cfg = self.cfg
        self.model.train()
        self.train_loader.set_epoch(epoch)
        steps = len(self.train_loader)
        if cfg.train.max_steps_per_epoch:
            steps = min(steps, cfg.train.max_steps_per_epoch)
        lr = self._set_lr(epoch)
        sums: dict[str, torch.Tensor] = {}
        n_logged = 0
        start_step = getattr(self.train_loader, "position", 0)
        progress = Progress(epoch, cfg.train.epochs, start_step, steps)
        it = iter(self.train_loader)
        bar = None
        if self.rank == 0:
            from tqdm import tqdm

            bar = tqdm(total=steps, initial=start_step, desc=f"epoch {epoch}", leave=False,
                       disable=os.environ.get("FASTTRAIN_NO_TQDM") == "1")
        step = start_step
        meter.start_window()
        while step < steps:
            meter.begin_wait()
            try:
                batch = next(it)
            except StopIteration:
                break
            meter.end_wait()
            progress.step = step
            if cfg.schedule.per_step:
                lr = self._set_lr(epoch + step / steps)
            with torch.autocast(self.device.type, dtype=self.amp or torch.float32, enabled=self.amp is not None):
                loss, logs = self.method.loss(self.forward_model, batch, progress)
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.method.after_step(self.model, progress)
            for k, v in logs.items():  # accumulate on device: no host sync per step
                sums[k] = sums[k] + v.float() if k in sums else v.float().clone()
            n_logged += 1
            meter.count(batch.size)
            step += 1
            if bar is not None:
                bar.update(1)
            if step % cfg.train.log_every == 0 or step == steps:
                rate = meter.read(self.device)
                scalars = {k: (v / n_logged).item() for k, v in sums.items()}
                global_step = epoch * steps + step
                if bar is not None:
                    bar.set_postfix(loss=f"{scalars.get('loss', float('nan')):.4f}", ips=f"{rate['img_per_s']:.0f}")
                if writer is not None:
                    for k, v in scalars.items():
                        writer.add_scalar(f"train/{k}", v, global_step)
                    writer.add_scalar("train/img_per_s", rate["img_per_s"], global_step)
                    writer.add_scalar("train/data_wait_frac", rate["data_wait_frac"], global_step)
                    writer.add_scalar("train/lr", lr, global_step)
            if self._stop_requested:
                # Save mid-epoch: loader position and RNG allow an exact continuation.
                self.train_loader.position = step
                save_checkpoint(self._state(epoch), self.run_dir / "last.pt")
                if bar is not None:
                    bar.close()
                raise _Stop()
        if bar is not None:
            bar.close()
        self.method.after_epoch(self.model, progress)
        rate = meter.epoch_rate(self.device)
        out = {k: (v / max(n_logged, 1)).item() for k, v in sums.items()}
        out.update({"lr": lr, "img_per_s": rate["img_per_s"], "data_wait_frac": rate["data_wait_frac"],
                    "steps": step - start_step})
        out["train_loss"] = out.get("loss", float("nan"))
        if hasattr(self.train_loader, "skipped"):  # DALI skip_corrupt: files dropped so far
            out["skipped_files"] = len(self.train_loader.skipped)
        return out

    def evaluate(self) -> dict:
        probs, labels = collect_predictions(self.method, self.model, self.eval_loader, self.ctx)
        return accuracy_report(probs, labels, self.train_set.train_counts, self.cfg.data.few_shot_rule)

    def fit(self) -> StageResult:
        cfg = self.cfg
        dump_config(cfg, self.run_dir / "config.yaml")
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(self.run_dir / "tb")) if self.rank == 0 else None
        meter = ThroughputMeter()
        old_term = signal.signal(signal.SIGTERM, self._on_signal)
        t0 = time.perf_counter()
        last_report = None
        run_here = 0
        try:
            for epoch in range(self.start_epoch, cfg.train.epochs):
                if cfg.train.stop_after_epochs is not None and run_here >= cfg.train.stop_after_epochs:
                    log.warning("stopping after %d epochs as configured; continue with --resume", run_here)
                    return StageResult(self.model, {"stopped_at_epoch": epoch, "name": cfg.name})
                stats = self.train_epoch(epoch, writer, meter)
                record = {"epoch": epoch, **stats}
                if (epoch + 1) % cfg.train.eval_every == 0 or epoch + 1 == cfg.train.epochs:
                    report = self.evaluate()
                    last_report = report
                    record.update({k: report[k] for k in ("top1", "many", "medium", "few", "ece")})
                    if report["top1"] > self.best["top1"]:
                        self.best = {"top1": report["top1"], "epoch": epoch,
                                     **{k: report[k] for k in ("many", "medium", "few")}}
                        save_checkpoint({"model": self.model.state_dict(), "epoch": epoch + 1,
                                         "report": report, "config": to_dict(cfg)}, self.run_dir / "best.pt")
                self.history.append(record)
                with open(self.run_dir / "metrics.jsonl", "a") as f:
                    f.write(json.dumps(record) + "\n")
                if writer is not None:
                    for k in ("top1", "many", "medium", "few", "ece"):
                        if record.get(k) is not None:
                            writer.add_scalar(f"eval/{k}", record[k], epoch)
                if (epoch + 1) % cfg.train.save_every == 0 or epoch + 1 == cfg.train.epochs:
                    save_checkpoint(self._state(epoch + 1), self.run_dir / "last.pt")
                run_here += 1
                log.info("epoch %d: %s", epoch, {k: (round(v, 4) if isinstance(v, float) else v)
                                                  for k, v in record.items()})
        except _Stop:
            log.warning("stopped by signal; resume with --resume")
            raise SystemExit(143) from None
        finally:
            signal.signal(signal.SIGTERM, old_term)
            if writer is not None:
                writer.close()
        if last_report is None:  # resumed after the last epoch: evaluate once for the summary
            last_report = self.evaluate()
        plot_per_class(last_report["per_class"], self.train_set.train_counts, self.run_dir / "per_class_accuracy.png",
                       title=f"{cfg.name}: top-1 {last_report['top1']:.2f}%")
        summary = {
            "name": cfg.name, "method": cfg.method.name, "dataset": cfg.data.dataset,
            "final": {k: v for k, v in last_report.items() if k != "per_class"},
            "best": self.best,
            "img_per_s": meter.overall_rate(),
            "wall_s": time.perf_counter() - t0,
            "epochs": self.history,
            "device": str(self.device),
            "amp": str(self.amp),
            "versions": versions(),
            "switches": to_dict(cfg.method),
        }
        tmp = self.run_dir / "summary.json.tmp"
        tmp.write_text(json.dumps(summary, indent=1))
        tmp.replace(self.run_dir / "summary.json")
        return StageResult(self.model, summary)


def run_training(cfg: RunConfig, resume: bool = False) -> dict:
    """Run every stage of `cfg`; returns the last stage's summary (with `stages` for all)."""
    root = Path(cfg.out_dir) / cfg.name
    result = Trainer(cfg, root, resume=resume).fit()
    summaries = [result.summary]
    for i, stage in enumerate(cfg.stages):
        if "stopped_at_epoch" in result.summary:
            break
        scfg = stage_config(cfg, i)
        if "init_from" not in stage.overrides.get("model", {}):
            scfg.model.init_from = None  # the stage starts from the previous stage's model
        result = Trainer(scfg, root / stage.name, previous_model=result.model, resume=resume).fit()
        summaries.append(result.summary)
    out = dict(summaries[-1])
    out["stages"] = summaries
    return out


def evaluate_checkpoint(path: str | Path, overrides: list[str] | None = None, plot: Path | None = None) -> dict:
    """Rebuild the run that wrote checkpoint `path` (its config is stored inside) and evaluate it."""
    from fasttrain.config import apply_overrides, config_from_dict

    state = load_checkpoint(path)
    if "config" not in state:
        raise RuntimeError(f"{path}: checkpoint has no stored config (not written by fasttrain?)")
    raw = apply_overrides(state["config"], overrides or [])
    raw["stages"] = []
    if isinstance(raw.get("model"), dict):
        raw["model"]["init_from"] = None  # the checkpoint's own weights are loaded below
    cfg = config_from_dict(raw, f"{path} (stored config)")
    trainer = Trainer(cfg, Path(path).parent)
    trainer.model.load_state_dict(state["model"])
    report = trainer.evaluate()
    if plot is not None:
        plot_per_class(report["per_class"], trainer.train_set.train_counts, plot,
                       title=f"{Path(path).name}: top-1 {report['top1']:.2f}%")
    return report
