"""Everything a run writes about itself, in its run directory (rank 0 only):

- a tqdm progress bar per epoch (off with FASTTRAIN_NO_TQDM=1),
- TensorBoard events under `tb/` (train scalars every `train.log_every` steps, eval per epoch),
- `metrics.jsonl`: one JSON record per epoch,
- `train.log`: the plain-text log of the run: a header when it starts (command, device, threads,
  amp, data sizes, steps), a progress line every `train.log_every` steps, one line per epoch, every
  warning, and a final line with the headline metrics and the wall time (lines: fasttrain.textlog),
- `summary.json` (written atomically), the per-class accuracy PNG, `per_class.csv` and
  `top1_vs_time.png` (top-1 of each evaluated epoch against wall time) at the end;
- `provenance.json`: command, git commit, machine, threads and versions of every start and resume;
- optionally Weights & Biases (`log.wandb: true`): the same train scalars, epoch records and summary.

A write that fails (disk full, quota) in any of them is a `WriteError` naming the file
(`fasttrain.checkpoint.writing`): one line from the CLI, exit 2, as for a checkpoint.
"""
from __future__ import annotations

import json
import logging
import math
import os
import sys
import threading
from pathlib import Path

from fasttrain import provenance
from fasttrain.checkpoint import WriteError, write_error, write_text_atomic, writing
from fasttrain.evaluation import (class_names, heads_per_class, plot_per_class, pyplot, save_figure,
                                  write_per_class_csv)
from fasttrain.textlog import epoch_line

log = logging.getLogger("fasttrain")
# Progress lines go to train.log only while the progress bar shows the same on the console (a log
# line would break the bar); with the bar off (FASTTRAIN_NO_TQDM=1, a batch job) they go to both.
PROGRESS = logging.getLogger("fasttrain.progress")
PROGRESS.propagate = False
PROGRESS.setLevel(logging.INFO)
EVAL_KEYS = ("top1", "many", "medium", "few", "ece")
GROUP_COLOURS = {"many": "#4c72b0", "medium": "#dd8452", "few": "#55a868"}  # top1_vs_time.png


def _y_range(values: list[float]) -> tuple[float, float]:
    """The accuracy range drawn: the data's, widened to whole tens (at least 20 points), within 0-100."""
    lo = max(0.0, 10 * math.floor((min(values) - 2) / 10))
    hi = min(100.0, 10 * math.ceil((max(values) + 2) / 10))
    if hi - lo < 20:
        lo, hi = max(0.0, hi - 20), max(hi, 20.0)
    return lo, hi


def top1_vs_time_figure(epochs: list[dict], title: str):
    """Top-1 (and many / medium / few, and every other head's top-1) of the evaluated epochs against
    wall-clock minutes; None when no epoch was evaluated. The head behind top-1 is named in its
    label, not drawn again; the legend sits beside the plot, where it covers no point."""
    points = [e for e in epochs if e.get("top1") is not None and e.get("wall_s") is not None]
    if not points:
        return None
    plt = pyplot()
    minutes = [e["wall_s"] / 60 for e in points]
    top1 = [e["top1"] for e in points]
    heads = {k[len("top1_"):]: [e.get(k) for e in points]
             for k in sorted({k for e in points for k in e if k.startswith("top1_")})}  # GLMC fc / fc_cb, SSD III
    selected = [name for name, values in heads.items() if values == top1]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100, layout="constrained")
    ax.plot(minutes, top1, marker="o", color="black", lw=2,
            label="top-1" + (f" ({' = '.join(selected)})" if selected else ""))
    drawn = list(top1)
    for key, colour in GROUP_COLOURS.items():
        values = [e.get(key) for e in points]
        if any(v is not None for v in values):
            ax.plot(minutes, values, marker=".", label=key, color=colour, alpha=0.8)
            drawn += [v for v in values if v is not None]
    for k, (name, values) in enumerate((n, v) for n, v in heads.items() if n not in selected):
        ax.plot(minutes, values, ls="--", marker="x", ms=4, color=("#8172b2", "#937860", "#c44e52")[k % 3],
                label=f"top-1 {name}")
        drawn += [v for v in values if v is not None]
    ax.set_xlabel("wall time (min, this invocation)")
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(*_y_range(drawn))
    ax.grid(alpha=0.3)
    ax.set_title(title)
    fig.legend(loc="outside right upper", fontsize=8)
    return fig


def plot_top1_vs_time(epochs: list[dict], path: Path, title: str) -> None:
    """PNG of `top1_vs_time_figure` (nothing when no epoch was evaluated)."""
    fig = top1_vs_time_figure(epochs, title)
    if fig is not None:
        save_figure(fig, path)


def start_wandb(cfg, run_dir: Path):
    """A W&B run for `cfg` (lazily imported: `pip install wandb`), its config the resolved one."""
    try:
        import wandb
    except ImportError as exc:
        raise ImportError("log.wandb=true needs Weights & Biases: pip install wandb (or set log.wandb=false)") from exc
    from fasttrain.config import to_dict

    lg = cfg.log
    return wandb.init(project=lg.wandb_project, entity=lg.wandb_entity, tags=list(lg.wandb_tags), mode=lg.wandb_mode,
                      name=cfg.name, dir=str(run_dir), config=to_dict(cfg), reinit=True)


class _LogFile(logging.FileHandler):
    """train.log. A line that cannot be written (disk full) raises a WriteError at the log call,
    like every other writer of the run, where logging would print a traceback and go on."""

    def handleError(self, record: logging.LogRecord) -> None:
        error = write_error(self.baseFilename, sys.exc_info()[1])
        if error is None:
            return super().handleError(record)
        raise error from None


def _quiet_tensorboard_thread(previous):
    """A threading.excepthook that drops OSErrors of TensorBoard's writer thread: that thread
    writes the events, and a failed write (disk full) there would print a traceback, although the
    writer raises the same error again at our next call, where it becomes one WriteError line."""

    def hook(args) -> None:
        if isinstance(args.exc_value, OSError) and type(args.thread).__module__.startswith("tensorboard."):
            return
        previous(args)

    return hook


class RunLog:
    def __init__(self, run_dir: Path, enabled: bool = True, cfg=None):
        self.run_dir = Path(run_dir)
        self.enabled = enabled
        self._writer = None
        self._handler = None
        self._old_level = None
        self._wandb = None
        self._old_excepthook = None
        if not enabled:
            return
        if cfg is not None and cfg.log.wandb:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            self._wandb = start_wandb(cfg, self.run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        provenance.record_start(self.run_dir)  # command, commit, machine: one entry per start or resume
        try:
            self._open_writers()
        except BaseException:
            self.close(quiet=True)
            raise

    def _open_writers(self) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self._old_excepthook = threading.excepthook
        threading.excepthook = _quiet_tensorboard_thread(self._old_excepthook)
        with writing(self.run_dir / "tb"):
            self._writer = SummaryWriter(str(self.run_dir / "tb"))
        with writing(self.run_dir / "train.log"):
            self._handler = _LogFile(self.run_dir / "train.log")
        self._handler.setLevel(logging.INFO)
        self._handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        log.addHandler(self._handler)
        PROGRESS.addHandler(self._handler)
        if log.getEffectiveLevel() > logging.INFO:  # the file gets INFO lines even in quiet sessions
            self._old_level = log.level
            log.setLevel(logging.INFO)

    def __enter__(self) -> "RunLog":
        return self

    def __exit__(self, exc_type, *exc) -> None:
        self.close(quiet=exc_type is not None)  # an error already on its way out is the one to report

    def close(self, quiet: bool = False) -> None:
        """Flush and close every writer, each even if another failed; the first write failure is
        raised afterwards, unless `quiet`."""
        failures = []
        for close in (self._close_wandb, self._close_tensorboard, self._close_log_file):
            try:
                close()
            except WriteError as exc:
                failures.append(exc)
        if self._old_level is not None:
            log.setLevel(self._old_level)
            self._old_level = None
        if self._old_excepthook is not None:
            threading.excepthook, self._old_excepthook = self._old_excepthook, None
        if failures and not quiet:
            raise failures[0]

    def _close_wandb(self) -> None:
        if self._wandb is not None:
            self._wandb.finish()
            self._wandb = None

    def _close_tensorboard(self) -> None:
        writer, self._writer = self._writer, None
        if writer is None:
            return
        with writing(self.run_dir / "tb"):
            try:
                writer.flush()  # raises what TensorBoard's writer thread failed with, if it did
            finally:
                writer.close()

    def _close_log_file(self) -> None:
        handler, self._handler = self._handler, None
        if handler is None:
            return
        log.removeHandler(handler)
        PROGRESS.removeHandler(handler)
        with writing(self.run_dir / "train.log"):
            handler.close()

    def note(self, text: str) -> None:
        """One line of the run's log (console and train.log), from rank 0 only."""
        if self.enabled:
            log.info("%s", text)

    # --- during an epoch ------------------------------------------------------------------------
    def progress(self, epoch: int, steps: int, start: int):
        from tqdm import tqdm

        disable = not self.enabled or os.environ.get("FASTTRAIN_NO_TQDM") == "1"
        return tqdm(total=steps, initial=start, desc=f"epoch {epoch}", leave=False, disable=disable)

    def train(self, global_step: int, scalars: dict[str, float], rate: dict[str, float], lr: float, bar) -> None:
        """Train scalars of the epoch so far, every `train.log_every` steps."""
        bar.set_postfix(loss=f"{scalars.get('loss', float('nan')):.4f}", ips=f"{rate['img_per_s']:.0f}")
        if self._wandb is not None:
            self._wandb.log({**{f"train/{k}": v for k, v in scalars.items()}, "train/img_per_s": rate["img_per_s"],
                             "train/data_wait_frac": rate["data_wait_frac"], "train/lr": lr}, step=global_step)
        if self._writer is None:
            return
        with writing(self.run_dir / "tb"):
            for k, v in scalars.items():
                self._writer.add_scalar(f"train/{k}", v, global_step)
            self._writer.add_scalar("train/img_per_s", rate["img_per_s"], global_step)
            self._writer.add_scalar("train/data_wait_frac", rate["data_wait_frac"], global_step)
            self._writer.add_scalar("train/lr", lr, global_step)

    def progress_line(self, text: str, bar) -> None:
        """A progress line (`fasttrain.textlog.progress_line`) in train.log; on the console too when
        there is no progress bar."""
        if self.enabled:
            (log if bar.disable else PROGRESS).info("%s", text)

    # --- per epoch and at the end ---------------------------------------------------------------
    def epoch(self, record: dict, head: str | None = None) -> None:
        """The epoch's record: metrics.jsonl, TensorBoard, W&B, and its line in the log (`head`: the
        prediction head the line names, see Method.prediction_head)."""
        if self.enabled:
            with writing(self.run_dir / "metrics.jsonl"), open(self.run_dir / "metrics.jsonl", "a") as f:
                f.write(json.dumps(record) + "\n")
        if self._writer is not None:
            with writing(self.run_dir / "tb"):
                for k in EVAL_KEYS + tuple(k for k in record if k.startswith("top1_")):  # + per-head top-1
                    if record.get(k) is not None:
                        self._writer.add_scalar(f"eval/{k}", record[k], record["epoch"])
        if self._wandb is not None:
            self._wandb.log({f"epoch/{k}": v for k, v in record.items() if isinstance(v, (int, float))})
        log.info("%s", epoch_line(record, head))

    def finish(self, summary: dict, report: dict, train_set) -> None:
        """The per-class plot and CSV of the final report, and summary.json (temp file + rename)."""
        if not self.enabled:
            return
        d = self.run_dir
        with writing(d / "per_class_accuracy.png"):
            plot_per_class(report["per_class"], train_set.train_counts, d / "per_class_accuracy.png",
                           title=f"{summary['name']}: top-1 {report['top1']:.2f}%", heads=heads_per_class(report),
                           names=class_names(train_set))
        with writing(d / "per_class.csv"):
            write_per_class_csv(report, train_set, report["few_shot_rule"], d / "per_class.csv")
        with writing(d / "top1_vs_time.png"):
            plot_top1_vs_time(summary["epochs"], d / "top1_vs_time.png", summary["name"])
        if self._wandb is not None:
            self._wandb.summary.update({f"final/{k}": v for k, v in summary["final"].items()
                                        if isinstance(v, (int, float))})
        write_text_atomic(d / "summary.json", json.dumps(summary, indent=1))
