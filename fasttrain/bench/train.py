"""train: a timed slice of a real run through the trainer, extrapolated to the full run.

The run is `fasttrain.trainer.Trainer` on the config (default the GLMC CIFAR-10-LT ρ100 recipe),
limited to `--epochs` epochs of `--steps` steps each (`train.epochs`, `train.max_steps_per_epoch`),
evaluated on the last epoch only (`train.eval_every`), in a temporary run directory. From the
epoch records (steps, img/s of the training part, wall clock incl. evaluation and checkpoints):

- step time = training seconds per step of the epochs after the first (the first holds the
  warm-up: compilation, allocator, autotuning) — the repetitions whose median/p20/p80 are reported;
- eval time = the last epoch's non-training seconds minus the other epochs' (checkpoints);
- extrapolated = build + warm-up excess + E × (steps per full epoch × step time + checkpoint)
  + E / eval_every × eval time, E = `--full-epochs` (default: the config's train.epochs).

Peak host RSS and peak GPU memory come from the trainer's own epoch records. Without the CIFAR-10
files pass `data.dataset=synthetic_cifar10_lt` (same shapes and class profile, random pixels).

    fasttrain bench train [--config glmc/cifar10_lt_r100] [KEY=VALUE ...] [--epochs 3] [--steps 8]
"""
from __future__ import annotations

import statistics
import tempfile
import time

import torch

from fasttrain.bench import harness as H

DESCRIPTION = "a timed slice of a real training run, extrapolated to the full epoch count"

# The dry run: the same trainer path on a tiny synthetic JPEG corpus and the narrow ResNet-32.
DRY_RUN_OVERRIDES = ["data.dataset=synthetic", "data.num_classes=4", "data.synthetic_max_per_class=8",
                     "data.synthetic_test_per_class=2", "data.synthetic_size=[40,40]", "augment.train=imagenet",
                     "augment.crop_size=32", "augment.eval_resize=36", "loader.backend=torch",
                     "loader.num_workers=0", "loader.batch_size=4", "loader.eval_batch_size=8",
                     "model.arch=resnet32"]


def add_arguments(p) -> None:
    H.add_common_arguments(p, reps=0)
    p.add_argument("--config", default="glmc/cifar10_lt_r100")
    p.add_argument("overrides", nargs="*", help="section.key=value overrides")
    p.add_argument("--epochs", type=int, default=3, help="epochs of the timed slice (>= 2)")
    p.add_argument("--steps", type=int, default=8, help="steps per epoch of the slice")
    p.add_argument("--full-epochs", type=int, default=None, help="extrapolate to this many (default: the config's)")
    p.add_argument("--run-dir", default=None, help="where the slice's run directory goes (default: a temp dir)")


def run(args, argv) -> dict:
    from fasttrain.config import load_config
    from fasttrain.trainer import Trainer

    device = H.apply_common_arguments(args)
    epochs, steps = (2, 2) if args.dry_run else (max(2, args.epochs), args.steps)
    tmp = tempfile.TemporaryDirectory(prefix="fasttrain_bench_train_")
    root = args.run_dir or tmp.name
    overrides = list(args.overrides) + (DRY_RUN_OVERRIDES + [f"data.root={root}/corpus"] if args.dry_run else [])
    base = load_config(args.config, overrides)  # the full run the slice stands for
    full_epochs = args.full_epochs or base.train.epochs
    eval_every = base.train.eval_every
    cfg = load_config(args.config, [*overrides, f"device={device}", f"train.epochs={epochs}",
                                    f"train.max_steps_per_epoch={steps}", f"train.eval_every={epochs}",
                                    f"out_dir={root}", "name=slice", "train.log_every=1000000"])
    t0 = time.perf_counter()
    trainer = Trainer(cfg, f"{root}/slice", overwrite=True)
    build_s = time.perf_counter() - t0
    # Built: a slice stopped for time leaves this (the build cost, e.g. a torch.compile that worked).
    H.save_partial({**H.new_report("train", device, {"config": args.config, "overrides": overrides,
                                                      "dry_run": args.dry_run}, argv), "build_s": build_s},
                   args.out_dir, device, args.tag)
    full_steps = len(trainer.loader)
    rows_per_step = cfg.loader.batch_size * len(trainer.method.streams())
    result = trainer.fit()
    hist = result.summary["epochs"]
    train_s = [h["steps"] * rows_per_step / h["img_per_s"] for h in hist]
    walls = [b["wall_s"] - a for a, b in zip([0.0] + [h["wall_s"] for h in hist[:-1]], hist)]
    step_s = [t / h["steps"] for t, h in zip(train_s[1:], hist[1:])]
    step_med = statistics.median(step_s)
    other = [w - t for w, t in zip(walls, train_s)]
    checkpoint_s = statistics.median(other[:-1])
    eval_s = max(0.0, other[-1] - checkpoint_s)
    warmup_excess = max(0.0, train_s[0] - hist[0]["steps"] * step_med)
    estimate = (build_s + warmup_excess + full_epochs * (full_steps * step_med + checkpoint_s)
                + (full_epochs // eval_every) * eval_s)
    config = {"config": args.config, "overrides": overrides, "method": cfg.method.name,
              "arch": cfg.model.arch, "dataset": cfg.data.dataset, "backend": cfg.loader.backend,
              "amp": str(trainer.run.amp).replace("torch.", "") if trainer.run.amp else "fp32",
              "channels_last": trainer.run.augmenter.channels_last, "compile": cfg.train.compile,
              "slice_epochs": epochs, "slice_steps_per_epoch": steps, "full_epochs": full_epochs,
              "full_steps_per_epoch": full_steps, "rows_per_step": rows_per_step, "eval_every": eval_every,
              "warmup_excluded": "the first epoch", "dry_run": args.dry_run}
    report = H.new_report("train", device, config, argv)
    report["results"].append(H.row("step", [s * 1e3 for s in step_s], "ms", group="trainer step",
                                   samples_per_s=rows_per_step / step_med))
    report["results"].append(H.row("full_run_estimate", [estimate / 60], "min", group="extrapolated run"))
    report["extrapolation"] = {"build_s": build_s, "warmup_excess_s": warmup_excess, "step_s": step_med,
                               "checkpoint_s_per_epoch": checkpoint_s, "eval_s": eval_s,
                               "evals": full_epochs // eval_every, "full_run_s": estimate,
                               "full_run_min": estimate / 60}
    peaks = {k: max(h.get(k, 0) for h in hist) for k in ("host_rss_peak_mib", "gpu_mem_peak_mib") if k in hist[-1]}
    report["memory_peaks_mib"] = peaks
    report["slice_top1"] = result.summary["final"].get("top1")
    if device.type == "cuda" and "full_run_min" in report["extrapolation"] and cfg.method.name == "glmc" \
            and cfg.data.dataset.endswith("cifar10_lt"):
        report["targets"] = {"glmc_cifar10_lt_200_epochs_min": {"value": estimate / 60, "target": 3.0,
                                                                "met": estimate / 60 <= 3.0}}
    tmp.cleanup()
    return H.save_report(report, args.out_dir, device, args.tag)
