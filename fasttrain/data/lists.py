"""List-file datasets: ImageNet-LT, iNaturalist 2018, Places-LT (docs: getting-started/data.md, List files).

A list file has one `relative/path label` per line (labels 0-based), plain or gzipped; paths are
relative to the dataset root. The val/test lists and the Places-LT train list ship with the
package (`fasttrain/splits/<dataset>/*.txt.gz`, copied from facebookresearch/classifier-balancing
at commit 22370c64141cc662f62ead89447c838c4a7977b5, folder `data/`). The ImageNet-LT and iNat
2018 train lists are not redistributed here: users pass them (`data.train_list`) and they are
checked against the upstream git blob ids. A mismatch is a `ListChecksumWarning` naming the
expected and the actual id, not an error, so that custom or regenerated lists stay usable
(results on them are just not comparable with published numbers).
"""
from __future__ import annotations

import gzip
import hashlib
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fasttrain.data.index import IMAGENET_MEAN, IMAGENET_STD, INAT_MEAN, INAT_STD, DatasetError, LTDataset

SPLITS_DIR = Path(__file__).resolve().parent.parent / "splits"
UPSTREAM = ("facebookresearch/classifier-balancing@22370c64141cc662f62ead89447c838c4a7977b5, "
            "folder data/")

# git blob ids (sha1 of b"blob <size>\0" + content) of the decompressed upstream files.
UPSTREAM_BLOB_IDS = {
    "ImageNet_LT_train.txt": "a063f095fcd475db4cf8b0658c4b73955535bbf9",
    "ImageNet_LT_val.txt": "3ed3188b2f44829ce2dec1cc27040d8d40984088",
    "ImageNet_LT_test.txt": "76a2fb9749d6cd29e765cc4f8c270f2504131e2f",
    "iNaturalist18_train.txt": "4accdb7584d2f0a5106c40a33ed6afa392189bcc",
    "iNaturalist18_val.txt": "4c23900857fd0f5adcd4cc0dffef345039eeb05f",
    "Places_LT_train.txt": "6392252f8ae867bc8a5e841cc1b29e5b8ef4b636",
    "Places_LT_val.txt": "b93a2ca58ccb7f3b671c176f395a70bf52c95533",
    "Places_LT_test.txt": "e732e58b8aa718a2c1c11933375f5710652c2b93",
}


class ListChecksumWarning(UserWarning):
    """A list file differs from the upstream one it stands for."""


@dataclass(frozen=True)
class ListSpec:
    """How one benchmark maps onto list files.

    `train` / `evals` are upstream file names; `shipped` says which of them are in the package.
    """

    name: str
    num_classes: int
    folder: str  # fasttrain/splits/<folder>/
    upstream_dir: str  # data/<upstream_dir>/ in the upstream repository
    train: str
    evals: dict[str, str]  # eval_split -> upstream file name
    shipped: tuple[str, ...]
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    root_hint: str = ""


SPECS = {
    "imagenet_lt": ListSpec(
        "imagenet_lt", 1000, "imagenet_lt", "ImageNet_LT", "ImageNet_LT_train.txt",
        {"test": "ImageNet_LT_test.txt", "val": "ImageNet_LT_val.txt"},
        shipped=("ImageNet_LT_test.txt", "ImageNet_LT_val.txt"),
        root_hint="the ImageNet-2012 root holding train/ and val/"),
    # The official iNat 2018 val set is everybody's test set; there is no separate test list.
    "inat2018": ListSpec(
        "inat2018", 8142, "inat2018", "iNaturalist18", "iNaturalist18_train.txt",
        {"test": "iNaturalist18_val.txt", "val": "iNaturalist18_val.txt"},
        shipped=("iNaturalist18_val.txt",), mean=INAT_MEAN, std=INAT_STD,
        root_hint="the iNaturalist 2018 root holding train_val2018/"),
    "places_lt": ListSpec(
        "places_lt", 365, "places_lt", "Places_LT", "Places_LT_train.txt",
        {"test": "Places_LT_test.txt", "val": "Places_LT_val.txt"},
        shipped=("Places_LT_train.txt", "Places_LT_test.txt", "Places_LT_val.txt"),
        root_hint="the Places365 root holding train/<class>/ and val/<class>/"),
}


# --------------------------------------------------------------------------------------------
# Reading and checking list files
# --------------------------------------------------------------------------------------------


def read_list_bytes(path: str | Path) -> bytes:
    """Decompressed content (gzip recognised by its magic bytes, not by the file name)."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: list file not found")
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            return gzip.decompress(raw)
        except (OSError, EOFError) as exc:
            raise DatasetError(f"{path}: corrupt gzip ({exc})") from None
    return raw


def git_blob_id(content: bytes) -> str:
    """What `git hash-object` prints for a file with this content."""
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


def _upstream_name(path: str | Path) -> str:
    name = Path(path).name
    return name[:-3] if name.endswith(".gz") else name


def expected_blob_id(path: str | Path) -> str | None:
    return UPSTREAM_BLOB_IDS.get(_upstream_name(path))


def check_blob_id(path: str | Path, expected: str) -> tuple[bool, str]:
    got = git_blob_id(read_list_bytes(path))
    return got == expected, got


def warn_if_not_upstream(path: str | Path, upstream_name: str, content: bytes | None = None) -> bool:
    """True when the content is the upstream file; otherwise a ListChecksumWarning."""
    expected = UPSTREAM_BLOB_IDS[upstream_name]
    got = git_blob_id(read_list_bytes(path) if content is None else content)
    if got != expected:
        warnings.warn(f"{path}: git blob id {got} differs from the upstream {upstream_name} "
                      f"({expected}, {UPSTREAM}); results will not be comparable with published "
                      f"numbers", ListChecksumWarning, stacklevel=3)
        return False
    return True


@dataclass
class ListFile:
    path: Path
    relpaths: list[str]
    labels: np.ndarray
    line_numbers: np.ndarray  # 1-based line of each entry (blank lines are skipped)


def parse_list(path: str | Path, num_classes: int | None = None, content: bytes | None = None) -> ListFile:
    """Parse `relative/path label` lines; errors name the file and the line."""
    path = Path(path)
    text = (read_list_bytes(path) if content is None else content)
    try:
        lines = text.decode("utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{path}: not UTF-8 text ({exc})") from None
    relpaths: list[str] = []
    labels: list[int] = []
    numbers: list[int] = []
    for lineno, line in enumerate(lines, start=1):
        fields = line.split()
        if not fields:
            continue  # blank lines (e.g. a trailing one) carry nothing
        if len(fields) != 2 or not fields[1].lstrip("-").isdigit():
            raise DatasetError(f"{path}:{lineno}: bad line {line!r}: expected 'relative/path label' "
                               f"with an integer label")
        label = int(fields[1])
        if label < 0 or (num_classes is not None and label >= num_classes):
            upper = f"..{num_classes - 1}" if num_classes is not None else " or more"
            raise DatasetError(f"{path}:{lineno}: label {label} out of range 0{upper}")
        relpaths.append(fields[0])
        labels.append(label)
        numbers.append(lineno)
    if not relpaths:
        raise DatasetError(f"{path}: list file has no entries")
    return ListFile(path, relpaths, np.asarray(labels, dtype=np.int64), np.asarray(numbers, dtype=np.int64))


def check_images(root: Path, lst: ListFile, root_hint: str = "") -> list[str]:
    """Absolute paths; every file must exist (one stat per entry: about a second per 100k)."""
    base = str(root)
    paths = [os.path.join(base, rel) for rel in lst.relpaths]
    missing = [i for i, p in enumerate(paths) if not os.path.exists(p)]
    if missing:
        i = missing[0]
        more = f" ({len(missing) - 1} more of {len(paths)} missing)" if len(missing) > 1 else ""
        hint = f"; data.root should be {root_hint}" if root_hint else ""
        raise DatasetError(f"{lst.path}:{lst.line_numbers[i]}: image not found: {paths[i]}{more}{hint}")
    return paths


def check_no_empty_class(lst: ListFile, num_classes: int) -> np.ndarray:
    counts = np.bincount(lst.labels, minlength=num_classes)
    empty = np.flatnonzero(counts == 0)
    if len(empty):
        shown = ", ".join(map(str, empty[:10])) + (" ..." if len(empty) > 10 else "")
        raise DatasetError(f"{lst.path}: {len(empty)} of {num_classes} classes have no training "
                           f"samples (classes {shown}; {len(lst.labels)} entries in the file)")
    return counts


# --------------------------------------------------------------------------------------------
# Builders
# --------------------------------------------------------------------------------------------


def build_list_dataset(name: str, root: str | Path, train_list: str | Path, eval_list: str | Path,
                       num_classes: int | None = None, mean=IMAGENET_MEAN, std=IMAGENET_STD,
                       check_files: bool = True, root_hint: str = "",
                       train_content: bytes | None = None, eval_content: bytes | None = None,
                       ) -> tuple[LTDataset, LTDataset]:
    """(train, eval) from two list files. `num_classes=None` infers max train label + 1.
    Class counts, and so the many/medium/few groups, come from the train list."""
    root = Path(root)
    train = parse_list(train_list, num_classes, train_content)
    if num_classes is None:
        num_classes = int(train.labels.max()) + 1
    evl = parse_list(eval_list, num_classes, eval_content)
    counts = check_no_empty_class(train, num_classes)
    if check_files:
        train_paths, eval_paths = check_images(root, train, root_hint), check_images(root, evl, root_hint)
    else:
        train_paths = [str(root / p) for p in train.relpaths]
        eval_paths = [str(root / p) for p in evl.relpaths]
    common = dict(num_classes=num_classes, train_counts=counts, mean=tuple(mean), std=tuple(std),
                  source=str(root))
    return (LTDataset(name=name, labels=train.labels, paths=train_paths,
                      extra={"list": str(train.path)}, **common),
            LTDataset(name=f"{name}_eval", labels=evl.labels, paths=eval_paths,
                      extra={"list": str(evl.path)}, **common))


def shipped_list(spec: ListSpec, upstream_name: str) -> Path:
    return SPLITS_DIR / spec.folder / (upstream_name + ".gz")


def build_benchmark(dataset: str, root: str | Path, train_list: str | Path | None = None,
                    eval_list: str | Path | None = None, eval_split: str = "test",
                    check_files: bool = True) -> tuple[LTDataset, LTDataset]:
    """ImageNet-LT / iNat 2018 / Places-LT. Lists default to the shipped ones; the ImageNet-LT and
    iNat train lists must be supplied. Every list is compared with its upstream blob id."""
    if dataset not in SPECS:
        raise DatasetError(f"unknown list dataset {dataset!r}; expected one of {sorted(SPECS)}")
    spec = SPECS[dataset]
    if eval_split not in spec.evals:
        raise DatasetError(f"data.eval_split: expected one of {sorted(spec.evals)}, got {eval_split!r}")
    if train_list is None:
        if spec.train not in spec.shipped:
            raise DatasetError(
                f"{dataset}: set data.train_list to {spec.train}. It is not shipped with fasttrain; "
                f"get it from GitHub {UPSTREAM} (path data/{spec.upstream_dir}/{spec.train}, "
                f"git blob {UPSTREAM_BLOB_IDS[spec.train]}; `git hash-object FILE` or "
                f"`fasttrain data verify-list FILE` checks a copy)")
        train_list = shipped_list(spec, spec.train)
    eval_name = spec.evals[eval_split]
    if eval_list is None:
        eval_list = shipped_list(spec, eval_name)
    train_content, eval_content = read_list_bytes(train_list), read_list_bytes(eval_list)
    upstream_ok = warn_if_not_upstream(train_list, spec.train, train_content)
    upstream_ok &= warn_if_not_upstream(eval_list, eval_name, eval_content)
    train, evl = build_list_dataset(dataset, root, train_list, eval_list, spec.num_classes, spec.mean, spec.std,
                                    check_files, spec.root_hint, train_content, eval_content)
    for d in (train, evl):
        d.extra.update(upstream_lists=upstream_ok, eval_split=eval_split)
    return train, evl
