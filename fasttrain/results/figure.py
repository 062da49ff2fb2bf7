"""The results figure of one dataset: top-1 against epoch for every recorded run (one line per
seed; a later stage's curve starts after the epochs its run trained before it, a post-hoc stage is
one marker there), and the last epoch's many / medium / few as grouped bars (mean over seeds)."""
from __future__ import annotations

from pathlib import Path

from fasttrain.results.collect import Record

GROUPS = ("many", "medium", "few")


def plot_dataset(records: list[Record], dataset: str, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [r for r in records if r.dataset == dataset]
    names = sorted({r.name for r in runs})
    fig, (curves, bars) = plt.subplots(1, 2, figsize=(13, 5), gridspec_kw={"width_ratios": [3, 2]})
    colours = plt.get_cmap("tab20")
    for i, name in enumerate(names):
        for k, r in enumerate(sorted((r for r in runs if r.name == name), key=lambda r: r.seed)):
            # The epoch numbers are 0-based; curves run 1..E after the run's earlier stages.
            points = r.curve or ([(-1, r.top1)] if r.best_epoch is None else [])
            epochs = [r.epoch_offset + e + 1 for e, _ in points]
            curves.plot(epochs, [t for _, t in points], color=colours(i % 20), lw=1.2, alpha=1.0 if k == 0 else 0.5,
                        marker="o" if len(points) == 1 else None, label=f"{name} ({r.top1:.2f})" if k == 0 else None)
    curves.set(xlabel="epoch", ylabel="top-1 (%)", title=f"{dataset}: top-1 per evaluated epoch (legend: last epoch)")
    curves.grid(alpha=0.3)
    # Groups with no class (CIFAR-10-LT has no class under 20 images: no "few") are left out.
    groups = [g for g in GROUPS if any(getattr(r, g) is not None for r in runs)]
    width = 0.8 / max(len(names), 1)
    for i, name in enumerate(names):
        same = [r for r in runs if r.name == name]
        values = []
        for g in groups:
            vals = [getattr(r, g) for r in same if getattr(r, g) is not None]
            values.append(sum(vals) / len(vals) if vals else 0.0)
        bars.bar([j + (i - (len(names) - 1) / 2) * width for j in range(len(groups))], values, width,
                 color=colours(i % 20), label=name)
    bars.set_xticks(range(len(groups)), groups)
    bars.set(ylabel="top-1 (%)", ylim=(0, 100), title="last epoch, by class frequency group")
    bars.grid(axis="y", alpha=0.3)
    # One legend under both panels: inside the curves panel it hid the late stages' curves.
    handles, labels = curves.get_legend_handles_labels()
    ncol = 3
    legend_in = 0.2 * -(-len(labels) // ncol) + 0.1  # inches: one 8-pt row per 3 runs
    fig.set_size_inches(13, 5 + legend_in)
    fig.tight_layout(rect=(0, legend_in / (5 + legend_in), 1, 1))
    fig.legend(handles, labels, loc="lower center", ncol=ncol, fontsize=8, frameon=False)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
