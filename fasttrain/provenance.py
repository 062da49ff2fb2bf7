"""What makes a run reproducible beyond its config: the command, the code's git commit, the
machine and the versions of every process that worked on the run directory.

`provenance.json` in a run directory holds one entry per start (`--resume` adds one), so a run
that crossed sessions, machines or commits says so. The results record
(`fasttrain results record`) copies it beside the run's numbers."""
from __future__ import annotations

import datetime
import json
import os
import platform
import shlex
import subprocess
import sys
from pathlib import Path

import torch

from fasttrain.checkpoint import write_text_atomic  # the run's one write path: a full disk is one clear line
from fasttrain.environment import cpu_model, versions

FILE = "provenance.json"
# The environment variables that change what a run computes or how fast (threads, kernels' mode).
ENV_KEYS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "CUDA_VISIBLE_DEVICES", "TRITON_INTERPRET", "WORLD_SIZE")


def git_state(source: Path | None = None) -> dict:
    """The commit of the checkout fasttrain runs from, and whether tracked files differ from it
    (None for both where fasttrain is not a git checkout, e.g. an installed wheel)."""
    source = source or Path(__file__).resolve().parent.parent

    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", "-C", str(source), *args], capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    if commit is None:
        return {"git_commit": None, "git_dirty": None}
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"git_commit": commit, "git_dirty": bool(status) if status is not None else None}


def command_line() -> str:
    """This process's command line as typed (`fasttrain train ...`, or `python -m pytest ...`)."""
    return "fasttrain " + shlex.join(sys.argv[1:]) if Path(sys.argv[0]).name == "fasttrain" else shlex.join(sys.argv)


def invocation() -> dict:
    """This process: command line, code version, machine, threads, library versions, start time."""
    device = {"cpu_model": cpu_model(), "machine": platform.machine(), "threads": torch.get_num_threads(),
              "cpu_count": os.cpu_count()}
    if torch.cuda.is_available():
        device["gpu"] = torch.cuda.get_device_name()
    return {"command": command_line(), **git_state(), **device,
            "env": {k: os.environ[k] for k in ENV_KEYS if k in os.environ},
            "versions": versions(), "host": platform.node(),
            "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}


def read(run_dir: Path) -> list[dict]:
    """The starts recorded in `run_dir` (oldest first); [] when the run predates provenance.json."""
    path = Path(run_dir) / FILE
    if not path.is_file():
        return []
    data = json.loads(path.read_text())
    return data["starts"] if isinstance(data, dict) and "starts" in data else [data]


def record_start(run_dir: Path) -> None:
    """Append this process's `invocation()` to `run_dir`/provenance.json (written atomically)."""
    starts = read(run_dir) + [invocation()]
    write_text_atomic(Path(run_dir) / FILE, json.dumps({"starts": starts}, indent=1))
