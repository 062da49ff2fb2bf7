"""The contract every loader backend honours.

A backend is built from (dataset, sampler(s), batch size, views, device). Iterating it gives
`Batch` objects whose tensors are already on the training device:

- `views`: one uint8 tensor per augmented view, logical shape (B, 3, H, W) in
  `torch.channels_last` memory format — i.e. physically NHWC, which is what the fused mix
  kernel and DALI/FFCV produce. Normalisation (and mixing) happens on the device afterwards
  in `fasttrain.augment`.
- `labels`: int64 (B,).
- `stream`: int64 (B,) stream id. Multi-stream methods (GLMC: uniform + re-sampled) get ONE
  batch whose rows are stream-major: rows [s*b, (s+1)*b) belong to stream s, b = B // streams.
- `geometry`: per view, crop offsets / flip flags still to be applied on the device (the
  tensor backend defers CIFAR crop+flip so the fused kernel does it in the same pass), or
  None when the view is already cropped.
- `index`: int64 dataset indices of the rows (for debugging and distribution tests).

`len(loader)` is the number of steps per epoch; `set_epoch(e)` re-samples; the last partial
batch is dropped or kept as configured. No host<->device sync inside a step beyond the copy.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class Geometry:
    """Deferred CIFAR-style geometry for one view: crop from the zero-padded image + flip.

    `offsets[i] = (dy, dx)` is the top-left corner of the crop inside the image padded by
    `padding` pixels on each side (0 <= dy, dx <= 2*padding); `flip[i]` mirrors horizontally
    after cropping. Output size equals input size (RandomCrop(size, padding) semantics).
    """

    offsets: torch.Tensor  # int32/int64 (B, 2)
    flip: torch.Tensor  # bool (B,)
    padding: int


@dataclass
class Batch:
    views: list[torch.Tensor]
    labels: torch.Tensor
    stream: torch.Tensor
    num_streams: int = 1
    geometry: list[Geometry | None] = field(default_factory=list)
    index: torch.Tensor | None = None
    # True when views are already normalised float (e.g. DALI with no mixing configured);
    # then `fasttrain.augment.normalize_views` passes them through untouched.
    normalized: bool = False

    @property
    def size(self) -> int:
        return self.labels.shape[0]

    def stream_rows(self, s: int) -> slice:
        b = self.size // self.num_streams
        return slice(s * b, (s + 1) * b)


class LoaderBackend:
    """Interface; concrete backends live beside this file and register in `BACKENDS`."""

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


def batch_slices(order_len: int, batch_size: int, drop_last: bool) -> list[slice]:
    n = steps_per_epoch(order_len, batch_size, drop_last)
    return [slice(i * batch_size, min((i + 1) * batch_size, order_len)) for i in range(n)]
