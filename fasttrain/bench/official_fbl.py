"""official_fbl: whole training epochs of the official FBL code (github.com/juyongjiang/FBL,
`train.py`, CIFAR-10-LT ρ100 as its README runs it) against fasttrain's FBL recipe
(`fbl/cifar10_lt_r100`), each in its own process on the same threads, and the time either would
take for the 200-epoch run.

The official code is never shipped or downloaded here: pass a checkout with `--official-dir`
(and, with `--official-pythonpath`, a folder holding what it imports beyond torch: scikit-learn,
tensorboardX, pathlib2). Its `train.py` is CUDA-only in three places, which its child process
changes for the CPU without editing a file: `torch.cuda.FloatTensor` (the loss's per-class
constant) becomes `torch.FloatTensor`, `Tensor.cuda` / `Module.cuda` return themselves (the
inputs' moves are already guarded by `torch.cuda.is_available()`), and torchvision's md5 check of
the CIFAR files accepts files that exist (`fasttrain data cifar10` may rebuild them: same arrays,
other pickles). Then its own `__main__` block runs, with `train_one_epoch` / `validate_one_epoch`
timed and the run stopped after `--epochs` epochs. An official epoch is: the DataLoader pass with
PIL crop/flip per image (`--workers` 0 as shipped, or 2), the test pass on 10,000 images, two
checkpoint saves and its logs.

fasttrain's epoch: `fasttrain train fbl/cifar10_lt_r100 train.stop_after_epochs=N` (tensor
backend, evaluation every epoch, last.pt / best.pt), with `train.amp=auto` (bf16 where the CPU has
it) and strict fp32. The first epoch of both holds their start-up (the official code's DataLoader
and its first batch, fasttrain's first steps), both are counted the same way.

    fasttrain bench official_fbl --official-dir /tmp/fbl_official --official-pythonpath /tmp/fbl_deps \
        [--configs official_w0,official_w2,auto,fp32] [--epochs 1] [--threads 2]
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from fasttrain.bench import harness as H
from fasttrain.results.record import read_metrics

DESCRIPTION = "whole epochs of the official FBL code (workers 0 / 2) vs fasttrain's FBL recipe (auto / fp32)"

CONFIG = "fbl/cifar10_lt_r100"
FULL_EPOCHS = 200
# The official README's CIFAR-10-LT ρ100 command, without `--gpu`.
OFFICIAL_ARGS = ["--arch", "resnet32", "--dataset", "cifar10", "--data_path", "./dataset/data_img", "--loss_type",
                 "FeaBal", "--batch_size", "64", "--learning_rate", "0.1", "--lambda_", "60"]
CONFIGS: dict[str, list[str]] = {
    "official_w0": [],  # as shipped: --workers 0
    "official_w2": ["--workers", "2"],
    "auto": [],
    "fp32": ["train.amp=fp32"],
}
_EPOCH_LINE = re.compile(r"\[fbl-official\] epoch (\d+): train ([\d.]+) s, test ([\d.]+) s, total ([\d.]+) s")


def add_arguments(p) -> None:
    H.add_common_arguments(p, reps=1)
    p.add_argument("--official-dir", help="a checkout of github.com/juyongjiang/FBL (train.py at its root)")
    p.add_argument("--official-pythonpath", default="",
                   help="extra import path for the official code's own dependencies (sklearn, tensorboardX, pathlib2)")
    p.add_argument("--configs", default=",".join(CONFIGS), help=f"comma-separated subset of {', '.join(CONFIGS)}")
    p.add_argument("--epochs", type=int, default=1, help="epochs per configuration (each one a sample)")
    p.add_argument("--data-root", default="data", help="fasttrain's data.root (cifar-10-batches-py inside)")


# --- the official side (child process) ---------------------------------------------------------

def official_child(official_dir: str, epochs: int, argv: list[str]) -> None:
    """Run the official train.py's `__main__` block for `epochs` epochs on the CPU (see the module
    docstring for what is changed), printing one `[fbl-official] epoch ...` line per epoch."""
    import torch
    import torchvision.datasets.cifar as tv_cifar

    os.chdir(official_dir)  # train.py reads ./dataset and copies the working directory into ./saved
    sys.path.insert(0, official_dir)
    if not torch.cuda.is_available():
        torch.cuda.FloatTensor = torch.FloatTensor
        torch.Tensor.cuda = lambda self, *a, **k: self
        torch.nn.Module.cuda = lambda self, *a, **k: self
    tv_cifar.check_integrity = lambda fpath, md5=None: os.path.isfile(fpath)
    import train as official  # noqa: the checkout's module; its __main__ block runs below

    clock = {"epoch": None, "start": 0.0, "train": 0.0, "done": 0}

    def close_epoch() -> None:
        if clock["epoch"] is not None:
            total = time.perf_counter() - clock["start"]
            print(f"[fbl-official] epoch {clock['epoch']}: train {clock['train']:.2f} s, test "
                  f"{clock['test']:.2f} s, total {total:.2f} s", flush=True)
            clock["epoch"] = None

    train_one_epoch, validate_one_epoch = official.train_one_epoch, official.validate_one_epoch

    def timed_train(args, loader, *rest):
        close_epoch()  # the previous epoch ends where this one starts (its saves and logs included)
        if clock["done"] >= epochs:
            raise SystemExit(0)
        clock.update(epoch=rest[5], start=time.perf_counter(), test=0.0)
        train_one_epoch(args, loader, *rest)
        clock["train"] = time.perf_counter() - clock["start"]

    def timed_validate(*args, **kw):
        t0 = time.perf_counter()
        out = validate_one_epoch(*args, **kw)
        clock["test"] = time.perf_counter() - t0
        clock["done"] += 1
        return out

    official.train_one_epoch, official.validate_one_epoch = timed_train, timed_validate
    source = Path(official_dir, "train.py").read_text()
    guard = "if __name__ == '__main__':"
    if source.count(guard) != 1:
        raise SystemExit(f"{official_dir}/train.py: expected one {guard!r} block")
    import textwrap

    sys.argv = [str(Path(official_dir, "train.py")), *argv]
    try:
        exec(compile(textwrap.dedent(source.split(guard, 1)[1]), "train.py:__main__", "exec"), official.__dict__)
    finally:
        close_epoch()


def parse_official(text: str) -> list[dict]:
    """The per-epoch lines the official child prints -> [{epoch, train_s, test_s, total_s}]."""
    return [{"epoch": int(m[1]), "train_s": float(m[2]), "test_s": float(m[3]), "total_s": float(m[4])}
            for m in _EPOCH_LINE.finditer(text)]


def _run_official(args, extra: list[str], env: dict) -> list[dict]:
    saved = Path(args.official_dir, "saved")
    if saved.is_dir():  # the official run directory is named by the minute and must not exist
        import shutil

        shutil.rmtree(saved)
    env = {**env, "PYTHONPATH": os.pathsep.join(p for p in (args.official_pythonpath, env.get("PYTHONPATH", "")) if p)}
    cmd = [sys.executable, "-m", "fasttrain.bench.official_fbl", "--child", str(Path(args.official_dir).resolve()),
           str(args.epochs), *OFFICIAL_ARGS, *extra]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    epochs = parse_official(proc.stdout)
    if proc.returncode != 0 or len(epochs) < args.epochs:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
        raise RuntimeError(f"official FBL run failed (exit {proc.returncode}): " + " | ".join(tail))
    return epochs


# --- fasttrain's side (child process) ----------------------------------------------------------

def fasttrain_epochs(metrics: list[dict], batch_size: int) -> list[dict]:
    """Per-epoch train / test / total seconds from a run's metrics.jsonl (wall_s counts from the
    start of the loop; the training part is steps × batch / img_per_s, the rest is evaluation,
    checkpoints and logs)."""
    out, last = [], 0.0
    for row in metrics:
        total = row["wall_s"] - last
        last = row["wall_s"]
        train = row["steps"] * batch_size / row["img_per_s"]
        out.append({"epoch": row["epoch"], "train_s": train, "test_s": total - train, "total_s": total})
    return out


def _run_fasttrain(args, extra: list[str], env: dict) -> list[dict]:
    with tempfile.TemporaryDirectory(prefix="fasttrain_bench_fbl_") as tmp:
        cmd = [sys.executable, "-m", "fasttrain.cli", "train", CONFIG, f"data.root={args.data_root}", f"out_dir={tmp}",
               "name=run", f"train.stop_after_epochs={args.epochs}", "device=cpu", *extra]
        if args.dry_run:
            cmd += ["data.dataset=synthetic_cifar10_lt", "train.max_steps_per_epoch=3"]
        proc = subprocess.run(cmd, capture_output=True, text=True, env={**env, "FASTTRAIN_NO_TQDM": "1"})
        path = Path(tmp, "run", "metrics.jsonl")
        if proc.returncode != 0 or not path.is_file():
            raise RuntimeError(f"fasttrain run failed (exit {proc.returncode}): "
                               + " | ".join(proc.stderr.strip().splitlines()[-5:]))
        return fasttrain_epochs(read_metrics(path), 64)


def run(args, argv) -> dict:
    device = H.apply_common_arguments(args)
    import torch

    names = [n.strip() for n in args.configs.split(",") if n.strip()]
    unknown = sorted(set(names) - set(CONFIGS))
    if unknown:
        raise SystemExit(f"--configs: unknown {', '.join(unknown)}; choose from {', '.join(CONFIGS)}")
    if any(n.startswith("official") for n in names):
        if args.dry_run:
            names = [n for n in names if not n.startswith("official")]
        elif not args.official_dir or not Path(args.official_dir, "train.py").is_file():
            from fasttrain.schema import ConfigError

            raise ConfigError("--official-dir: give a checkout of github.com/juyongjiang/FBL (train.py at its root), "
                              "or leave the official_* configurations out of --configs")
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}
    report = H.new_report("official_fbl", device, {"config": CONFIG, "official_args": OFFICIAL_ARGS,
                                                  "epochs_per_config": args.epochs, "full_epochs": FULL_EPOCHS,
                                                  "threads": torch.get_num_threads(), "dry_run": args.dry_run}, argv)
    totals = {}
    for name in names:
        H.log_line(f"official_fbl: {name} ...")
        if name.startswith("official"):
            epochs = _run_official(args, CONFIGS[name], env)
        else:
            epochs = _run_fasttrain(args, CONFIGS[name], env)
        for part in ("train_s", "test_s", "total_s"):
            report["results"].append(H.row(name, [e[part] for e in epochs], "s", group=f"epoch: {part[:-2]}"))
        totals[name] = sum(e["total_s"] for e in epochs) / len(epochs)
        report["results"].append(H.row(name, [totals[name] * FULL_EPOCHS / 3600], "h", group="200 epochs"))
        report.setdefault("epochs", {})[name] = epochs
    fastest_official = min((v for k, v in totals.items() if k.startswith("official")), default=None)
    if fastest_official:
        report["speedup_vs_fastest_official"] = {k: fastest_official / v for k, v in totals.items()}
    return H.save_report(report, args.out_dir, device, args.tag)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        official_child(sys.argv[2], int(sys.argv[3]), sys.argv[4:])
