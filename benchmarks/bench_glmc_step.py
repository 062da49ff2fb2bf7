"""GLMC CIFAR-10-LT training-step throughput: torch backend vs tensor backend vs synthetic ceiling.

Data: a synthetic uint8 CIFAR-10-LT stand-in with the real class profile (ρ = 100, 12,406
images of 32×32; pixel values do not change the cost). Each configuration runs the real GLMC
step — loader → fasttrain.augment mixing → ResNet-32 GLMC net (two forwards) → loss →
backward → SGD — and reports samples/s (dataset rows consumed per second, both streams).
The synthetic ceiling reuses one batch already on the device (no loader at all), so
`loader_efficiency` = backend samples/s ÷ ceiling samples/s.

    python benchmarks/bench_glmc_step.py [--device cuda] [--batch 128] [--out ...json]
"""
from __future__ import annotations

import argparse
import itertools
import json
import platform
import statistics
import sys
import time

import numpy as np
import torch

from fasttrain.benchmarking import describe_device, emit_json

from fasttrain.config import AugmentConfig, LoaderConfig
from fasttrain.data.cifar import lt_counts
from fasttrain.data.index import CIFAR10_MEAN, CIFAR10_STD, LTDataset
from fasttrain.loaders import build_loader
from fasttrain.methods import METHODS, MethodContext, Progress
from fasttrain.models import create_backbone, to_channels_last
from fasttrain.samplers import build_sampler


def synthetic_cifar10_lt(seed: int = 0) -> LTDataset:
    counts = lt_counts(5000, 10, 100.0)
    labels = np.repeat(np.arange(10), counts)
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(len(labels), 32, 32, 3), dtype=np.uint8)
    return LTDataset(name="synthetic_cifar10_lt", num_classes=10, labels=labels, train_counts=np.array(counts),
                     images=images, mean=CIFAR10_MEAN, std=CIFAR10_STD)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def build_step(ds: LTDataset, device: torch.device, dtype: torch.dtype, mix_impl: str, compile_model: bool):
    method_cls = METHODS["glmc"]
    cfg = method_cls.config_class()
    ctx = MethodContext(num_classes=ds.num_classes, train_counts=torch.as_tensor(ds.train_counts).to(device),
                        mean=ds.mean, std=ds.std, device=device, compute_dtype=dtype, mix_impl=mix_impl, seed=0)
    method = method_cls(cfg, ctx)
    model = to_channels_last(method.build_model(create_backbone("resnet32")).to(device))
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=2e-4)
    fwd_model = torch.compile(model) if compile_model else model
    amp = device.type == "cuda" and dtype == torch.bfloat16

    def step(batch) -> torch.Tensor:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            loss, _ = method.loss(fwd_model, batch, Progress(epoch=0, epochs=200))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss.detach()

    return step, method


def build_data_step(ds: LTDataset, device: torch.device, dtype: torch.dtype, mix_impl: str):
    """Only the data path of a GLMC step: loader batch -> λ/box draw -> fused mix (no model)."""
    from fasttrain.augment import mix_glmc, sample_mix

    g = torch.Generator().manual_seed(0)

    def step(batch) -> torch.Tensor:
        spec = sample_mix(32, 32, generator=g)
        return mix_glmc(batch, spec, ds.mean, ds.std, dtype, mix_impl)[0]

    return step


def run_config(name: str, batches, step, device: torch.device, steps: int, reps: int, warmup: int,
               rows_per_step: int) -> dict:
    for _ in range(warmup):
        step(next(batches))
    sync(device)
    times = []
    for _ in range(reps):
        sync(device)
        t0 = time.perf_counter()
        for _ in range(steps):
            step(next(batches))
        sync(device)
        times.append((time.perf_counter() - t0) / steps)
    med = statistics.median(times)
    row = {"config": name, "median_step_ms": med * 1e3, "min_step_ms": min(times) * 1e3,
           "max_step_ms": max(times) * 1e3, "stdev_step_ms": statistics.stdev(times) * 1e3 if reps > 1 else 0.0,
           "reps": reps, "steps_per_rep": steps, "samples_per_s": rows_per_step / med}
    print(json.dumps(row), file=sys.stderr)
    return row


def endless(loader):
    for epoch in itertools.count():
        loader.set_epoch(epoch)
        yield from loader


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="auto")
    p.add_argument("--batch", type=int, default=128, help="rows per step over both streams (GLMC: 2 x 64)")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--data-steps", type=int, default=20, help="steps per rep of the data-only timing")
    p.add_argument("--num-workers", type=int, default=2, help="torch backend DataLoader workers")
    p.add_argument("--mix-impl", default="auto")
    p.add_argument("--compile", action="store_true")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (1 gives stable numbers on a shared machine)")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    torch.manual_seed(0)
    ds = synthetic_cifar10_lt()
    labels = torch.as_tensor(ds.labels)
    results = []
    tensor_batch = None
    for backend in ("torch", "tensor"):
        samplers = [build_sampler("instance", labels, 10, seed=0), build_sampler("power", labels, 10, seed=0, q=0.0)]
        loader = build_loader(backend, ds, samplers, batch_size=args.batch, num_views=2, device=device,
                              augment=AugmentConfig(), loader=LoaderConfig(backend=backend, num_workers=args.num_workers),
                              train=True, seed=0)
        batches = endless(loader)
        results.append(run_config(f"{backend}_backend_data_only", batches,
                                  build_data_step(ds, device, dtype, args.mix_impl), device,
                                  args.data_steps, args.reps, args.warmup, args.batch))
        step, _ = build_step(ds, device, dtype, args.mix_impl, args.compile)
        results.append(run_config(f"{backend}_backend", batches, step, device, args.steps, args.reps, args.warmup,
                                  args.batch))
        if backend == "tensor":
            tensor_batch = next(batches)
        del batches  # stop the torch backend's workers before the next configuration
    step, _ = build_step(ds, device, dtype, args.mix_impl, args.compile)
    ceiling = run_config("synthetic_ceiling", itertools.repeat(tensor_batch), step, device, args.steps, args.reps,
                         args.warmup, args.batch)
    results.append(ceiling)
    for r in results:
        if not r["config"].endswith("data_only"):
            r["loader_efficiency"] = r["samples_per_s"] / ceiling["samples_per_s"]
    by = {r["config"]: r for r in results}
    out = {
        "benchmark": "glmc_step",
        "device": describe_device(device),
        "versions": {"python": platform.python_version(), "torch": torch.__version__},
        "setup": {"dataset": "synthetic CIFAR-10-LT (rho 100, 12406 images)", "model": "resnet32 GLMC net",
                  "batch_rows": args.batch, "streams": 2, "views": 2, "dtype": str(dtype).replace("torch.", ""),
                  "mix_impl": args.mix_impl, "compile": args.compile, "torch_num_workers": args.num_workers},
        "tensor_vs_torch_speedup": by["tensor_backend"]["samples_per_s"] / by["torch_backend"]["samples_per_s"],
        "tensor_vs_torch_data_only_speedup": (by["tensor_backend_data_only"]["samples_per_s"]
                                              / by["torch_backend_data_only"]["samples_per_s"]),
        "results": results,
    }
    return emit_json(out, args.out, indent=2)


if __name__ == "__main__":
    main()
