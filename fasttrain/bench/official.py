"""official: the GLMC CIFAR-10-LT ρ100 training step of the official code vs fasttrain's, side by
side in one process: same 4×-wide ResNet-32 (64/128/256), batch 64 + 64, two forwards, same threads.

The official code (github.com/ynu-yangpeng/GLMC) is never shipped or downloaded here: pass a
checkout with `--official-dir` (the repository root or its GLMC-2023 folder). Its step is not a
function — it is the body of the loop in `Trainer.train` — and it is CUDA-only (`.cuda()` on every
tensor), so this suite imports the official model (`model/ResNet_cifar.py`, `resnet32`) and mixing
(`utils/util.py`, `GLMC_mixed` with its `rand_bbox`) from the checkout, unmodified, and runs the
loop body's operations in their order on the CPU tensors: one-hot targets built on the host and
weighted by `update_weight`'s class weights, the unused `np.random.beta` draw, `GLMC_mixed`, two
forwards with `train=True`, the SimSiam term (`SimSiamLoss`, 'simplified'), the four soft-label CE
terms, `loss.item()`, `zero_grad`, `backward`, `SGD(momentum 0.9, lr, weight_decay)` step. The
`.cuda()` calls are left out rather than monkeypatched: on a CPU they would be the identity (and
patching `Tensor.cuda` process-wide would also hit fasttrain's configurations). `Trainer.py` itself
is not imported: it needs scikit-learn only for its evaluation's confusion matrix. The official
loader's work (PIL crop/flip, ToTensor, Normalize in DataLoader workers) is not part of the step:
its batches are normalised float NCHW tensors made once, as fasttrain's side gets one fixed batch
of its tensor backend (uint8, crop/flip/normalise/mix inside the step) — both sides time the step
on a batch already in memory.

fasttrain's side: the shipped GLMC recipe (`glmc/cifar10_lt_r100`) built by the run builder and
timed through `fasttrain.step.train_step`, in these configurations (all alternating with the
official step, one sample of each per round):

- fp32: `train.amp=fp32`, channels-last (the strict-fp32 default before `auto`);
- fp32_nchw: `model.channels_last=false` (contiguous NCHW inputs and weights);
- fp32_compile: `train.compile=true`;
- fp32_fuse: `method.fuse_two_forwards=true` (one 2B forward; changes BN statistics);
- bf32: fp32 weights with oneDNN's bf16 convolutions / matmuls
  (`torch.backends.mkldnn.{conv,matmul}.fp32_precision = "bf16"`, set only around its own steps);
- bf16: `train.amp=bf16` autocast; bf16_nchw; bf16_compile; bf16_fuse (one 2B forward);
  bf16_fuse_compile;
- auto: the defaults (`train.amp=auto`, `model.channels_last=auto`) — what a user gets here;
- convs_fp32 / convs_bf16: not a step — only the convolutions of one fasttrain step (every
  Conv2d call of both forwards, on the shapes it sees, forward + input and weight gradients,
  channels-last, operands already in that dtype). No step of that precision can be faster, so
  official ÷ convs_bf16 is the ceiling of any bf16 speed-up on this CPU.

    fasttrain bench official --official-dir /tmp/glmc_official [--reps 5] [--configs official,fp32,bf16]
"""
from __future__ import annotations

import contextlib
import importlib
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from fasttrain.bench import harness as H

DESCRIPTION = "the official GLMC training step vs fasttrain's (fp32, compile, bf16, bf32, layouts)"

CONFIG = "glmc/cifar10_lt_r100"
# name -> (overrides of the shipped recipe, oneDNN fp32 precision during its steps)
FASTTRAIN_CONFIGS: dict[str, tuple[list[str], str | None]] = {
    "fp32": (["train.amp=fp32", "model.channels_last=true"], None),
    "fp32_nchw": (["train.amp=fp32", "model.channels_last=false"], None),
    "fp32_compile": (["train.amp=fp32", "model.channels_last=true", "train.compile=true"], None),
    "fp32_fuse": (["train.amp=fp32", "model.channels_last=true", "method.fuse_two_forwards=true"], None),
    "bf32": (["train.amp=fp32", "model.channels_last=true"], "bf16"),
    "bf16": (["train.amp=bf16", "model.channels_last=true"], None),
    "bf16_nchw": (["train.amp=bf16", "model.channels_last=false"], None),
    "bf16_compile": (["train.amp=bf16", "model.channels_last=true", "train.compile=true"], None),
    "bf16_fuse": (["train.amp=bf16", "model.channels_last=true", "method.fuse_two_forwards=true"], None),
    "bf16_fuse_compile": (["train.amp=bf16", "model.channels_last=true", "method.fuse_two_forwards=true",
                           "train.compile=true"], None),
    "auto": ([], None),
}
CONV_CEILINGS = {"convs_fp32": torch.float32, "convs_bf16": torch.bfloat16}
DEFAULT_CONFIGS = ["official", *FASTTRAIN_CONFIGS, *CONV_CEILINGS]
# The recipe's values the official command line passes (README "Training", CIFAR-10-LT ρ100).
OFFICIAL_ARGS = {"lr": 0.01, "weight_decay": 5e-3, "label_weighting": 1.2, "contrast_weight": 1.0, "beta": 1.0,
                 "epochs": 200, "num_classes": 10}


def add_arguments(p) -> None:
    H.add_common_arguments(p, reps=5)
    p.add_argument("--official-dir", default=None,
                   help="a checkout of github.com/ynu-yangpeng/GLMC (root or GLMC-2023/); required")
    p.add_argument("--configs", default=",".join(DEFAULT_CONFIGS),
                   help=f"comma-separated, from: {', '.join(DEFAULT_CONFIGS)}")
    p.add_argument("--batch", type=int, default=64, help="rows per stream (the recipe: 64)")
    p.add_argument("--warmup", type=int, default=1, help="untimed rounds first (compile, allocator)")
    p.add_argument("--data", default="synthetic_cifar10_lt",
                   help="fasttrain's data.dataset (synthetic_cifar10_lt: no files needed; the step "
                        "costs the same as on cifar10_lt)")


# --- the official side -----------------------------------------------------------------------


def official_root(path: str | Path) -> Path:
    """The folder holding the official `model/` and `utils/` packages."""
    root = Path(path).expanduser().resolve()
    if (root / "GLMC-2023").is_dir():
        root = root / "GLMC-2023"
    for rel in ("model/ResNet_cifar.py", "utils/util.py"):
        if not (root / rel).is_file():
            raise FileNotFoundError(f"--official-dir {path}: no {rel} (expected a checkout of "
                                    "github.com/ynu-yangpeng/GLMC, its root or its GLMC-2023 folder)")
    return root


def import_official(root: Path):
    """(ResNet_cifar, util) imported from the checkout. Their package names are generic (`model`,
    `utils`): a module of those names already imported from elsewhere would shadow theirs."""
    for name in ("model", "utils"):
        mod = sys.modules.get(name)
        if mod is not None and root not in Path(getattr(mod, "__file__", "") or "/").resolve().parents:
            raise RuntimeError(f"a module named {name!r} from {getattr(mod, '__file__', '?')} is already imported; "
                               "run the official suite in its own process")
    sys.path.insert(0, str(root))
    try:
        resnet = importlib.import_module("model.ResNet_cifar")
        util = importlib.import_module("utils.util")
    finally:
        sys.path.remove(str(root))
    return resnet, util


def official_class_weights(counts: list[int], gamma: float) -> torch.Tensor:
    """`Trainer.update_weight`: 1/n_c^γ normalised to sum C (kept on the host here: no CUDA)."""
    w = 1.0 / (np.array(counts) ** gamma)
    return torch.FloatTensor(w / np.sum(w) * len(counts))


def simsiam(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """`Trainer.SimSiamLoss(p, z, version='simplified')`."""
    return -F.cosine_similarity(p, z.detach(), dim=-1).mean()


class OfficialStep:
    """The loop body of the official `Trainer.train` on fixed host batches (see the docstring)."""

    def __init__(self, root: Path, counts: list[int], batch: int, seed: int = 0):
        self.resnet, self.util = import_official(root)
        a = OFFICIAL_ARGS
        torch.manual_seed(seed)
        self.model = self.resnet.resnet32(num_class=a["num_classes"])
        self.model.train()
        self.optimizer = torch.optim.SGD(self.model.parameters(), momentum=0.9, lr=a["lr"],
                                         weight_decay=a["weight_decay"])
        self.per_cls_weights = official_class_weights(counts, a["label_weighting"])
        g = torch.Generator().manual_seed(seed)
        # What the two official loaders hand over: [view1, view2] normalised float NCHW, labels.
        self.org = [torch.randn(batch, 3, 32, 32, generator=g) for _ in range(2)]
        self.invs = [torch.randn(batch, 3, 32, 32, generator=g) for _ in range(2)]
        self.target_org = torch.randint(0, a["num_classes"], (batch,), generator=g)
        self.target_invs = torch.randint(0, a["num_classes"], (batch,), generator=g)
        self.epoch = 0
        self.losses: list[float] = []

    def __call__(self) -> None:
        a, C = OFFICIAL_ARGS, OFFICIAL_ARGS["num_classes"]
        alpha = 1 - (self.epoch / a["epochs"]) ** 2
        input_org_1, input_org_2 = self.org[0], self.org[1].clone()  # GLMC_mixed pastes into its org2
        target_org, target_invs = self.target_org, self.target_invs
        input_invs_1 = self.invs[0][:input_org_1.size()[0]]
        input_invs_2 = self.invs[1][:input_org_2.size()[0]]
        one_hot_org = torch.zeros(target_org.size(0), C).scatter_(1, target_org.view(-1, 1), 1)
        one_hot_org_w = self.per_cls_weights.cpu() * one_hot_org
        one_hot_invs = torch.zeros(target_invs.size(0), C).scatter_(1, target_invs.view(-1, 1), 1)
        one_hot_invs = one_hot_invs[:one_hot_org.size()[0]]
        one_hot_invs_w = self.per_cls_weights.cpu() * one_hot_invs
        np.random.beta(a["beta"], a["beta"])  # drawn and unused in the loop (GLMC_mixed draws its own)
        mix_x, cut_x, mixup_y, mixcut_y, mixup_y_w, cutmix_y_w = self.util.GLMC_mixed(
            org1=input_org_1, org2=input_org_2, invs1=input_invs_1, invs2=input_invs_2, label_org=one_hot_org,
            label_invs=one_hot_invs, label_org_w=one_hot_org_w, label_invs_w=one_hot_invs_w)
        output_1, output_cb_1, z1, p1 = self.model(mix_x, train=True)
        output_2, output_cb_2, z2, p2 = self.model(cut_x, train=True)
        contrastive_loss = simsiam(p1, z2) + simsiam(p2, z1)
        loss_mix = -torch.mean(torch.sum(F.log_softmax(output_1, dim=1) * mixup_y, dim=1))
        loss_cut = -torch.mean(torch.sum(F.log_softmax(output_2, dim=1) * mixcut_y, dim=1))
        loss_mix_w = -torch.mean(torch.sum(F.log_softmax(output_cb_1, dim=1) * mixup_y_w, dim=1))
        loss_cut_w = -torch.mean(torch.sum(F.log_softmax(output_cb_2, dim=1) * cutmix_y_w, dim=1))
        loss = alpha * (loss_mix + loss_cut) + (1 - alpha) * (loss_mix_w + loss_cut_w) + \
            a["contrast_weight"] * contrastive_loss
        self.losses.append(loss.item())  # the code's `losses.update(loss.item(), ...)`
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()


# --- fasttrain's side ------------------------------------------------------------------------


@contextlib.contextmanager
def onednn_fp32_precision(precision: str | None):
    """oneDNN's fp32 math for convolutions and matmuls ("bf16" = bf32: bf16 multiplies, fp32
    accumulation and storage), restored afterwards; None leaves it alone."""
    if precision is None:
        yield
        return
    mk = torch.backends.mkldnn
    old = (mk.conv.fp32_precision, mk.matmul.fp32_precision)
    mk.conv.fp32_precision = mk.matmul.fp32_precision = precision
    try:
        yield
    finally:
        mk.conv.fp32_precision, mk.matmul.fp32_precision = old


def fasttrain_step(overrides: list[str], precision: str | None, device: torch.device, batch: int, data: str,
                   dry_run: bool):
    """train_step of the shipped GLMC recipe with `overrides`, on one fixed batch of its loader."""
    from fasttrain.bench.step import build_bench_run
    from fasttrain.methods import Progress
    from fasttrain.step import train_step

    extra = [f"data.dataset={data}", f"loader.batch_size={batch}"] + (["model.arch=resnet32"] if dry_run else [])
    run = build_bench_run(CONFIG, [*extra, *overrides], device, "bench_official")
    run.model.train()
    run.train_loader.set_epoch(0)
    fixed = next(iter(run.train_loader))
    progress = Progress(epoch=0, epochs=run.cfg.train.epochs)

    def step():
        with onednn_fp32_precision(precision):
            train_step(run.learner, fixed, progress)

    return run, step


def conv_calls(device: torch.device, batch: int, data: str, dry_run: bool) -> list[tuple[torch.nn.Conv2d, tuple, bool]]:
    """(module, input shape, whether the input needs a gradient) of every Conv2d call in one
    fasttrain step of the recipe (both forwards; the stem's input, the images, needs none)."""
    run, step = fasttrain_step(["train.amp=fp32", "model.channels_last=true"], None, device, batch, data, dry_run)
    calls: list[tuple[torch.nn.Conv2d, tuple, bool]] = []
    hooks = [m.register_forward_hook(lambda mod, inp, out: calls.append((mod, tuple(inp[0].shape),
                                                                         inp[0].requires_grad)))
             for m in run.model.modules() if isinstance(m, torch.nn.Conv2d)]
    step()
    for h in hooks:
        h.remove()
    return calls


def convs_only(calls: list[tuple[torch.nn.Conv2d, tuple, bool]], dtype: torch.dtype, device: torch.device):
    """A callable running just those convolutions in `dtype`: forward, the weight gradient, and
    the input gradient where the step needs one."""
    g = torch.Generator(device=device).manual_seed(0)
    cl = torch.channels_last
    work = []
    for mod, shape, input_grad in calls:
        x = torch.randn(shape, generator=g, device=device).to(dtype).contiguous(memory_format=cl)
        x.requires_grad_(input_grad)
        w = mod.weight.detach().to(dtype).contiguous(memory_format=cl).requires_grad_()
        y = F.conv2d(x, w, None, mod.stride, mod.padding, mod.dilation, mod.groups)
        gy = torch.randn(y.shape, generator=g, device=device).to(dtype).contiguous(memory_format=cl)
        work.append((x, w, gy, mod, (x, w) if input_grad else (w,)))

    def run_convs():
        for x, w, gy, mod, wrt in work:
            y = F.conv2d(x, w, None, mod.stride, mod.padding, mod.dilation, mod.groups)
            torch.autograd.grad(y, wrt, gy)

    return run_convs


# --- the suite -------------------------------------------------------------------------------


def run(args, argv) -> dict:
    device = H.apply_common_arguments(args)
    if device.type != "cpu":
        raise SystemExit("fasttrain bench official: the official step is timed on the CPU (--device cpu); "
                         "its CUDA timing needs the official script itself")
    if not args.official_dir:
        raise SystemExit("fasttrain bench official: --official-dir is required (a checkout of "
                         "github.com/ynu-yangpeng/GLMC; this benchmark never downloads it)")
    names = [c for c in args.configs.split(",") if c]
    unknown = [c for c in names if c not in DEFAULT_CONFIGS]
    if unknown:
        raise SystemExit(f"--configs: unknown {unknown}; choose from {DEFAULT_CONFIGS}")
    reps, warmup = (1, 1) if args.dry_run else (args.reps, args.warmup)
    batch = 4 if args.dry_run else args.batch
    root = official_root(args.official_dir)
    fns, setups = {}, {}
    counts = None
    for name in names:
        if name == "official" or name in CONV_CEILINGS:
            continue
        overrides, precision = FASTTRAIN_CONFIGS[name]
        run_, fns[name] = fasttrain_step(overrides, precision, device, batch, args.data, args.dry_run)
        counts = [int(n) for n in run_.train_set.train_counts]
        from fasttrain.bench.step import setup_summary

        setups[name] = {**setup_summary(run_), "onednn_fp32_precision": precision or "default",
                        "fuse_two_forwards": run_.cfg.method.fuse_two_forwards}
    if "official" in names:
        if counts is None:
            from fasttrain.data.cifar import lt_counts

            counts = lt_counts(5000, 10, 100.0)
        official = OfficialStep(root, counts, batch)
        fns = {"official": official, **fns}
    if any(n in CONV_CEILINGS for n in names):
        calls = conv_calls(device, batch, args.data, args.dry_run)
        for n in names:
            if n in CONV_CEILINGS:
                fns[n] = convs_only(calls, CONV_CEILINGS[n], device)
                setups[n] = {"conv_calls": len(calls), "dtype": str(CONV_CEILINGS[n]), "memory_format": "channels_last"}
    order = [n for n in names if n in fns]
    warm: dict[str, float] = {}
    times = H.round_robin({n: fns[n] for n in order}, device, reps, warmup=warmup, log=H.log_line, warmup_s=warm)
    config = {"official_dir": str(root), "recipe": CONFIG, "batch_per_stream": batch, "rows_per_step": 2 * batch,
              "threads": torch.get_num_threads(), "reps": reps, "warmup_excluded": warmup, "order": order,
              "fasttrain_configs": setups, "dry_run": args.dry_run,
              "official_model": "model/ResNet_cifar.py resnet32 (nf=64: 64/128/256), fp32, NCHW, SGD(foreach default)"}
    report = H.new_report("official", device, config, argv)
    for name in order:
        report["results"].append(H.rate_row(name, times[name], 2 * batch, unit="img/s", group="GLMC step",
                                             warmup_s=warm.get(name)))
    by = {r["name"]: r for r in report["results"]}
    if "official" in by:
        base = by["official"]["median"]
        report["speedup_vs_official"] = {n: by[n]["median"] / base for n in order}
        for r in report["results"]:
            r["speedup_vs_official"] = r["median"] / base
        report["targets"] = targets(report["speedup_vs_official"])
    report["notes"].append("img/s = 128 rows (64 + 64) per step; every configuration alternates with the others "
                           "in one process, same threads")
    return H.save_report(report, args.out_dir, device, args.tag)


def targets(speedup: dict[str, float]) -> dict:
    """Issue #15's CPU targets: bf16 ≥ 3× official on native-bf16 CPUs, strict fp32 ≥ 1.05×."""
    from fasttrain.environment import native_bf16_cpu

    out = {}
    if "fp32" in speedup:
        out["strict_fp32_vs_official"] = {"ratio": speedup["fp32"], "target": 1.05, "met": speedup["fp32"] >= 1.05}
    best_bf16 = max((v for k, v in speedup.items() if k.startswith("bf16")), default=None)
    if best_bf16 is not None:
        out["best_bf16_vs_official"] = {"ratio": best_bf16, "target": 3.0, "met": best_bf16 >= 3.0,
                                        "applies": native_bf16_cpu()}
        if "convs_bf16" in speedup:  # the step's convolutions alone: what no bf16 step can beat
            out["best_bf16_vs_official"]["ceiling_convs_only"] = speedup["convs_bf16"]
    return out
