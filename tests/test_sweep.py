"""`fasttrain sweep`: the grid, one process per run, resume, the mean ± std table."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fasttrain.schema import ConfigError
from fasttrain.sweep import grid, markdown, parse_sets, summarise

ROOT = Path(__file__).resolve().parent.parent


def test_grid_and_table():
    runs = grid([0, 1], parse_sets(["optim.lr=0.1,0.05"]))
    assert [r["tag"] for r in runs] == ["lr0.1_seed0", "lr0.1_seed1", "lr0.05_seed0", "lr0.05_seed1"]
    assert runs[2]["overrides"] == ["optim.lr=0.05", "seed=0"]
    with pytest.raises(ConfigError, match="--set"):
        parse_sets(["optim.lr"])
    results = [{**r, "top1": t, "many": 1.0, "medium": 2.0, "few": None} for r, t in zip(runs, [10, 20, 30, 30])]
    table = summarise(results)
    assert table[0]["n"] == 2 and table[0]["top1"]["mean"] == 15 and table[0]["top1"]["std"] == pytest.approx(7.0711, abs=1e-4)
    assert table[1]["top1"] == {"mean": 30, "std": 0.0} and table[0]["few"] is None
    assert "| optim.lr=0.1 | 2 | 15.00 ± 7.07 |" in markdown(table)


def test_sweep_runs_each_combination_once_and_resumes(tmp_path):
    over = ["data.dataset=synthetic", "data.num_classes=3", "data.synthetic_size=[32,32]",
            "data.synthetic_max_per_class=6", f"data.root={tmp_path / 'syn'}", f"out_dir={tmp_path}", "device=cpu",
            "train.epochs=1", "train.max_steps_per_epoch=1", "loader.num_workers=0", "loader.batch_size=4"]
    cmd = [sys.executable, "-m", "fasttrain.cli", "sweep", str(ROOT / "configs" / "ce" / "cifar10_lt_r100.yaml"),
           *over, "--seeds", "0", "1", "--set", "optim.lr=0.1,0.05"]
    env = dict(os.environ, FASTTRAIN_NO_TQDM="1", OMP_NUM_THREADS="1")
    first = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert first.returncode == 0, first.stderr[-3000:]
    root = tmp_path / "ce_cifar10_lt_r100_sweep"
    done = json.loads((root / "results.json").read_text())
    assert len(done["runs"]) == 4 and all("top1" in r for r in done["runs"])
    assert [r["n"] for r in done["table"]] == [2, 2] and "| optim.lr=0.05 | 2 |" in first.stdout
    # an interrupted sweep: one run lost its summary; the same command re-runs only that one
    (root / "lr0.05_seed1" / "summary.json").unlink()
    kept = (root / "lr0.1_seed0" / "summary.json").stat().st_mtime_ns
    again = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stderr.count("[sweep] ") == 1 and "[sweep] lr0.05_seed1" in again.stderr
    assert (root / "lr0.1_seed0" / "summary.json").stat().st_mtime_ns == kept
    assert (root / "lr0.05_seed1" / "summary.json").is_file()
