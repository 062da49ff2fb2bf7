"""Folder-per-class dataset: root/train/<class>/*.jpg and root/<eval split>/<class>/*.jpg.

Classes are the sorted sub-folder names of root/train (label = position in that order, as
torchvision's ImageFolder does); the eval split may lack classes but may not add new ones.
Class counts, and so many/medium/few, come from root/train.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from fasttrain.data.index import IMAGENET_MEAN, IMAGENET_STD, DatasetError, LTDataset

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")


def _scan(split_dir: Path) -> dict[str, list[str]]:
    """class name -> sorted absolute image paths (hidden entries ignored)."""
    if not split_dir.is_dir():
        raise DatasetError(f"{split_dir}: folder not found (expected <root>/<split>/<class>/<image>)")
    classes: dict[str, list[str]] = {}
    with os.scandir(split_dir) as entries:
        for entry in entries:
            if entry.is_dir() and not entry.name.startswith("."):
                with os.scandir(entry.path) as files:
                    classes[entry.name] = sorted(
                        f.path for f in files
                        if f.is_file() and not f.name.startswith(".") and f.name.lower().endswith(IMAGE_EXTENSIONS))
    if not classes:
        raise DatasetError(f"{split_dir}: no class folders")
    return classes


def _flatten(scan: dict[str, list[str]], class_to_idx: dict[str, int]) -> tuple[list[str], np.ndarray]:
    paths: list[str] = []
    labels: list[int] = []
    for name in sorted(scan):
        paths += scan[name]
        labels += [class_to_idx[name]] * len(scan[name])
    return paths, np.asarray(labels, dtype=np.int64)


def build_folder_dataset(root: str | Path, eval_split: str = "test", name: str = "folder",
                         mean=IMAGENET_MEAN, std=IMAGENET_STD) -> tuple[LTDataset, LTDataset]:
    root = Path(root)
    train_scan = _scan(root / "train")
    classes = sorted(train_scan)
    empty = [c for c in classes if not train_scan[c]]
    if empty:
        raise DatasetError(f"{root / 'train'}: class folder(s) without images ({', '.join(empty[:10])}); "
                           f"accepted extensions: {', '.join(IMAGE_EXTENSIONS)}")
    class_to_idx = {c: i for i, c in enumerate(classes)}
    eval_scan = _scan(root / eval_split)
    unknown = sorted(set(eval_scan) - set(class_to_idx))
    if unknown:
        raise DatasetError(f"{root / eval_split}: class folder(s) not in {root / 'train'}: {', '.join(unknown[:10])}")
    train_paths, train_labels = _flatten(train_scan, class_to_idx)
    eval_paths, eval_labels = _flatten(eval_scan, class_to_idx)
    if not eval_paths:
        raise DatasetError(f"{root / eval_split}: no images")
    counts = np.bincount(train_labels, minlength=len(classes))
    common = dict(num_classes=len(classes), train_counts=counts, mean=tuple(mean), std=tuple(std),
                  source=str(root))
    return (LTDataset(name=name, labels=train_labels, paths=train_paths, extra={"classes": classes}, **common),
            LTDataset(name=f"{name}_eval", labels=eval_labels, paths=eval_paths,
                      extra={"classes": classes, "eval_split": eval_split}, **common))
