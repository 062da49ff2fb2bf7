"""The harness every `fasttrain bench` suite shares: device and versions, timing, statistics,
and the report (JSON + PNG chart) written under benchmarks/results/ (or --out-dir).

A report is one JSON document:

    {suite, date, command, device: {type, name, cpu_model, threads, ...}, versions, config,
     notes, results: [{name, group, unit, median, p20, p80, min, max, n, ...}, ...], ...}

Every timed row holds the median and the 20th / 80th percentiles over its repetitions; warm-up
calls are never among them (`warmup_excluded` in the config says how many were dropped). The
file names carry the device (`step_cpu-amd-epyc-9b14.json`, `kernels_nvidia-h200.json`):
timings of different machines are different results, never overwritten by each other.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import shlex
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from fasttrain.environment import cpu_flags, cpu_model, native_bf16_cpu, resolve_device, sync, versions

DEFAULT_OUT_DIR = Path("benchmarks/results")
REQUIRED_ROW_KEYS = ("name", "unit", "median", "p20", "p80", "n")


# --- arguments -------------------------------------------------------------------------------


def add_common_arguments(parser: argparse.ArgumentParser, reps: int = 5) -> None:
    """The options of every suite: device, threads, output folder, repetitions, dry run."""
    parser.add_argument("--device", default="auto", type=resolve_device,
                        help="auto (CUDA when present) | cpu | cuda | cuda:N")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: torch's choice, usually all cores)")
    parser.add_argument("--out-dir", default=str(DEFAULT_OUT_DIR), help="where the JSON and PNG go")
    parser.add_argument("--tag", default="", help="appended to the file names (e.g. a variant)")
    parser.add_argument("--reps", type=int, default=reps, help="timed repetitions (warm-up excluded)")
    parser.add_argument("--dry-run", action="store_true",
                        help="the same code path at tiny sizes (checks the suite runs; numbers meaningless)")


def apply_common_arguments(args: argparse.Namespace) -> torch.device:
    if args.threads:
        torch.set_num_threads(args.threads)
    return args.device


# --- device ----------------------------------------------------------------------------------


def device_info(device: torch.device) -> dict:
    """What the numbers were measured on (CPU timings also depend on threads and machine load)."""
    info = {"type": device.type, "cpu_model": cpu_model(), "machine": platform.machine(),
            "cpu_count": os.cpu_count(), "threads": torch.get_num_threads(),
            "native_bf16_cpu": native_bf16_cpu(),
            "cpu_bf16_flags": sorted(f for f in cpu_flags() if "bf16" in f or f.startswith("amx")),
            "loadavg_1m_at_start": round(os.getloadavg()[0], 2)}
    if device.type == "cuda":
        info["name"] = torch.cuda.get_device_name(device)
        info["memory_gib"] = round(torch.cuda.get_device_properties(device).total_memory / 2**30, 1)
    else:
        info["name"] = f"cpu ({info['cpu_model']})"
    return info


def device_slug(device: torch.device) -> str:
    """A file-name form of the device: `nvidia-h200`, `cpu-amd-epyc-9b14`."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = "cpu " + re.sub(r"\b(CPU|Processor|\d+-Core)\b|\(R\)|\(TM\)|@.*$", " ", cpu_model())
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")[:48]


def library_versions() -> dict:
    """versions() plus the optional libraries, from their installed metadata: importing them
    would cost seconds (FFCV compiles numba code at import) for a version string."""
    from importlib.metadata import distributions, version

    v = versions()
    for name, dist in (("triton", "triton"), ("ffcv", "ffcv"), ("numba", "numba"), ("numpy", "numpy")):
        try:
            v[name] = version(dist)
        except Exception:  # not installed
            v[name] = None
    v["dali"] = next((f"{d.metadata['Name']} {d.version}" for d in distributions()
                      if (d.metadata["Name"] or "").startswith("nvidia-dali")), None)
    return v


# --- timing ----------------------------------------------------------------------------------


def time_calls(fn: Callable[[], object], device: torch.device, reps: int, *, inner: int = 1,
               warmup: int = 1) -> list[float]:
    """Seconds per call of `fn`: `reps` samples, each the mean over `inner` calls, after `warmup`
    untimed calls; the device is synchronised around each sample (`round_robin` of one)."""
    return round_robin({"fn": fn}, device, reps, inner=inner, warmup=warmup)["fn"]


def round_robin(fns: dict[str, Callable[[], object]], device: torch.device, reps: int, *, inner: int = 1,
                warmup: int = 1, log: Callable[[str], None] | None = None,
                warmup_s: dict[str, float] | None = None,
                on_round: Callable[[dict[str, list[float]]], None] | None = None) -> dict[str, list[float]]:
    """Seconds per call of every configuration, alternating: one sample of each per round, so a
    drifting machine load (another job, thermal state) hits all of them alike and ratios hold.
    Warm-up rounds (compilation, allocator, autotuning) come first and are dropped; their total
    seconds per configuration go into `warmup_s` when given (what compilation costs a short run).
    `on_round(samples so far)` runs after the warm-up and after every round (a suite saves its
    partial report there, so a run stopped for time keeps what it measured)."""
    for _ in range(warmup):
        for name, fn in fns.items():
            sync(device)
            t0 = time.perf_counter()
            fn()
            sync(device)
            if warmup_s is not None:
                warmup_s[name] = warmup_s.get(name, 0.0) + time.perf_counter() - t0
    out: dict[str, list[float]] = {k: [] for k in fns}
    if on_round:
        on_round(out)
    for rep in range(reps):
        for name, fn in fns.items():
            sync(device)
            t0 = time.perf_counter()
            for _ in range(inner):
                fn()
            sync(device)
            out[name].append((time.perf_counter() - t0) / inner)
            if log:
                log(f"{name} rep {rep + 1}/{reps}: {out[name][-1] * 1e3:.1f} ms")
        if on_round:
            on_round(out)
    return out


def spread(samples: list[float]) -> dict[str, float]:
    """Median, 20th / 80th percentiles, min, max and count of the samples."""
    s = sorted(samples)
    q = statistics.quantiles(s, n=5, method="inclusive") if len(s) > 1 else [s[0]] * 4
    return {"median": statistics.median(s), "p20": q[0], "p80": q[3], "min": s[0], "max": s[-1], "n": len(s)}


def row(name: str, samples: list[float], unit: str, group: str = "", **extra) -> dict:
    """One result row: the spread of `samples` (already in `unit`) plus any extra fields."""
    return {"name": name, "group": group, "unit": unit, **spread(samples), **extra}


def rate_row(name: str, seconds: list[float], items: float, unit: str = "img/s", group: str = "", **extra) -> dict:
    """A throughput row from seconds per call of `items` items (the spread of the rates)."""
    return row(name, [items / s for s in seconds], unit, group, ms_per_call=spread([s * 1e3 for s in seconds]),
               **extra)


def log_line(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


# --- report ----------------------------------------------------------------------------------


def new_report(suite: str, device: torch.device, config: dict, argv: list[str] | None = None) -> dict:
    """The head of a report; the suite adds `results` (rows) and its own summary keys."""
    command = "fasttrain bench " + suite + (" " + shlex.join(argv) if argv else "")
    return {"suite": suite, "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "command": command, "device": device_info(device), "versions": library_versions(), "config": config,
            "notes": [], "results": []}


def output_paths(report: dict, out_dir: str | Path, device: torch.device, tag: str = "") -> tuple[Path, Path]:
    stem = f"{report['suite']}_{device_slug(device)}{('_' + tag) if tag else ''}"
    out = Path(out_dir)
    return out / f"{stem}.json", out / f"{stem}.png"


def save_report(report: dict, out_dir: str | Path, device: torch.device, tag: str = "",
                chart: bool = True) -> dict:
    """Write the JSON (and the PNG chart of its rows); returns the report with `files` added."""
    json_path, png_path = output_paths(report, out_dir, device, tag)
    json_path.parent.mkdir(parents=True, exist_ok=True)
    report["files"] = {"json": str(json_path)}
    if chart and any("median" in r for r in report["results"]):
        report["files"]["png"] = str(png_path)
        bar_chart(report, png_path)
    json_path.write_text(json.dumps(report, indent=1, default=str) + "\n")
    log_line(f"wrote {json_path}" + (f" and {png_path}" if "png" in report["files"] else ""))
    return report


def save_partial(report: dict, out_dir: str | Path, device: torch.device, tag: str = "") -> Path:
    """The report so far as its JSON, marked `"partial": true` (no chart), written atomically after
    each group of a suite: a suite stopped for time (the GPU one-shot's budget) leaves what it
    measured. `save_report` at the end writes the whole report under the same name."""
    json_path, _ = output_paths(report, out_dir, device, tag)
    json_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = json_path.with_name(json_path.name + ".tmp")
    tmp.write_text(json.dumps({**report, "partial": True}, indent=1, default=str) + "\n")
    tmp.replace(json_path)
    return json_path


def bar_chart(report: dict, path: Path) -> None:
    """Horizontal bars of every timed row's median with its p20–p80 range, one panel per group
    and unit (rows of different units are never drawn on one axis)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels: dict[tuple[str, str], list[dict]] = {}
    for r in report["results"]:
        if "median" in r:
            panels.setdefault((r.get("group", ""), r["unit"]), []).append(r)
    heights = [max(1.2, 0.32 * len(rows) + 0.8) for rows in panels.values()]
    fig, axes = plt.subplots(len(panels), 1, figsize=(9, sum(heights)), squeeze=False,
                             gridspec_kw={"height_ratios": heights})
    for ax, ((group, unit), rows) in zip(axes[:, 0], panels.items()):
        y = range(len(rows))
        med = [r["median"] for r in rows]
        err = [[r["median"] - r["p20"] for r in rows], [r["p80"] - r["median"] for r in rows]]
        ax.barh(list(y), med, xerr=err, color="#4C72B0", ecolor="black", capsize=2)
        ax.set_yticks(list(y), [r["name"] for r in rows], fontsize=7)
        ax.invert_yaxis()
        ax.set_xlabel(unit, fontsize=8)
        ax.set_title(group or report["suite"], fontsize=9)
        ax.tick_params(axis="x", labelsize=7)
    fig.suptitle(f"{report['suite']} — {report['device']['name']} — {report['date'][:10]}", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)


def validate_report(report: dict) -> list[str]:
    """What a report lacks (empty = valid): the header keys and the spread of every timed row."""
    missing = [k for k in ("suite", "device", "versions", "config", "results") if k not in report]
    if "device" in report and not report["device"].get("name"):
        missing.append("device.name")
    for i, r in enumerate(report.get("results", [])):
        if "skipped" in r or "error" in r:
            continue
        missing += [f"results[{i}].{k}" for k in REQUIRED_ROW_KEYS if k not in r]
    return missing
