"""Model selection: which evaluation chooses best.pt, and what the summary says about it.

`train.select_on`:
- `val`: best.pt is the epoch with the best top-1 on the dataset's val split; at the end the
  chosen checkpoint is evaluated once on the test split. The test set never chooses anything.
- `test`: best.pt is the epoch with the best top-1 on the test split, as the official GLMC / SSD /
  FBL codes report "best accuracy". That number is optimistic (the test set chose the epoch);
  the summary labels it so.
- `last`: best.pt is the last evaluated epoch (no selection at all).
- `auto` (default): `val` where the dataset has a val split (ImageNet-LT, Places-LT, a folder with
  val/), else `test` — CIFAR-LT has no val split, so its runs keep the codes' protocol, labelled.
"""
from __future__ import annotations

from fasttrain.data import has_val_split
from fasttrain.schema import ConfigError

LEAK_NOTE = ("selected on test (the official codes' habit): the test set chose the epoch, so this accuracy "
             "is optimistic; datasets with a val split select on val (train.select_on)")
NOTES = {"val": "selected on val; the test numbers are of the chosen checkpoint (the test set chose nothing)",
         "test": LEAK_NOTE,
         "last": "no selection: the last evaluated epoch"}


def selection_split(cfg) -> str:
    """`val`, `test` or `last` for `cfg.train.select_on` (auto resolved for the dataset)."""
    how = cfg.train.select_on
    if how == "auto":
        return "val" if has_val_split(cfg) else "test"
    if how == "val" and not has_val_split(cfg):
        raise ConfigError(f"train.select_on=val: dataset {cfg.data.dataset!r} has no val split apart from its test "
                          "split (CIFAR-LT, synthetic, iNat 2018); use train.select_on=test (labelled as leaking) "
                          "or last")
    return how


def better(candidate: dict, best: dict, how: str) -> bool:
    """Whether the evaluation `candidate` replaces `best` as best.pt."""
    return how == "last" or candidate["top1"] > best["top1"]


def selected_section(how: str, best: dict, test_report: dict) -> dict:
    """summary.json's `selected`: how the checkpoint was chosen, its epoch, the score that chose it
    and its test report."""
    return {"on": how, "epoch": best["epoch"], "selection_top1": best["top1"],
            "test": {k: v for k, v in test_report.items() if k != "per_class"}, "note": NOTES[how]}
