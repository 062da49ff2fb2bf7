from pathlib import Path

import numpy as np
import pytest
import torch

from fasttrain.evaluation import accuracy_report, expected_calibration_error, plot_per_class


def test_group_accuracy_is_mean_of_per_class_accuracies():
    train_counts = np.array([500, 100, 20, 19])  # many, medium, medium (<20 rule), few
    labels = torch.tensor([0, 0, 1, 1, 2, 3, 3, 3])
    pred = torch.tensor([0, 1, 1, 1, 0, 3, 0, 0])
    probs = torch.nn.functional.one_hot(pred, 4).float()
    r = accuracy_report(probs, labels, train_counts)
    assert r["top1"] == pytest.approx(100 * 4 / 8)
    assert r["per_class"] == [50.0, 100.0, 0.0, pytest.approx(100 / 3, abs=1e-3)]
    assert r["many"] == 50.0 and r["medium"] == 50.0 and r["few"] == pytest.approx(100 / 3)
    assert (r["many_classes"], r["medium_classes"], r["few_classes"]) == (1, 2, 1)
    glmc = accuracy_report(probs, labels, train_counts, few_shot_rule="<=20")
    assert glmc["medium"] == 100.0 and glmc["few"] == pytest.approx(100 / 6)


def test_ece_hand_computed():
    # two bins used: confidence 0.9 (2 samples, 1 correct) and 0.6 (2 samples, 2 correct)
    probs = torch.tensor([[0.9, 0.1], [0.9, 0.1], [0.4, 0.6], [0.4, 0.6]])
    labels = torch.tensor([0, 1, 1, 1])
    expected = 0.5 * abs(0.9 - 0.5) + 0.5 * abs(0.6 - 1.0)
    assert expected_calibration_error(probs, labels) == pytest.approx(expected)
    perfect = torch.eye(3)
    assert expected_calibration_error(perfect, torch.arange(3)) == pytest.approx(0.0)


def test_plot_writes_png(tmp_path):
    path = tmp_path / "acc.png"
    plot_per_class([90.0, 50.0, 10.0], np.array([100, 10, 1]), path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_per_class_csv_and_confusion_png(tmp_path):
    import csv

    from fasttrain.data.index import LTDataset
    from fasttrain.evaluation import class_names, plot_confusion, write_per_class_csv

    train = LTDataset("toy", 3, np.array([0] * 150 + [1] * 30 + [2] * 5), np.array([150, 30, 5]),
                      paths=[f"/d/train/n0{c}/x{i}.jpg" for c, n in enumerate([150, 30, 5]) for i in range(n)])
    assert class_names(train) == ["n00", "n01", "n02"]  # the folder (wnid) of each class
    probs = torch.tensor([[0.9, 0.1, 0.0], [0.2, 0.7, 0.1], [0.6, 0.2, 0.2], [0.1, 0.1, 0.8]])
    labels = torch.tensor([0, 1, 2, 2])
    report = accuracy_report(probs, labels, train.train_counts)
    write_per_class_csv(report, train, "<20", tmp_path / "per_class.csv")
    rows = list(csv.DictReader(open(tmp_path / "per_class.csv")))
    assert [(r["class"], r["name"], r["train_count"], r["group"], float(r["accuracy"])) for r in rows] == [
        ("0", "n00", "150", "many", 100.0), ("1", "n01", "30", "medium", 100.0), ("2", "n02", "5", "few", 50.0)]
    plot_confusion(probs, labels, train.train_counts, tmp_path / "cm.png")
    assert (tmp_path / "cm.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_several_heads_get_their_own_csv_columns_and_bars(tmp_path):
    """GLMC (fc / fc_cb) and SSD III (hard / soft): per-class accuracy of every head in the CSV and
    the per-class PNG, beside the reported one."""
    import csv

    import matplotlib

    matplotlib.use("Agg")
    from fasttrain.data.index import LTDataset
    from fasttrain.evaluation import head_report, heads_per_class, write_per_class_csv

    train = LTDataset("toy", 3, np.array([0] * 150 + [1] * 30 + [2] * 5), np.array([150, 30, 5]),
                      paths=[f"/d/train/c{c}/x{i}.jpg" for c, n in enumerate([150, 30, 5]) for i in range(n)])
    labels = torch.tensor([0, 1, 2, 2])
    fc, fc_cb = torch.tensor([0, 0, 0, 0]), torch.tensor([2, 1, 2, 2])  # fc: head class, fc_cb: tail
    report = accuracy_report(torch.nn.functional.one_hot(fc_cb, 3).float(), labels, train.train_counts)
    report["heads"] = {"fc": head_report(fc, labels, train.train_counts, "<20"),
                       "fc_cb": head_report(fc_cb, labels, train.train_counts, "<20")}
    assert report["heads"]["fc"]["per_class"] == [100.0, 0.0, 0.0]
    assert report["heads"]["fc"]["many"] == 100.0 and report["heads"]["fc_cb"]["few"] == 100.0
    write_per_class_csv(report, train, "<20", tmp_path / "per_class.csv")
    rows = list(csv.DictReader(open(tmp_path / "per_class.csv")))
    assert [(float(r["accuracy_fc"]), float(r["accuracy_fc_cb"])) for r in rows] == [(100, 0), (0, 100), (0, 100)]
    drawn = []
    import matplotlib.axes

    real_bar = matplotlib.axes.Axes.bar

    def spy(self, x, h, *a, **k):
        drawn.append(k.get("label"))
        return real_bar(self, x, h, *a, **k)

    matplotlib.axes.Axes.bar = spy
    try:
        plot_per_class(report["per_class"], train.train_counts, tmp_path / "pc.png", heads=heads_per_class(report))
    finally:
        matplotlib.axes.Axes.bar = real_bar
    assert drawn == ["fc (%)", "fc_cb (%)"]
    assert (tmp_path / "pc.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


CIFAR10_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def _colour_distance(a, b) -> float:
    from matplotlib.colors import to_rgb

    return float(np.abs(np.subtract(to_rgb(a), to_rgb(b))).sum())


def test_per_class_figure_names_every_class_and_keeps_the_count_line_apart_from_the_bars():
    """10 classes: every class name under the axis, sorted by train count (most first); 60 classes:
    a named row each; 1000: a curve over the sorted classes. The train-count line's colour is far
    from every head's bars (GLMC fc / fc_cb / sum)."""
    from matplotlib.patches import Rectangle

    from fasttrain.evaluation import per_class_figure, pyplot

    counts = np.array([83, 5000, 1796, 1077, 645, 387, 232, 139, 2997, 50])  # not in index order
    acc = list(np.linspace(10, 90, 10))
    heads = {"fc": acc, "fc_cb": acc[::-1], "sum": acc}
    fig = per_class_figure(acc, counts, "t", heads=heads, names=CIFAR10_NAMES)
    ax, counts_ax = fig.axes[:2]
    by_count = [CIFAR10_NAMES[c] for c in np.argsort(-counts, kind="stable")]
    assert [t.get_text() for t in ax.get_xticklabels()] == by_count
    bar_colours = {p.get_facecolor() for p in ax.patches if isinstance(p, Rectangle)}
    assert len(bar_colours) == 3
    line = counts_ax.get_lines()[0]
    assert min(_colour_distance(line.get_color(), c) for c in bar_colours) > 0.6
    assert ax.get_legend() is None and fig.legends  # the legend beside the plot, over no bar
    pyplot().close(fig)

    names = [f"class_{i}" for i in range(60)]
    fig = per_class_figure(list(np.linspace(0, 100, 60)), np.arange(60, 0, -1), names=names)
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == names
    pyplot().close(fig)
    fig = per_class_figure(list(np.linspace(0, 100, 1000)), np.arange(1000, 0, -1))
    assert fig.axes[0].get_xlabel().startswith("class, sorted by training count") and len(fig.axes[0].get_xticks()) < 20
    pyplot().close(fig)


def test_top1_vs_time_draws_the_selected_head_once_beside_a_legend_out_of_the_way():
    """GLMC's top1 is its fc_cb head: one curve labelled `top-1 (fc_cb)`, the other heads dashed;
    the y-range fits the data (not 0-100 for accuracies of 20-50 %); the legend is outside the axes."""
    from fasttrain.evaluation import pyplot
    from fasttrain.runlog import top1_vs_time_figure

    epochs = [{"epoch": e, "wall_s": 60.0 * (e + 1), "top1": 30.0 + 2 * e, "many": 45.0 + e, "medium": 28.0 + e,
               "few": 20.0 + 3 * e, "top1_fc": 25.0 + e, "top1_fc_cb": 30.0 + 2 * e, "top1_sum": 27.0 + e}
              for e in range(8)]
    fig = top1_vs_time_figure(epochs, "glmc")
    ax = fig.axes[0]
    labels = [line.get_label() for line in ax.get_lines()]
    assert labels == ["top-1 (fc_cb)", "many", "medium", "few", "top-1 fc", "top-1 sum"]
    assert ax.get_ylim() == (10.0, 60.0)
    assert ax.get_legend() is None and fig.legends
    pyplot().close(fig)


def test_an_fp16_run_evaluates_under_fp16_autocast(tmp_path):
    """train.amp=fp16: the augmenter hands the model fp16 inputs, so evaluation must run under fp16
    autocast too (it enabled autocast for bf16 only: fp16 inputs met fp32 conv weights and raised)."""
    import torch

    from fasttrain.build import build_run
    from fasttrain.config import load_config
    from fasttrain.evaluation import evaluate

    cfg = load_config(Path(__file__).resolve().parent.parent / "configs" / "ce" / "cifar10_lt_r100.yaml", [
        "data.dataset=synthetic", "data.num_classes=3", "data.synthetic_size=[32,32]",
        "data.synthetic_max_per_class=8", f"data.root={tmp_path / 'syn'}", "device=cpu", "loader.num_workers=0",
        "loader.batch_size=4", "train.amp=fp16"])
    run = build_run(cfg, training=True)
    assert run.augmenter.dtype == torch.float16
    report = evaluate(run)
    assert 0.0 <= report["top1"] <= 100.0
    assert torch.backends.cudnn.benchmark is False  # CPU run: never set
