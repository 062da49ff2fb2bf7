"""Throughput meter: images/s and the fraction of wall time spent waiting for data.

Steps are timed on the host without synchronising the device; the device is synchronised
only when a rate is read (every `train.log_every` steps), so the numbers are exact over a
window while the step itself never waits for the GPU.
"""
from __future__ import annotations

import time

import torch

from fasttrain.environment import sync as _sync


class ThroughputMeter:
    def __init__(self) -> None:
        self.total_images = 0
        self.total_time = 0.0
        self._epoch_images = 0
        self._epoch_wait = 0.0
        self._epoch_start = None
        self._win_images = 0
        self._win_wait = 0.0
        self._win_start = None
        self._wait_start = None

    def start_window(self) -> None:
        now = time.perf_counter()
        self._epoch_start = self._win_start = now
        self._epoch_images = self._win_images = 0
        self._epoch_wait = self._win_wait = 0.0

    def begin_wait(self) -> None:
        self._wait_start = time.perf_counter()

    def end_wait(self) -> None:
        dt = time.perf_counter() - self._wait_start
        self._win_wait += dt
        self._epoch_wait += dt

    def count(self, images: int) -> None:
        self._win_images += images
        self._epoch_images += images

    def read(self, device: torch.device) -> dict:
        _sync(device)
        now = time.perf_counter()
        dt = max(now - self._win_start, 1e-9)
        out = {"img_per_s": self._win_images / dt, "data_wait_frac": self._win_wait / dt}
        self._win_start, self._win_images, self._win_wait = now, 0, 0.0
        return out

    def epoch_rate(self, device: torch.device) -> dict:
        _sync(device)
        dt = max(time.perf_counter() - self._epoch_start, 1e-9)
        self.total_images += self._epoch_images
        self.total_time += dt
        return {"img_per_s": self._epoch_images / dt, "data_wait_frac": self._epoch_wait / dt}

    def overall_rate(self) -> float:
        return self.total_images / self.total_time if self.total_time else 0.0

    def timed(self, loader, limit: int):
        """Iterate `loader` for at most `limit` batches, counting the waits for each as data time."""
        it = iter(loader)
        for _ in range(limit):
            self.begin_wait()
            try:
                batch = next(it)
            except StopIteration:
                return
            self.end_wait()
            yield batch


class MeanLogs:
    """Running means of a step's logs, accumulated on the device (no host sync per step)."""

    def __init__(self) -> None:
        self.sums: dict[str, torch.Tensor] = {}
        self.n = 0

    def add(self, logs: dict[str, torch.Tensor]) -> None:
        for k, v in logs.items():
            self.sums[k] = self.sums[k] + v.float() if k in self.sums else v.float().clone()
        self.n += 1

    def means(self) -> dict[str, float]:
        """Host floats (one sync): call every `train.log_every` steps, not every step."""
        return {k: (v / max(self.n, 1)).item() for k, v in self.sums.items()}
