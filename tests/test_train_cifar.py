"""End to end on real CIFAR-10-LT (CPU): CE lowers the loss, the run directory holds every
artefact, and --resume after epoch 1 reproduces epoch 2 bit for bit."""
import json
import subprocess
import sys
from pathlib import Path

import torch
from helpers import after_step_at

from fasttrain.config import load_config
from fasttrain.trainer import run_training

CONFIG = Path(__file__).resolve().parent.parent / "configs" / "ce" / "cifar10_lt_r100.yaml"


def overrides(root, out, extra=()):
    return [f"data.root={root}", f"out_dir={out}", "device=cpu", "train.epochs=2", "train.max_steps_per_epoch=12",
            "loader.batch_size=64", "train.eval_every=2", "train.log_every=4", "loader.num_workers=2", *extra]


def test_ce_two_epochs_lowers_loss_and_resume_is_bit_exact(cifar10_root, tmp_path):
    full = run_training(load_config(CONFIG, overrides(cifar10_root, tmp_path / "a")))
    losses = [e["train_loss"] for e in full["epochs"]]
    assert losses[1] < losses[0], losses
    run = tmp_path / "a" / "ce_cifar10_lt_r100"
    for name in ("config.yaml", "metrics.jsonl", "last.pt", "best.pt", "per_class_accuracy.png", "summary.json",
                 "train.log", "per_class.csv", "top1_vs_time.png"):
        assert (run / name).is_file(), name
    assert list((run / "tb").glob("events.out.tfevents.*"))
    assert full["final"]["many_classes"] == 8 and full["final"]["medium_classes"] == 2
    log_text = (run / "train.log").read_text()  # the plain-text log: epochs, no progress-bar noise
    assert "epoch 0:" in log_text and "epoch 1:" in log_text and "\r" not in log_text
    rows = (run / "per_class.csv").read_text().splitlines()
    assert rows[0] == "class,name,train_count,group,accuracy" and rows[1].startswith("0,airplane,5000,many,")
    assert all(e["host_rss_peak_mib"] > 0 for e in full["epochs"])
    assert full["img_per_s"] > 0

    # Interrupted after epoch 1, then resumed: identical weights and metrics.
    part = run_training(load_config(CONFIG, overrides(cifar10_root, tmp_path / "b", ["train.stop_after_epochs=1"])))
    assert part["stopped_at_epoch"] == 1
    resumed = run_training(load_config(CONFIG, overrides(cifar10_root, tmp_path / "b")), resume=True)
    a = torch.load(run / "last.pt", weights_only=False)
    b = torch.load(tmp_path / "b" / "ce_cifar10_lt_r100" / "last.pt", weights_only=False)
    for k, v in a["model"].items():
        assert torch.equal(v, b["model"][k]), k
    assert [e["train_loss"] for e in resumed["epochs"]] == losses
    assert resumed["final"]["top1"] == full["final"]["top1"]


def test_cli_reports_misspelt_key_without_traceback(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"base: {CONFIG}\noptim:\n  learning_rate: 0.1\n")
    proc = subprocess.run([sys.executable, "-m", "fasttrain.cli", "train", str(bad)], capture_output=True, text=True)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert "bad.yaml" in proc.stderr and "optim.learning_rate" in proc.stderr and "did you mean 'lr'" in proc.stderr


def test_cli_eval_checkpoint(cifar10_root, tmp_path):
    run_training(load_config(CONFIG, overrides(cifar10_root, tmp_path, ["train.epochs=1", "train.max_steps_per_epoch=3"])))
    ckpt = tmp_path / "ce_cifar10_lt_r100" / "best.pt"
    proc = subprocess.run([sys.executable, "-m", "fasttrain.cli", "eval", str(ckpt), "loader.num_workers=0", "--json"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "ce_cifar10_lt_r100" / "best_per_class.csv").is_file()
    report = json.loads(proc.stdout)  # --json: the report is all of stdout
    assert 0 <= report["top1"] <= 100 and report["many_classes"] == 8
    assert (tmp_path / "ce_cifar10_lt_r100" / "best_per_class.png").is_file()
    assert f"top-1 {report['top1']:.2f} %" in proc.stderr and "wrote " in proc.stderr  # the lines for a person


def test_cli_info():
    proc = subprocess.run([sys.executable, "-m", "fasttrain.cli", "info"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    assert info["versions"]["torch"].startswith("2.14.1") and "ce" in info["methods"]


def test_sigterm_mid_epoch_then_resume_is_bit_exact(cifar10_root, tmp_path):
    """A stop request in the middle of epoch 1 saves last.pt with the loader position; the
    resumed run ends with exactly the weights of an uninterrupted run."""
    from fasttrain.trainer import Trainer

    ov = ["train.epochs=2", "train.max_steps_per_epoch=6", "train.eval_every=5", "loader.num_workers=0",
          f"data.root={cifar10_root}", "device=cpu", "loader.batch_size=32"]
    cfg = load_config(CONFIG, ov)
    ref = Trainer(cfg, tmp_path / "ref")
    ref.fit()

    cut = Trainer(cfg, tmp_path / "cut")
    after_step_at(cut, 1, 2, lambda: setattr(cut, "_stop_requested", True))  # stop at step 3 of epoch 1
    import pytest

    with pytest.raises(SystemExit):
        cut.fit()
    state = torch.load(tmp_path / "cut" / "last.pt", weights_only=False)
    assert state["epoch"] == 1 and state["loader"]["position"] == 3

    resumed = Trainer(cfg, tmp_path / "cut", resume=True)
    resumed.fit()
    for k, v in ref.model.state_dict().items():
        assert torch.equal(v, resumed.model.state_dict()[k]), k
