"""Exact recovery: mid-epoch checkpoints every N steps / M minutes, and a training process killed
with SIGKILL at a random step that, resumed with --resume, ends with the weights of a run that was
never interrupted (bit for bit). Each training run is its own process with one thread, so the
uninterrupted reference and the killed/resumed run compute with the same kernels."""
from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from fasttrain.checkpoint import load_checkpoint
from fasttrain.config import load_config
from fasttrain.trainer import Trainer

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "configs" / "ce" / "cifar10_lt_r100.yaml"
STEPS, EPOCHS = 4, 2


def args(tmp_path: Path, out: str, *extra: str) -> list[str]:
    return [str(CONFIG), "data.dataset=synthetic", "data.num_classes=3", "data.synthetic_size=[32,32]",
            "data.synthetic_max_per_class=16", f"data.root={tmp_path / 'syn'}", f"out_dir={tmp_path / out}",
            "device=cpu", f"train.epochs={EPOCHS}", f"train.max_steps_per_epoch={STEPS}", "loader.num_workers=0",
            "loader.batch_size=4", "train.save_every_steps=1", *extra]


def env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "FASTTRAIN_NO_TQDM": "1"}


def train_cmd(*a: str) -> list[str]:
    return [sys.executable, "-m", "fasttrain.cli", "train", *a]


def saves_seen(path: Path, seen: set) -> int:
    """Count distinct versions of `path` (each atomic save is a new file: a new inode)."""
    try:
        st = path.stat()
        seen.add((st.st_ino, st.st_mtime_ns))
    except FileNotFoundError:
        pass
    return len(seen)


def kill_after_saves(cmd: list[str], ckpt: Path, saves: int, timeout: float = 120) -> int:
    """Run `cmd`; SIGKILL it once `ckpt` was written `saves` times (it is somewhere in the next step,
    or in the middle of writing the next checkpoint). Returns the exit status."""
    proc = subprocess.Popen(cmd, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    seen: set = set()
    deadline = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < deadline:
        if saves_seen(ckpt, seen) >= saves:
            os.kill(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.005)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    return proc.returncode


def same_weights(a: Path, b: Path) -> None:
    wa, wb = load_checkpoint(a)["model"], load_checkpoint(b)["model"]
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k


def test_sigkill_at_a_random_step_then_resume_is_bit_identical(tmp_path):
    """One process, checkpoints every step: killed with SIGKILL after a random number of saves (seed
    printed), resumed with --resume, it ends with last.pt weights equal to the uninterrupted run's."""
    seed = random.randrange(10**6)
    k = random.Random(seed).randrange(1, STEPS * EPOCHS - 1)
    ref = subprocess.run(train_cmd(*args(tmp_path, "ref")), env=env(), capture_output=True, text=True, timeout=180)
    assert ref.returncode == 0, ref.stderr[-3000:]
    run = tmp_path / "cut" / "ce_cifar10_lt_r100"
    code = kill_after_saves(train_cmd(*args(tmp_path, "cut")), run / "last.pt", k)
    assert code == -signal.SIGKILL, f"seed {seed}: the run was not killed (exit {code})"
    at = load_checkpoint(run / "last.pt")
    assert (at["epoch"], at["loader"]["position"]) != (EPOCHS, STEPS), f"seed {seed}: killed after the end"
    resumed = subprocess.run(train_cmd(*args(tmp_path, "cut"), "--resume"), env=env(), capture_output=True,
                             text=True, timeout=180)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    same_weights(tmp_path / "ref" / "ce_cifar10_lt_r100" / "last.pt", run / "last.pt")
    assert not list(run.glob(".last.pt.tmp.*"))  # a save cut by the kill leaves no visible debris


@pytest.mark.slow
def test_sigkill_under_two_gloo_ranks_then_resume_is_bit_identical(tmp_path):
    """The same under torchrun with 2 gloo ranks: the checkpoint carries both ranks' RNG and loader
    states, and the resumed job ends with the uninterrupted job's weights."""
    from test_ddp import torchrun, tiny_train_args

    extra = ("train.save_every_steps=1",)
    ref = torchrun(tiny_train_args(tmp_path / "ref", tmp_path / "syn", *extra), timeout=240)
    assert ref.returncode == 0, ref.stderr[-3000:]
    seed = random.randrange(10**6)
    k = random.Random(seed).randrange(1, 5)
    from test_ddp import free_port, one_thread_env

    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=2", "--master-addr=127.0.0.1",
           f"--master-port={free_port()}", "-m", "fasttrain.cli", "train",
           *tiny_train_args(tmp_path / "cut", tmp_path / "syn", *extra)]
    run = tmp_path / "cut" / "ce_cifar10_lt_r100"
    proc = subprocess.Popen(cmd, env=one_thread_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    seen: set = set()
    deadline = time.monotonic() + 200
    while proc.poll() is None and time.monotonic() < deadline and saves_seen(run / "last.pt", seen) < k:
        time.sleep(0.005)
    os.killpg(proc.pid, signal.SIGKILL)  # torchrun and both ranks, at once
    proc.wait(timeout=30)
    assert len(load_checkpoint(run / "last.pt")["ranks"]) == 2
    resumed = torchrun([*tiny_train_args(tmp_path / "cut", tmp_path / "syn", *extra), "--resume"], timeout=240)
    assert resumed.returncode == 0, f"seed {seed}: " + resumed.stderr[-3000:]
    same_weights(tmp_path / "ref" / "ce_cifar10_lt_r100" / "last.pt", run / "last.pt")


def tiny_cfg(tmp_path, *extra):
    return load_config(CONFIG, args(tmp_path, "runs", *extra)[1:])


def test_checkpoints_every_n_steps_hold_the_step_position(tmp_path):
    """save_every_steps=3 with 4 steps per epoch: last.pt is written at step 3 of each epoch (loader
    position 3) and at each epoch end; a run stopped just after step 3 has position 3 on disk."""
    cfg = tiny_cfg(tmp_path, "train.save_every_steps=3", "train.epochs=1")
    trainer = Trainer(cfg, tmp_path / "runs" / "n")
    positions = []
    original = trainer._save_last

    def record(epoch_done, position=None):
        positions.append((epoch_done, position))
        original(epoch_done, position)

    trainer._save_last = record
    trainer.fit()
    assert positions == [(0, 3), (1, None)]


def test_checkpoints_every_m_minutes(tmp_path):
    """save_every_minutes=2 with a fake clock that advances a minute per reading: the policy reads it
    at start (0), after step 1 (1 min: not due), step 2 (2 min: due, save, reset at 3 min), step 3
    (4 min: not due); step 4 ends the epoch (its own checkpoint)."""
    from fasttrain.recovery import SavePolicy

    cfg = tiny_cfg(tmp_path, "train.epochs=1")
    trainer = Trainer(cfg, tmp_path / "runs" / "m")
    clock = iter(range(0, 10_000, 60))
    trainer.saves = SavePolicy(None, 2.0, clock=lambda: float(next(clock)))
    positions = []
    original = trainer._save_last
    trainer._save_last = lambda e, position=None: (positions.append(position), original(e, position))
    trainer.fit()
    assert positions == [2, None]
