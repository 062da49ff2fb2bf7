"""step: the trainer's own training step for a config, fed by its loader vs fed one batch already
on the device (the synthetic-data ceiling); loader efficiency = the ratio of the two.

The run is built by the run builder from the config (`fasttrain.build.build_run`, as the trainer
builds it) and every configuration calls `fasttrain.step.train_step` (autocast → method loss with
the augmenter's mixing → backward → optimizer), so what is timed is what trains. Three rows,
timed alternately (one sample of each per round) on the same model:

- `loader`:   train_step(next batch of the config's loader backend);
- `ceiling`:  train_step(one fixed batch already on the device) — the same step without the loader;
- `data_only`: the loader's batch and the augmenter's model inputs, no model.

Samples/s count dataset rows per step (both streams for GLMC). Default: the GLMC CIFAR-10-LT ρ100
recipe (4×-wide ResNet-32 `resnet32_w4`, 64 + 64 rows, tensor backend). Without the CIFAR-10 files
pass `data.dataset=synthetic_cifar10_lt` (random pixels with the real class profile: the cost of
a step does not depend on pixel values). SSD stage-I configs also get the share of the step spent
in the B×K queue product.

    fasttrain bench step [--config glmc/cifar10_lt_r100] [KEY=VALUE ...] [--reps 5] [--steps 3]
"""
from __future__ import annotations

import itertools

import torch

from fasttrain.bench import harness as H

DESCRIPTION = "the trainer's train_step on its loader vs on a batch already on the device"

# The dry run: the same code path on the narrow ResNet-32 and a few rows of the stand-in data.
DRY_RUN_OVERRIDES = ["data.dataset=synthetic_cifar10_lt", "model.arch=resnet32", "loader.batch_size=4",
                     "loader.eval_batch_size=8"]
COMPILE_MODES = ("none", "default", "reduce-overhead", "max-autotune-no-cudagraphs")


def add_arguments(p) -> None:
    H.add_common_arguments(p, reps=5)
    p.add_argument("--config", default="glmc/cifar10_lt_r100", help="a shipped config name or a YAML file")
    p.add_argument("overrides", nargs="*", help="section.key=value overrides (e.g. train.amp=bf16)")
    p.add_argument("--steps", type=int, default=3, help="steps per timed sample")
    p.add_argument("--warmup", type=int, default=2, help="untimed rounds first (compile, allocator)")
    p.add_argument("--compile-mode", default="none", choices=COMPILE_MODES,
                   help="torch.compile the forward with this mode (reduce-overhead = CUDA graphs); "
                        "none = as the config says (train.compile)")


def endless(loader):
    """Batches of consecutive epochs (a timed slice may cross an epoch boundary)."""
    for epoch in itertools.count():
        loader.set_epoch(epoch)
        yield from loader


def build_bench_run(config: str, overrides: list[str], device: torch.device, name: str):
    """The run the trainer would build for `config` + `overrides` on `device`."""
    from fasttrain.build import build_run
    from fasttrain.config import load_config

    cfg = load_config(config, [*overrides, f"device={device}", f"name={name}"])
    return build_run(cfg, training=True)


def setup_summary(run) -> dict:
    cfg = run.cfg
    return {"method": cfg.method.name, "arch": cfg.model.arch, "dataset": cfg.data.dataset,
            "backend": cfg.loader.backend, "batch_rows": cfg.loader.batch_size * len(run.method.streams()),
            "streams": len(run.method.streams()), "views": run.method.num_views,
            "amp": str(run.amp).replace("torch.", "") if run.amp else "fp32",
            "channels_last": run.augmenter.channels_last, "compile": cfg.train.compile,
            "mix_impl": cfg.augment.mix_impl, "loss_impl": cfg.train.loss_impl}


def run(args, argv) -> dict:
    from fasttrain.methods import Progress
    from fasttrain.step import train_step

    device = H.apply_common_arguments(args)
    overrides = list(args.overrides) + (DRY_RUN_OVERRIDES if args.dry_run else [])
    reps, steps, warmup = (1, 1, 1) if args.dry_run else (args.reps, args.steps, args.warmup)
    run_ = build_bench_run(args.config, overrides, device, "bench_step")
    if args.compile_mode != "none":
        run_.learner.forward_model = torch.compile(run_.model, mode=args.compile_mode)
    run_.model.train()
    progress = Progress(epoch=0, epochs=run_.cfg.train.epochs)
    batches = endless(run_.train_loader)
    fixed = next(batches)
    rows = fixed.size
    fns = {
        "loader": lambda: train_step(run_.learner, next(batches), progress),
        "ceiling": lambda: train_step(run_.learner, fixed, progress),
        "data_only": lambda: run_.augmenter.views(next(batches)),
    }
    warm: dict[str, float] = {}
    config = {"config": args.config, "overrides": overrides, **setup_summary(run_), "compile_mode": args.compile_mode,
              "steps_per_sample": steps, "warmup_excluded": warmup, "reps": reps, "dry_run": args.dry_run}
    report = H.new_report("step", device, config, argv)
    H.save_partial(report, args.out_dir, device, args.tag)  # built: a run stopped in the warm-up says so

    def rows_of(samples: dict[str, list[float]]) -> list[dict]:
        return [H.rate_row(name, secs, rows, unit="samples/s", group="train_step", warmup_s=warm.get(name))
                for name, secs in samples.items() if secs]

    def save_round(samples: dict[str, list[float]]) -> None:
        H.save_partial({**report, "results": rows_of(samples), "warmup_s": dict(warm)}, args.out_dir, device,
                       args.tag)

    times = H.round_robin(fns, device, reps, inner=steps, warmup=warmup, log=H.log_line, warmup_s=warm,
                          on_round=save_round)
    report["results"] = rows_of(times)
    by = {r["name"]: r for r in report["results"]}
    report["loader_efficiency"] = by["loader"]["median"] / by["ceiling"]["median"]
    report["notes"].append("loader_efficiency = loader samples/s / ceiling samples/s (same model, same step)")
    if run_.cfg.method.name == "ssd_stage1":
        product = queue_product_row(run_, device, reps, steps, warmup)
        report["results"].append(product)
        report["queue_product_share"] = product["median"] / by["ceiling"]["ms_per_call"]["median"]
    if device.type == "cuda":
        report["gpu_mem_peak_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
    return H.save_report(report, args.out_dir, device, args.tag)


def queue_product_row(run_, device: torch.device, reps: int, steps: int, warmup: int) -> dict:
    """Forward + backward of SSD's label-aware contrastive term alone, at the step's B, K and d
    (the queue copy included): what the B×K queue product adds to the stage-I step."""
    import torch.nn.functional as F

    from fasttrain.methods.label_queue import label_aware_contrastive_loss

    b, k, d = run_.cfg.loader.batch_size, run_.cfg.method.queue_size, run_.cfg.method.proj_dim
    g = torch.Generator(device=device).manual_seed(0)
    q = F.normalize(torch.randn(b, d, device=device, generator=g), dim=1).requires_grad_(True)
    key = F.normalize(torch.randn(b, d, device=device, generator=g), dim=1)
    keys = F.normalize(torch.randn(k, d, device=device, generator=g), dim=1)
    labels = torch.randint(0, run_.train_set.num_classes, (k,), device=device, generator=g)
    y = torch.randint(0, run_.train_set.num_classes, (b,), device=device, generator=g)

    def product():
        label_aware_contrastive_loss(q, key, keys.clone(), labels, y, 0.2).backward()

    secs = H.time_calls(product, device, reps, inner=steps, warmup=warmup)
    return H.row("queue_product", [s * 1e3 for s in secs], "ms", group="ssd queue product",
                 batch=b, queue=k, dim=d)
