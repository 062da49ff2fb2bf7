"""Shared pieces of the benchmark scripts in benchmarks/: device choice, synchronised timing,
spread statistics, the report header (device + versions) and JSON output.

Every benchmark prints one JSON document (device, versions, median and spread) and can write
it under benchmarks/results/.
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from fasttrain.environment import describe_device, resolve_device, sync, versions

__all__ = ["add_common_arguments", "apply_common_arguments", "describe_device", "emit_json", "report_header", "spread", "sync", "time_calls"]


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    """--device, --threads and --out, the same in every benchmark (see `apply_common_arguments`)."""
    parser.add_argument("--device", default="auto", type=resolve_device,
                        help="auto (CUDA when present) | cpu | cuda | cuda:N")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (1 gives stable numbers on a shared machine)")
    parser.add_argument("--out", default=None, help="also write the JSON report to this file")


def apply_common_arguments(args: argparse.Namespace) -> torch.device:
    """Apply --threads; returns the device."""
    if args.threads:
        torch.set_num_threads(args.threads)
    return args.device


def time_calls(fn: Callable[[], object], device: torch.device, reps: int, *, inner: int | None = None,
               min_time: float = 0.05, warmup: int = 1) -> list[float]:
    """Seconds per call of `fn`: `reps` samples, each the mean over `inner` calls (by default as
    many as last `min_time` seconds), after `warmup` untimed calls; synchronised around each."""
    for _ in range(warmup):
        fn()
    sync(device)
    if inner is None:
        t0 = time.perf_counter()
        fn()
        sync(device)
        inner = max(1, int(min_time / max(time.perf_counter() - t0, 1e-7)))
    out = []
    for _ in range(reps):
        sync(device)
        t0 = time.perf_counter()
        for _ in range(inner):
            fn()
        sync(device)
        out.append((time.perf_counter() - t0) / inner)
    return out


def spread(samples: list[float]) -> dict[str, float]:
    """Median and the 20th/80th percentiles (the spread every benchmark reports)."""
    s = sorted(samples)
    q = statistics.quantiles(s, n=5, method="inclusive") if len(s) > 1 else [s[0]] * 4
    return {"median": statistics.median(s), "p20": q[0], "p80": q[3], "min": s[0], "max": s[-1], "n": len(s)}


def _version(module: str) -> str | None:
    try:
        return getattr(importlib.import_module(module), "__version__", "installed")
    except Exception:  # not installed, or a broken optional install
        return None


def report_header(benchmark: str, device: torch.device) -> dict:
    """The first keys of every benchmark report: what ran, where, with which versions."""
    v = versions()
    v.update({"triton": _version("triton"), "dali": _version("nvidia.dali")})
    return {"benchmark": benchmark, "device": describe_device(device), "versions": v,
            "load_average_1m_at_start": os.getloadavg()[0]}


def emit_json(out: dict, path: str | None, indent: int = 2) -> dict:
    """Print the result document and, when `path` is given, write it there too."""
    text = json.dumps(out, indent=indent)
    print(text)
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(text + "\n")
    return out
