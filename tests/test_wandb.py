"""The optional W&B logger: a run in offline mode records the train scalars, epochs and summary."""
from __future__ import annotations

from pathlib import Path

import pytest

from fasttrain.config import load_config

wandb = pytest.importorskip("wandb", reason="wandb not installed (pip install wandb)")
ROOT = Path(__file__).resolve().parent.parent


def test_offline_run_records_what_the_run_log_writes(tmp_path, monkeypatch):
    from fasttrain import runlog
    from fasttrain.trainer import run_training

    monkeypatch.setenv("WANDB_SILENT", "true")
    logged, runs, final = [], [], {}
    real = runlog.start_wandb

    def spy(cfg, run_dir):  # the real offline run, with its log() calls recorded
        run = real(cfg, run_dir)
        log = run.log
        run.log = lambda data, **kw: (logged.append(dict(data)), log(data, **kw))[1]
        finish = run.finish
        run.finish = lambda *a, **kw: (final.update({k: run.summary[k] for k in run.summary.keys()}),
                                       finish(*a, **kw))[1]
        runs.append(run)
        return run

    monkeypatch.setattr(runlog, "start_wandb", spy)
    over = ["data.dataset=synthetic", "data.num_classes=3", "data.synthetic_size=[32,32]",
            "data.synthetic_max_per_class=6", f"data.root={tmp_path / 'syn'}", f"out_dir={tmp_path}", "device=cpu",
            "train.epochs=1", "train.max_steps_per_epoch=2", "train.log_every=1", "loader.num_workers=0",
            "loader.batch_size=4", "log.wandb=true", "log.wandb_mode=offline", "log.wandb_tags=[ci]"]
    summary = run_training(load_config(ROOT / "configs" / "ce" / "cifar10_lt_r100.yaml", over))
    (run,) = runs
    assert run.config["optim"]["lr"] == 0.1 and run.config["log"]["wandb_tags"] == ["ci"]
    train = [d for d in logged if "train/loss" in d]
    assert len(train) == 2 and all("train/img_per_s" in d and "train/lr" in d for d in train)
    (epoch,) = [d for d in logged if "epoch/top1" in d]
    assert epoch["epoch/top1"] == summary["final"]["top1"]
    assert final["final/top1"] == summary["final"]["top1"]
    assert list((tmp_path / "ce_cifar10_lt_r100" / "wandb").glob("offline-run-*/run-*.wandb"))


def test_missing_wandb_is_an_actionable_error(monkeypatch, tmp_path):
    import builtins

    from fasttrain.runlog import start_wandb

    real_import = builtins.__import__

    def no_wandb(name, *a, **kw):
        if name == "wandb":
            raise ImportError("No module named 'wandb'")
        return real_import(name, *a, **kw)

    monkeypatch.setattr(builtins, "__import__", no_wandb)
    with pytest.raises(ImportError, match="pip install wandb"):
        start_wandb(load_config(ROOT / "configs" / "ce" / "cifar10_lt_r100.yaml", ["log.wandb=true"]), tmp_path)
