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


def amp_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """Autocast dtype for `train.amp`, or None for fp32. `auto` = bf16 on CUDA, fp32 on CPU."""
    if amp == "auto":
        return torch.bfloat16 if device.type == "cuda" else None
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}[amp]


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
