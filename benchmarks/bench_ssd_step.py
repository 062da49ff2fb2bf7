"""SSD stage-I training-step throughput, and the share of the step spent in the B×K queue product.

The stage-I step costs two backbone passes (query with a graph, key without, the key one in
`shuffle_bn_splits` sub-batches) plus the label-aware contrastive logits q·queueᵀ over the K
queued keys. The run is built by the run builder from an `ssd_stage1` config (tensor backend,
synthetic uint8 CIFAR-10-LT stand-in with the real class profile) and timed through the trainer's
own step (`fasttrain.step.train_step`), so what is timed is what trains. The queue product is then
timed alone (forward + backward of `label_aware_contrastive_loss` at the same B, K, d, the queue
copy included) and reported as a fraction of the step.

    python benchmarks/bench_ssd_step.py [--device cuda] [--batch 128] [--queue 4096] [--arch resnet32] [--out ...json]
"""
from __future__ import annotations

import argparse
import itertools
import sys

import torch
import torch.nn.functional as F
from bench_glmc_step import synthetic_cifar10_lt  # same stand-in data as the GLMC step benchmark

from fasttrain.benchmarking import (add_common_arguments, apply_common_arguments, emit_json, report_header, spread,
                                    time_calls)
from fasttrain.build import build_run
from fasttrain.config import config_from_dict
from fasttrain.methods import Progress
from fasttrain.methods.label_queue import label_aware_contrastive_loss
from fasttrain.step import train_step


def stage1_run(ds, args):
    """The stage-I run the trainer would build (the keys of configs/ssd/_cifar_base.yaml)."""
    cfg = config_from_dict({
        "device": str(args.device), "seed": 0,
        "method": {"name": "ssd_stage1", "queue_size": args.queue, "shuffle_bn_splits": args.splits},
        "model": {"arch": args.arch},
        "loader": {"backend": "tensor", "batch_size": args.batch},
        "optim": {"lr": 0.1, "weight_decay": 5e-4},
        "train": {"compile": args.compile},
    }, "bench_ssd_step")
    return build_run(cfg, training=True, datasets=(ds, ds))


def endless(loader):
    for epoch in itertools.count():
        loader.set_epoch(epoch)
        yield from loader


def queue_product(batch: int, queue: int, dim: int, classes: int, device: torch.device):
    """One forward + backward of the contrastive term at these sizes (what the step adds for the queue)."""
    g = torch.Generator(device=device).manual_seed(0)
    q = F.normalize(torch.randn(batch, dim, device=device, generator=g), dim=1).requires_grad_(True)
    k = F.normalize(torch.randn(batch, dim, device=device, generator=g), dim=1)
    keys = F.normalize(torch.randn(queue, dim, device=device, generator=g), dim=1)
    labels = torch.randint(0, classes, (queue,), device=device, generator=g)
    y = torch.randint(0, classes, (batch,), device=device, generator=g)

    def run():
        loss = label_aware_contrastive_loss(q, k, keys.clone(), labels, y, 0.2)
        loss.backward()
        return loss

    return run


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(p)
    p.add_argument("--batch", type=int, default=128, help="rows per step (one stream, two views)")
    p.add_argument("--queue", type=int, default=4096, help="queued keys K (ImageNet-LT recipe: 115712)")
    p.add_argument("--splits", type=int, default=8, help="method.shuffle_bn_splits")
    p.add_argument("--arch", default="resnet32")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--compile", action="store_true")
    args = p.parse_args(argv)
    device = apply_common_arguments(args)
    ds = synthetic_cifar10_lt()
    run = stage1_run(ds, args)
    run.model.train()
    batches = endless(run.train_loader)
    progress = Progress(epoch=0, epochs=200)
    step = spread(time_calls(lambda: train_step(run.learner, next(batches), progress), device, args.reps,
                             inner=args.steps, warmup=args.warmup))
    product = spread(time_calls(queue_product(args.batch, args.queue, run.cfg.method.proj_dim, ds.num_classes, device),
                                device, args.reps, inner=args.steps, warmup=args.warmup))
    ms = lambda s: {k: (v * 1e3 if k != "n" else v) for k, v in s.items()}  # noqa: E731
    out = {
        **report_header("ssd_stage1_step", device),
        "setup": {"dataset": "synthetic CIFAR-10-LT (rho 100, 12406 images)", "model": f"{args.arch} SSD stage-I net",
                  "step": "fasttrain.step.train_step (the trainer's step)", "batch_rows": args.batch, "views": 2,
                  "queue": args.queue, "shuffle_bn_splits": args.splits, "compile": args.compile,
                  "dtype": str(run.augmenter.dtype).replace("torch.", "")},
        "step_ms": ms(step), "img_per_s": args.batch / step["median"],
        "queue_product_ms": ms(product), "queue_product_share": product["median"] / step["median"],
    }
    print({k: out[k] for k in ("img_per_s", "queue_product_share")}, file=sys.stderr, flush=True)
    return emit_json(out, args.out, indent=2)


if __name__ == "__main__":
    main()
