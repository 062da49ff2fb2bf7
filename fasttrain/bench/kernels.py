"""kernels: the fused mix and soft-label loss kernels against their references, eager PyTorch,
torch.compile and torchvision.transforms.v2 MixUp / CutMix.

Mix (GLMC-style, B output pairs, L×L): 2B uint8 channels-last source rows in two views; view 0 →
MixUp of (a, b) pairs, view 1 → CutMix, both normalised to `dtype`; at 32 px every source row also
carries a per-sample crop (padding 4) + flip (the tensor backend's deferred geometry).
- reference: fasttrain.augment.mixup_cutmix(impl="torch") (batched torch ops);
- compile: torch.compile of that reference;
- fused: the Triton kernel (kernels/mix);
- torchvision_v2: ToDtype(scale) + Normalize + MixUp / CutMix of torchvision.transforms.v2 on the
  B a-rows (at 32 px after v2 RandomCrop(padding 4) + RandomHorizontalFlip, which draw one crop
  and flip per batch: less work than per sample).
GB/s counts the same logical traffic for all: per output image and view, two uint8 source images
read and one `dtype` image written.

Loss (soft-label CE, fwd + bwd): logits (B, C) with grad, targets λ e_{y_a} + (1 − λ) e_{y_b}
(per-sample λ), class weights w; "dense" feeds a (B, C) soft target instead (distillation).
- fused: soft_target_cross_entropy(impl="triton") (backward by recompute); fused_gradfwd: the
  kernel writing the gradient in the forward; reference: impl="torch";
- eager: -(t * w * log_softmax(z.float())).sum(1).mean() with t dense (built outside the timing,
  which favours eager); compile: torch.compile of eager.
Peak memory (CUDA): max_memory_allocated during one fwd + bwd minus what was held before.

Timing: on CUDA every repetition is one call between CUDA events after zeroing a 256 MiB buffer
(triton.testing.do_bench's L2 flush: at C = 1000 the logits fit in an H200's 60 MB L2 and
warm-cache timings would overstate bandwidth); on CPU, the mean of a few calls per repetition.
The Triton kernels run on CUDA, or on the CPU under TRITON_INTERPRET=1 (set before the import;
interpreter timings say nothing of speed); otherwise they are skipped and the JSON says why.

    fasttrain bench kernels [--device cuda] [--reps 50]
"""
from __future__ import annotations

import os

import torch

from fasttrain.bench import harness as H

DESCRIPTION = "fused mix / soft-CE kernels vs reference, eager, torch.compile, torchvision v2"

# Peak DRAM bandwidth (bytes/s) by device-name substring (vendor spec sheets).
SPEC_BW = {"H200": 4.8e12, "H100 SXM": 3.35e12, "H100 80GB HBM3": 3.35e12, "H100 PCIe": 2.0e12,
           "H100 NVL": 3.9e12, "A100-SXM4-80GB": 2.04e12, "A100": 1.555e12}
L2_FLUSH_BYTES = 256 * 2**20
COMPILE_SKIPPED = "no torch.compile baseline for this group (--no-compile, --compile-groups or --dry-run)"


def add_arguments(p) -> None:
    H.add_common_arguments(p, reps=None)
    p.add_argument("--mix-batches", default=None, help="default 64,256,1024 (CPU: 64,256)")
    p.add_argument("--mix-sizes", default="32,224")
    p.add_argument("--loss-B", default=None, help="default 128,512,1024 (CPU: 128,512)")
    p.add_argument("--loss-C", default=None, help="default 10,100,1000,8142 (CPU: 10,1000)")
    p.add_argument("--dtypes", default=None, help="default float32,bfloat16 on CUDA, float32 on CPU")
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile baselines")
    p.add_argument("--compile-groups", default="all",
                   help="comma-separated group names that get the torch.compile baseline (e.g. "
                        "'mix B256 32px bfloat16,loss mix B512 C1000 bfloat16'), or 'all'; every "
                        "group is a cold compile (~2 s each on an H100), so a short GPU window names one")
    p.add_argument("--max-source-mb", type=float, default=None,
                   help="skip mix configs whose uint8 sources exceed this (default 200 on CPU)")


def triton_status(device: torch.device) -> tuple[bool, str]:
    from fasttrain.kernels.mix.function import triton_available

    if not triton_available():
        return False, "triton not importable"
    if device.type == "cuda":
        return True, "CUDA"
    if os.environ.get("TRITON_INTERPRET") == "1":
        return True, "TRITON_INTERPRET=1 on CPU: interpreter timings are not a measure of speed"
    return False, "Triton kernels need CUDA (or TRITON_INTERPRET=1 set before import on CPU); skipped"


class Timer:
    """Seconds per call: L2-flushed single calls between CUDA events on a GPU, else wall clock."""

    def __init__(self, device: torch.device, reps: int, inner_cpu: int):
        self.device, self.reps, self.inner_cpu = device, reps, inner_cpu
        self.flush = torch.empty(L2_FLUSH_BYTES, dtype=torch.uint8, device=device) if device.type == "cuda" else None

    def __call__(self, fn, warmup: int = 3) -> list[float]:
        if self.flush is None:
            return H.time_calls(fn, self.device, self.reps, inner=self.inner_cpu, warmup=warmup)
        for _ in range(warmup):
            fn()
        events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
                  for _ in range(self.reps)]
        for start, end in events:
            self.flush.zero_()  # evict the inputs from L2, as triton.testing.do_bench does
            start.record()
            fn()
            end.record()
        torch.cuda.synchronize(self.device)
        return [s.elapsed_time(e) / 1e3 for s, e in events]


def timed_row(name: str, fn, timer: Timer, group: str, **extra) -> dict:
    try:
        secs = timer(fn)
    except Exception as exc:  # e.g. torch.compile without a working C++ toolchain: recorded, not fatal
        return {"name": name, "group": group, "error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"}
    return H.row(name, [s * 1e3 for s in secs], "ms", group, **extra)


# --- mix -------------------------------------------------------------------------------------


def mix_inputs(b: int, size: int, device: torch.device, seed: int = 0):
    from fasttrain import augment as A
    from fasttrain.batch import random_geometry

    g = torch.Generator().manual_seed(seed)
    views = [torch.randint(0, 256, (2 * b, 3, size, size), dtype=torch.uint8, generator=g)
             .to(device).contiguous(memory_format=torch.channels_last) for _ in range(2)]
    geos = [None, None]
    if size <= 64:
        gd = torch.Generator(device=device).manual_seed(seed)
        geos = [random_geometry(2 * b, 4, True, gd, device) for _ in range(2)]
    idx_a, idx_b = torch.arange(b, device=device), torch.arange(b, 2 * b, device=device)
    return views, geos, idx_a, idx_b, A.sample_mix(size, size, generator=g)


def torchvision_mix(size: int, num_classes: int, dtype: torch.dtype):
    from torchvision.transforms import v2

    from fasttrain.data.index import IMAGENET_MEAN, IMAGENET_STD

    pre = [v2.RandomCrop(size, padding=4), v2.RandomHorizontalFlip()] if size <= 64 else []
    norm = v2.Compose(pre + [v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(IMAGENET_MEAN), list(IMAGENET_STD))])
    mixup, cutmix = v2.MixUp(num_classes=num_classes), v2.CutMix(num_classes=num_classes)

    def run(views, idx_a, labels):
        x_mix, y_mix = mixup(norm(views[0][idx_a]), labels)
        x_cut, y_cut = cutmix(norm(views[1][idx_a]), labels)
        return x_mix.to(dtype), x_cut.to(dtype), y_mix, y_cut

    return run


def mix_group(b: int, size: int, dtype: torch.dtype) -> str:
    return f"mix B{b} {size}px {str(dtype).replace('torch.', '')}"


def loss_group(scenario: str, B: int, C: int, dtype: torch.dtype) -> str:
    return f"loss {scenario} B{B} C{C} {str(dtype).replace('torch.', '')}"


def mix_rows(b: int, size: int, dtype: torch.dtype, device, timer: Timer, triton: tuple[bool, str],
             compile_: bool, peak_bw: float | None) -> list[dict]:
    from fasttrain import augment as A
    from fasttrain.data.index import IMAGENET_MEAN, IMAGENET_STD

    views, geos, idx_a, idx_b, spec = mix_inputs(b, size, device)
    labels = torch.randint(0, 10, (b,), device=device)

    def mix(impl):
        return lambda: A.mixup_cutmix(views[0], views[1], geos[0], geos[1], idx_a, idx_b, spec, IMAGENET_MEAN,
                                      IMAGENET_STD, dtype, impl=impl)

    compiled = torch.compile(A.mixup_cutmix) if compile_ else None
    tv = torchvision_mix(size, 10, dtype)
    group = mix_group(b, size, dtype)
    pixels = 3 * size * size
    traffic = 2 * b * (2 * pixels + pixels * torch.finfo(dtype).bits // 8)
    impls = {"reference": mix("torch"),
             "compile": (lambda: compiled(views[0], views[1], geos[0], geos[1], idx_a, idx_b, spec, IMAGENET_MEAN,
                                          IMAGENET_STD, dtype, impl="torch")) if compiled else None,
             "fused": mix("triton") if triton[0] else None,
             "torchvision_v2": lambda: tv(views, idx_a, labels)}
    rows = []
    for name, fn in impls.items():
        if fn is None:
            rows.append({"name": name, "group": group, "skipped": triton[1] if name == "fused" else COMPILE_SKIPPED})
            continue
        r = timed_row(name, fn, timer, group, batch=b, size=size,
                      geometry="per-sample crop+flip" if geos[0] is not None else "none (pre-cropped)")
        if "median" in r:
            r["gb_per_s"] = traffic / (r["median"] / 1e3) / 1e9
            if peak_bw:
                r["frac_of_peak_bw"] = r["gb_per_s"] * 1e9 / peak_bw
        rows.append(r)
    ref = next((r for r in rows if r["name"] == "torchvision_v2" and "median" in r), None)
    for r in rows:
        if ref and "median" in r:
            r["speedup_vs_torchvision_v2"] = ref["median"] / r["median"]
    return rows


# --- loss ------------------------------------------------------------------------------------


def eager_loss(z: torch.Tensor, t: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return -(t * w * torch.log_softmax(z.float(), dim=1)).sum(1).mean()


def peak_extra_mib(step, device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    torch.cuda.synchronize(device)
    base = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    step()
    torch.cuda.synchronize(device)
    return (torch.cuda.max_memory_allocated(device) - base) / 2**20


def loss_rows(B: int, C: int, dtype: torch.dtype, scenario: str, device, timer: Timer, triton: tuple[bool, str],
              compile_: bool) -> list[dict]:
    from fasttrain.kernels.soft_ce import soft_target_cross_entropy
    from fasttrain.kernels.soft_ce.function import triton_soft_target_cross_entropy
    from fasttrain.kernels.soft_ce.reference import validate_inputs

    g = torch.Generator(device=device).manual_seed(B * 31 + C)
    z = torch.randn(B, C, device=device, generator=g).to(dtype).requires_grad_()
    ya, yb = (torch.randint(0, C, (B,), device=device, generator=g) for _ in range(2))
    lam = torch.rand(B, device=device, generator=g)
    w = torch.rand(C, device=device, generator=g) + 0.1
    if scenario == "mix":
        oh = torch.nn.functional.one_hot
        t = lam[:, None] * oh(ya, C).float() + (1 - lam[:, None]) * oh(yb, C).float()
        kw = dict(y_a=ya, y_b=yb, lam=lam, class_weights=w)
    else:
        t = torch.softmax(torch.randn(B, C, device=device, generator=g), 1)
        kw = dict(targets=t, class_weights=w)
    compiled = torch.compile(eager_loss) if compile_ else None
    fns = {"fused": (lambda: soft_target_cross_entropy(z, impl="triton", **kw)) if triton[0] else None,
           "fused_gradfwd": (lambda: triton_soft_target_cross_entropy(validate_inputs(z, **kw), grad_mode="fused"))
           if triton[0] else None,
           "reference": lambda: soft_target_cross_entropy(z, impl="torch", **kw),
           "eager": lambda: eager_loss(z, t, w),
           "compile": (lambda: compiled(z, t, w)) if compiled else None}
    group = loss_group(scenario, B, C, dtype)
    rows = []
    for name, fn in fns.items():
        if fn is None:
            rows.append({"name": name, "group": group,
                         "skipped": triton[1] if name.startswith("fused") else COMPILE_SKIPPED})
            continue

        def step(fn=fn):
            z.grad = None
            fn().backward()

        r = timed_row(name, step, timer, group, B=B, C=C, scenario=scenario)
        if "median" in r:
            r["peak_extra_mib"] = peak_extra_mib(step, device)
        rows.append(r)
    by = {r["name"]: r for r in rows if "median" in r}
    base = by.get("fused") or by.get("reference")
    for other in ("eager", "compile"):
        if base and other in by:
            base[f"speedup_vs_{other}"] = by[other]["median"] / base["median"]
            if base.get("peak_extra_mib") and by[other].get("peak_extra_mib"):
                base[f"peak_mem_ratio_vs_{other}"] = base["peak_extra_mib"] / by[other]["peak_extra_mib"]
    return rows


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def sweep_plan(args, gpu: bool) -> dict:
    """The sizes, dtypes and group names a run of these arguments measures."""
    if args.dry_run:
        batches, sizes, Bs, Cs, reps = [4], [32], [8], [10], 1
    else:
        batches = _ints(args.mix_batches or ("64,256,1024" if gpu else "64,256"))
        sizes = _ints(args.mix_sizes)
        Bs = _ints(args.loss_B or ("128,512,1024" if gpu else "128,512"))
        Cs = _ints(args.loss_C or ("10,100,1000,8142" if gpu else "10,1000"))
        reps = args.reps or (50 if gpu else 5)
    dtypes = [getattr(torch, d) for d in (args.dtypes or ("float32,bfloat16" if gpu else "float32")).split(",")]
    loss_dtype = torch.bfloat16 if gpu else torch.float32
    scenarios = ["mix", "dense"] if gpu else ["mix"]
    groups = {mix_group(b, s, d) for s in sizes for b in batches for d in dtypes} | \
             {loss_group(sc, B, C, loss_dtype) for sc in scenarios for B in Bs for C in Cs}
    return {"batches": batches, "sizes": sizes, "Bs": Bs, "Cs": Cs, "reps": reps, "dtypes": dtypes,
            "loss_dtype": loss_dtype, "scenarios": scenarios, "groups": groups}


def run(args, argv) -> dict:
    device = H.apply_common_arguments(args)
    gpu = device.type == "cuda"
    plan = sweep_plan(args, gpu)
    batches, sizes, Bs, Cs, reps = plan["batches"], plan["sizes"], plan["Bs"], plan["Cs"], plan["reps"]
    dtypes, loss_dtype, scenarios = plan["dtypes"], plan["loss_dtype"], plan["scenarios"]
    max_mb = args.max_source_mb if args.max_source_mb is not None else (1e12 if gpu else 200.0)
    triton = triton_status(device)
    compile_ = not (args.no_compile or args.dry_run)  # compiling takes most of a dry run's minute
    compile_groups = None if args.compile_groups == "all" else {g.strip() for g in args.compile_groups.split(",")}
    if compile_groups and not args.dry_run and compile_groups - plan["groups"]:
        raise SystemExit(f"--compile-groups: {sorted(compile_groups - plan['groups'])} not in this sweep's groups "
                         f"{sorted(plan['groups'])}")

    def compiles(group: str) -> bool:
        return compile_ and (compile_groups is None or group in compile_groups)

    timer = Timer(device, reps, inner_cpu=1 if args.dry_run else 3)
    peak_bw = next((bw for k, bw in SPEC_BW.items() if gpu and k in torch.cuda.get_device_name(device)), None)
    config = {"mix_batches": batches, "mix_sizes": sizes, "loss_B": Bs, "loss_C": Cs,
              "dtypes": [str(d).replace("torch.", "") for d in dtypes], "reps": reps, "warmup_excluded": 3,
              "timing": ("one call per repetition between CUDA events, 256 MiB L2 flush before each" if gpu else
                         "wall clock, mean of %d calls per repetition" % timer.inner_cpu),
              "triton": {"runs": triton[0], "why": triton[1]}, "compile": compile_,
              "compile_groups": sorted(compile_groups) if compile_groups is not None else "all",
              "dry_run": args.dry_run,
              "peak_bandwidth_gb_s": peak_bw / 1e9 if peak_bw else None}
    report = H.new_report("kernels", device, config, argv)
    if not triton[0]:
        report["notes"].append(f"fused Triton kernels not timed: {triton[1]}")
    for size in sizes:
        for b in batches:
            for dtype in dtypes:
                src_mb = 2 * 2 * b * 3 * size * size / 2**20
                if src_mb > max_mb:
                    report["results"].append({"name": "mix", "group": f"mix B{b} {size}px",
                                              "skipped": f"sources {src_mb:.0f} MB > --max-source-mb {max_mb:.0f}"})
                    continue
                report["results"] += mix_rows(b, size, dtype, device, timer, triton,
                                              compiles(mix_group(b, size, dtype)), peak_bw)
                H.save_partial(report, args.out_dir, device, args.tag)
                H.log_line(f"mix B{b} {size}px done")
    for scenario in scenarios:
        for B in Bs:
            for C in Cs:
                report["results"] += loss_rows(B, C, loss_dtype, scenario, device, timer, triton,
                                               compiles(loss_group(scenario, B, C, loss_dtype)))
                H.save_partial(report, args.out_dir, device, args.tag)
                H.log_line(f"loss {scenario} B{B} C{C} done")
    report["targets"] = kernel_targets(report["results"])
    return H.save_report(report, args.out_dir, device, args.tag)


def kernel_targets(rows: list[dict]) -> dict:
    """Issue targets, where the fused kernels ran: mix ≥ 5× torchvision v2; loss ≥ 2× eager and
    ≥ 1.2× compile at ≤ ½ eager's peak memory (each config listed)."""
    out = {"mix_vs_torchvision_v2": [], "loss_vs_eager_compile": []}
    for r in rows:
        if r.get("name") != "fused" or "median" not in r:
            continue
        if r["group"].startswith("mix"):
            s = r.get("speedup_vs_torchvision_v2")
            out["mix_vs_torchvision_v2"].append({"group": r["group"], "ratio": s, "target": 5.0,
                                                 "met": s is not None and s >= 5.0})
        else:
            e, c, m = r.get("speedup_vs_eager"), r.get("speedup_vs_compile"), r.get("peak_mem_ratio_vs_eager")
            out["loss_vs_eager_compile"].append({"group": r["group"], "vs_eager": e, "vs_compile": c,
                                                 "peak_mem_vs_eager": m,
                                                 "met": bool(e and e >= 2 and c and c >= 1.2 and m is not None
                                                             and m <= 0.5)})
    return out
