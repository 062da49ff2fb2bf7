"""Augmentation benchmark: pure-torch reference vs fused Triton kernel vs torchvision.transforms.v2.

Workload per configuration (B output pairs, L×L pixels, GLMC-style): 2B uint8 channels_last
source rows in two views; view 0 -> MixUp of (a, b) pairs, view 1 -> CutMix, both normalised
to `dtype`. At 32 px every source row also carries a per-sample crop (padding 4) + flip
(tensor backend); at 224 px the images are already cropped (DALI-style, no geometry).

Implementations
- reference:       fasttrain.augment.mixup_cutmix(impl="torch") (batched torch ops)
- fused:           the Triton kernel (CUDA only; skipped elsewhere, with the reason in the JSON)
- torchvision_v2:  ToDtype(scale) + Normalize + MixUp / CutMix from torchvision.transforms.v2 on
                   the B a-rows (v2 pairs each row with its batch neighbour and builds dense
                   targets); at 32 px preceded by v2 RandomCrop(padding 4) + RandomHorizontalFlip,
                   which on a batch draw ONE crop/flip for all rows (less work than per-sample).

GB/s counts the same logical traffic for every implementation: per output image and view,
two uint8 source images read and one `dtype` image written. `frac_of_peak` divides by the
device's memory bandwidth: the spec value where the GPU is known, else (and always as
`frac_of_copy_bw`) a measured large-tensor copy bandwidth.

    python benchmarks/bench_augment.py [--device cuda] [--out benchmarks/results/augment_cpu.json]
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys

import torch

from fasttrain.benchmarking import (add_common_arguments, apply_common_arguments,
                                      emit_json, report_header, time_calls)

from fasttrain import augment as A
from fasttrain.batch import random_geometry
from fasttrain.data.index import IMAGENET_MEAN, IMAGENET_STD
from fasttrain.kernels.mix.function import triton_available

# Peak DRAM bandwidth (bytes/s) by device-name substring (vendor spec sheets).
SPEC_BW = {"H200": 4.8e12, "H100 SXM": 3.35e12, "H100 80GB HBM3": 3.35e12, "H100 PCIe": 2.0e12,
           "H100 NVL": 3.9e12, "A100-SXM4-80GB": 2.04e12, "A100": 1.555e12}


def copy_bandwidth(device: torch.device, reps: int) -> float:
    x = torch.empty(256 * 2**20, dtype=torch.uint8, device=device).fill_(1)
    y = torch.empty_like(x)
    times = time_calls(lambda: y.copy_(x), device, reps, min_time=0.2)
    return 2 * x.numel() / statistics.median(times)


def spec_bandwidth(device: torch.device) -> tuple[float | None, str]:
    if device.type != "cuda":
        return None, "cpu"
    name = torch.cuda.get_device_name(device)
    for key, bw in SPEC_BW.items():
        if key in name:
            return bw, name
    return None, name


def make_inputs(b: int, size: int, device: torch.device, seed: int):
    g = torch.Generator().manual_seed(seed)
    n = 2 * b
    views = [torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=g)
             .to(device).contiguous(memory_format=torch.channels_last) for _ in range(2)]
    geos = [None, None]
    if size <= 64:
        gd = torch.Generator(device=device).manual_seed(seed)
        geos = [random_geometry(n, 4, True, gd, device) for _ in range(2)]
    idx_a = torch.arange(b, device=device)
    idx_b = torch.arange(b, 2 * b, device=device)
    spec = A.sample_mix(size, size, generator=g)
    return views, geos, idx_a, idx_b, spec


def torchvision_pipeline(size: int, num_classes: int, dtype: torch.dtype):
    from torchvision.transforms import v2

    pre = [v2.RandomCrop(size, padding=4), v2.RandomHorizontalFlip()] if size <= 64 else []
    norm = v2.Compose(pre + [v2.ToDtype(torch.float32, scale=True),
                             v2.Normalize(list(IMAGENET_MEAN), list(IMAGENET_STD))])
    mixup, cutmix = v2.MixUp(num_classes=num_classes), v2.CutMix(num_classes=num_classes)

    def run(views, idx_a, labels):
        x_mix, y_mix = mixup(norm(views[0][idx_a]), labels)
        x_cut, y_cut = cutmix(norm(views[1][idx_a]), labels)
        return x_mix.to(dtype), x_cut.to(dtype), y_mix, y_cut

    return run


def bench_config(b: int, size: int, dtype: torch.dtype, device: torch.device, args, peak: float | None,
                 copy_bw: float) -> list[dict]:
    views, geos, idx_a, idx_b, spec = make_inputs(b, size, device, args.seed)
    labels = torch.randint(0, 10, (b,), device=device)
    pixels = 3 * size * size
    logical_bytes = 2 * b * (2 * pixels + pixels * torch.finfo(dtype).bits // 8)
    impls = {
        "reference": lambda: A.mixup_cutmix(views[0], views[1], geos[0], geos[1], idx_a, idx_b, spec,
                                            IMAGENET_MEAN, IMAGENET_STD, dtype, impl="torch"),
        "fused": lambda: A.mixup_cutmix(views[0], views[1], geos[0], geos[1], idx_a, idx_b, spec,
                                        IMAGENET_MEAN, IMAGENET_STD, dtype, impl="triton"),
        "torchvision_v2": (lambda tv=torchvision_pipeline(size, 10, dtype): tv(views, idx_a, labels)),
    }
    rows = []
    for name, fn in impls.items():
        row = {"impl": name, "batch": b, "size": size, "dtype": str(dtype).replace("torch.", ""),
               "geometry": "per-sample crop+flip" if geos[0] is not None else "none (pre-cropped)"}
        if name == "fused" and (device.type != "cuda" or not triton_available()):
            row["skipped"] = "Triton kernel needs a CUDA device (this run is on %s)" % device.type
            rows.append(row)
            continue
        if name == "torchvision_v2" and geos[0] is not None:
            row["geometry"] = "batch-level crop+flip (one draw per batch)"
        times = time_calls(fn, device, args.reps, min_time=args.min_time)
        med = statistics.median(times)
        row.update(median_ms=med * 1e3, min_ms=min(times) * 1e3, max_ms=max(times) * 1e3,
                   stdev_ms=statistics.stdev(times) * 1e3 if len(times) > 1 else 0.0, reps=len(times),
                   images_per_s=b / med, gb_per_s=logical_bytes / med / 1e9,
                   frac_of_copy_bw=logical_bytes / med / copy_bw)
        if peak:
            row["frac_of_peak"] = logical_bytes / med / peak
        rows.append(row)
        print(json.dumps(row), file=sys.stderr)
    by = {r["impl"]: r for r in rows if "median_ms" in r}
    if "torchvision_v2" in by:
        for r in rows:
            if "median_ms" in r:
                r["speedup_vs_torchvision_v2"] = by["torchvision_v2"]["median_ms"] / r["median_ms"]
    return rows


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(p)
    p.add_argument("--batches", default="64,256,1024")
    p.add_argument("--sizes", default="32,224")
    p.add_argument("--dtypes", default=None, help="default: float32 on CPU, float32,bfloat16 on CUDA")
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--min-time", type=float, default=0.05, help="seconds per timing sample")
    p.add_argument("--max-source-mb", type=float, default=None,
                   help="skip configs whose uint8 sources exceed this (default 200 on CPU, none on CUDA)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    device = apply_common_arguments(args)
    dtypes = args.dtypes or ("float32,bfloat16" if device.type == "cuda" else "float32")
    max_mb = args.max_source_mb if args.max_source_mb is not None else (200.0 if device.type == "cpu" else 1e12)
    peak, dev_name = spec_bandwidth(device)
    copy_bw = copy_bandwidth(device, args.reps)
    results = []
    for size in (int(s) for s in args.sizes.split(",")):
        for b in (int(x) for x in args.batches.split(",")):
            for dt in dtypes.split(","):
                dtype = getattr(torch, dt)
                src_mb = 2 * 2 * b * 3 * size * size / 2**20
                if src_mb > max_mb:
                    results.append({"batch": b, "size": size, "dtype": dt,
                                    "skipped": f"sources {src_mb:.0f} MB > --max-source-mb {max_mb:.0f}"})
                    continue
                results.extend(bench_config(b, size, dtype, device, args, peak, copy_bw))
    out = {
        **report_header("augment", device),
        "peak_bandwidth_gb_s": peak / 1e9 if peak else None,
        "measured_copy_bandwidth_gb_s": copy_bw / 1e9,
        "notes": ("fused Triton kernel skipped: no CUDA device; GPU targets (>=5x torchvision v2, "
                  ">=70% HBM bandwidth) are to be measured in a GPU session") if device.type != "cuda" else "",
        "results": results,
    }
    return emit_json(out, args.out, indent=2)


if __name__ == "__main__":
    main()
