"""Datasets: the LTDataset index and the builders behind `data.dataset`.

`DATASETS` is the one list of dataset names (the config's choices come from it). Importing this
package stays cheap: each builder imports its reader (pickles, list files, the JPEG renderer)
only when called.
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from fasttrain.data.index import (FEW, GROUP_NAMES, MANY, MEDIUM, DatasetError, LTDataset,  # noqa: F401
                                  shot_groups)

LIST_DATASETS = ("imagenet_lt", "inat2018", "places_lt")


def cifar_split_seed(cfg) -> int:
    """data.split_seed if set; else the codes' own choice: 0 for LDAM's split, the run seed for GLMC's."""
    if cfg.data.split_seed is not None:
        return int(cfg.data.split_seed)
    return 0 if cfg.data.cifar_split == "ldam" else int(cfg.seed)


def _build_cifar(cfg) -> tuple[LTDataset, LTDataset]:
    from fasttrain.data.cifar import build_cifar_lt

    d = cfg.data
    if d.eval_split != "test":  # the balanced test set is the only evaluation split CIFAR-LT has
        raise DatasetError(f"data.eval_split: CIFAR-LT has only a 'test' split, got {d.eval_split!r}")
    return build_cifar_lt(d.root, 10 if d.dataset == "cifar10_lt" else 100, d.imbalance_ratio,
                          d.cifar_split, cifar_split_seed(cfg))


def _build_synthetic_cifar(cfg) -> tuple[LTDataset, LTDataset]:
    from fasttrain.data.cifar import synthetic_cifar_lt

    return synthetic_cifar_lt(10 if cfg.data.dataset == "synthetic_cifar10_lt" else 100, cfg.data.imbalance_ratio)


def _build_list(cfg) -> tuple[LTDataset, LTDataset]:
    from fasttrain.data.lists import build_benchmark

    d = cfg.data
    eval_list = d.val_list if d.eval_split == "val" else d.test_list  # each split its own list file
    return build_benchmark(d.dataset, d.root, d.train_list, eval_list, d.eval_split)


def _build_folder(cfg) -> tuple[LTDataset, LTDataset]:
    from fasttrain.data.folder import build_folder_dataset

    return build_folder_dataset(cfg.data.root, cfg.data.eval_split)


def _build_synthetic(cfg) -> tuple[LTDataset, LTDataset]:
    from fasttrain.data.lists import build_list_dataset
    from fasttrain.data.synthetic import make_synthetic_corpus

    d = cfg.data
    if d.num_classes is None:
        raise DatasetError("data.num_classes: required for data.dataset=synthetic (e.g. 10)")
    if d.eval_split != "test":
        raise DatasetError(f"data.eval_split: the synthetic corpus has only a 'test' split, got {d.eval_split!r}")
    if len(d.synthetic_size) != 2:
        raise DatasetError(f"data.synthetic_size: expected [width, height], got {d.synthetic_size!r}")
    # Generated once under data.root; later runs with the same parameters reuse it. The corpus
    # seed is fixed (0) so runs with different seeds train on the same images.
    make_synthetic_corpus(d.root, d.num_classes, d.synthetic_max_per_class, d.synthetic_imbalance,
                          d.synthetic_test_per_class, size=tuple(d.synthetic_size), seed=0)
    root = Path(d.root)
    return build_list_dataset("synthetic", root, d.train_list or root / "train.txt",
                              d.test_list or root / "test.txt", d.num_classes)


# data.dataset -> builder(cfg) -> (train, eval); cfg is a RunConfig, typed Any because
# fasttrain.config takes its choices from DATASETS. Builders that serve several names read
# cfg.data.dataset themselves (CIFAR's class count, the list benchmark's spec).
DATASETS: dict[str, Callable[[Any], tuple[LTDataset, LTDataset]]] = {
    "cifar10_lt": _build_cifar,
    "cifar100_lt": _build_cifar,
    **{name: _build_list for name in LIST_DATASETS},
    "folder": _build_folder,
    "synthetic": _build_synthetic,
    # random pixels with the CIFAR-LT class profile: benchmarks on machines without the data
    "synthetic_cifar10_lt": _build_synthetic_cifar,
    "synthetic_cifar100_lt": _build_synthetic_cifar,
}


def has_val_split(cfg) -> bool:
    """Whether `cfg.data.dataset` has a validation split apart from its test split (for model
    selection without looking at the test set): ImageNet-LT and Places-LT (their val lists), a
    folder dataset with a val/ folder. CIFAR-LT and the synthetic corpus have none; iNat 2018's
    only evaluation list is its val list, which is everybody's test set, so it has none either."""
    d = cfg.data
    if d.dataset in LIST_DATASETS:
        from fasttrain.data.lists import SPECS

        evals = SPECS[d.dataset].evals
        return "val" in evals and evals["val"] != evals["test"]
    if d.dataset == "folder":
        return (Path(d.root) / "val").is_dir()
    return False


def build_datasets(cfg) -> tuple[LTDataset, LTDataset]:
    """(train, eval) for `cfg.data.dataset` (a RunConfig)."""
    builder = DATASETS.get(cfg.data.dataset)
    if builder is None:
        raise DatasetError(f"data.dataset: unknown dataset {cfg.data.dataset!r}; "
                           f"expected one of {', '.join(DATASETS)}")
    return builder(cfg)
