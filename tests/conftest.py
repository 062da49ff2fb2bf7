"""Test configuration.

- Markers `gpu` and `slow` are deselected unless a `-m` expression is given.
- Triton kernel tests (`*_triton.py`) need TRITON_INTERPRET=1 set before triton is imported,
  so they are collected only in a process started with it; `test_triton_kernels.py` starts
  that process from the normal run, so one `pytest tests` command runs everything.
"""
from __future__ import annotations

import os

import pytest

collect_ignore_glob = [] if os.environ.get("TRITON_INTERPRET") == "1" else ["*_triton.py"]


def pytest_configure(config):
    config.addinivalue_line("markers", "gpu: needs a CUDA device (deselected by default)")
    config.addinivalue_line("markers", "slow: long-running (deselected by default)")
    # torchvision 0.29 deprecates its JPEG codecs (TorchCodec supersedes them); we use them on purpose.
    from fasttrain.compat import TVIO_DEPRECATION

    config.addinivalue_line("filterwarnings", f"ignore:{TVIO_DEPRECATION}:DeprecationWarning")


def pytest_collection_modifyitems(config, items):
    if config.option.markexpr:
        return
    keep, drop = [], []
    for item in items:
        (drop if ("gpu" in item.keywords or "slow" in item.keywords) else keep).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


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
