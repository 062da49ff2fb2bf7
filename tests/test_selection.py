"""Model selection without test-set leakage (train.select_on): on a dataset with a val split, best.pt
is chosen on val and the chosen checkpoint is evaluated on test; the official codes' habit
(choose on test) stays available and is labelled as leaking; CIFAR-like datasets without a val
split keep that habit by default, labelled."""
from __future__ import annotations

from pathlib import Path

import pytest
from helpers import smooth_jpeg

from fasttrain.checkpoint import load_checkpoint
from fasttrain.config import load_config
from fasttrain.evaluation import evaluate_checkpoint
from fasttrain.schema import ConfigError
from fasttrain.selection import selection_split
from fasttrain.trainer import run_training

CONFIG = Path(__file__).resolve().parent.parent / "configs" / "ce" / "cifar10_lt_r100.yaml"


@pytest.fixture(scope="module")
def folder_with_val(tmp_path_factory) -> Path:
    """root/{train,val,test}/<class>/*.jpg: 3 long-tailed classes, 4 val and 4 test images per class."""
    root = tmp_path_factory.mktemp("folder_val")
    k = 0
    for split, counts in (("train", (12, 6, 3)), ("val", (4, 4, 4)), ("test", (4, 4, 4))):
        for c, n in enumerate(counts):
            (root / split / f"class{c}").mkdir(parents=True)
            for i in range(n):
                k += 1
                (root / split / f"class{c}" / f"{i}.jpg").write_bytes(smooth_jpeg(1000 * c + k, 36, 36))
    return root


def cfg_for(root: Path, out: Path, *extra: str):
    return load_config(CONFIG, ["data.dataset=folder", f"data.root={root}", f"out_dir={out}", "device=cpu",
                                "augment.train=imagenet", "augment.crop_size=32", "augment.eval_resize=36",
                                "loader.num_workers=0", "loader.batch_size=8", "loader.eval_batch_size=8",
                                "train.epochs=3", "optim.lr=0.05", "schedule.warmup_epochs=0", *extra])


def test_a_dataset_with_a_val_split_selects_on_val_and_reports_test(folder_with_val, tmp_path):
    cfg = cfg_for(folder_with_val, tmp_path)
    assert selection_split(cfg) == "val"
    out = run_training(cfg)
    val = [e["val_top1"] for e in out["epochs"]]
    chosen = val.index(max(val))  # the first epoch with the best val top-1
    sel = out["selected"]
    assert sel["on"] == "val" and sel["epoch"] == chosen and sel["selection_top1"] == max(val)
    assert "test set chose nothing" in sel["note"] and out["best"]["on"] == "val"
    run = tmp_path / "ce_cifar10_lt_r100"
    best = load_checkpoint(run / "best.pt")
    assert best["epoch"] == chosen + 1 and best["report"]["top1"] == max(val)  # best.pt holds the val report
    # the summary's test numbers are those of the chosen checkpoint on the test split
    assert evaluate_checkpoint(run / "best.pt", plot=None, csv=None)["top1"] == sel["test"]["top1"]
    # ... and the final weights (what a later stage would continue) are the last epoch's, not best.pt's
    assert evaluate_checkpoint(run / "last.pt", plot=None, csv=None)["top1"] == out["final"]["top1"]


def test_the_official_habit_selects_on_test_and_says_it_leaks(folder_with_val, tmp_path):
    out = run_training(cfg_for(folder_with_val, tmp_path, "train.select_on=test", "train.epochs=2"))
    sel = out["selected"]
    tops = [e["top1"] for e in out["epochs"]]
    assert sel["on"] == "test" and sel["epoch"] == tops.index(max(tops)) and sel["test"]["top1"] == max(tops)
    assert "test set chose the epoch" in sel["note"] and "optimistic" in sel["note"]
    assert all("val_top1" not in e for e in out["epochs"])


def test_no_val_split_keeps_test_by_default_and_refuses_val(tmp_path):
    base = ["data.dataset=synthetic", "data.num_classes=3", f"data.root={tmp_path}"]
    assert selection_split(load_config(CONFIG, base)) == "test"
    assert selection_split(load_config(CONFIG, ["data.dataset=places_lt"])) == "val"
    assert selection_split(load_config(CONFIG, ["data.dataset=inat2018"])) == "test"  # its val list is its test
    with pytest.raises(ConfigError, match="train.select_on=val: dataset 'synthetic' has no val split"):
        selection_split(load_config(CONFIG, [*base, "train.select_on=val"]))
    assert selection_split(load_config(CONFIG, [*base, "train.select_on=last"])) == "last"
