"""Evaluation: top-1 overall / many / medium / few, per-class accuracy, ECE, per-class plot.

Group accuracy is the mean of per-class accuracies within the group (OLTR protocol); groups
are defined by *train* counts (docs: getting-started/data.md, Datasets).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from fasttrain.checkpoint import temp_path
from fasttrain.data.classnames import class_names  # noqa: F401  (the reports' readable names; also imported from here)
from fasttrain.data.index import GROUP_NAMES, shot_groups


def five_crops(x: torch.Tensor, size: int) -> list[torch.Tensor]:
    """The four corner and the centre `size` x `size` crops of a (B, C, H, W) batch, in
    torchvision's FiveCrop order (top-left, top-right, bottom-left, bottom-right, centre)."""
    h, w = x.shape[-2:]
    if h < size or w < size:
        raise ValueError(f"augment.eval_tte fivecrop: eval images of {h}x{w} are smaller than the {size}x{size} crops "
                         "(the loader backend must resize them: torch, dali or ffcv with augment.train imagenet)")
    top, left = int(round((h - size) / 2.0)), int(round((w - size) / 2.0))
    return [x[..., :size, :size], x[..., :size, w - size:], x[..., h - size:, :size], x[..., h - size:, w - size:],
            x[..., top:top + size, left:left + size]]


def tte_crop_size(aug) -> int | None:
    """The crop size of augment.eval_tte fivecrop (None: no test-time ensembling)."""
    return aug.crop_size if aug.eval_tte == "fivecrop" else None


def ensemble_logits(method, model, x: torch.Tensor, tte_crop: int | None
                    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """`method.head_logits` of the batch, or with `tte_crop` the mean logits of its five crops."""
    if not tte_crop:
        return method.head_logits(model, x)
    outs = [method.head_logits(model, view) for view in five_crops(x, tte_crop)]
    logits = torch.stack([z.float() for z, _ in outs]).mean(dim=0)
    heads = {name: torch.stack([h[name].float() for _, h in outs]).mean(dim=0) for name in outs[0][1]}
    return logits, heads


@torch.no_grad()
def collect_predictions(method, model, loader, augmenter, head_preds: dict | None = None,
                        indices: list | None = None, tte_crop: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(softmax probabilities (N, C) float32 on CPU, labels (N,)) over the whole loader.

    Views go through the run's augmenter (the same uint8 → input-dtype path as training); a
    bf16 / fp16 run evaluates under that autocast. For a method with several heads (`head_logits`),
    `head_preds` (a dict) receives each head's predicted classes (N,) from the same forward;
    `indices` (a list) receives the rows' dataset indices (N,). With `tte_crop` (augment.eval_tte
    fivecrop), each row's logits are the mean over its five `tte_crop` crops."""
    model.eval()
    probs, labels, heads, index = [], [], {}, []
    device_type = next(model.parameters()).device.type
    # The augmenter hands the model inputs in the run's autocast dtype (bf16 or fp16): evaluate under
    # the same autocast, or those inputs would meet fp32 weights.
    low = augmenter.dtype in (torch.bfloat16, torch.float16)
    autocast = torch.autocast(device_type, dtype=augmenter.dtype if low else torch.bfloat16, enabled=low)
    for batch in loader:
        x = augmenter.views(batch)[0]
        with autocast:
            logits, per_head = ensemble_logits(method, model, x, tte_crop)
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
    probs, labels = collect_predictions(run.method, run.model, loader, run.augmenter, heads, indices,
                                        tte_crop=tte_crop_size(run.cfg.augment))
    if loader.samplers and run.dist.enabled:  # a sharded loader reads this rank's EvalShard: gather
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
    if name in METHODS and METHODS[name].stage.continues:
        base, base_cfg = stored["base_method"], stored.get("base_config", {})
    else:
        base, base_cfg = name, {k: v for k, v in stored.items() if k != "name"}
    return {"name": "tau_norm", "tau": tau, "head": head, "base_method": base, "base_config": base_cfg}


def checkpoint_evaluation(path: str | Path, overrides: list[str] | None = None, tau: float | None = None,
                          tau_head: str = "fc", confusion: Path | None = None):
    """(report, run) of checkpoint `path`, evaluated with the config stored inside it (plus
    `overrides`); with `tau`, through a τ-normalised `tau_head` instead of the method's own prediction.
    The report names the head behind its top-1 (`head`, None for one-head models).

    Builds only what evaluation needs (no train loader, optimizer or run directory)."""
    from fasttrain.build import build_run
    from fasttrain.checkpoint import load_checkpoint
    from fasttrain.config import apply_overrides, config_from_dict
    from fasttrain.model_state import load_weights

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
    load_weights(run.model, state, str(path), cfg.model)
    report = evaluate(run, confusion)
    report["head"] = run.method.prediction_head()
    return report, run


def evaluate_checkpoint(path: str | Path, overrides: list[str] | None = None, plot: Path | None = None,
                        tau: float | None = None, tau_head: str = "fc", csv: Path | None = None,
                        confusion: Path | None = None) -> dict:
    """The report of `checkpoint_evaluation`; with `csv` / `plot`, also the per-class CSV / PNG there."""
    report, run = checkpoint_evaluation(path, overrides, tau, tau_head, confusion)
    if csv is not None:
        write_per_class_csv(report, run.train_set, run.cfg.data.few_shot_rule, csv)
    if plot is not None:
        plot_per_class(report["per_class"], run.train_set.train_counts, plot,
                       title=f"{Path(path).name}: top-1 {report['top1']:.2f}%", heads=heads_per_class(report),
                       names=class_names(run.train_set))
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


def per_class_rows(report: dict, train_set, rule: str) -> list[list]:
    """[header, one row per class]: class, name, train_count, group, accuracy (%) [, accuracy_<head> of
    each head of a several-head method]."""
    groups = shot_groups(train_set.train_counts, rule)
    names = class_names(train_set)
    heads = heads_per_class(report)
    rows = [["class", "name", "train_count", "group", "accuracy"] + [f"accuracy_{h}" for h in heads]]
    for c, acc in enumerate(report["per_class"]):
        rows.append([c, names[c], int(train_set.train_counts[c]), GROUP_NAMES[groups[c]], acc]
                    + [per_class[c] for per_class in heads.values()])
    return rows


def write_per_class_csv(report: dict, train_set, rule: str, path: Path) -> None:
    """`per_class_rows` as CSV (temp file + rename)."""
    import csv

    path = Path(path)
    tmp = temp_path(path)
    with open(tmp, "w", newline="") as f:
        csv.writer(f).writerows(per_class_rows(report, train_set, rule))
    tmp.replace(path)


# --- figures ---------------------------------------------------------------------------------------

# Bar colours of the accuracy series (one per head), and the train-count line's: a dark grey that is
# none of them, so the count line is never mistaken for a head's bars.
SERIES_COLOURS = ("#4c72b0", "#55a868", "#c44e52", "#8172b2", "#937860")
COUNT_COLOUR = "#222222"
NAMED_COLUMNS_MAX = 40  # up to this many classes: a column per class, every name under the axis
NAMED_ROWS_MAX = 150  # up to this many: a row per class (horizontal bars), every name beside it


def pyplot():
    """matplotlib.pyplot on the file-only backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: Path) -> None:
    """Write `fig` as PNG at `path` (temp file + rename) and free it."""
    path = Path(path)
    tmp = temp_path(path)
    fig.savefig(tmp, format="png")
    pyplot().close(fig)
    tmp.replace(path)


def plot_confusion(probs: torch.Tensor, labels: torch.Tensor, train_counts: np.ndarray, path: Path) -> None:
    """PNG of the row-normalised confusion matrix, classes sorted by train count (head first)."""
    plt = pyplot()
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
    save_figure(fig, path)


def _plain_numbers(axis) -> None:
    """Ticks of a log-scaled count axis as plain numbers (5000, not 5x10^3); no minor labels."""
    from matplotlib.ticker import FuncFormatter, NullFormatter

    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    axis.set_minor_formatter(NullFormatter())


def _columns(ax, series: dict[str, np.ndarray], names: list[str], counts: np.ndarray):
    """A column group per class (one bar per series), every class name under the axis; the train
    count as a line on a log axis at the right. Returns that axis."""
    x = np.arange(len(names))
    width = 0.85 / len(series)
    for k, (label, acc) in enumerate(series.items()):
        ax.bar(x - 0.425 + (k + 0.5) * width, acc, width=width, label=label, color=SERIES_COLOURS[k % 5])
    long_names = len(names) > 8 or max(len(n) for n in names) > 6
    ax.set_xticks(x, names, rotation=45 if long_names else 0, ha="right" if long_names else "center",
                  rotation_mode="anchor", fontsize=8 if len(names) > 20 else 9)
    ax.set_xlim(-0.6, len(names) - 0.4)
    ax.set_ylim(0, 100)
    ax.set_ylabel("accuracy (%)")
    counts_ax = ax.twinx()
    counts_ax.plot(x, counts, color=COUNT_COLOUR, ls="--", marker="o", ms=3, lw=1, label="training images")
    counts_ax.set_yscale("log")
    _plain_numbers(counts_ax.yaxis)
    counts_ax.set_ylabel("training images (log)")
    return counts_ax


def _rows(ax, series: dict[str, np.ndarray], names: list[str], counts: np.ndarray):
    """`_columns` turned sideways for many classes: a row per class, most frequent on top, every
    name at the left; the train count on a log axis at the top."""
    y = np.arange(len(names))
    height = 0.85 / len(series)
    for k, (label, acc) in enumerate(series.items()):
        ax.barh(y - 0.425 + (k + 0.5) * height, acc, height=height, label=label, color=SERIES_COLOURS[k % 5])
    ax.set_yticks(y, names, fontsize=7)
    ax.set_ylim(len(names) - 0.4, -0.6)  # the most frequent class on top
    ax.set_xlim(0, 100)
    ax.set_xlabel("accuracy (%)")
    return _count_axis(ax, y, counts, sideways=True)


def _curve(ax, series: dict[str, np.ndarray], counts: np.ndarray):
    """Too many classes to name (ImageNet-LT, iNat): accuracy along the classes sorted by count, as
    faint points and a moving average over 2 % of the classes per series."""
    x = np.arange(len(counts))
    window = max(1, len(counts) // 50)
    for k, (label, acc) in enumerate(series.items()):
        colour = SERIES_COLOURS[k % 5]
        ax.plot(x, acc, ".", ms=2, alpha=0.25, color=colour)
        smooth = np.convolve(acc, np.ones(window) / window, mode="valid")
        ax.plot(x[window - 1:] - (window - 1) / 2, smooth, color=colour, lw=1.5, label=f"{label}, mean of {window}")
    ax.set_xlim(0, len(counts) - 1)
    ax.set_ylim(0, 100)
    ax.set_xlabel("class, sorted by training count (most frequent first)")
    ax.set_ylabel("accuracy (%)")
    return _count_axis(ax, x, counts, sideways=False)


def _count_axis(ax, where: np.ndarray, counts: np.ndarray, sideways: bool):
    """The training count of each class as a dashed line on its own log axis (at the top when the
    classes run down the figure, else at the right)."""
    counts_ax = ax.twiny() if sideways else ax.twinx()
    xy = (counts, where) if sideways else (where, counts)
    counts_ax.plot(*xy, color=COUNT_COLOUR, ls="--", lw=1, label="training images")
    axis = counts_ax.xaxis if sideways else counts_ax.yaxis
    (counts_ax.set_xscale if sideways else counts_ax.set_yscale)("log")
    _plain_numbers(axis)
    axis.set_label_text("training images (log)")
    return counts_ax


def per_class_figure(per_class: list[float], train_counts: np.ndarray, title: str = "",
                     heads: dict[str, list[float]] | None = None, names: list[str] | None = None):
    """The per-class accuracy figure, classes sorted by train count (most frequent first), with the
    train count as a line: a column per class with its name under the axis (up to NAMED_COLUMNS_MAX
    classes), a row per class with its name beside it (up to NAMED_ROWS_MAX), else a curve over
    the sorted classes. With `heads` (GLMC fc / fc_cb, SSD hard / soft) one series per head, so which
    head favours the head or the tail classes is visible."""
    plt = pyplot()
    order = np.argsort(-np.asarray(train_counts), kind="stable")
    counts = np.asarray(train_counts)[order]
    names = [str(names[c]) if names else str(c) for c in order]
    if heads and len(heads) > 1:
        series = {f"{name} (%)": np.asarray(h)[order] for name, h in heads.items()}
    else:
        series = {"test accuracy (%)": np.asarray(per_class)[order]}
    n = len(counts)
    if n <= NAMED_COLUMNS_MAX:
        fig, ax = plt.subplots(figsize=(max(6.0, 0.3 * n * len(series) + 3), 4.5), dpi=100, layout="constrained")
        counts_ax = _columns(ax, series, names, counts)
    elif n <= NAMED_ROWS_MAX:
        fig, ax = plt.subplots(figsize=(8, max(4.5, 0.16 * n * len(series) + 1.5)), dpi=100, layout="constrained")
        counts_ax = _rows(ax, series, names, counts)
    else:
        fig, ax = plt.subplots(figsize=(9, 4.5), dpi=100, layout="constrained")
        counts_ax = _curve(ax, series, counts)
    handles = [*ax.get_legend_handles_labels()[0], *counts_ax.get_legend_handles_labels()[0]]
    fig.legend(handles=handles, loc="outside right upper", fontsize=8)  # beside the plot: covers no bar
    ax.set_title(title or "per-class accuracy vs training count")
    return fig


def plot_per_class(per_class: list[float], train_counts: np.ndarray, path: Path, title: str = "",
                   heads: dict[str, list[float]] | None = None, names: list[str] | None = None) -> None:
    """PNG of `per_class_figure` (class `names` on the axis; indices without them)."""
    save_figure(per_class_figure(per_class, train_counts, title, heads, names), path)
