"""Soft-label CE benchmark: fwd+bwd time and peak memory, fused Triton vs eager vs torch.compile.

Workload (GLMC-style MixUp/CutMix with class weights): logits z (B, C) requiring grad,
targets t = lam e_{y_a} + (1 - lam) e_{y_b} with a per-sample lam, class weights w (C,);
loss = mean_i -sum_c t_ic w_c log_softmax(z_i)_c, then backward. The "dense" scenario feeds a
(B, C) soft target instead (distillation).

Implementations
- fused:           soft_target_cross_entropy(impl="triton"), backward by recompute (default)
- fused_gradfwd:   the same kernel writing the gradient in the forward (grad_mode="fused")
- eager:           -(t * w * log_softmax(z.float())).sum(1).mean(), t the dense (B, C) target
                   (built once outside the timed region, which favours eager)
- compile:         torch.compile of that eager function
- reference:       the pure-torch reference (impl="torch"; sparse targets via gather)
On CPU the Triton kernel cannot run (no interpreter timing is meaningful): the script runs the
reference, eager and compile in fp32 and says so, so that it is exercised by tests/CI.

Peak memory (CUDA) = max_memory_allocated during one fwd+bwd minus the memory held before it
(logits, targets, labels), i.e. the temporaries each implementation needs.

    python benchmarks/bench_soft_ce.py [--reps 7] [--out benchmarks/results/soft_ce_cpu.json]
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from typing import Callable, Optional

import torch

from fasttrain.benchmarking import (add_common_arguments, apply_common_arguments,
                                      emit_json, report_header, sync, time_calls)

from fasttrain.kernels.soft_ce import soft_target_cross_entropy
from fasttrain.kernels.soft_ce.function import triton_soft_target_cross_entropy
from fasttrain.kernels.soft_ce.reference import validate_inputs


def eager_loss(z: torch.Tensor, t: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return -(t * w * torch.log_softmax(z.float(), dim=1)).sum(1).mean()


def peak_extra_bytes(step: Callable[[], None], device: torch.device) -> Optional[int]:
    if device.type != "cuda":
        return None
    sync(device)
    base = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    step()
    sync(device)
    return torch.cuda.max_memory_allocated(device) - base


def run_config(B: int, C: int, dtype: torch.dtype, device: torch.device, scenario: str, impls: list[str],
               reps: int, iters: int) -> dict:
    g = torch.Generator(device=device).manual_seed(B * 31 + C)
    z = torch.randn(B, C, device=device, generator=g).to(dtype).requires_grad_()
    ya = torch.randint(0, C, (B,), device=device, generator=g)
    yb = torch.randint(0, C, (B,), device=device, generator=g)
    lam = torch.rand(B, device=device, generator=g)
    w = torch.rand(C, device=device, generator=g) + 0.1
    if scenario == "mix":
        eye_a = torch.nn.functional.one_hot(ya, C).float()
        t = lam[:, None] * eye_a + (1 - lam[:, None]) * torch.nn.functional.one_hot(yb, C).float()
        del eye_a
        sparse_kw = dict(y_a=ya, y_b=yb, lam=lam, class_weights=w)
    else:
        t = torch.softmax(torch.randn(B, C, device=device, generator=g), 1)
        sparse_kw = dict(targets=t, class_weights=w)
    compiled = torch.compile(eager_loss) if "compile" in impls else None

    fns: dict[str, Callable[[], torch.Tensor]] = {
        "fused": lambda: soft_target_cross_entropy(z, impl="triton", **sparse_kw),
        "fused_gradfwd": lambda: triton_soft_target_cross_entropy(validate_inputs(z, **sparse_kw), grad_mode="fused"),
        "eager": lambda: eager_loss(z, t, w),
        "compile": lambda: compiled(z, t, w),
        "reference": lambda: soft_target_cross_entropy(z, impl="torch", **sparse_kw),
    }
    row: dict = {"B": B, "C": C, "scenario": scenario, "dtype": str(dtype).replace("torch.", ""), "impls": {}}
    for name in impls:
        fn = fns[name]

        def step(fn=fn) -> None:
            z.grad = None
            fn().backward()

        try:
            ms = [t * 1e3 for t in time_calls(step, device, reps, inner=iters, warmup=3)]
            peak = peak_extra_bytes(step, device)
        except Exception as exc:  # e.g. torch.compile without a working C++ toolchain
            row["impls"][name] = {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"}
            continue
        row["impls"][name] = {
            "median_ms": statistics.median(ms),
            "min_ms": min(ms),
            "max_ms": max(ms),
            "stdev_ms": statistics.stdev(ms) if len(ms) > 1 else 0.0,
            "peak_extra_mib": None if peak is None else peak / 2**20,
        }
    base = row["impls"].get("fused") or row["impls"].get("reference")
    if base and "median_ms" in base:
        for other in ("eager", "compile"):
            o = row["impls"].get(other, {})
            if "median_ms" in o:
                row[f"speedup_vs_{other}"] = o["median_ms"] / base["median_ms"]
                if o.get("peak_extra_mib") and base.get("peak_extra_mib"):
                    row[f"peak_mem_ratio_vs_{other}"] = base["peak_extra_mib"] / o["peak_extra_mib"]
    return row


def main(argv: Optional[list[str]] = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_arguments(ap)
    ap.add_argument("--B", type=int, nargs="+", default=[128, 512, 1024])
    ap.add_argument("--C", type=int, nargs="+", default=[10, 100, 1000, 8142])
    ap.add_argument("--scenarios", nargs="+", default=None, help="mix and/or dense (default: both on CUDA, mix on CPU)")
    ap.add_argument("--reps", type=int, default=7, help="timed samples per configuration (>= 5 for reporting)")
    ap.add_argument("--iters", type=int, default=None, help="calls per sample (default 50 on CUDA, 3 on CPU)")
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile baseline")
    args = ap.parse_args(argv)

    device = apply_common_arguments(args)
    on_gpu = device.type == "cuda"
    dtype = torch.bfloat16 if on_gpu else torch.float32
    impls = ["fused", "fused_gradfwd", "eager", "compile"] if on_gpu else ["reference", "eager", "compile"]
    if args.no_compile:
        impls.remove("compile")
    scenarios = args.scenarios or (["mix", "dense"] if on_gpu else ["mix"])
    iters = args.iters or (50 if on_gpu else 3)

    report = {
        **report_header("soft_ce", device),
        "note": None if on_gpu else "CPU run: Triton kernel not timed (needs CUDA); reference vs eager vs "
                                    "torch.compile in fp32. GPU numbers are still owed.",
        "dtype": str(dtype).replace("torch.", ""),
        "reps": args.reps,
        "iters_per_rep": iters,
        "results": [],
    }
    for scenario in scenarios:
        for B in args.B:
            for C in args.C:
                row = run_config(B, C, dtype, device, scenario, impls, args.reps, iters)
                report["results"].append(row)
                print(json.dumps(row), file=sys.stderr, flush=True)
    return emit_json(report, args.out)


if __name__ == "__main__":
    main()
