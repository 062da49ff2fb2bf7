"""Class names: a readable label per class for the reports, and a word per class for text prompts.

The per-class reports take any readable label (`class_names`: a wnid, a folder name, the index); a
prompt ("a photo of a {}.") needs the name itself, so `prompt_class_names` says per dataset where it
comes from:

- ImageNet-LT: labels are the 1,000 ImageNet classes in sorted-wnid order; the names are CLIP's
  curated ImageNet names as open_clip ships them (`open_clip.zero_shot_metadata`), the table CLIP and
  LIFT prompt with; torchvision's ImageNet category names (its weights' metadata) where open_clip
  is absent. Shipped by those packages, never downloaded.
- iNaturalist 2018: labels are category ids; the names are the `name` fields of the dataset's own
  `categories.json` (part of the iNat 2018 download), looked up in `data.root` and its list folder.
- CIFAR-10/100, Places-LT, image folders, synthetic data: the dataset's own names (the CIFAR meta
  file, the class folders: Places-LT's `airplane_cabin`, `bakery-shop`, …), underscores read as
  spaces by the prompt.
"""
from __future__ import annotations

import json
from pathlib import Path

from fasttrain.data.index import DatasetError

IMAGENET_CLASSES = 1000


def prompt_class_names(dataset, data_cfg) -> list[str]:
    """One prompt-ready name per class of `dataset` (the train split of `data_cfg.dataset`)."""
    name = data_cfg.dataset
    if name == "imagenet_lt":
        names = imagenet_class_names()
    elif name == "inat2018":
        names = inat_class_names(Path(data_cfg.root), dataset.num_classes)
    else:
        names = class_names(dataset)
    if len(names) != dataset.num_classes:
        raise DatasetError(f"data.dataset {name}: {len(names)} class names for {dataset.num_classes} classes")
    return names


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


def imagenet_class_names() -> list[str]:
    """The 1,000 ImageNet class names in label (sorted-wnid) order: open_clip's CLIP names, else
    torchvision's."""
    try:
        from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES

        names = list(IMAGENET_CLASSNAMES)
    except ImportError:
        from torchvision.models import ResNet50_Weights

        names = list(ResNet50_Weights.IMAGENET1K_V1.meta["categories"])
    if len(names) != IMAGENET_CLASSES:
        raise DatasetError(f"the ImageNet class-name table has {len(names)} names, not {IMAGENET_CLASSES}")
    return names


def inat_class_names(root: Path, num_classes: int) -> list[str]:
    """iNaturalist 2018's species names by category id, from its `categories.json`."""
    candidates = [root / "categories.json", root / "iNaturalist18" / "categories.json"]
    path = next((p for p in candidates if p.is_file()), None)
    if path is None:
        raise DatasetError(f"data.root {root}: no categories.json (looked for {', '.join(map(str, candidates))}); "
                           "iNaturalist 2018's categories.json (in the dataset's download) names the classes "
                           "for the text prompts")
    try:
        entries = json.loads(path.read_text())
        by_id = {int(e["id"]): str(e["name"]) for e in entries}
    except (ValueError, KeyError, TypeError) as exc:
        raise DatasetError(f"{path}: expected a JSON list of {{\"id\", \"name\", ...}} categories ({exc})") from None
    missing = [c for c in range(num_classes) if c not in by_id]
    if missing:
        raise DatasetError(f"{path}: no category for ids {missing[:5]}{' …' if len(missing) > 5 else ''} "
                           f"({len(by_id)} categories for {num_classes} classes)")
    return [by_id[c] for c in range(num_classes)]
