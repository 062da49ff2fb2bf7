"""GPU-resident tensor backend for in-memory (CIFAR-scale) datasets.

The whole uint8 image array goes to the training device once (12k×32×32×3 ≈ 37 MB for
CIFAR-10-LT). `set_epoch` asks every sampler for its order once, lays out the epoch's rows
step-major / stream-major as one device index tensor, and draws every view's crop/flip for
the whole epoch on the device. A step is then only slicing that index tensor and gathering
rows: no DataLoader workers, no per-sample Python, no host<->device traffic. Crop/flip stay
deferred in `Batch.geometry` so `fasttrain.augment` applies them in the fused kernel pass.

Because the epoch's draws are fixed in `set_epoch`, a resumed run (state_dict with the step
position) reproduces the interrupted epoch exactly. Geometry comes from a generator on the
loader's device seeded from (seed, epoch): CPU and CUDA runs draw different crops.
"""
from __future__ import annotations

import numpy as np
import torch

from fasttrain.batch import Batch, Geometry, random_geometry

from .base import LoaderBackend, epoch_generator, register_backend, view_augments

SUPPORTED_AUGMENT = ("cifar", "none")
# What a view of this backend can change (augment.views): the deferred crop/flip is all it draws.
PER_VIEW_KEYS = ("crop_padding", "flip")


GEOMETRY_SALT = 424_242  # this backend's stream of crop/flip draws (base.epoch_generator)


@register_backend("tensor")
class TensorLoader(LoaderBackend):
    # The whole uint8 array goes to the device: file datasets need a decoding backend.
    reads = ("arrays",)
    # augment.policy: none only; build_loader (and the config check) refuse the others by name. Its
    # draws are deferred crop/flip on the device, no uint8 image ops: use loader.backend=torch for policies.
    policies = ()

    def __init__(self, dataset, samplers, *, batch_size: int, num_views: int, device, augment, loader,
                 train: bool, seed: int = 0):
        if dataset.images is None:
            raise ValueError(f"loader.backend=tensor: dataset {dataset.name!r} has no in-memory images "
                             "(file-path datasets need loader.backend=torch or dali)")
        images = np.asarray(dataset.images)
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[3] != 3:
            raise ValueError(f"loader.backend=tensor: dataset {dataset.name!r} images must be uint8 "
                             f"N×H×W×3, got {images.dtype} {images.shape}")
        if batch_size <= 0 or num_views <= 0:
            raise ValueError(f"tensor loader: batch_size and num_views must be > 0, "
                             f"got {batch_size}, {num_views}")
        if train and augment.train not in SUPPORTED_AUGMENT:
            raise ValueError(f"augment.train={augment.train!r} is not supported by loader.backend=tensor "
                             f"(choose from {list(SUPPORTED_AUGMENT)}, or use the torch/dali backend)")
        self.device = torch.device(device)
        self._init_streams(dataset, samplers, batch_size, bool(loader.drop_last) if train else False)
        self.num_views = num_views
        self.train = train
        self.seed = seed
        self.padding = int(augment.crop_padding)
        self.flip = bool(augment.flip)
        for i, over in enumerate((getattr(augment, "views", None) or []) if train else []):
            other = sorted(set(over) - set(PER_VIEW_KEYS))
            if other:
                raise ValueError(f"augment.views[{i}]: loader.backend=tensor draws only crop/flip per view "
                                 f"({', '.join(PER_VIEW_KEYS)}); {', '.join(other)} need loader.backend=torch or dali")
        # Per view: (padding, flip) of its deferred geometry.
        self.view_geometry = [(int(a.crop_padding), bool(a.flip)) for a in view_augments(augment, num_views, train)]
        self.defer_geometry = train and augment.train == "cifar"
        # One copy of the data on the device, physically NHWC.
        self.images = torch.from_numpy(np.ascontiguousarray(images)).to(self.device)
        self.labels = torch.from_numpy(np.asarray(dataset.labels, dtype=np.int64)).to(self.device)
        # The first epoch is laid out lazily (the first set_epoch, len() or iteration).

    # --- epoch layout (the rows: LoaderBackend.set_epoch) ------------------------------------
    def on_epoch(self, epoch: int) -> None:
        b, s = self.stream_batch, self.num_streams
        self.rows = self.rows.to(self.device)  # step-major, then stream-major
        tail = self.step_sizes[-1] if self.step_sizes and self.step_sizes[-1] != b else 0
        self.stream_full = torch.arange(s, device=self.device).repeat_interleave(b)
        self.stream_tail = torch.arange(s, device=self.device).repeat_interleave(tail)
        self.geometry: list[Geometry] = []
        if self.defer_geometry:
            g = epoch_generator(self.seed, epoch, self.device, GEOMETRY_SALT)
            self.geometry = [random_geometry(len(self.rows), padding, flip, g, self.device)
                             for padding, flip in self.view_geometry]

    # --- iteration -----------------------------------------------------------------------
    def _batch(self, step: int) -> Batch:
        s = self.num_streams
        span = self.step_span(step)
        start, size = span.start, span.stop - span.start
        rows = self.rows[span]
        # channels_last (B, 3, H, W) view of the gathered NHWC rows; every view shares it,
        # they differ only by their deferred geometry (consumers must not write in place).
        images = self.images[rows].permute(0, 3, 1, 2)
        geometry = [Geometry(offsets=g.offsets[start: start + size], flip=g.flip[start: start + size],
                             padding=g.padding) for g in self.geometry] or [None] * self.num_views
        stream = self.stream_full if size == len(self.stream_full) else self.stream_tail
        return Batch(views=[images] * self.num_views, labels=self.labels[rows], stream=stream,
                     num_streams=s, geometry=geometry, index=rows)

    def __iter__(self):
        if self.epoch is None:
            self.set_epoch(0)
        while self.position < len(self.step_sizes):
            batch = self._batch(self.position)
            self.position += 1
            for sampler in self.samplers:
                sampler.position = min(self.position * self.stream_batch, len(sampler))
            yield batch
        self.position = 0

    # --- resume --------------------------------------------------------------------------
    def state_dict(self) -> dict:
        # Same keys as the torch backend, so a run may resume with either backend's state.
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed}

    def load_state_dict(self, state: dict) -> None:
        if state.get("seed", self.seed) != self.seed:
            raise ValueError(f"tensor loader state is for seed {state.get('seed')}, not {self.seed}")
        epoch = state.get("epoch")
        if epoch is not None:
            self.set_epoch(int(epoch))
            self.position = int(state.get("position", 0))
