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

`BestKeeper` applies this during a run: the trainer calls `keeper.update(...)` once per evaluated
epoch and `keeper.selected(...)` once at the end; the keeper writes best.pt.
"""
from __future__ import annotations

from pathlib import Path

from fasttrain.build import build_split_loader
from fasttrain.checkpoint import load_checkpoint, save_checkpoint
from fasttrain.config import to_dict
from fasttrain.data import has_val_split
from fasttrain.evaluation import evaluate_loader
from fasttrain.guard import check_finite_state
from fasttrain.model_state import WEIGHTS_REF, checkpoint_weights, load_weights
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


class BestKeeper:
    """Owns best.pt: which evaluation picks it (`train.select_on`), writing it, and summary.json's
    `selected`. One call per evaluated epoch (`update`), one at the end (`selected`); `best` is the
    small record checkpoints and the summary carry (restored on --resume).

    Under torchrun every rank calls it with the same gathered reports, so all ranks agree on the
    choice; rank 0 writes best.pt."""

    def __init__(self, run, run_dir: Path, meta: dict, rank: int = 0, label: str = ""):
        self.run, self.cfg, self.run_dir, self.meta, self.rank = run, run.cfg, Path(run_dir), meta, rank
        self.split = selection_split(self.cfg)
        # "_ema" (train.select_model: ema): `run` is the EMA view (fasttrain.ema.selection_run), whose
        # weights are evaluated, chosen and written; the record's `<split>_top1_ema` and best's `model` say so
        self.label = label
        self.best: dict = {"top1": -1.0, "epoch": -1}
        self.resumed_from: Path | None = None  # the checkpoint a resumed run continued (its best.pt is beside it)
        self._kept: dict = {}  # the best epoch's report (and, selected on another split, its weights)
        self._loaders: dict = {}  # selection splits other than the eval split, built on first use

    def update(self, epoch: int, report: dict, record: dict, last_good: str) -> None:
        """After evaluating `epoch` (`report`, the eval split's): evaluate the selection split when it
        is another one (its top-1 goes into the epoch's `record`), and keep best.pt if this epoch wins."""
        chosen = report if self.split in ("last", self.cfg.data.eval_split) else \
            evaluate_loader(self.run, self._loader(self.split))
        if chosen is not report:
            record[f"{self.split}_top1{self.label}"] = chosen["top1"]
        if not better(chosen, self.best, self.split):  # the same answer on every rank (gathered reports)
            return
        model = self.run.model
        check_finite_state(model, None, f"the end of epoch {epoch}", last_good)  # before best.pt
        self.best = {"top1": chosen["top1"], "epoch": epoch, **{k: chosen[k] for k in ("many", "medium", "few")},
                     "on": self.split, **({"model": "ema"} if self.label else {})}
        # Kept for `selected`: the report, and (selected on another split than the test report's) the
        # weights, on the host, so the end needs no file every rank can read.
        self._kept = {"report": chosen}
        if self.split != "last" and not self._selects_on_test_report():
            self._kept["weights"] = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        if self.rank == 0:
            save_checkpoint({**checkpoint_weights(model, self.cfg.model), "epoch": epoch + 1, "report": chosen,
                             "config": to_dict(self.cfg), "meta": self.meta}, self.run_dir / "best.pt")

    def selected(self, final_report: dict) -> dict:
        """summary.json's `selected`: the chosen checkpoint's test report. Chosen on val (or another
        split than the report's): best.pt's weights are evaluated on test once, then the final
        weights are put back (a later stage continues the final model, as before)."""
        if self.best["epoch"] < 0:
            return {"on": self.split, "note": "nothing was evaluated"}
        if self.split == "last":
            return selected_section(self.split, self.best, final_report)
        # A resumed run whose best epoch came before the resume reads best.pt (every rank: out_dir
        # is on a filesystem they all see, as for --resume).
        stored = self._kept or self._stored()
        if not stored:
            return {"on": self.split, "epoch": self.best["epoch"], "selection_top1": self.best["top1"],
                    "note": "best.pt of that epoch is not in this run directory (resumed from another run's "
                            "checkpoint): not evaluated on test"}
        if self._selects_on_test_report():
            return selected_section(self.split, self.best, stored["report"])
        model = self.run.model
        final = {k: v.detach().clone() for k, v in model.state_dict().items()}
        load_weights(model, {"model": stored["weights"], WEIGHTS_REF: stored.get("ref")}, "best.pt")
        test_report = evaluate_loader(self.run, self._loader("test"))
        model.load_state_dict(final)
        return selected_section(self.split, self.best, test_report)

    def _selects_on_test_report(self) -> bool:
        """best.pt is chosen on the very test report each epoch writes: nothing to re-evaluate."""
        return self.split == "test" and self.cfg.data.eval_split == "test"

    def _loader(self, split: str):
        """The eval-order loader of `split`: the run's own when it is the eval split, else built once."""
        if split == self.cfg.data.eval_split:
            return self.run.eval_loader
        if split not in self._loaders:
            self._loaders[split] = build_split_loader(self.run, split, sharded=True)
        return self._loaders[split]

    def _stored(self) -> dict:
        """{report, weights} of best.pt in this run directory (or beside the resumed checkpoint)."""
        beside = self.resumed_from.with_name("best.pt") if self.resumed_from else None
        for path in (self.run_dir / "best.pt", beside):
            if path is not None and path.is_file():
                state = load_checkpoint(path)
                if state.get("epoch") == self.best["epoch"] + 1:
                    return {"report": state["report"], "weights": state["model"], "ref": state.get(WEIGHTS_REF)}
        return {}
