"""The batch contract: what every loader backend yields and what augmentation and methods consume.

It lives in a module of its own so that loaders, augmentation and the callers of the kernels
share one definition without importing each other. Kernels never see these types: they take
tensors and ints.

- `views`: one uint8 tensor per augmented view, logical shape (B, 3, H, W) in
  `torch.channels_last` memory format (physically NHWC, which is what the fused mix kernel and
  DALI produce). Normalisation and mixing happen on the device afterwards, in
  `fasttrain.augment.Augmenter`.
- `labels`: int64 (B,).
- `stream`: int64 (B,) stream id. Multi-stream methods (GLMC: uniform + re-sampled) get ONE
  batch whose rows are stream-major: rows [s*b, (s+1)*b) belong to stream s, b = B // streams.
- `geometry`: per view, crop offsets / flip flags still to be applied on the device (the
  tensor backend defers CIFAR crop+flip so the fused kernel does it in the same pass), or
  None when the view is already cropped.
- `index`: int64 dataset indices of the rows (for debugging and distribution tests).
- `normalized`: True when the views are already normalised float (DALI with `dali_normalize`);
  the augmenter then passes them through.
- `step_key`: (epoch, step) of a training step, set by `fasttrain.step.train_step` (loaders leave
  it None): it marks the batch as training data for the augmenter's per-step draws (RandomErasing)
  and keys them; evaluation batches keep None and are never augmented.
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

    def rows(self, rows: torch.Tensor | slice) -> "Geometry":
        """The geometry of a subset of the rows."""
        return Geometry(offsets=self.offsets[rows], flip=self.flip[rows], padding=self.padding)


def random_geometry(n: int, padding: int, flip: bool, generator: torch.Generator | None,
                    device: torch.device | str) -> Geometry:
    """Per-sample crop offsets in [0, 2·padding] and flip flags (p = 0.5), drawn on `device`."""
    if padding < 0:
        raise ValueError(f"augment.crop_padding must be >= 0, got {padding}")
    offsets = torch.randint(0, 2 * padding + 1, (n, 2), generator=generator, device=device,
                            dtype=torch.int32)
    if flip:
        flips = torch.randint(0, 2, (n,), generator=generator, device=device, dtype=torch.uint8).bool()
    else:
        flips = torch.zeros(n, dtype=torch.bool, device=device)
    return Geometry(offsets=offsets, flip=flips, padding=padding)


@dataclass
class Batch:
    views: list[torch.Tensor]
    labels: torch.Tensor
    stream: torch.Tensor
    num_streams: int = 1
    geometry: list[Geometry | None] = field(default_factory=list)
    index: torch.Tensor | None = None
    normalized: bool = False
    step_key: tuple[int, int] | None = None

    @property
    def size(self) -> int:
        return self.labels.shape[0]

    def stream_rows(self, s: int) -> slice:
        b = self.size // self.num_streams
        return slice(s * b, (s + 1) * b)

    def view_geometry(self, v: int) -> Geometry | None:
        """The pending geometry of view `v` (None: already cropped)."""
        return self.geometry[v] if v < len(self.geometry) else None
