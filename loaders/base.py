"""The loader backend interface: what every backend class provides, and shared bookkeeping.

A backend is built from (dataset, sampler(s), batch size, views, device). Iterating it gives
`fasttrain.batch.Batch` objects whose tensors are already on the training device (the batch
contract is documented there). `len(loader)` is the number of steps per epoch; the last partial
batch is dropped or kept as configured. No host<->device sync inside a step beyond the copy.

One epoch layout for every backend: `LoaderBackend.set_epoch(e)` asks each stream's sampler for
its order and lays the epoch out with `layout_epoch` (step-major, then stream-major; a stream
shorter than the first wraps), so every backend delivers the same rows for the same sampler
state. A backend only adds what it does with those rows (`on_epoch`: copy them to the device,
draw the epoch's crops, ...) and how it turns a step's rows into a `Batch`.

Backends register with `@register_backend("name")`; `BACKENDS` (name -> class) is the one list
of backend names. Optional dependencies (DALI, FFCV) are imported inside the backend's methods, so
registering costs nothing and a missing extra only matters when that backend is built.
"""
from __future__ import annotations

import dataclasses
import math
from typing import ClassVar

import torch

BACKENDS: dict[str, type["LoaderBackend"]] = {}

# `augment.policy`: the automatic augmentation policies a backend may apply to each training view
# (torchvision v2's RandAugment / TrivialAugmentWide / AutoAugment and their DALI counterparts).
# A backend lists the ones it applies in its `policies`; any other is refused when it is built.
AUGMENT_POLICIES = ("none", "randaugment", "trivialaugment", "autoaugment")
AUTOAUGMENT_POLICIES = ("imagenet", "cifar10", "svhn")  # augment.autoaugment_policy (torchvision's names)


def register_backend(name: str):
    """Class decorator: add a loader backend to `BACKENDS` under `name`."""
    def add(cls: type["LoaderBackend"]) -> type["LoaderBackend"]:
        cls.name = name
        if name not in BACKENDS:
            BACKENDS[name] = cls
        elif BACKENDS[name].__qualname__ != cls.__qualname__:  # the same file executed again keeps the first
            raise ValueError(f"loader backend {name!r} registered twice ({BACKENDS[name].__name__}, {cls.__name__})")
        return cls
    return add


class LoaderBackend:
    """Interface and shared epoch layout; concrete backends live beside this file."""

    name: ClassVar[str] = "base"  # set by @register_backend

    # What the backend can read: "arrays" (in-memory uint8 N×H×W×3 images, `dataset.images`)
    # and/or "files" (image paths, `dataset.paths`). The conformance suite runs each backend on
    # the dataset kinds it names here.
    reads: ClassVar[tuple[str, ...]] = ("arrays", "files")

    # The `augment.policy` values (besides "none") the backend applies to its training views; any
    # other policy is refused by name when the backend is built (`policy_refusal`), never ignored.
    policies: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def available(cls) -> tuple[bool, str]:
        """(usable on this machine, one-line description) for `fasttrain info` and the tests.
        Backends with optional dependencies override it without importing them eagerly."""
        return True, "built in"

    def _init_streams(self, dataset, samplers, step_rows: int, drop_last: bool) -> None:
        """Shared set-up: one sampler per stream (None = sequential eval order), the rows of a step
        over all streams (`step_rows`) and per stream (`stream_batch`, what loader.batch_size sets),
        and the epoch/step bookkeeping every backend keeps."""
        self.dataset = dataset
        self.samplers = list(samplers) if samplers else []
        self.num_streams = max(1, len(self.samplers))
        if step_rows % self.num_streams:
            raise ValueError(f"a step's {step_rows} rows must be divisible by the {self.num_streams} streams")
        self.step_rows = step_rows
        self.stream_batch = step_rows // self.num_streams
        self.drop_last = drop_last
        self.epoch: int | None = None  # no epoch laid out yet
        self.position = 0  # steps already delivered this epoch (mid-epoch resume)
        self.rows = torch.zeros(0, dtype=torch.long)  # this epoch's dataset indices (see layout_epoch)
        self.step_sizes: list[int] = []  # rows per stream of each step

    def epoch_orders(self, epoch: int) -> list[torch.Tensor]:
        """Per stream, this rank's dataset indices for `epoch` (int64, CPU)."""
        if not self.samplers:
            return [torch.arange(len(self.dataset))]
        orders = []
        for sampler in self.samplers:
            sampler.set_epoch(epoch)
            orders.append(torch.as_tensor(sampler.order(epoch), dtype=torch.long))
        return orders

    def set_epoch(self, epoch: int) -> None:
        """Lay out `epoch`: the same rows for the same sampler state in every backend. A new epoch
        starts at step 0 (setting the current one again keeps a resumed position)."""
        if epoch != self.epoch:
            self.position = 0
        self.epoch = epoch
        orders = self.epoch_orders(epoch)
        if self.samplers and len(orders[0]) == 0:  # an empty eval set is zero steps (inference builds one)
            raise ValueError(f"{self.name} loader: the first sampler's order is empty")
        self.epoch_length = len(orders[0])  # positions per stream the epoch covers (before drop_last)
        orders = self.arrange(orders, epoch)
        self.rows, self.step_sizes = layout_epoch(orders, self.stream_batch, self.drop_last)
        self.on_epoch(epoch)

    def arrange(self, orders: list[torch.Tensor], epoch: int) -> list[torch.Tensor]:
        """Hook: reorder each stream's order within the epoch before the layout (FFCV's page-local
        order); the default keeps the samplers' order."""
        return orders

    def on_epoch(self, epoch: int) -> None:
        """Hook: what a backend prepares once the epoch's `rows` are laid out (a device copy, the
        epoch's crop draws)."""

    def step_span(self, step: int) -> slice:
        """Where step `step`'s rows lie in `rows` (every step but the last is full)."""
        start = step * self.step_rows
        return slice(start, start + self.step_sizes[step] * self.num_streams)

    def __len__(self) -> int:  # steps per epoch
        if self.epoch is None:  # a backend that lays out lazily (tensor): the first epoch
            self.set_epoch(0)
        return len(self.step_sizes)

    def __iter__(self):
        raise NotImplementedError

    def epoch_counters(self) -> dict:
        """Counts a backend reports in each epoch's metrics (DALI: `skipped_files`); none by default."""
        return {}

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


def policy_refusal(backend: str, augment, train: bool) -> str | None:
    """Why loader.backend=`backend` cannot build `augment`'s policy (None: it can, or nothing to do):
    the message names the backend, the policy and the backends that apply it."""
    policy = getattr(augment, "policy", "none")
    if not train or policy == "none" or policy in BACKENDS[backend].policies:
        return None
    able = [name for name, cls in BACKENDS.items() if policy in cls.policies]
    use = f"use loader.backend={' or '.join(able)}" if able else "no loader backend applies it"
    return f"loader.backend={backend} cannot apply augment.policy={policy}; {use} (or augment.policy: none)"


def epoch_generator(seed: int, epoch: int, device: torch.device, salt: int) -> torch.Generator:
    """A generator on `device` for one epoch's draws (deferred crop/flip), seeded from (seed, epoch)
    and the drawer's own `salt`, so its stream is correlated neither with the samplers' nor with
    another backend's."""
    g = torch.Generator(device=device)
    g.manual_seed((seed * 1_000_003 + epoch * 7_919 + salt) % (2**63 - 1))
    return g


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
