"""A fresh run's claim on its directory: it must be writable, and must not append to, or
overwrite, another run's artefacts unless asked to (`--overwrite`; `--resume` continues instead)."""
from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path

from fasttrain.schema import ConfigError

log = logging.getLogger("fasttrain")

# What a run leaves in its directory (a later stage's sub-directory is its own run).
RUN_FILES = ("config.yaml", "metrics.jsonl", "train.log", "last.pt", "best.pt", "summary.json", "tb",
             "per_class_accuracy.png", "per_class.csv", "top1_vs_time.png", "provenance.json")


class RunDirectoryInUse(ConfigError):
    """Starting a run in a directory that holds one, without --resume or --overwrite (a usage
    error: printed without a traceback, like a config error)."""


def claim_run_dir(run_dir: Path, overwrite: bool) -> None:
    """Check `run_dir` is writable and holds no other run's files (removed with `overwrite`)."""
    run_dir = Path(run_dir)
    check_writable(run_dir)
    held = [n for n in RUN_FILES if (run_dir / n).exists()]
    if not held:
        return
    # Only a checkpoint (or a finished run's summary) makes a directory "in use": what a run that
    # failed before its first checkpoint left (config.yaml, train.log, tb/) holds nothing to resume.
    in_use = [n for n in ("last.pt", "best.pt", "summary.json") if n in held]
    if in_use and not overwrite:
        raise RunDirectoryInUse(f"{run_dir} already holds a run ({', '.join(held)}): continue it with "
                                "--resume, or start again with --overwrite (deletes those files)")
    for name in held:
        path = run_dir / name
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    why = "--overwrite" if in_use else "left by a run that wrote no checkpoint"
    log.warning("%s: removed %s from %s", why, ", ".join(held), run_dir)


def check_writable(run_dir: Path) -> None:
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=run_dir, prefix=".write-test-"):
            pass
    except OSError as exc:
        raise ConfigError(f"out_dir: cannot write the run directory {run_dir} ({exc.strerror or exc}); "
                          "choose a writable out_dir (out_dir=/path/with/space)") from None
