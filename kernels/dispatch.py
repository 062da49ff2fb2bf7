"""The one answer to "Triton kernel or pure-torch reference?" for every kernel in this package.

`impl` is what the caller asked for:
- "torch": the reference, everywhere.
- "triton": the kernel; it needs Triton installed and CUDA tensors, or the Triton interpreter
  (TRITON_INTERPRET=1, set before triton is imported: the CPU kernel tests). Anything else is an
  error that says what is missing.
- "auto": the kernel on CUDA when Triton is importable, the reference otherwise. A CUDA machine
  without Triton gets the reference and one warning (not an error: the run still trains, slower).
  The interpreter is never chosen by "auto": it is a test tool, far slower than the reference.
"""
from __future__ import annotations

import functools
import os
import warnings

import torch

IMPLS = ("auto", "triton", "torch")  # Triton on CUDA (auto) | always Triton | the reference


def triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def interpreting() -> bool:
    """Whether Triton runs kernels in its CPU interpreter (TRITON_INTERPRET, read as Triton does)."""
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "yes", "on")


@functools.cache
def _warn_reference_on_cuda(what: str) -> None:
    warnings.warn(f"{what}: Triton is not installed, so the pure-torch reference runs on CUDA "
                  "(slower; pip install triton for the fused kernel)", RuntimeWarning, stacklevel=3)


def use_triton(impl: str, device: torch.device, what: str) -> bool:
    """Whether `what` (a kernel's name, for messages) runs its Triton kernel on `device`'s tensors."""
    if impl not in IMPLS:
        raise ValueError(f"{what}: impl must be one of {IMPLS}, got {impl!r}")
    if impl == "torch":
        return False
    if impl == "triton":
        if not triton_available():
            raise ImportError(f"{what}: impl='triton' needs the `triton` package (pip install triton)")
        if device.type != "cuda" and not interpreting():
            raise RuntimeError(f"{what}: impl='triton' needs CUDA tensors (or TRITON_INTERPRET=1 set before "
                               "triton is imported, for tests on CPU); use impl='auto' or 'torch'")
        return True
    if device.type != "cuda":
        return False
    if not triton_available():
        _warn_reference_on_cuda(what)
        return False
    return True
