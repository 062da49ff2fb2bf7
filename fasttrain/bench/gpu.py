"""gpu: the one command for a lent H100/H200 — every GPU measurement the issues ask for, in order,
each saved as soon as it exists, the whole under a time budget.

Parts, each a child process (`python -m pytest` or `python -m fasttrain.cli bench SUITE`), headline
first, so the part a short budget cuts off is the least important one:

1. step: the GLMC CIFAR-10-LT step, bf16, channels-last, torch.compile; loader efficiency;
2. train: a timed slice of the GLMC CIFAR-10-LT run extrapolated to 200 epochs (target ≤ 3 min);
3. step with CUDA graphs (`--compile-mode reduce-overhead`), recorded as failed if they do not work;
3b. the LIFT step (CLIP ViT-B/16 + AdaptFormer, random weights, synthetic 500x400 JPEGs): img/s and
   loader efficiency fed by the torch DataLoader, then by DALI (failed where DALI is absent);
4. kernels: fused mix / soft-CE vs reference, eager, torchvision v2 — a reduced sweep (KERNEL_ARGS:
   bf16, 20 repetitions, one torch.compile baseline per kernel instead of a cold compile per group);
5. pytest -m gpu (fused kernels vs references compiled for the GPU, the SSD no-sync tests first,
   `-v -rA`, each test stopped after PYTEST_TEST_TIMEOUT_S);
6. loaders: 3 repetitions of 1,024 images, only the rows that need neither DALI nor FFCV (the
   device has neither).

The CIFAR parts use `data.dataset=synthetic_cifar10_lt` (the machine has no network and no CIFAR
files; a step costs the same on random pixels). Every part gets a share of what is left of
`--budget-s` (time a part does not use goes to the later ones); one that overruns is killed (its
process group) and recorded as `timeout`. `--out` receives at most 8 files of at most 16 MiB:
gpu_summary.json (rewritten after every part: statuses, times, the parts' reports), the pytest log,
one JSON per suite part and the step chart. `--dry-run` runs the same code path on the CPU at
tiny sizes (a test of the default suite), so the first GPU call cannot fail on a typo.

    fasttrain bench gpu --out DIR [--budget-s 480] [--dry-run]
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from fasttrain.bench import harness as H

DESCRIPTION = "everything for one GPU session, in order, under --budget-s (with --dry-run on CPU)"

MAX_FILES = 8
MAX_FILE_BYTES = 16 * 2**20
LOG_TAIL_BYTES = 2 * 2**20
GLMC = ["--config", "glmc/cifar10_lt_r100", "data.dataset=synthetic_cifar10_lt"]
# LIFT's CLIP ViT-B/16 + AdaptFormer step (random weights: model.pretrained null) on synthetic
# ImageNet-sized JPEGs (100 classes, 500x400): the job whose cheap backward leaves the step to the
# loader. Its dry run trains the CPU twin instead (the bench's CIFAR dry-run overrides do not fit a CLIP).
CLIP = ["--config", "lift/imagenet_lt_clip_vit_b16", "model.pretrained=null", "data.dataset=synthetic",
        "data.root=/tmp/fasttrain_bench_clip_corpus", "data.train_list=null", "data.num_classes=100",
        "data.synthetic_max_per_class=24", "data.synthetic_imbalance=8", "data.synthetic_test_per_class=1",
        "loader.num_workers=8", "train.amp=bf16"]
CLIP_DRY = ["--config", "lift/synthetic_clip_tiny", "model.pretrained=null", "data.root=/tmp/fasttrain_bench_clip_tiny"]
CLIP_DRY_OPTIONS = ["--device", "cpu", "--reps", "1", "--steps", "1", "--warmup", "1"]


@dataclass
class Part:
    name: str
    argv: list[str]  # after `python`
    share: float  # of the remaining budget, relative to the parts still to run
    suite: str | None = None  # its report is a bench suite's JSON
    keep_png: bool = False
    # Its JSON as a file of its own in --out; False: only inside gpu_summary.json (the 8-file cap
    # keeps the headline parts' files and the pytest log)
    own_file: bool = True
    env: dict[str, str] = field(default_factory=dict)  # added to the child's environment
    result: dict = field(default_factory=dict)


# The GPU window's reduced sweeps (the suites' own defaults measure more: ~36 kernel groups with a
# cold torch.compile each took ~85 s): what the issues' targets need, and nothing that waits on a
# library the device lacks (no DALI, no FFCV there).
KERNEL_ARGS = ["--mix-batches", "256", "--mix-sizes", "32,224", "--loss-B", "512", "--loss-C", "10,1000,8142",
               "--dtypes", "bfloat16", "--reps", "20",
               "--compile-groups", "mix B256 32px bfloat16,loss mix B512 C1000 bfloat16"]
LOADER_ARGS = ["--corpora", "cifar,jpeg", "--images", "1024", "--reps", "3",
               "--only", "official_pil,torch,tensor,torch_uint8,torch_decode_only"]
# pytest -m gpu: every test named, its outcome listed (-rA), none allowed to eat the part's share.
PYTEST_TEST_TIMEOUT_S = 60
DEFAULT_BUDGET_S = 480.0


def parts(dry_run: bool) -> list[Part]:
    cuda = [] if dry_run else ["--device", "cuda"]
    dry = ["--dry-run", "--device", "cpu"] if dry_run else []
    # The dry run's pytest part selects no test (exit code 5): it checks the plumbing, not CUDA.
    pytest_args = ["-m", "pytest", "-v", "-rA", "-m", "gpu", "-p", "no:cacheprovider",
                   "tests/test_architecture.py" if dry_run else "tests"]
    bench = ["-m", "fasttrain.cli", "bench"]
    out = [
        # Headline first: a part the budget cuts off should be the least important one.
        Part("step", [*bench, "step", *GLMC, "train.amp=bf16", "model.channels_last=true", "train.compile=true",
                      *cuda, *dry], 0.15, suite="step", keep_png=True),
        Part("train", [*bench, "train", *GLMC, "train.amp=bf16", "train.compile=true", "--full-epochs", "200",
                       "--epochs", "3", "--steps", "40", *cuda, *dry], 0.22, suite="train"),
        Part("step_cuda_graphs", [*bench, "step", *GLMC, "train.amp=bf16", "model.channels_last=true",
                                  "--compile-mode", "reduce-overhead", "--tag",
                                  "cuda_graphs", *cuda, *dry], 0.11, suite="step"),
        # The CLIP step fed by the torch DataLoader, then by DALI (failed where DALI is not installed).
        *[Part(f"step_clip_{backend}", [*bench, "step", *(CLIP_DRY if dry_run else CLIP), f"loader.backend={backend}",
                                        "--tag", f"clip_{backend}", *cuda, *(CLIP_DRY_OPTIONS if dry_run else [])],
               0.09, suite="step", own_file=False) for backend in ("torch", "dali")],
        Part("kernels", [*bench, "kernels", *([] if dry_run else KERNEL_ARGS), *cuda, *dry], 0.11, suite="kernels"),
        Part("pytest_gpu", pytest_args, 0.12, env={"FASTTRAIN_TEST_TIMEOUT_S": str(PYTEST_TEST_TIMEOUT_S)}),
        Part("loaders", [*bench, "loaders", *LOADER_ARGS, *cuda, *dry], 0.11, suite="loaders"),
    ]
    if dry_run:  # compiling on a CPU takes minutes: the dry run checks the plumbing without it
        for part in out:
            part.argv = [a for a in part.argv if a != "train.compile=true"]
            part.argv = ["none" if a == "reduce-overhead" else a for a in part.argv]
    return out


class Outbox:
    """The output folder, holding at most MAX_FILES files of at most MAX_FILE_BYTES each."""

    def __init__(self, path: Path):
        self.path = path
        self.path.mkdir(parents=True, exist_ok=True)
        self.names: list[str] = []
        self.left_out: list[str] = []

    def put(self, name: str, data: bytes) -> bool:
        if name not in self.names and len(self.names) >= MAX_FILES:
            self.left_out.append(f"{name} (more than {MAX_FILES} files)")
            return False
        if len(data) > MAX_FILE_BYTES:
            self.left_out.append(f"{name} ({len(data)} bytes > {MAX_FILE_BYTES})")
            return False
        tmp = self.path / f".{name}.tmp"
        tmp.write_bytes(data)
        tmp.replace(self.path / name)  # a reader never sees half a file
        if name not in self.names:
            self.names.append(name)
        return True


# How an overrunning part is stopped: SIGINT first (pytest prints its summary, a suite's
# KeyboardInterrupt leaves its last partial JSON), SIGTERM after a grace period, SIGKILL last.
STOP_SIGNALS = ((signal.SIGINT, 10.0), (signal.SIGTERM, 5.0))


def _stop_group(proc: subprocess.Popen) -> None:
    for sig, grace in STOP_SIGNALS:
        os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=grace)
            return
        except subprocess.TimeoutExpired:
            continue
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def default_sigint() -> None:
    """In a child before exec: SIGINT back to its default, so Python installs its KeyboardInterrupt
    handler even when this process was started with SIGINT ignored (a background job of a shell
    without job control, e.g. `cmd &` in a script)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def run_part(part: Part, timeout_s: float, scratch: Path, log_path: Path) -> dict:
    """Run one part in its own process group; kill the group if it overruns `timeout_s`."""
    argv = [sys.executable, *part.argv]
    if part.suite:
        argv += ["--out-dir", str(scratch / part.name)]
    t0 = time.perf_counter()
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                env={**os.environ, **part.env}, preexec_fn=default_sigint)
        try:
            rc = proc.wait(timeout=timeout_s)
            status = "ok" if rc == 0 or (part.name == "pytest_gpu" and rc == 5) else "failed"
        except subprocess.TimeoutExpired:
            _stop_group(proc)
            rc, status = None, "timeout"
    return {"name": part.name, "command": " ".join(argv), "status": status, "returncode": rc,
            "elapsed_s": round(time.perf_counter() - t0, 1), "timeout_s": round(timeout_s, 1)}


def add_arguments(p) -> None:
    p.add_argument("--out", required=True, help="the folder the results go to ($OUT on the device machine)")
    p.add_argument("--budget-s", type=float, default=DEFAULT_BUDGET_S,
                   help="wall-clock budget of the whole command (default leaves the 600 s call room for the "
                        "install and the output transfer)")
    p.add_argument("--only", default="", help="comma-separated part names (default: all, in order)")
    p.add_argument("--dry-run", action="store_true", help="the same code path on the CPU at tiny sizes")


def run(args, argv) -> dict:
    t_start = time.perf_counter()
    out = Outbox(Path(args.out))
    todo = [p for p in parts(args.dry_run) if not args.only or p.name in args.only.split(",")]
    summary = {"suite": "gpu", "budget_s": args.budget_s, "dry_run": args.dry_run, "parts": [], "reports": {},
               "command": "fasttrain bench gpu " + " ".join(argv)}
    scratch = Path(tempfile.mkdtemp(prefix="fasttrain_bench_gpu_"))
    for i, part in enumerate(todo):
        left = args.budget_s - (time.perf_counter() - t_start) - 5.0  # 5 s for the last summary write
        shares = sum(p.share for p in todo[i:])
        timeout = left * part.share / shares
        if timeout < 10:
            summary["parts"].append({"name": part.name, "status": "skipped", "why": f"budget left {left:.0f} s"})
            continue
        H.log_line(f"[gpu] {part.name}: up to {timeout:.0f} s")
        log_path = scratch / f"{part.name}.log"
        res = run_part(part, timeout, scratch, log_path)
        text = log_path.read_bytes()
        res["output_tail"] = text[-4000:].decode(errors="replace")
        if part.name == "pytest_gpu":
            res["file"] = "pytest_gpu.log" if out.put("pytest_gpu.log", text[-LOG_TAIL_BYTES:]) else None
        if part.suite:
            for f in sorted((scratch / part.name).glob("*.json")):
                report = json.loads(f.read_text())
                summary["reports"][part.name] = report
                res["file"] = f.name if part.own_file and out.put(f.name, f.read_bytes()) else None
            for f in sorted((scratch / part.name).glob("*.png")):
                res["png_bytes"] = f.stat().st_size
                if part.keep_png:
                    out.put(f.name, f.read_bytes())
        summary["parts"].append(res)
        H.log_line(f"[gpu] {part.name}: {res['status']} in {res['elapsed_s']} s")
        summary["elapsed_s"] = round(time.perf_counter() - t_start, 1)
        summary["files"], summary["left_out"] = out.names + ["gpu_summary.json"], out.left_out
        out.put("gpu_summary.json", json.dumps(summary, indent=1, default=str).encode())
    summary["elapsed_s"] = round(time.perf_counter() - t_start, 1)
    summary["files"], summary["left_out"] = out.names + (["gpu_summary.json"] if "gpu_summary.json" not in out.names
                                                         else []), out.left_out
    out.put("gpu_summary.json", json.dumps(summary, indent=1, default=str).encode())
    shutil.rmtree(scratch, ignore_errors=True)
    failed = [p["name"] for p in summary["parts"] if p.get("status") not in ("ok",)]
    summary["exit_code"] = 1 if failed else 0
    H.log_line(f"[gpu] done in {summary['elapsed_s']} s; not ok: {failed or 'none'}")
    return summary
