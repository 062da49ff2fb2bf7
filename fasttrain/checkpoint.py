"""Atomic checkpoints: write a temp file, fsync, rename — a crash never leaves a torn file,
and the previous checkpoint stays intact until the new one is complete."""
from __future__ import annotations

import os
import pickle
from pathlib import Path

import torch


class CheckpointError(RuntimeError):
    """A checkpoint that cannot (or must not) be loaded; the message names the file and why."""


def save_checkpoint(state: dict, path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
    except OSError as exc:  # disk full, quota, I/O error: drop the partial temp file, keep the old checkpoint
        tmp.unlink(missing_ok=True)
        kept = f"the previous {path.name} is intact" if path.exists() else f"no {path.name} was written"
        raise CheckpointError(f"{path}: could not write the checkpoint ({exc.strerror or exc}); {kept}. Free space "
                              f"on {path.parent} (or choose another out_dir) and continue with --resume") from None
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
