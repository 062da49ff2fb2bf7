"""The lines a person reads: train.log's header, progress, epoch and final lines, and the headline of
`fasttrain eval`. Plain text with units, never a Python repr (metrics.jsonl and summary.json are
the machine formats). Pure formatting: values in, strings out."""
from __future__ import annotations

import math
import os

import torch

GROUPS = ("many", "medium", "few")
AMP_NAMES = {torch.bfloat16: "bf16 autocast", torch.float16: "fp16 autocast", None: "fp32 (no autocast)"}
# Keys of an epoch record that the epoch line writes in its own words; every other number is listed
# by name after them (a method's loss terms, feature norms, memory peaks, ...).
EPOCH_KEYS = {"epoch", "loss", "train_loss", "lr", "img_per_s", "data_wait_frac", "steps", "wall_s", "top1", "ece",
              *GROUPS}


def duration(seconds: float) -> str:
    """1h02m, 6m57s, 42s."""
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def number(value) -> str:
    """A metric compactly: 4 significant digits, integers as they are, None as a dash."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, bool) or isinstance(value, int):
        return str(value)
    return f"{value:.4g}"


def _percent(value) -> str:
    return "–" if value is None else f"{value:.2f}"


def headline(values: dict, heads: dict[str, float] | None = None, head: str | None = None) -> str:
    """`top-1 45.72 % (many 60.10 / medium 40.20 / few 30.30), ECE 12.34 %, head fc_cb (fc 31.10 /
    sum 36.80)` from a report's (or an epoch record's) top1 / many / medium / few / ece, the top-1 of
    each other head, and the head whose logits are the prediction."""
    groups = " / ".join(f"{g} {_percent(values.get(g))}" for g in GROUPS)
    text = f"top-1 {_percent(values.get('top1'))} % ({groups})"
    if values.get("ece") is not None:
        text += f", ECE {values['ece']:.2f} %"
    others = {name: top1 for name, top1 in (heads or {}).items() if name != head}
    if head is not None:
        text += f", head {head}"
    if others:
        text += " (" + " / ".join(f"{name} {_percent(top1)}" for name, top1 in others.items()) + ")"
    return text


def report_headline(report: dict, head: str | None = None) -> str:
    """`headline` of an evaluation report (fasttrain.evaluation.evaluate)."""
    return headline(report, {name: h["top1"] for name, h in report.get("heads", {}).items()}, head)


def record_headline(record: dict, head: str | None = None) -> str:
    """`headline` of an epoch record (its heads as `top1_<head>` keys)."""
    return headline(record, {k[len("top1_"):]: v for k, v in record.items() if k.startswith("top1_")}, head)


def plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def device_line(device: torch.device, processes: int = 1) -> str:
    """The device with what its timings depend on: the GPU, or the CPU model, threads and load."""
    from fasttrain.environment import cpu_model

    if device.type == "cuda":
        what = f"{torch.cuda.get_device_name(device)}, {plural(torch.get_num_threads(), 'CPU thread')}"
    else:
        what = f"{cpu_model()}, {plural(torch.get_num_threads(), 'thread')}, load {os.getloadavg()[0]:.1f}"
    return f"{device} ({what})" + (f", {processes} processes (torchrun)" if processes > 1 else "")


def header_lines(command: str, cfg, run, run_dir, steps: int, streams: int, processes: int = 1) -> list[str]:
    """What a run is about to do, written when it starts (before its first step)."""
    ld = cfg.loader
    eval_name = cfg.data.eval_split
    return [
        f"command  {command}",
        f"run      {cfg.name} (method {cfg.method.name}) in {run_dir}",
        f"device   {device_line(run.device, processes)}; amp {AMP_NAMES.get(run.amp, run.amp)}; loader {ld.backend}",
        f"data     {cfg.data.dataset}: {len(run.train_set)} train images, {len(run.eval_set)} {eval_name} images, "
        f"{run.train_set.num_classes} classes",
        f"schedule {plural(cfg.train.epochs, 'epoch')} of {plural(steps, 'step')} ({ld.batch_size} rows x "
        f"{plural(streams, 'stream')} per step{f' x {processes} processes' if processes > 1 else ''}); "
        f"a progress line every {plural(cfg.train.log_every, 'step')}",
    ]


def progress_line(epoch: int, epochs: int, step: int, steps: int, scalars: dict, rate: dict, lr: float,
                  eta_epoch: float, eta_all: float, eval_unknown: bool) -> str:
    """`epoch 0, step 20/194: loss 2.103, lr 0.05, 412 img/s (data wait 2 %); ETA epoch 1m52s, all 8 epochs
    14m10s` (`+ evaluation` while no evaluation was timed yet)."""
    eta = f"ETA epoch {duration(eta_epoch)}, all {plural(epochs, 'epoch')} {duration(eta_all)}"
    return (f"epoch {epoch}, step {step}/{steps}: loss {number(scalars.get('loss'))}, lr {number(lr)}, "
            f"{rate['img_per_s']:.0f} img/s (data wait {100 * rate['data_wait_frac']:.0f} %); {eta}"
            + (" + evaluation" if eval_unknown else ""))


def etas(epoch: int, epochs: int, step: int, steps: int, seconds_per_step: float, evaluations_left: int,
         seconds_per_evaluation: float) -> tuple[float, float]:
    """(seconds to the end of this epoch, seconds to the end of the last epoch): the remaining steps at
    the time per step measured so far, plus the evaluations still due at their measured time."""
    epoch_left = (steps - step) * seconds_per_step
    later_epochs = (epochs - epoch - 1) * steps * seconds_per_step
    return epoch_left, epoch_left + later_epochs + evaluations_left * seconds_per_evaluation


def epoch_line(record: dict, head: str | None = None) -> str:
    """`epoch 3: loss 1.234, lr 0.05, 412 img/s (data wait 2 %), 194 steps; top-1 ... ; wall 5m01s; loss_ce 0.9`."""
    text = (f"epoch {record['epoch']}: loss {number(record.get('loss'))}, lr {number(record.get('lr'))}, "
            f"{record.get('img_per_s', 0):.0f} img/s (data wait {100 * record.get('data_wait_frac', 0):.0f} %), "
            f"{record.get('steps', 0)} steps")
    if record.get("top1") is not None:
        text += f"; {record_headline(record, head)}"
    if record.get("wall_s") is not None:
        text += f"; wall {duration(record['wall_s'])}"
    rest = [f"{k} {number(v)}" for k, v in record.items()
            if k not in EPOCH_KEYS and not k.startswith("top1_") and isinstance(v, (int, float))]
    return text + (f"; {', '.join(rest)}" if rest else "")


def final_line(summary: dict, head: str | None = None) -> str:
    """`finished NAME: top-1 ... ; best.pt: epoch 7 (test top-1 45.72 %); wall 6m57s, 412 img/s` (the wall
    time of this invocation: a resumed run's header says where it resumed)."""
    text = f"finished {summary['name']}: {report_headline(summary['final'], head)}"
    best = summary.get("best") or {}
    if best.get("epoch", -1) >= 0:
        text += f"; best.pt: epoch {best['epoch']} ({best.get('on', 'test')} top-1 {_percent(best['top1'])} %)"
    return text + f"; wall {duration(summary['wall_s'])}, {summary['img_per_s']:.0f} img/s"
