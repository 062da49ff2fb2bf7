"""Shared pieces of the benchmark scripts in benchmarks/: device description and JSON output.

Every benchmark prints one JSON document (device, versions, median and spread) and can write
it under benchmarks/results/.
"""
from __future__ import annotations

import json
import os
import platform
from pathlib import Path

import torch


def describe_device(device: torch.device) -> str:
    """The GPU's name, or the CPU with its thread count and load (CPU timings depend on both)."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.machine()}, {torch.get_num_threads()} threads, loadavg {os.getloadavg()[0]:.1f})"


def emit_json(out: dict, path: str | None, indent: int = 2) -> dict:
    """Print the result document and, when `path` is given, write it there too."""
    text = json.dumps(out, indent=indent)
    print(text)
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(text + "\n")
    return out
