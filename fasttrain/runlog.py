"""Everything a run writes about itself, in its run directory (rank 0 only):

- a tqdm progress bar per epoch (off with FASTTRAIN_NO_TQDM=1),
- TensorBoard events under `tb/` (train scalars every `train.log_every` steps, eval per epoch),
- `metrics.jsonl`: one JSON record per epoch,
- `train.log`: the plain-text log of the run (every `fasttrain` log line: epochs, warnings, resume),
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
import os
import sys
import threading
from pathlib import Path

from fasttrain import provenance
from fasttrain.checkpoint import WriteError, temp_path, write_error, write_text_atomic, writing
from fasttrain.evaluation import heads_per_class, plot_per_class, write_per_class_csv

log = logging.getLogger("fasttrain")
EVAL_KEYS = ("top1", "many", "medium", "few", "ece")


def plot_top1_vs_time(epochs: list[dict], path: Path, title: str) -> None:
    """Top-1 (and many / medium / few) of the evaluated epochs against wall-clock minutes."""
    points = [e for e in epochs if e.get("top1") is not None and e.get("wall_s") is not None]
    if not points:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    minutes = [e["wall_s"] / 60 for e in points]
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    ax.plot(minutes, [e["top1"] for e in points], marker="o", label="top-1", color="black")
    for key, colour in (("many", "#4c72b0"), ("medium", "#dd8452"), ("few", "#55a868")):
        if any(e.get(key) is not None for e in points):
            ax.plot(minutes, [e.get(key) for e in points], marker=".", label=key, color=colour, alpha=0.7)
    for key in sorted({k for e in points for k in e if k.startswith("top1_")}):  # each head (GLMC, SSD III)
        ax.plot(minutes, [e.get(key) for e in points], linestyle="--", label=f"top-1 {key[5:]}")
    ax.set_xlabel("wall time (min, this invocation)")
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 100)
    ax.set_title(title)
    ax.legend(loc="lower right")
    fig.tight_layout()
    tmp = temp_path(path)
    fig.savefig(tmp, format="png")
    plt.close(fig)
    tmp.replace(path)


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
        with writing(self.run_dir / "train.log"):
            handler.close()

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

    # --- per epoch and at the end ---------------------------------------------------------------
    def epoch(self, record: dict) -> None:
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
        log.info("epoch %d: %s", record["epoch"],
                 {k: (round(v, 4) if isinstance(v, float) else v) for k, v in record.items()})

    def finish(self, summary: dict, report: dict, train_set) -> None:
        """The per-class plot and CSV of the final report, and summary.json (temp file + rename)."""
        if not self.enabled:
            return
        d = self.run_dir
        with writing(d / "per_class_accuracy.png"):
            plot_per_class(report["per_class"], train_set.train_counts, d / "per_class_accuracy.png",
                           title=f"{summary['name']}: top-1 {report['top1']:.2f}%", heads=heads_per_class(report))
        with writing(d / "per_class.csv"):
            write_per_class_csv(report, train_set, report["few_shot_rule"], d / "per_class.csv")
        with writing(d / "top1_vs_time.png"):
            plot_top1_vs_time(summary["epochs"], d / "top1_vs_time.png", summary["name"])
        if self._wandb is not None:
            self._wandb.summary.update({f"final/{k}": v for k, v in summary["final"].items()
                                        if isinstance(v, (int, float))})
        write_text_atomic(d / "summary.json", json.dumps(summary, indent=1))
