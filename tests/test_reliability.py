"""Safe loading, run directories that are never reused silently, Ctrl-C, resume bookkeeping."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import after_step_at

from fasttrain.checkpoint import CheckpointError, load_checkpoint
from fasttrain.config import load_config
from fasttrain.trainer import RunDirectoryInUse, Trainer, run_training

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "configs" / "ce" / "cifar10_lt_r100.yaml"


def tiny(tmp_path, *extra):
    return load_config(CONFIG, [
        "data.dataset=synthetic", "data.num_classes=3", "data.synthetic_size=[32,32]", "data.synthetic_max_per_class=8",
        f"data.root={tmp_path / 'syn'}", f"out_dir={tmp_path / 'runs'}", "device=cpu", "train.epochs=2",
        "train.max_steps_per_epoch=2", "loader.num_workers=0", "loader.batch_size=4", *extra])


class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').write('pwned')",))


def test_a_checkpoint_whose_pickle_would_run_code_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    torch.save({"model": {}, "payload": _RunsCode(marker)}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match="refused"):
        load_checkpoint(tmp_path / "evil.pt")
    assert not marker.exists()
    proc = subprocess.run([sys.executable, "-m", "fasttrain.cli", "eval", str(tmp_path / "evil.pt")],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "refused" in proc.stderr and "Traceback" not in proc.stderr
    assert not marker.exists()


def test_checkpoints_load_weights_only_and_resume_state_round_trips(tmp_path):
    run_training(tiny(tmp_path, "train.stop_after_epochs=1"))
    state = load_checkpoint(tmp_path / "runs" / "ce_cifar10_lt_r100" / "last.pt")  # weights_only inside
    assert state["epoch"] == 1 and set(state["rng"]) >= {"python", "numpy", "torch"}


def test_a_run_directory_is_never_reused_silently(tmp_path):
    run_training(tiny(tmp_path, "train.epochs=1"))
    with pytest.raises(RunDirectoryInUse, match="--resume.*--overwrite"):
        run_training(tiny(tmp_path, "train.epochs=1"))
    lines = (tmp_path / "runs" / "ce_cifar10_lt_r100" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 1  # nothing appended by the refused start
    run_training(tiny(tmp_path, "train.epochs=1"), overwrite=True)
    assert len((tmp_path / "runs" / "ce_cifar10_lt_r100" / "metrics.jsonl").read_text().splitlines()) == 1
    assert len(list((tmp_path / "runs" / "ce_cifar10_lt_r100" / "tb").glob("events.*"))) == 1
    with pytest.raises(FileNotFoundError, match="nothing to resume"):
        run_training(tiny(tmp_path, "name=other"), resume=True)
    with pytest.raises(FileNotFoundError, match="no such checkpoint"):
        run_training(tiny(tmp_path, "name=other2"), resume=str(tmp_path / "missing.pt"))
    proc = subprocess.run([sys.executable, "-m", "fasttrain.cli", "train", str(CONFIG), *[
        "data.dataset=synthetic", "data.num_classes=3", "data.synthetic_size=[32,32]", "data.synthetic_max_per_class=8",
        f"data.root={tmp_path / 'syn'}", f"out_dir={tmp_path / 'runs'}", "device=cpu", "train.epochs=1"]],
        capture_output=True, text=True)
    assert proc.returncode == 2 and "already holds a run" in proc.stderr and "Traceback" not in proc.stderr


def test_resume_from_an_explicit_checkpoint(tmp_path):
    run_training(tiny(tmp_path, "train.stop_after_epochs=1"))
    ckpt = tmp_path / "runs" / "ce_cifar10_lt_r100" / "last.pt"
    copy = tmp_path / "saved.pt"
    copy.write_bytes(ckpt.read_bytes())
    out = run_training(tiny(tmp_path, "name=again"), resume=str(copy))
    assert [e["epoch"] for e in out["epochs"]] == [0, 1]


def test_resumed_metrics_hold_each_epoch_once(tmp_path):
    run_training(tiny(tmp_path, "train.stop_after_epochs=1"))
    metrics = tmp_path / "runs" / "ce_cifar10_lt_r100" / "metrics.jsonl"
    with open(metrics, "a") as f:  # a killed invocation logged epoch 1 but never checkpointed it
        f.write(json.dumps({"epoch": 1, "loss": 123.0}) + "\n")
    run_training(tiny(tmp_path), resume=True)
    epochs = [json.loads(line)["epoch"] for line in metrics.read_text().splitlines()]
    assert epochs == [0, 1] and 123.0 not in [json.loads(x).get("loss") for x in metrics.read_text().splitlines()]


def test_ctrl_c_saves_at_the_next_step_and_exits_cleanly(tmp_path):
    cfg = tiny(tmp_path, "train.epochs=3", "train.max_steps_per_epoch=4")
    trainer = Trainer(cfg, tmp_path / "runs" / "int")
    after_step_at(trainer, 1, 1, lambda: os.kill(os.getpid(), signal.SIGINT))  # what Ctrl-C sends, after step 2
    with pytest.raises(SystemExit) as exc:
        trainer.fit()
    assert exc.value.code == 143
    state = load_checkpoint(tmp_path / "runs" / "int" / "last.pt")
    assert state["epoch"] == 1 and state["loader"]["position"] == 2
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handlers restored
