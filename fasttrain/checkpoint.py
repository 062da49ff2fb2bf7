"""Atomic checkpoints, and the one way a file of the run fails to be written.

A checkpoint is written to a temp file, fsync'ed and renamed: a crash never leaves a torn file,
and the previous checkpoint stays intact until the new one is complete. Every writer of a run
(checkpoints, TensorBoard, metrics.jsonl, train.log, plots, summary.json) reports a failed write
(disk full, quota, read-only) as a `WriteError`: one line naming the file and the OS's reason,
which the CLI prints without a traceback (exit status 2). Temp files are named
`.<name>.tmp.<pid>`, so those a killed writer left behind can be told from a live writer's and
removed when a run starts or resumes (`remove_stale_temp_files`).
"""
from __future__ import annotations

import logging
import os
import pickle
import re
from contextlib import contextmanager
from pathlib import Path

import torch

log = logging.getLogger("fasttrain")
TEMP_NAME = re.compile(r"^\..+\.tmp\.(\d+)$")


class CheckpointError(RuntimeError):
    """A checkpoint that cannot (or must not) be loaded; the message names the file and why."""


class WriteError(RuntimeError):
    """A file of the run could not be written; the message names it and the OS's reason."""


def temp_path(path: str | Path) -> Path:
    """Where `path` is written before it is renamed into place (this process's own temp file)."""
    path = Path(path)
    return path.with_name(f".{path.name}.tmp.{os.getpid()}")


def os_error(exc: BaseException | None) -> OSError | None:
    """The OSError behind `exc`: itself, or the one that was being handled when it was raised.
    torch.save's zip writer answers a failed write (ENOSPC) with a RuntimeError of its own that
    carries no errno; the OSError is its context."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, OSError):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def write_error(path: str | Path, exc: BaseException, what: str = "write", kept: str = "") -> WriteError | None:
    """The WriteError for `exc` raised while writing `path`, or None if `exc` is no OS write failure."""
    cause = os_error(exc)
    if cause is None:
        return None
    path = Path(path)
    reason = cause.strerror or str(cause)
    return WriteError(f"{path}: could not {what} ({reason}){'; ' + kept if kept else ''}. Free space on "
                      f"{path.parent} (or choose another out_dir) and continue with --resume")


@contextmanager
def writing(path: str | Path, what: str = "write"):
    """Run the block that writes `path`; an OS write failure becomes a WriteError naming `path`,
    and this process's partial temp file of `path` is removed (it would keep a full disk full)."""
    try:
        yield
    except WriteError:
        raise
    except (OSError, RuntimeError) as exc:
        error = write_error(path, exc, what)
        if error is None:
            raise
        temp_path(path).unlink(missing_ok=True)
        raise error from None


def write_text_atomic(path: str | Path, text: str) -> None:
    """`path` holds `text` or its previous content, never a part (temp file + rename)."""
    path = Path(path)
    with writing(path):
        tmp = temp_path(path)
        tmp.write_text(text)
        tmp.replace(path)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, as another user's process
        return True
    return True


def remove_stale_temp_files(run_dir: str | Path) -> list[Path]:
    """Remove the temp files in `run_dir` whose writer is gone (killed mid-write: a SIGKILL
    during a checkpoint leaves `.last.pt.tmp.<pid>`, as large as a checkpoint, forever). Called
    when a run starts or resumes, before anything is written, so this process is writing none."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    removed = []
    for path in sorted(run_dir.iterdir()):
        match = TEMP_NAME.match(path.name)
        if match and path.is_file() and (int(match.group(1)) == os.getpid() or not _alive(int(match.group(1)))):
            path.unlink(missing_ok=True)
            removed.append(path)
    if removed:
        log.info("removed %d temp file(s) of writers that were killed: %s", len(removed),
                 ", ".join(p.name for p in removed))
    return removed


def save_checkpoint(state: dict, path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path)
    try:
        with open(tmp, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
    except BaseException as exc:  # disk full, quota, I/O error, Ctrl-C: drop the partial temp file
        tmp.unlink(missing_ok=True)
        kept = f"the previous {path.name} is intact" if path.exists() else f"no {path.name} was written"
        error = write_error(path, exc, "write the checkpoint", kept)
        if error is None:
            raise
        raise error from None
    with writing(path, "write the checkpoint"):
        os.replace(tmp, path)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def load_checkpoint(path: str | Path) -> dict:
    """Load a checkpoint without running code: `weights_only=True`, so only tensors and plain
    containers unpickle (fasttrain writes nothing else, RNG states included). A file whose pickle
    names anything else — e.g. a crafted file that would run code — is refused."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(f"{path}: refused — the checkpoint holds objects other than tensors and plain "
                           f"containers, which could run code when loaded (checkpoints of fasttrain before 0.1.1 "
                           f"held numpy RNG states: re-save them from a trusted copy) [{str(exc).splitlines()[0]}]"
                           ) from None
    except Exception as exc:
        raise CheckpointError(f"{path}: not a readable checkpoint ({type(exc).__name__}: {exc})") from None
