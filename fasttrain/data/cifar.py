"""CIFAR-10-LT / CIFAR-100-LT from the standard python-pickle layout (docs: getting-started/data.md)."""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

from fasttrain.data.index import (CIFAR10_MEAN, CIFAR10_STD, CIFAR100_MEAN, CIFAR100_STD,
                                  DatasetError, LTDataset)

LAYOUT = {
    10: ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], "test_batch", b"labels"),
    100: ("cifar-100-python", ["train"], "test", b"fine_labels"),
}


def lt_counts(n_max: int, num_classes: int, imbalance_ratio: float) -> list[int]:
    """n_i = int(n_max * r^(i/(C-1))), r = 1/rho: the exponential profile of every code base."""
    r = 1.0 / imbalance_ratio
    return [int(n_max * r ** (i / (num_classes - 1))) for i in range(num_classes)]


def read_cifar_split(root: str | Path, num_classes: int, train: bool) -> tuple[np.ndarray, np.ndarray]:
    """Read the pickles directly (files rebuilt from npm have no `filenames` key, so
    torchvision's integrity check would reject them). Returns (uint8 N×32×32×3, int64 labels)."""
    folder, train_files, test_file, label_key = LAYOUT[num_classes]
    base = Path(root) / folder
    files = train_files if train else [test_file]
    images, labels = [], []
    for name in files:
        path = base / name
        if not path.is_file():
            raise DatasetError(f"{path}: missing CIFAR-{num_classes} file; run "
                               f"`fasttrain data cifar{num_classes} --root {root}`")
        try:
            with open(path, "rb") as f:
                entry = pickle.load(f, encoding="bytes")
            data = np.asarray(entry[b"data"], dtype=np.uint8)
            lab = np.asarray(entry[label_key], dtype=np.int64)
        except Exception as exc:  # corrupt pickle, wrong layout
            raise DatasetError(f"{path}: not a CIFAR python pickle ({type(exc).__name__}: {exc})") from None
        if data.ndim != 2 or data.shape[1] != 3072 or len(data) != len(lab):
            raise DatasetError(f"{path}: expected N×3072 uint8 data and N labels, got {data.shape} and {lab.shape}")
        if lab.min() < 0 or lab.max() >= num_classes:
            raise DatasetError(f"{path}: label out of range 0..{num_classes - 1} (min {lab.min()}, max {lab.max()})")
        images.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
        labels.append(lab)
    return np.ascontiguousarray(np.concatenate(images)), np.concatenate(labels)


def select_lt_indices(labels: np.ndarray, counts: list[int], convention: str, seed: int) -> np.ndarray:
    """Indices of the LT subset.

    ldam: np.random.seed(seed) once, then per class (label order) shuffle that class's
          indices and keep the first n_i (LDAM-DRW / FBL, seed 0).
    glmc: the global NumPy RNG seeded with the run seed, per class
          np.random.choice(class_indices, n_i, replace=False) (GLMC after 2023-05-23).
    With equal seeds both pick the same images (legacy choice(replace=False) is
    permutation(n)[:k], the same draws as shuffle + first k); the subsets differ in practice
    because the seeds differ (0 vs GLMC's run seed, 3407 by default).
    """
    rng_state = np.random.get_state()  # do not disturb anyone else's global RNG use
    try:
        np.random.seed(seed)
        keep = []
        for c, n_c in enumerate(counts):
            idx = np.where(labels == c)[0]
            if convention == "ldam":
                np.random.shuffle(idx)
                keep.append(idx[:n_c])
            elif convention == "glmc":
                keep.append(np.random.choice(idx, n_c, replace=False))
            else:
                raise ValueError(f"cifar_split must be 'ldam' or 'glmc', got {convention!r}")
        return np.concatenate(keep)
    finally:
        np.random.set_state(rng_state)


def build_cifar_lt(root: str | Path, num_classes: int, imbalance_ratio: float, convention: str = "ldam",
                   seed: int = 0) -> tuple[LTDataset, LTDataset]:
    """(train LT subset, full balanced test set)."""
    images, labels = read_cifar_split(root, num_classes, train=True)
    n_max = len(labels) // num_classes
    counts = lt_counts(n_max, num_classes, imbalance_ratio)
    keep = select_lt_indices(labels, counts, convention, seed)
    mean, std = (CIFAR10_MEAN, CIFAR10_STD) if num_classes == 10 else (CIFAR100_MEAN, CIFAR100_STD)
    name = f"cifar{num_classes}_lt"
    train = LTDataset(name=name, num_classes=num_classes, labels=labels[keep], images=images[keep],
                      train_counts=np.asarray(counts), mean=mean, std=std,
                      source=str(Path(root) / LAYOUT[num_classes][0]),
                      extra={"imbalance_ratio": imbalance_ratio, "convention": convention, "seed": seed})
    t_images, t_labels = read_cifar_split(root, num_classes, train=False)
    test = LTDataset(name=f"cifar{num_classes}_test", num_classes=num_classes, labels=t_labels,
                     images=t_images, train_counts=np.asarray(counts), mean=mean, std=std,
                     source=train.source)
    for c, n in enumerate(train.counts):
        if n == 0:
            raise DatasetError(f"{train.source}: class {c} is empty after LT subsampling")
    return train, test


def synthetic_cifar_lt(num_classes: int, imbalance_ratio: float, seed: int = 0) -> tuple[LTDataset, LTDataset]:
    """A stand-in of CIFAR-{10,100}-LT with random pixels: the real class profile (n_max 5000 or
    500, ρ), the real balanced test-set size (10,000 images) and the real statistics. For timing
    on machines without the data (a GPU box without network): pixel values do not change the cost
    of a step, so the numbers are those of the real dataset; the accuracy is meaningless."""
    n_max = 50000 // num_classes
    counts = lt_counts(n_max, num_classes, imbalance_ratio)
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(num_classes), counts)
    mean, std = (CIFAR10_MEAN, CIFAR10_STD) if num_classes == 10 else (CIFAR100_MEAN, CIFAR100_STD)
    train = LTDataset(name=f"synthetic_cifar{num_classes}_lt", num_classes=num_classes, labels=labels,
                      images=rng.integers(0, 256, size=(len(labels), 32, 32, 3), dtype=np.uint8),
                      train_counts=np.asarray(counts), mean=mean, std=std, source="synthetic",
                      extra={"imbalance_ratio": imbalance_ratio, "synthetic": True})
    t_labels = np.repeat(np.arange(num_classes), 10000 // num_classes)
    test = LTDataset(name=f"synthetic_cifar{num_classes}_test", num_classes=num_classes, labels=t_labels,
                     images=rng.integers(0, 256, size=(len(t_labels), 32, 32, 3), dtype=np.uint8),
                     train_counts=np.asarray(counts), mean=mean, std=std, source="synthetic")
    return train, test
