"""The dataset index every loader reads: items, labels, class counts, many/medium/few."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

MANY, MEDIUM, FEW = 0, 1, 2
GROUP_NAMES = ("many", "medium", "few")

# Normalisation statistics (0..1 scale) the official codes use.
CIFAR10_MEAN, CIFAR10_STD = (0.49139968, 0.48215827, 0.44653124), (0.24703233, 0.24348505, 0.26158768)
CIFAR100_MEAN, CIFAR100_STD = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
INAT_MEAN, INAT_STD = (0.466, 0.471, 0.380), (0.195, 0.194, 0.192)


class DatasetError(ValueError):
    """Bad dataset input (message names the file and line)."""


@dataclass
class LTDataset:
    """One split of a long-tailed dataset.

    Exactly one of `images` (uint8 N×H×W×3 held in memory, CIFAR) or `paths` (absolute image
    file paths, decoded by the loader) is set. `train_counts` are the class counts of the
    *training* split, also on eval splits, because shot groups are defined by train counts.
    """

    name: str
    num_classes: int
    labels: np.ndarray
    train_counts: np.ndarray
    images: np.ndarray | None = None
    paths: list[str] | None = None
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    source: str = ""
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.labels = np.asarray(self.labels, dtype=np.int64)
        self.train_counts = np.asarray(self.train_counts, dtype=np.int64)
        if (self.images is None) == (self.paths is None):
            raise ValueError("LTDataset needs exactly one of images or paths")
        n_items = len(self.images) if self.images is not None else len(self.paths)
        if n_items != len(self.labels):
            raise ValueError(f"{self.name}: {n_items} items but {len(self.labels)} labels")

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def counts(self) -> np.ndarray:
        """Class counts of this split."""
        return np.bincount(self.labels, minlength=self.num_classes)

    def shot_groups(self, rule: str = "<20") -> np.ndarray:
        return shot_groups(self.train_counts, rule)


def shot_groups(train_counts: np.ndarray, rule: str = "<20") -> np.ndarray:
    """Per-class group id: many (> 100), medium, few (< 20, or <= 20 with GLMC's rule)."""
    counts = np.asarray(train_counts)
    if rule not in ("<20", "<=20"):
        raise ValueError(f"few_shot_rule must be '<20' or '<=20', got {rule!r}")
    few = counts < 20 if rule == "<20" else counts <= 20
    groups = np.full(len(counts), MEDIUM, dtype=np.int64)
    groups[counts > 100] = MANY
    groups[few] = FEW
    return groups
