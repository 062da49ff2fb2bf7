"""GLMC CIFAR-10-LT training-step throughput: torch backend vs tensor backend vs synthetic ceiling.

Data: a synthetic uint8 CIFAR-10-LT stand-in with the real class profile (ρ = 100, 12,406
images of 32×32; pixel values do not change the cost). Each configuration is built by the run
builder from the GLMC config (`fasttrain.build.build_run`) and timed through the trainer's own
step (`fasttrain.step.train_step`: autocast → GLMC loss with the augmenter's mixing → backward →
SGD), so what is timed is what trains. Reported: samples/s (dataset rows consumed per second,
both streams). The synthetic ceiling reuses one batch already on the device (no loader at all),
so `loader_efficiency` = backend samples/s ÷ ceiling samples/s.

    python benchmarks/bench_glmc_step.py [--device cuda] [--batch 128] [--arch resnet32_w4] [--out ...json]
"""
from __future__ import annotations

import argparse
import itertools
import sys

import numpy as np
import torch

from fasttrain.augment import sample_mix
from fasttrain.benchmarking import (add_common_arguments, apply_common_arguments,
                                      emit_json, report_header, spread, time_calls)
from fasttrain.build import build_run
from fasttrain.config import config_from_dict
from fasttrain.data.cifar import lt_counts
from fasttrain.data.index import CIFAR10_MEAN, CIFAR10_STD, LTDataset
from fasttrain.methods import Progress
from fasttrain.step import train_step


def synthetic_cifar10_lt(seed: int = 0) -> LTDataset:
    counts = lt_counts(5000, 10, 100.0)
    labels = np.repeat(np.arange(10), counts)
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(len(labels), 32, 32, 3), dtype=np.uint8)
    return LTDataset(name="synthetic_cifar10_lt", num_classes=10, labels=labels, train_counts=np.array(counts),
                     images=images, mean=CIFAR10_MEAN, std=CIFAR10_STD)


def glmc_run(ds: LTDataset, backend: str, args):
    """The GLMC run the trainer would build for this backend (same config keys as configs/glmc)."""
    cfg = config_from_dict({
        "device": str(args.device), "seed": 0,
        "method": {"name": "glmc"}, "model": {"arch": args.arch},
        "loader": {"backend": backend, "batch_size": args.batch // 2, "num_workers": args.num_workers},
        "augment": {"mix_impl": args.mix_impl},
        "optim": {"lr": 0.01, "weight_decay": 2e-4},
        "train": {"compile": args.compile},
    }, "bench_glmc_step")
    return build_run(cfg, training=True, datasets=(ds, ds))


def endless(loader):
    for epoch in itertools.count():
        loader.set_epoch(epoch)
        yield from loader


def timed(name: str, fn, device, args, steps: int, rows: int) -> dict:
    times = time_calls(fn, device, args.reps, inner=steps, warmup=args.warmup)
    s = spread(times)
    row = {"config": name, "step_ms": {k: (v * 1e3 if k != "n" else v) for k, v in s.items()},
           "samples_per_s": rows / s["median"]}
    print(row, file=sys.stderr, flush=True)
    return row


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(p)
    p.add_argument("--batch", type=int, default=128, help="rows per step over both streams (GLMC: 2 x 64)")
    p.add_argument("--arch", default="resnet32", help="resnet32 (standard) or resnet32_w4 (the recipe's 4x wide)")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--data-steps", type=int, default=20, help="steps per rep of the data-only timing")
    p.add_argument("--num-workers", type=int, default=2, help="torch backend DataLoader workers")
    p.add_argument("--mix-impl", default="auto")
    p.add_argument("--compile", action="store_true")
    args = p.parse_args(argv)
    device = apply_common_arguments(args)
    ds = synthetic_cifar10_lt()
    progress = Progress(epoch=0, epochs=200)
    results = []
    ceiling_batch = None
    for backend in ("torch", "tensor"):
        run = glmc_run(ds, backend, args)
        batches = endless(run.train_loader)
        g = torch.Generator().manual_seed(0)

        def data_only():  # loader batch -> λ/box draw -> the augmenter's GLMC mixing (no model)
            return run.augmenter.mix_streams(next(batches), sample_mix(32, 32, generator=g))[0]

        results.append(timed(f"{backend}_backend_data_only", data_only, device, args, args.data_steps, args.batch))
        results.append(timed(f"{backend}_backend", lambda: train_step(run.learner, next(batches), progress),
                             device, args, args.steps, args.batch))
        if backend == "tensor":
            ceiling_batch = next(batches)
        batches = None  # stop the torch backend's workers before the next configuration
    run = glmc_run(ds, "tensor", args)
    ceiling = timed("synthetic_ceiling", lambda: train_step(run.learner, ceiling_batch, progress), device, args,
                    args.steps, args.batch)
    results.append(ceiling)
    for r in results:
        if not r["config"].endswith("data_only"):
            r["loader_efficiency"] = r["samples_per_s"] / ceiling["samples_per_s"]
    by = {r["config"]: r for r in results}
    out = {
        **report_header("glmc_step", device),
        "setup": {"dataset": "synthetic CIFAR-10-LT (rho 100, 12406 images)", "model": f"{args.arch} GLMC net",
                  "step": "fasttrain.step.train_step (the trainer's step)", "batch_rows": args.batch, "streams": 2,
                  "views": 2, "dtype": str(run.augmenter.dtype).replace("torch.", ""), "mix_impl": args.mix_impl,
                  "compile": args.compile, "torch_num_workers": args.num_workers},
        "tensor_vs_torch_speedup": by["tensor_backend"]["samples_per_s"] / by["torch_backend"]["samples_per_s"],
        "tensor_vs_torch_data_only_speedup": (by["tensor_backend_data_only"]["samples_per_s"]
                                              / by["torch_backend_data_only"]["samples_per_s"]),
        "results": results,
    }
    return emit_json(out, args.out, indent=2)


if __name__ == "__main__":
    main()
