"""Preparing a large list-file dataset (`fasttrain data imagenet_lt|inat2018|places_lt --root DIR`).

Before a 10-hour run, check that the data are complete and are the standard ones:

- the folder layout: every top-level folder the lists point into exists under the root, with
  hints for the usual wrong layouts (ImageNet's flat val/, the Places365 archive's data_256/,
  a root one level too deep);
- every file of the train / val / test lists exists (count, and the first missing paths with
  their list lines);
- each list's git blob id against the upstream OLTR list (the `verify-list` check);
- class counts of the train list: empty classes, min / max, imbalance, many / medium / few
  under both few-shot rules;
- then a small JSON report is written into the root (`fasttrain_<dataset>.json`, or --report).

`resize_copy` (`--resize SHORT_SIDE --out DIR`) writes a copy of every listed image with its
short side resized to SHORT_SIDE (aspect kept, JPEG quality --quality; images already that
small are copied byte for byte), under the same relative paths, so `data.root: DIR` trains on
it with the same lists. Decoding a 256-px JPEG is several times cheaper than a full-size one.
The copy resumes: files already in DIR are kept, each new file is written under a temporary
name and renamed into place, so an interrupted copy never leaves a truncated image.

The lists are the ones training uses (fasttrain.data.lists): shipped ones by default, the
user's for the train lists that are not shipped.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from multiprocessing import get_context
from pathlib import Path

import numpy as np

from fasttrain.data.index import FEW, MANY, MEDIUM, DatasetError, shot_groups
from fasttrain.data.lists import (SPECS, UPSTREAM, UPSTREAM_BLOB_IDS, git_blob_id, parse_list, read_list_bytes,
                                  shipped_list)

REPORT_NAME = "fasttrain_{dataset}.json"
FEW_SHOT_RULES = ("<20", "<=20")


@dataclass
class ListCheck:
    """One list file checked against the tree."""

    split: str  # train | val | test (iNat: test = val, one file)
    upstream_name: str
    path: str
    shipped: bool
    entries: int = 0
    missing: int = 0
    first_missing: list[str] = field(default_factory=list)  # "relative/path (line N)"
    blob_id: str = ""
    upstream_blob_id: str = ""
    matches_upstream: bool = False
    relpaths: list[str] = field(default_factory=list, repr=False)  # for --resize; not in the JSON report


@dataclass
class PrepareReport:
    dataset: str
    root: str
    ok: bool = False
    problems: list[str] = field(default_factory=list)  # what makes the data unusable for training as is
    warnings: list[str] = field(default_factory=list)  # usable, but not the standard benchmark
    lists: list[ListCheck] = field(default_factory=list)
    classes: dict = field(default_factory=dict)
    resized: dict | None = None

    def to_json(self) -> str:
        data = asdict(self)
        for check in data["lists"]:
            del check["relpaths"]
        return json.dumps(data, indent=1)


# --------------------------------------------------------------------------------------------
# Checks
# --------------------------------------------------------------------------------------------


def _layout_hints(dataset: str, root: Path, missing_tops: list[str]) -> list[str]:
    """Why the folders the lists want may be missing: the common wrong layouts, named."""
    hints = []
    if dataset == "imagenet_lt":
        kaggle = root / "ILSVRC" / "Data" / "CLS-LOC"
        if kaggle.is_dir():
            hints.append(f"{kaggle} exists: with the Kaggle layout data.root (and --root) is that folder")
        val = root / "val"
        if val.is_dir() and any(p.name.startswith("ILSVRC2012_val_") for p in _first_entries(val)):
            hints.append(f"{val} holds the validation images flat; ImageNet-LT's test list wants val/<wnid>/<file> "
                         "(sort them into class folders, e.g. with ImageNet's valprep.sh)")
    if dataset == "places_lt":
        for name in ("data_256", "data_large", "train_256", "train_large_places365standard"):
            if (root / name).is_dir():
                hints.append(f"{root / name} is the Places365 archive layout (<letter>/<class>/...); the OLTR lists "
                             "want train/<class>/ with '/' inside class names replaced by '-' "
                             "(a/apartment_building/outdoor -> train/apartment_building-outdoor)")
        for name in ("val_256", "val_large"):
            if (root / name).is_dir():
                hints.append(f"{root / name} holds the validation images flat; the lists want val/<class>/<file> "
                             "(sort them with places365_val.txt, class names as for train/)")
    if dataset == "inat2018" and any((root / s).is_dir() for s in ("Plantae", "Aves", "Insecta")):
        hints.append(f"{root} holds the species folders: data.root (and --root) is its parent, since the lists' "
                     "paths start with train_val2018/")
    if missing_tops and not hints:
        hints.append(f"data.root should be {SPECS[dataset].root_hint}")
    return hints


def _first_entries(folder: Path, n: int = 20) -> list[Path]:
    out = []
    with os.scandir(folder) as it:
        for entry in it:
            out.append(Path(entry.path))
            if len(out) >= n:
                break
    return out


def _check_list(root: Path, check: ListCheck, num_classes: int, show: int) -> np.ndarray:
    """Fill `check` (entries, missing files, blob id); returns the list's labels."""
    content = read_list_bytes(check.path)
    lst = parse_list(check.path, num_classes, content)  # bad lines are DatasetErrors naming file:line
    base = str(root)
    missing = [i for i, rel in enumerate(lst.relpaths) if not os.path.exists(os.path.join(base, rel))]
    check.entries, check.missing = len(lst.relpaths), len(missing)
    check.first_missing = [f"{lst.relpaths[i]} (line {lst.line_numbers[i]})" for i in missing[:show]]
    check.blob_id = git_blob_id(content)
    check.upstream_blob_id = UPSTREAM_BLOB_IDS[check.upstream_name]
    check.matches_upstream = check.blob_id == check.upstream_blob_id
    check.relpaths = lst.relpaths
    return lst.labels


def class_summary(counts: np.ndarray) -> dict:
    """Counts of the train list: empty classes, spread, many / medium / few under both rules."""
    present = counts[counts > 0]
    out = {"num_classes": int(len(counts)), "train_images": int(counts.sum()),
           "empty_classes": int((counts == 0).sum()),
           "first_empty": [int(c) for c in np.flatnonzero(counts == 0)[:10]]}
    if len(present):
        out.update(min=int(present.min()), max=int(present.max()), median=float(np.median(present)),
                   imbalance=round(float(present.max() / present.min()), 2))
    for rule in FEW_SHOT_RULES:
        groups = shot_groups(counts, rule)[counts > 0]
        out[f"groups{rule}"] = {"many": int((groups == MANY).sum()), "medium": int((groups == MEDIUM).sum()),
                                "few": int((groups == FEW).sum())}
    return out


def _lists_to_check(dataset: str, train_list, val_list, test_list) -> tuple[list[ListCheck], list[str]]:
    spec = SPECS[dataset]
    problems, checks = [], []
    if train_list is not None:
        checks.append(ListCheck("train", spec.train, str(train_list), shipped=False))
    elif spec.train in spec.shipped:
        checks.append(ListCheck("train", spec.train, str(shipped_list(spec, spec.train)), shipped=True))
    else:
        problems.append(f"train list not given: {spec.train} is not shipped with fasttrain; get it from GitHub "
                        f"{UPSTREAM} (data/{spec.upstream_dir}/{spec.train}, git blob {UPSTREAM_BLOB_IDS[spec.train]}) "
                        "and pass --train-list (data.train_list in the config)")
    given = {"val": val_list, "test": test_list}
    seen: dict[str, ListCheck] = {}
    for split in ("val", "test"):
        name = spec.evals.get(split)
        if name is None:
            continue
        if name in seen and given[split] is None:  # iNat: val and test are one file
            seen[name].split = "val/test"
            continue
        path = given[split] or shipped_list(spec, name)
        seen[name] = ListCheck(split, name, str(path), shipped=given[split] is None)
        checks.append(seen[name])
    return checks, problems


def prepare_dataset(dataset: str, root: str | Path, *, train_list: str | Path | None = None,
                    val_list: str | Path | None = None, test_list: str | Path | None = None,
                    show: int = 10) -> PrepareReport:
    """Check `root` for `dataset` (see the module docstring); nothing is written."""
    if dataset not in SPECS:
        raise DatasetError(f"unknown list dataset {dataset!r}; expected one of {sorted(SPECS)}")
    spec, root = SPECS[dataset], Path(root)
    report = PrepareReport(dataset=dataset, root=str(root))
    if not root.is_dir():
        report.problems.append(f"{root}: folder not found (it should be {spec.root_hint})")
    report.lists, problems = _lists_to_check(dataset, train_list, val_list, test_list)
    report.problems += problems
    train_labels = None
    for check in report.lists:
        labels = _check_list(root, check, spec.num_classes, show)
        if check.split == "train":
            train_labels = labels
        if check.missing:
            report.problems.append(f"{check.split} list {check.path}: {check.missing} of {check.entries} files missing "
                                   f"under {root} (first: {', '.join(check.first_missing[:3])})")
        if not check.matches_upstream:
            report.warnings.append(f"{check.split} list {check.path}: git blob id {check.blob_id} differs from the "
                                   f"upstream {check.upstream_name} ({check.upstream_blob_id}); results will not be "
                                   "comparable with published numbers")
    tops = sorted({rel.split("/")[0] for c in report.lists for rel in c.relpaths if "/" in rel})
    missing_tops = [t for t in tops if not (root / t).is_dir()]
    for top in missing_tops:
        report.problems.append(f"{root / top}/: folder not found (the lists' paths start with {top}/)")
    if any(c.missing for c in report.lists) or missing_tops:
        report.warnings += _layout_hints(dataset, root, missing_tops)
    if train_labels is not None:
        report.classes = class_summary(np.bincount(train_labels, minlength=spec.num_classes))
        if report.classes["empty_classes"]:
            report.problems.append(f"train list: {report.classes['empty_classes']} of {spec.num_classes} classes have no "
                                   f"training images (first: {report.classes['first_empty']})")
    report.ok = not report.problems
    return report


def listed_paths(report: PrepareReport) -> list[str]:
    """Every relative path of the checked lists, once, in list order."""
    seen: dict[str, None] = {}
    for check in report.lists:
        for rel in check.relpaths:
            seen.setdefault(rel, None)
    return list(seen)


def write_report(report: PrepareReport, path: str | Path | None = None) -> Path:
    """The report as JSON at `path` (default: into the root); atomic (temp file + rename)."""
    path = Path(path) if path else Path(report.root) / REPORT_NAME.format(dataset=report.dataset)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(report.to_json() + "\n")
    os.replace(tmp, path)
    return path


# --------------------------------------------------------------------------------------------
# Resized copy
# --------------------------------------------------------------------------------------------


def target_size(width: int, height: int, short_side: int) -> tuple[int, int]:
    """(w, h) with the short side exactly `short_side` and the aspect ratio kept (rounded)."""
    if width <= height:
        return short_side, max(1, round(height * short_side / width))
    return max(1, round(width * short_side / height)), short_side


def resize_one(src: str, dst: str, short_side: int, quality: int) -> str:
    """Write `dst` from `src`: 'resized', 'copied' (already small), 'kept' (dst exists), 'missing'."""
    if os.path.exists(dst):
        return "kept"
    if not os.path.exists(src):
        return "missing"
    from PIL import Image

    os.makedirs(os.path.dirname(dst), exist_ok=True)
    tmp = f"{dst}.tmp-{os.getpid()}"
    with Image.open(src) as img:
        width, height = img.size
        if min(width, height) <= short_side:  # never upscale: the original bytes are the copy
            shutil.copyfile(src, tmp)
            os.replace(tmp, dst)
            return "copied"
        size = target_size(width, height, short_side)
        # JPEG: decode straight at the smallest 1/2, 1/4, 1/8 scale still >= size (DCT scaling,
        # much faster than a full decode), then an antialiased bicubic resize to the exact size.
        img.draft("RGB", size)
        out = img.convert("RGB").resize(size, Image.Resampling.BICUBIC)
    # JPEG whatever the source was (a few ImageNet "JPEG"s are PNG or CMYK): loaders decode JPEG.
    out.save(tmp, "JPEG", quality=quality)
    os.replace(tmp, dst)
    return "resized"


def _resize_chunk(job: tuple) -> list[tuple[str, str]]:
    src_root, dst_root, rels, short_side, quality = job
    out = []
    for rel in rels:
        try:
            status = resize_one(os.path.join(src_root, rel), os.path.join(dst_root, rel), short_side, quality)
        except Exception as exc:  # a corrupt image is reported, the copy goes on
            status = f"failed: {type(exc).__name__}: {exc}"
        out.append((rel, status))
    return out


def resize_copy(src_root: str | Path, dst_root: str | Path, relpaths: list[str], short_side: int, *,
                quality: int = 90, workers: int = 1, chunk: int = 256, show: int = 10) -> dict:
    """Resized copy of `relpaths` from `src_root` into `dst_root` (see the module docstring)."""
    if short_side < 8:
        raise DatasetError(f"--resize: expected a short side >= 8 px, got {short_side}")
    if not 1 <= quality <= 100:
        raise DatasetError(f"--quality: expected 1..100, got {quality}")
    src_root, dst_root = Path(src_root).resolve(), Path(dst_root).resolve()
    if src_root == dst_root:
        raise DatasetError(f"--out {dst_root}: must differ from --root (the originals would be overwritten)")
    jobs = [(str(src_root), str(dst_root), relpaths[i:i + chunk], short_side, quality)
            for i in range(0, len(relpaths), chunk)]
    if workers > 1 and len(jobs) > 1:
        with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
            results = [r for part in pool.map(_resize_chunk, jobs) for r in part]
    else:
        results = [r for job in jobs for r in _resize_chunk(job)]
    counts: dict[str, int] = {}
    failed = []
    for rel, status in results:
        key = "failed" if status.startswith("failed") else status
        counts[key] = counts.get(key, 0) + 1
        if key == "failed":
            failed.append(f"{rel}: {status[len('failed: '):]}")
    return {"out": str(dst_root), "short_side": short_side, "quality": quality, "images": len(relpaths),
            **{k: counts.get(k, 0) for k in ("resized", "copied", "kept", "missing", "failed")},
            "first_failed": failed[:show]}


# --------------------------------------------------------------------------------------------
# Command line (fasttrain.data.cli adds one subcommand per dataset of SPECS)
# --------------------------------------------------------------------------------------------


def add_arguments(parser) -> None:
    parser.add_argument("--root", required=True, help="dataset root (data.root)")
    parser.add_argument("--train-list", help="train list (data.train_list); default: the shipped one, if any")
    parser.add_argument("--val-list", help="val list; default: the shipped one")
    parser.add_argument("--test-list", help="test list (data.test_list); default: the shipped one")
    parser.add_argument("--report", help="where to write the JSON report (default: ROOT/fasttrain_<dataset>.json)")
    parser.add_argument("--show", type=int, default=10, help="missing paths named per list")
    parser.add_argument("--resize", type=int, metavar="SHORT_SIDE", help="also write a copy resized to this short side")
    parser.add_argument("--out", help="folder of the resized copy (with --resize)")
    parser.add_argument("--quality", type=int, default=90, help="JPEG quality of the resized copy")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="processes for --resize")


def _summary_lines(report: PrepareReport) -> list[str]:
    lines = [f"{report.dataset} at {report.root}: {'complete' if report.ok else 'NOT READY'}"]
    for c in report.lists:
        origin = "shipped" if c.shipped else "given"
        upstream = "matches upstream" if c.matches_upstream else f"differs from upstream {c.upstream_blob_id[:8]}"
        lines.append(f"  {c.split:8s} {c.path} ({origin}): {c.entries} entries, {c.missing} missing; "
                     f"blob {c.blob_id[:8]} {upstream}")
        lines += [f"      missing: {m}" for m in c.first_missing]
    if report.classes:
        k = report.classes
        lines.append(f"  classes: {k['num_classes']} ({k['empty_classes']} empty), {k['train_images']} train images, "
                     f"per class {k.get('min')}..{k.get('max')}, imbalance {k.get('imbalance')}; many/medium/few "
                     + ", ".join(f"({r}) {k['groups' + r]['many']}/{k['groups' + r]['medium']}/{k['groups' + r]['few']}"
                                 for r in FEW_SHOT_RULES))
    lines += [f"  problem: {p}" for p in report.problems]
    lines += [f"  warning: {w}" for w in report.warnings]
    if report.resized:
        r = report.resized
        lines.append(f"  resized copy {r['out']} (short side {r['short_side']}): {r['resized']} resized, {r['copied']} "
                     f"copied, {r['kept']} kept, {r['missing']} missing, {r['failed']} failed")
        lines += [f"      failed: {f}" for f in r["first_failed"]]
    return lines


def run_command(dataset: str, args) -> int:
    """`fasttrain data <dataset> ...`: 0 when the data are complete, 1 otherwise."""
    if (args.resize is None) != (args.out is None):
        raise DatasetError("--resize SHORT_SIDE and --out DIR go together")
    report = prepare_dataset(dataset, args.root, train_list=args.train_list, val_list=args.val_list,
                             test_list=args.test_list, show=args.show)
    if args.resize is not None:
        report.resized = resize_copy(args.root, args.out, listed_paths(report), args.resize, quality=args.quality,
                                     workers=args.workers, show=args.show)
        if report.resized["failed"]:
            report.problems.append(f"resized copy: {report.resized['failed']} images could not be read")
            report.ok = False
    for line in _summary_lines(report):
        print(line)
    try:
        print(f"  report: {write_report(report, args.report)}")
    except OSError as exc:  # a read-only dataset root: the summary above still stands
        print(f"warning: report not written ({exc}); pass --report PATH", file=sys.stderr)
    return 0 if report.ok else 1
