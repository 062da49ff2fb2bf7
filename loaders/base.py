"""The loader backend interface: what every backend class provides, and shared bookkeeping.

A backend is built from (dataset, sampler(s), batch size, views, device). Iterating it gives
`fasttrain.batch.Batch` objects whose tensors are already on the training device (the batch
contract is documented there). `len(loader)` is the number of steps per epoch; `set_epoch(e)`
re-samples; the last partial batch is dropped or kept as configured. No host<->device sync
inside a step beyond the copy.
"""
from __future__ import annotations

import dataclasses
import math
from typing import ClassVar

import torch


class LoaderBackend:
    """Interface; concrete backends live beside this file and register in `BACKENDS`."""

    # What the backend can read: "arrays" (in-memory uint8 N×H×W×3 images, `dataset.images`)
    # and/or "files" (image paths, `dataset.paths`). The conformance suite runs each backend on
    # the dataset kinds it names here.
    reads: ClassVar[tuple[str, ...]] = ("arrays", "files")

    @classmethod
    def available(cls) -> tuple[bool, str]:
        """(usable on this machine, one-line description) for `fasttrain info` and the tests.
        Backends with optional dependencies override it without importing them eagerly."""
        return True, "built in"

    def _init_streams(self, dataset, samplers, batch_size: int) -> None:
        """Shared set-up: one sampler per stream (None = sequential eval order), the per-stream
        rows of a step, and the epoch/step bookkeeping every backend keeps."""
        self.dataset = dataset
        self.samplers = list(samplers) if samplers else []
        self.num_streams = max(1, len(self.samplers))
        if batch_size % self.num_streams:
            raise ValueError(f"loader.batch_size {batch_size} must be divisible by the {self.num_streams} streams")
        self.stream_batch = batch_size // self.num_streams
        self.epoch = 0
        self.position = 0  # steps already delivered this epoch (mid-epoch resume)

    def epoch_orders(self, epoch: int) -> list[torch.Tensor]:
        """Per stream, this rank's dataset indices for `epoch` (int64, CPU)."""
        if not self.samplers:
            return [torch.arange(len(self.dataset))]
        orders = []
        for sampler in self.samplers:
            sampler.set_epoch(epoch)
            orders.append(torch.as_tensor(sampler.order(epoch), dtype=torch.long))
        return orders

    def begin_epoch(self, epoch: int, backend: str) -> list[torch.Tensor]:
        """Epoch bookkeeping for backends that lay out a whole epoch up front: a new epoch starts
        at step 0; returns the per-stream orders (the first one must not be empty)."""
        if epoch != self.epoch:
            self.position = 0
        self.epoch = epoch
        orders = self.epoch_orders(epoch)
        if len(orders[0]) == 0:
            raise ValueError(f"{backend} loader: the first sampler's order is empty")
        return orders

    def __len__(self) -> int:  # steps per epoch
        raise NotImplementedError

    def __iter__(self):
        raise NotImplementedError

    def set_epoch(self, epoch: int) -> None:
        raise NotImplementedError

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


def steps_per_epoch(num_indices: int, batch_size: int, drop_last: bool) -> int:
    return num_indices // batch_size if drop_last else -(-num_indices // batch_size)


def layout_epoch(orders: list[torch.Tensor], stream_batch: int, drop_last: bool) -> tuple[torch.Tensor, list[int]]:
    """An epoch's dataset indices step-major, then stream-major, and each step's rows per stream.

    Step i takes positions [i*b, i*b + b_i) of every stream's order (GLMC pairs row i of the
    uniform stream with row i of the re-sampled one); a stream shorter than the first is wrapped.
    The first stream's order defines the epoch length; the last partial step is kept unless
    `drop_last`."""
    b = stream_batch
    n0 = len(orders[0])
    full = n0 // b
    tail = n0 - full * b if (not drop_last and n0 % b) else 0
    used = full * b + tail
    padded = [o if len(o) >= used else o.repeat(math.ceil(used / len(o)))[:used] for o in orders]
    parts = [torch.stack([o[: full * b].view(full, b) for o in padded], dim=1).reshape(-1)]
    if tail:
        parts.append(torch.cat([o[full * b: used] for o in padded]))
    return torch.cat(parts), [b] * full + ([tail] if tail else [])


def batch_slices(order_len: int, batch_size: int, drop_last: bool) -> list[slice]:
    n = steps_per_epoch(order_len, batch_size, drop_last)
    return [slice(i * batch_size, min((i + 1) * batch_size, order_len)) for i in range(n)]


def view_augments(augment, num_views: int, train: bool) -> list:
    """Each view's augmentation config: `augment` with that view's `augment.views` overrides
    (validated by the config). No overrides, or evaluation: every view uses `augment` itself, so
    such runs build exactly what they built before per-view augmentation existed."""
    overrides = getattr(augment, "views", None) or []
    if not train or not overrides:
        return [augment] * num_views
    if len(overrides) != num_views:
        raise ValueError(f"augment.views has {len(overrides)} entries for a loader of {num_views} views")
    return [dataclasses.replace(augment, views=[], **over) for over in overrides]
