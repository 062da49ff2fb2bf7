"""Evaluation: top-1 overall / many / medium / few, per-class accuracy, ECE, per-class plot.

Group accuracy is the mean of per-class accuracies within the group (OLTR protocol); groups
are defined by *train* counts (METHODS.md §1.5).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from fasttrain.checkpoint import temp_path
from fasttrain.data.index import GROUP_NAMES, shot_groups


@torch.no_grad()
def collect_predictions(method, model, loader, augmenter, head_preds: dict | None = None,
                        indices: list | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(softmax probabilities (N, C) float32 on CPU, labels (N,)) over the whole loader.

    Views go through the run's augmenter (the same uint8 → input-dtype path as training); a
    bf16 run evaluates under bf16 autocast. For a method with several heads (`head_logits`),
    `head_preds` (a dict) receives each head's predicted classes (N,) from the same forward;
    `indices` (a list) receives the rows' dataset indices (N,)."""
    model.eval()
    probs, labels, heads, index = [], [], {}, []
    device_type = next(model.parameters()).device.type
    autocast = torch.autocast(device_type, dtype=torch.bfloat16, enabled=augmenter.dtype == torch.bfloat16)
    for batch in loader:
        x = augmenter.views(batch)[0]
        with autocast:
            logits, per_head = method.head_logits(model, x)
        probs.append(torch.softmax(logits.float(), dim=1))
        labels.append(batch.labels)
        index.append(batch.index)
        for name, z in per_head.items():
            heads.setdefault(name, []).append(z.argmax(dim=1))
    if head_preds is not None:
        head_preds.update({name: torch.cat(p).cpu() for name, p in heads.items()})
    if indices is not None:
        indices.append(torch.cat(index).cpu())
    return torch.cat(probs).cpu(), torch.cat(labels).cpu()


def evaluate(run, confusion: Path | None = None) -> dict:
    """The accuracy report of `run.model` (a fasttrain.build.Run) on its eval loader; with
    `confusion`, also the confusion-matrix PNG there."""
    return evaluate_loader(run, run.eval_loader, confusion)


def evaluate_loader(run, loader, confusion: Path | None = None) -> dict:
    """`evaluate` on another eval-order loader of the run (e.g. the val split for model selection).
    Under torchrun a sharded loader's predictions are gathered from every rank first, so the
    report is the single-process one exactly."""
    heads: dict = {}
    indices: list = []
    probs, labels = collect_predictions(run.method, run.model, loader, run.augmenter, heads, indices)
    if getattr(loader, "samplers", None) and run.dist.enabled:
        probs, labels, heads = gather_predictions(probs, labels, indices[0], heads)
    if confusion is not None:
        plot_confusion(probs, labels, run.train_set.train_counts, confusion)
    report = accuracy_report(probs, labels, run.train_set.train_counts, run.cfg.data.few_shot_rule)
    if heads:  # methods with several heads (GLMC fc / fc_cb, SSD III hard / soft): each head's accuracy
        report["heads"] = {name: head_report(pred, labels, run.train_set.train_counts, run.cfg.data.few_shot_rule)
                           for name, pred in heads.items()}
    return report


def heads_per_class(report: dict) -> dict[str, list[float]]:
    """{head: per-class accuracies} of a several-head method's report ({} for one head)."""
    return {name: h["per_class"] for name, h in report.get("heads", {}).items() if "per_class" in h}


def head_report(pred: torch.Tensor, labels: torch.Tensor, train_counts: np.ndarray, rule: str) -> dict:
    """One head's top-1 / many / medium / few and its per-class accuracies (for the CSV and plot)."""
    report, per_class = group_accuracy(pred, labels, train_counts, rule)
    report["per_class"] = [round(100.0 * float(a), 4) for a in per_class]
    return report


def gather_predictions(probs: torch.Tensor, labels: torch.Tensor, index: torch.Tensor, heads: dict
                       ) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """Every rank's rows (probabilities, labels, each head's predictions), put in dataset-index
    order. The ranks' shards must partition the split: an index seen twice or never is an error,
    not a silently skewed accuracy."""
    from fasttrain.distributed import all_gather_cat

    index_all = all_gather_cat(index)
    order = torch.argsort(index_all)
    if not torch.equal(index_all[order], torch.arange(len(index_all))):
        raise RuntimeError(f"evaluation shards do not partition the split: {len(index_all)} rows gathered, "
                           f"{len(torch.unique(index_all))} distinct indices")
    gathered = {name: all_gather_cat(pred)[order] for name, pred in sorted(heads.items())}
    return all_gather_cat(probs)[order], all_gather_cat(labels)[order], gathered


def head_scalars(report: dict) -> dict:
    """`top1_<head>` of every head in `report` (none for one-head methods): per-epoch metrics."""
    return {f"top1_{name}": r["top1"] for name, r in report.get("heads", {}).items()}


def tau_norm_section(stored: dict, tau: float, head: str) -> dict:
    """The `method:` section that evaluates a checkpoint of method `stored` with a τ-normalised
    `head` (its model structure is kept: a first-stage method becomes the base method)."""
    from fasttrain.methods import METHODS

    name = stored.get("name", "ce")
    if name in METHODS and METHODS[name].continues_stage:
        base, base_cfg = stored["base_method"], stored.get("base_config", {})
    else:
        base, base_cfg = name, {k: v for k, v in stored.items() if k != "name"}
    return {"name": "tau_norm", "tau": tau, "head": head, "base_method": base, "base_config": base_cfg}


def evaluate_checkpoint(path: str | Path, overrides: list[str] | None = None, plot: Path | None = None,
                        tau: float | None = None, tau_head: str = "fc", csv: Path | None = None,
                        confusion: Path | None = None) -> dict:
    """Evaluate checkpoint `path` with the config stored inside it (plus `overrides`); with `tau`,
    through a τ-normalised `tau_head` instead of the method's own prediction.

    Builds only what evaluation needs (no train loader, optimizer or run directory)."""
    from fasttrain.build import build_run
    from fasttrain.checkpoint import load_checkpoint
    from fasttrain.config import apply_overrides, config_from_dict

    state = load_checkpoint(path)
    if "config" not in state:
        raise RuntimeError(f"{path}: checkpoint has no stored config (not written by fasttrain?)")
    raw = apply_overrides(state["config"], overrides or [])
    raw["stages"] = []
    if isinstance(raw.get("model"), dict):
        raw["model"]["init_from"] = None  # the checkpoint's own weights are loaded below
    if tau is not None:
        raw["method"] = tau_norm_section(raw.get("method") or {}, tau, tau_head)
        raw["train"] = {**raw.get("train", {}), "epochs": 0}  # post-hoc: nothing is trained
        raw["loader"] = {k: v for k, v in raw.get("loader", {}).items()  # τ-norm draws no stream
                         if k not in ("sampler", "sampler_q", "class_aware_k")}
    cfg = config_from_dict(raw, f"{path} (stored config)")
    run = build_run(cfg)
    run.model.load_state_dict(state["model"])
    report = evaluate(run, confusion)
    if csv is not None:
        write_per_class_csv(report, run.train_set, cfg.data.few_shot_rule, csv)
    if plot is not None:
        plot_per_class(report["per_class"], run.train_set.train_counts, plot,
                       title=f"{Path(path).name}: top-1 {report['top1']:.2f}%", heads=heads_per_class(report))
    return report


def expected_calibration_error(probs: torch.Tensor, labels: torch.Tensor, bins: int = 15) -> float:
    conf, pred = probs.max(dim=1)
    correct = (pred == labels).double()
    edges = torch.linspace(0, 1, bins + 1, dtype=probs.dtype)
    ece = 0.0
    for lo, hi in zip(edges[:-1], edges[1:]):
        mask = (conf > lo) & (conf <= hi)
        if mask.any():
            ece += mask.double().mean().item() * abs(conf[mask].double().mean().item() - correct[mask].mean().item())
    return ece


def group_accuracy(pred: torch.Tensor, labels: torch.Tensor, train_counts: np.ndarray,
                   few_shot_rule: str = "<20") -> tuple[dict, np.ndarray]:
    """({top1, many, many_classes, medium, …}, per-class accuracy) of predicted classes `pred`."""
    num_classes = len(train_counts)
    correct = (pred == labels).long()
    per_class_total = torch.bincount(labels, minlength=num_classes).double()
    per_class_correct = torch.bincount(labels, weights=correct.double(), minlength=num_classes)
    per_class = (per_class_correct / per_class_total.clamp_min(1)).numpy()
    present = per_class_total.numpy() > 0
    groups = shot_groups(train_counts, few_shot_rule)
    report = {"top1": 100.0 * correct.double().mean().item()}
    for g, name in enumerate(GROUP_NAMES):
        sel = (groups == g) & present
        report[name] = 100.0 * float(per_class[sel].mean()) if sel.any() else None
        report[f"{name}_classes"] = int(sel.sum())
    return report, per_class


def accuracy_report(probs: torch.Tensor, labels: torch.Tensor, train_counts: np.ndarray,
                    few_shot_rule: str = "<20") -> dict:
    report, per_class = group_accuracy(probs.argmax(dim=1), labels, train_counts, few_shot_rule)
    report["ece"] = 100.0 * expected_calibration_error(probs, labels)
    report["per_class"] = [round(100.0 * float(a), 4) for a in per_class]
    report["few_shot_rule"] = few_shot_rule
    return report


def class_names(dataset) -> list[str]:
    """A readable name per class: the dataset's own (folder classes, CIFAR label names), else the
    folder of the class's first image (the wnid on ImageNet-LT, the category on iNat / Places),
    else the index."""
    if dataset.extra.get("classes"):
        return [str(c) for c in dataset.extra["classes"]]
    if dataset.images is not None and dataset.source:
        meta = {10: ("batches.meta", b"label_names"), 100: ("meta", b"fine_label_names")}.get(dataset.num_classes)
        path = Path(dataset.source) / meta[0] if meta else None
        if path is not None and path.is_file():
            import pickle

            with open(path, "rb") as f:
                names = pickle.load(f, encoding="bytes").get(meta[1], [])
            if len(names) == dataset.num_classes:
                return [n.decode() if isinstance(n, bytes) else str(n) for n in names]
    if dataset.paths is not None:
        first: dict[int, str] = {}
        for path, label in zip(dataset.paths, dataset.labels):
            first.setdefault(int(label), Path(path).parent.name)
        return [first.get(c, str(c)) for c in range(dataset.num_classes)]
    return [str(c) for c in range(dataset.num_classes)]


def write_per_class_csv(report: dict, train_set, rule: str, path: Path) -> None:
    """class, name, train_count, group, accuracy (%) [, accuracy_<head> of each head of a several-head
    method] — one row per class (temp file + rename)."""
    import csv

    groups = shot_groups(train_set.train_counts, rule)
    names = class_names(train_set)
    path = Path(path)
    tmp = temp_path(path)
    with open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        heads = heads_per_class(report)
        w.writerow(["class", "name", "train_count", "group", "accuracy"] + [f"accuracy_{h}" for h in heads])
        for c, acc in enumerate(report["per_class"]):
            w.writerow([c, names[c], int(train_set.train_counts[c]), GROUP_NAMES[groups[c]], acc]
                       + [per_class[c] for per_class in heads.values()])
    tmp.replace(path)


def plot_confusion(probs: torch.Tensor, labels: torch.Tensor, train_counts: np.ndarray, path: Path) -> None:
    """PNG of the row-normalised confusion matrix, classes sorted by train count (head first)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    c = len(train_counts)
    order = np.argsort(-np.asarray(train_counts), kind="stable")
    rank = np.empty(c, dtype=np.int64)
    rank[order] = np.arange(c)
    pred = rank[probs.argmax(dim=1).numpy()]
    true = rank[labels.numpy()]
    cm = np.zeros((c, c))
    np.add.at(cm, (true, pred), 1)
    cm /= np.maximum(cm.sum(axis=1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(6, 5), dpi=100)
    im = ax.imshow(cm, cmap="viridis", vmin=0, vmax=1, interpolation="nearest")
    ax.set_xlabel("predicted class (sorted by training count)")
    ax.set_ylabel("true class (sorted by training count)")
    fig.colorbar(im, ax=ax, label="fraction of the true class")
    fig.tight_layout()
    tmp = temp_path(path)
    fig.savefig(tmp, format="png")
    plt.close(fig)
    tmp.replace(path)


def plot_per_class(per_class: list[float], train_counts: np.ndarray, path: Path, title: str = "",
                   heads: dict[str, list[float]] | None = None) -> None:
    """PNG: per-class accuracy (bars, classes sorted by train count) against train count (line).
    With `heads` (a several-head method: GLMC fc / fc_cb, SSD hard / soft), one bar per head and
    class side by side instead, so which head favours the head or the tail classes is visible."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    order = np.argsort(-np.asarray(train_counts), kind="stable")
    acc = np.asarray(per_class)[order]
    counts = np.asarray(train_counts)[order]
    fig, ax = plt.subplots(figsize=(8, 4), dpi=100)
    shown = {name: np.asarray(h)[order] for name, h in (heads or {}).items()}
    if len(shown) > 1 and len(acc) <= 100:  # side-by-side bars stay readable up to ~100 classes
        width = 0.9 / len(shown)
        for k, (name, h) in enumerate(shown.items()):
            ax.bar(np.arange(len(h)) - 0.45 + (k + 0.5) * width, h, width=width, label=f"{name} (%)")
    elif shown:  # many classes: one line per head over the sorted classes
        ax.bar(np.arange(len(acc)), acc, width=1.0, color="#4c72b0", alpha=0.4, label="reported (%)")
        for name, h in shown.items():
            ax.plot(np.arange(len(h)), h, lw=0.8, label=f"{name} (%)")
    else:
        ax.bar(np.arange(len(acc)), acc, width=1.0, color="#4c72b0", label="test accuracy (%)")
    ax.set_xlabel("class (sorted by training count)")
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 100)
    ax2 = ax.twinx()
    ax2.plot(np.arange(len(counts)), counts, color="#dd8452", label="training images")
    ax2.set_yscale("log")
    ax2.set_ylabel("training images (log)")
    ax.legend(ax.get_legend_handles_labels()[0] + ax2.get_legend_handles_labels()[0],
              ax.get_legend_handles_labels()[1] + ax2.get_legend_handles_labels()[1], loc="upper right")
    ax.set_title(title or "per-class accuracy vs training count")
    fig.tight_layout()
    path = Path(path)
    tmp = temp_path(path)
    fig.savefig(tmp, format="png")
    plt.close(fig)
    tmp.replace(path)
