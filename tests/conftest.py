"""Test configuration.

- Markers `gpu` and `slow` are deselected unless a `-m` expression is given. Under `-m`, tests
  marked `gpu(first=True)` run first (the GPU one-shot's most telling checks, before its budget
  can run out).
- Triton kernel tests (`*_triton.py`) run where the kernels can: in a process started with
  TRITON_INTERPRET=1 (set before triton is imported; `test_triton_kernels.py` starts that process
  from the normal run, so one `pytest tests` command runs everything), or compiled on a CUDA
  machine, where they carry the `gpu` marker.
- FASTTRAIN_TEST_TIMEOUT_S=N fails any test still running after N seconds (the GPU one-shot sets
  it, so one hung test cannot eat the part's share of the budget; SIGALRM, so POSIX only).
"""
from __future__ import annotations

import importlib.util
import os
import signal

import pytest

INTERPRETER = os.environ.get("TRITON_INTERPRET") == "1"


def _compiled_triton_runs() -> bool:
    if INTERPRETER or importlib.util.find_spec("triton") is None:
        return False
    import torch

    return torch.cuda.is_available()


COMPILED_TRITON = _compiled_triton_runs()
collect_ignore_glob = [] if INTERPRETER or COMPILED_TRITON else ["*_triton.py"]


def pytest_configure(config):
    config.addinivalue_line("markers", "gpu: needs a CUDA device (deselected by default)")
    config.addinivalue_line("markers", "slow: long-running (deselected by default)")
    # torchvision 0.29 deprecates its JPEG codecs (TorchCodec supersedes them); we use them on purpose.
    from fasttrain.compat import TVIO_DEPRECATION

    config.addinivalue_line("filterwarnings", f"ignore:{TVIO_DEPRECATION}:DeprecationWarning")


def pytest_collection_modifyitems(config, items):
    if COMPILED_TRITON:
        for item in items:
            if item.path.name.endswith("_triton.py"):
                item.add_marker(pytest.mark.gpu)
    if config.option.markexpr:
        items.sort(key=lambda item: not _runs_first(item))  # stable: the rest keep their order
        return
    keep, drop = [], []
    for item in items:
        (drop if ("gpu" in item.keywords or "slow" in item.keywords) else keep).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


def _runs_first(item) -> bool:
    mark = item.get_closest_marker("gpu")
    return bool(mark and mark.kwargs.get("first"))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item):
    limit = float(os.environ.get("FASTTRAIN_TEST_TIMEOUT_S") or 0)
    if limit <= 0 or not hasattr(signal, "SIGALRM"):
        yield
        return

    def on_alarm(signum, frame):
        pytest.fail(f"still running after FASTTRAIN_TEST_TIMEOUT_S={limit:g} s", pytrace=False)

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, limit)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _cifar10_root():
    from pathlib import Path

    for root in (os.environ.get("FASTTRAIN_DATA"), Path(__file__).resolve().parent.parent / "data"):
        if root and (Path(root) / "cifar-10-batches-py" / "test_batch").is_file():
            return Path(root)
    return None


@pytest.fixture
def cifar10_root():
    """Root holding the real `cifar-10-batches-py` (`fasttrain data cifar10 --root data`).

    Skipped when absent, except in CI (FASTTRAIN_REQUIRE_DATA=1), where it must be there."""
    root = _cifar10_root()
    if root is None:
        msg = "real CIFAR-10 not found: run `fasttrain data cifar10 --root data` (or set FASTTRAIN_DATA)"
        if os.environ.get("FASTTRAIN_REQUIRE_DATA") == "1":
            pytest.fail(msg)
        pytest.skip(msg)
    return root
