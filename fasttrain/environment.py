"""The process a run lives in: device, precision, seeds/RNG state, and the one description of
versions and device that run summaries, `fasttrain info` and every benchmark report."""
from __future__ import annotations

import os
import platform
import random

import numpy as np
import torch

from fasttrain import __version__


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device: {name!r} requested but CUDA is not available (use device=cpu)")
    return dev


def sync(device: torch.device) -> None:
    """Wait for queued device work (CUDA runs asynchronously) before a clock is read."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# `train.amp: auto` on a CPU: bf16 autocast where the CPU computes bf16 natively (measured on
# the GLMC step, see README "Performance"), else fp32. The one switch of that policy: set it to
# False and `auto` means fp32 on every CPU again (`train.amp: fp32` is the strict switch anyway).
CPU_AUTO_BF16 = True

# /proc/cpuinfo flags of native bf16 arithmetic: x86 AVX512-BF16 (dot products) and AMX-BF16
# (tile matrix multiply); Arm's BF16 extension ("bf16" in the aarch64 Features line). oneDNN
# emulates bf16 on plain AVX512 too (torch.ops.mkldnn._is_mkldnn_bf16_supported() is true there),
# but emulated bf16 convolutions are slower than fp32 ones, so emulation does not count.
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16", "bf16")


def cpu_flags() -> set[str]:
    """The CPU feature flags of /proc/cpuinfo (x86 `flags`, aarch64 `Features`); empty elsewhere."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key = line.split(":", 1)[0].strip()
                if key in ("flags", "Features"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def native_bf16_cpu(flags: set[str] | None = None) -> bool:
    """Whether this CPU has native bf16 arithmetic (AVX512-BF16, AMX-BF16 or Arm BF16)."""
    flags = cpu_flags() if flags is None else flags
    return any(f in flags for f in NATIVE_BF16_FLAGS)


def auto_amp(device: torch.device, flags: set[str] | None = None) -> torch.dtype | None:
    """What `train.amp: auto` runs on `device`: bf16 on CUDA; on a CPU bf16 where it is native
    (and CPU_AUTO_BF16), else fp32 (None). `flags` overrides /proc/cpuinfo (tests)."""
    if device.type == "cuda":
        return torch.bfloat16
    if device.type == "cpu" and CPU_AUTO_BF16 and native_bf16_cpu(flags):
        return torch.bfloat16
    return None


def amp_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """Autocast dtype for `train.amp`, or None for fp32 (`auto`: see `auto_amp`)."""
    if amp == "auto":
        return auto_amp(device)
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}[amp]


# `model.channels_last: auto` per device type: channels-last (NHWC) where it is faster for the
# conv nets here. CUDA: tensor-core convolutions want NHWC. CPU (oneDNN runs both): the 4x-wide
# ResNet-32 forward + backward, batch 128, 2 threads, was faster in NHWC in fp32 (3.15 vs 4.12 s)
# and under bf16 autocast (1.45 vs 1.58 s) — README "Performance"; `fasttrain bench official`'s
# *_nchw rows re-measure it on the whole GLMC step.
AUTO_CHANNELS_LAST = {"cuda": True, "cpu": True}


def resolve_channels_last(setting: bool | str, device: torch.device) -> bool:
    """`model.channels_last` (true | false | auto) resolved for `device`."""
    if setting == "auto":
        return AUTO_CHANNELS_LAST.get(device.type, False)
    return bool(setting)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def rng_state() -> dict:
    """Every global RNG's state as tensors and plain containers (checkpoints load weights_only)."""
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {"python": random.getstate(), "torch": torch.get_rng_state(),
             "numpy": {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                       "has_gauss": int(has_gauss), "gauss": float(gauss)}}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def memory_peaks(device: torch.device) -> dict:
    """Peak host RSS and (on CUDA) peak allocated GPU memory of this process so far, in MiB."""
    import resource

    out = {"host_rss_peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if device.type == "cuda":
        out["gpu_mem_peak_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
    return out


def versions() -> dict:
    """Versions of fasttrain and the libraries a result depends on (and the CUDA device)."""
    info = {"fasttrain": __version__, "torch": torch.__version__, "python": platform.python_version()}
    try:
        import torchvision

        info["torchvision"] = torchvision.__version__
    except ImportError:
        pass
    if torch.cuda.is_available():
        info["cuda_device"] = torch.cuda.get_device_name()
        info["cuda"] = torch.version.cuda
    return info


def cpu_model() -> str:
    """The CPU's model name (timings on different CPUs are not comparable)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def describe_device(device: torch.device) -> str:
    """The GPU's name, or the CPU model with its thread count and load (CPU timings depend on all)."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return (f"cpu ({cpu_model()}, {platform.machine()}, {torch.get_num_threads()} threads, "
            f"loadavg {os.getloadavg()[0]:.1f})")
