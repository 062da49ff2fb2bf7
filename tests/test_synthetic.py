"""Synthetic long-tailed JPEG corpus: layout, counts, determinism, learnable colours, sizes."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torchvision.io import decode_jpeg, encode_jpeg

from fasttrain.compat import quiet_tvio_deprecation
from fasttrain.config import RunConfig
from fasttrain.data import build_datasets
from fasttrain.data.cli import main as data_main
from fasttrain.data.folder import build_folder_dataset
from fasttrain.data.lists import build_list_dataset
from fasttrain.data.synthetic import META_FILE, class_counts, make_synthetic_corpus, render

SMALL = dict(num_classes=5, max_per_class=8, imbalance=4.0, test_per_class=2, size=(48, 40), quality=90)


def _decode(path) -> torch.Tensor:
    with quiet_tvio_deprecation():
        return decode_jpeg(torch.frombuffer(bytearray(path.read_bytes()), dtype=torch.uint8))


def test_counts_follow_the_exponential_profile():
    assert class_counts(5, 8, 4.0) == [8, 5, 4, 2, 2]
    assert class_counts(10, 5000, 100) == [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]
    assert min(class_counts(100, 10, 1000)) == 1  # never an empty class
    assert class_counts(1, 7, 10) == [7]


def test_tiny_corpus_layout_and_datasets(tmp_path):
    info = make_synthetic_corpus(tmp_path, **SMALL)
    assert info["train_counts"] == [8, 5, 4, 2, 2] and info["train_images"] == 21 and not info["skipped"]
    assert info["test_images"] == 10
    lines = (tmp_path / "train.txt").read_text().splitlines()
    assert lines[0] == "train/c0000/000000.jpg 0" and len(lines) == 21
    train, test = build_list_dataset("synthetic", tmp_path, tmp_path / "train.txt", tmp_path / "test.txt")
    assert train.counts.tolist() == [8, 5, 4, 2, 2] and test.counts.tolist() == [2] * 5
    img = _decode(tmp_path / "train/c0003/000001.jpg")
    assert tuple(img.shape) == (3, 40, 48)  # size is (width, height)
    f_train, _ = build_folder_dataset(tmp_path)  # the same tree read as folder-per-class
    assert f_train.counts.tolist() == train.counts.tolist()
    assert json.loads((tmp_path / META_FILE).read_text())["params"]["size"] == [48, 40]


def test_reuse_regenerate_and_refuse_foreign_folders(tmp_path):
    make_synthetic_corpus(tmp_path, **SMALL)
    first = (tmp_path / "train/c0000/000000.jpg").read_bytes()
    assert make_synthetic_corpus(tmp_path, **SMALL)["skipped"]
    info = make_synthetic_corpus(tmp_path, **(SMALL | {"max_per_class": 4}))  # new parameters
    assert not info["skipped"] and info["train_counts"] == [4, 2, 2, 1, 1]
    assert not (tmp_path / "train/c0000/000005.jpg").exists()  # the old corpus is gone
    assert (tmp_path / "train/c0000/000000.jpg").read_bytes() == first  # same seed, same pixels
    foreign = tmp_path / "foreign"
    (foreign / "train").mkdir(parents=True)
    with pytest.raises(FileExistsError, match="not a synthetic corpus"):
        make_synthetic_corpus(foreign, **SMALL)
    with pytest.raises(ValueError, match="imbalance >= 1"):
        make_synthetic_corpus(tmp_path / "bad", **(SMALL | {"imbalance": 0.5}))


@pytest.mark.slow  # spawns worker processes that import torch: ~10-30 s on a loaded 2-core box
def test_pixels_do_not_depend_on_worker_count(tmp_path):
    params = SMALL | {"num_classes": 3, "max_per_class": 3, "test_per_class": 1}
    make_synthetic_corpus(tmp_path / "one", **params, workers=1)
    make_synthetic_corpus(tmp_path / "two", **params, workers=2)
    files = sorted(p.relative_to(tmp_path / "one") for p in (tmp_path / "one").rglob("*.jpg"))
    assert len(files) == sum(class_counts(3, 3, 4.0)) + 3 == 8
    for rel in files:
        assert (tmp_path / "one" / rel).read_bytes() == (tmp_path / "two" / rel).read_bytes()
    assert (tmp_path / "one/train.txt").read_text() == (tmp_path / "two/train.txt").read_text()


def test_classes_are_learnable_from_colour():
    """Nearest class-mean on mean RGB, fitted on some images and scored on others: far above chance."""
    feats = {c: np.stack([render(c, 64, 48, seed).float().mean(dim=(1, 2)).numpy() for seed in range(8)])
             for c in range(6)}
    centroids = np.stack([feats[c][:4].mean(0) for c in range(6)])
    correct = sum(int(np.argmin(((centroids - x) ** 2).sum(1)) == c) for c in range(6) for x in feats[c][4:])
    assert correct / 24 >= 0.75  # chance is 1/6


def test_jpeg_size_is_imagenet_like():
    """500×400 at quality 90: about 95 KB on average (ImageNet's mean JPEG is ≈ 110 KB)."""
    with quiet_tvio_deprecation():
        sizes = [len(encode_jpeg(render(c, 500, 400, 100 + c), quality=90)) for c in range(4)]
    assert 70_000 < np.mean(sizes) < 125_000


def test_cli_and_build_datasets(tmp_path, capsys):
    root = tmp_path / "syn"
    assert data_main(["synthetic", "--root", str(root), "--classes", "3", "--max-per-class", "4",
                      "--imbalance", "2", "--test-per-class", "1", "--size", "32", "24"]) == 0
    assert json.loads(capsys.readouterr().out)["train_counts"] == [4, 2, 2]
    cfg = RunConfig()
    cfg.data.dataset, cfg.data.root, cfg.data.num_classes = "synthetic", str(tmp_path / "cfg"), 4
    cfg.data.synthetic_max_per_class, cfg.data.synthetic_imbalance = 6, 3.0
    cfg.data.synthetic_test_per_class, cfg.data.synthetic_size = 1, [32, 24]
    train, test = build_datasets(cfg)
    assert train.counts.tolist() == [6, 4, 2, 2] and len(test) == 4
    assert train.paths[0].endswith("train/c0000/000000.jpg")
    cfg.data.num_classes = None
    with pytest.raises(ValueError, match="data.num_classes"):
        build_datasets(cfg)
