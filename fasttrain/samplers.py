"""The one place that decides the order of samples in an epoch.

Every loader backend asks a sampler for `order(epoch)`: a LongTensor of dataset indices for
this rank. Orders are deterministic in (seed, epoch, rank, world_size) and every rank gets
the same number of indices, so DDP ranks step together. Balanced streams (GLMC's second
stream, SSD's class-aware stages) are samplers too.

Kinds (class frequencies they produce, n_c = train count of class c):
- instance:        a permutation of the dataset (p_c ∝ n_c), without replacement;
- power:           with replacement, per-sample weight n_c^-q (p_c ∝ n_c^(1-q)); q=0 instance
                   with replacement, q=1 class-balanced (GLMC's `resample_weighting`);
- class_balanced:  power with q = 1 (p_c = 1/C);
- sqrt:            power with q = 1/2 (p_c ∝ sqrt(n_c));
- class_aware:     Shen et al.'s class-aware sampling: pick a class uniformly, then k
                   consecutive samples from that class's own shuffled queue (SSD stage II/IV,
                   cRT use k = 2 or 4).
Sampled orders have length N (the dataset size) per epoch unless `num_samples` says otherwise.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch


def _generator(seed: int, epoch: int) -> torch.Generator:
    # Mix seed and epoch into one 63-bit seed so (seed, epoch) pairs never collide in practice.
    g = torch.Generator()
    g.manual_seed((seed * 1_000_003 + epoch * 7_919 + 12345) % (2**63 - 1))
    return g


@dataclass
class ShardSpec:
    rank: int = 0
    world_size: int = 1


class Sampler:
    """Base class. Subclasses implement `_global_order(epoch)` (the order for all ranks)."""

    with_replacement: bool = False

    def __init__(self, labels: torch.Tensor, num_classes: int, seed: int = 0, rank: int = 0,
                 world_size: int = 1, num_samples: int | None = None, drop_last: bool = False):
        if not 0 <= rank < world_size:
            raise ValueError(f"sampler: rank {rank} outside world_size {world_size}")
        self.labels = torch.as_tensor(labels, dtype=torch.long)
        self.num_classes = num_classes
        self.counts = torch.bincount(self.labels, minlength=num_classes)
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.num_samples = len(self.labels) if num_samples is None else num_samples
        self.drop_last = drop_last
        self.epoch = 0
        self.position = 0  # samples of the current epoch already consumed (for mid-epoch resume)

    # --- public contract ---------------------------------------------------------------------
    def __len__(self) -> int:
        """Indices per rank per epoch (the same on every rank)."""
        if self.drop_last:
            return self.num_samples // self.world_size
        return math.ceil(self.num_samples / self.world_size)

    def order(self, epoch: int) -> torch.Tensor:
        """Dataset indices for this rank in epoch `epoch`."""
        full = self._global_order(epoch)
        per_rank = len(self)
        total = per_rank * self.world_size
        if total > len(full):  # pad by wrapping around, like DistributedSampler
            reps = math.ceil(total / len(full))
            full = full.repeat(reps)
        full = full[:total]
        # Strided sharding: rank r gets positions r, r+W, ... (ranks partition the epoch).
        return full[self.rank:total:self.world_size]

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self.position = 0
        self.epoch = epoch

    def state_dict(self) -> dict:
        return {"kind": type(self).__name__, "seed": self.seed, "epoch": self.epoch,
                "position": self.position, "rank": self.rank, "world_size": self.world_size}

    def load_state_dict(self, state: dict) -> None:
        if state.get("kind") != type(self).__name__:
            raise ValueError(f"sampler state is for {state.get('kind')}, not {type(self).__name__}")
        self.seed, self.epoch, self.position = state["seed"], state["epoch"], state["position"]

    def class_probabilities(self) -> torch.Tensor:
        """Expected fraction of draws per class (for tests and logs)."""
        return self.counts.double() / self.counts.sum()

    # --- for subclasses ----------------------------------------------------------------------
    def _global_order(self, epoch: int) -> torch.Tensor:
        raise NotImplementedError  # abstract; every registered sampler implements it


class InstanceSampler(Sampler):
    """A random permutation per epoch (shuffle=True, no replacement)."""

    def __init__(self, *args, shuffle: bool = True, **kwargs):
        super().__init__(*args, **kwargs)
        self.shuffle = shuffle

    def _global_order(self, epoch: int) -> torch.Tensor:
        if not self.shuffle:
            return torch.arange(len(self.labels))
        perm = torch.randperm(len(self.labels), generator=_generator(self.seed, epoch))
        if self.num_samples > len(perm):
            extra = torch.randperm(len(self.labels), generator=_generator(self.seed + 1, epoch))
            perm = torch.cat([perm] + [extra] * math.ceil(self.num_samples / len(perm)))
        return perm[: self.num_samples]


class PowerSampler(Sampler):
    """With replacement, per-sample weight n_c^-q (GLMC's WeightedRandomSampler)."""

    with_replacement = True

    def __init__(self, *args, q: float = 1.0, **kwargs):
        super().__init__(*args, **kwargs)
        self.q = q
        counts = self.counts.double().clamp_min(1)
        class_w = counts.pow(-q)
        # The scale (GLMC normalises to mean C) does not change the draw distribution.
        self.sample_weights = class_w[self.labels]

    def class_probabilities(self) -> torch.Tensor:
        mass = self.counts.double() * self.counts.double().clamp_min(1).pow(-self.q)
        return mass / mass.sum()

    def _global_order(self, epoch: int) -> torch.Tensor:
        return torch.multinomial(self.sample_weights, self.num_samples, replacement=True,
                                 generator=_generator(self.seed, epoch))


class ClassBalancedSampler(PowerSampler):
    def __init__(self, *args, **kwargs):
        kwargs.pop("q", None)
        super().__init__(*args, q=1.0, **kwargs)


class SqrtSampler(PowerSampler):
    def __init__(self, *args, **kwargs):
        kwargs.pop("q", None)
        super().__init__(*args, q=0.5, **kwargs)


class ClassAwareSampler(Sampler):
    """Pick a class uniformly, then k samples from that class's cyclic shuffled queue."""

    with_replacement = True

    def __init__(self, *args, k: int = 2, **kwargs):
        super().__init__(*args, **kwargs)
        if k <= 0:
            raise ValueError(f"class_aware_k must be > 0, got {k}")
        self.k = k
        self.present = torch.nonzero(self.counts > 0).flatten()

    def class_probabilities(self) -> torch.Tensor:
        p = torch.zeros(self.num_classes, dtype=torch.double)
        p[self.present] = 1.0 / len(self.present)
        return p

    def _global_order(self, epoch: int) -> torch.Tensor:
        g = _generator(self.seed, epoch)
        n_groups = math.ceil(self.num_samples / self.k)
        classes = self.present[torch.randint(len(self.present), (n_groups,), generator=g)]
        # Per class, walk a shuffled queue of its samples, reshuffling after each lap: the j-th
        # draw of class c is element j of the concatenation of fresh permutations of c's samples.
        # Vectorised: tag every (lap, member) pair with a random key, sort by (class, lap, key).
        slot_class = classes.repeat_interleave(self.k)
        need = torch.bincount(slot_class, minlength=self.num_classes)
        laps = torch.div(need + self.counts - 1, self.counts.clamp_min(1), rounding_mode="floor")
        member_laps = laps[self.labels]
        members = torch.arange(len(self.labels)).repeat_interleave(member_laps)
        lap_start = torch.cumsum(member_laps, 0) - member_laps
        lap_id = torch.arange(len(members)) - lap_start.repeat_interleave(member_laps)
        member_class = self.labels[members].double()
        key = (member_class * (int(laps.max()) + 1) + lap_id.double()
               + torch.rand(len(members), generator=g, dtype=torch.double) * 0.999)
        queue = members[torch.argsort(key)]  # class-major, then lap, then random
        queue_start = torch.cumsum(laps * self.counts, 0) - laps * self.counts
        # occurrence number of each slot within its class, in slot order
        slot_sorted = torch.argsort(slot_class, stable=True)
        cls_sorted = slot_class[slot_sorted]
        first = torch.cumsum(need, 0) - need
        occurrence = torch.arange(len(slot_class)) - first[cls_sorted]
        out = torch.empty(len(slot_class), dtype=torch.long)
        out[slot_sorted] = queue[queue_start[cls_sorted] + occurrence]
        return out[: self.num_samples]


class EvalShard:
    """One rank's part of the sequential evaluation order under DDP: whole evaluation batches
    b = rank, rank + W, rank + 2W, ... of `arange(n)` cut into `batch_size` rows. Every batch thus
    holds exactly the rows it holds in a single process (the same forward, bit for bit), ranks may
    get one batch more than others (no padding: no sample is counted twice), and the gathered
    predictions, put back in dataset-index order, are the single process's. Not a training
    sampler (not in `SAMPLERS`): the loaders only ask it for `order`, `len` and `set_epoch`."""

    def __init__(self, n: int, batch_size: int, rank: int, world_size: int):
        if batch_size <= 0 or not 0 <= rank < world_size:
            raise ValueError(f"eval shard: batch_size {batch_size}, rank {rank} of {world_size}")
        starts = torch.arange(0, n, batch_size)[rank::world_size]
        parts = [torch.arange(int(s), min(int(s) + batch_size, n)) for s in starts]
        self.indices = torch.cat(parts) if parts else torch.zeros(0, dtype=torch.long)
        self.epoch, self.position = 0, 0

    def __len__(self) -> int:
        return len(self.indices)

    def order(self, epoch: int) -> torch.Tensor:
        return self.indices

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch


SAMPLERS: dict[str, type[Sampler]] = {
    "instance": InstanceSampler,
    "power": PowerSampler,
    "class_balanced": ClassBalancedSampler,
    "sqrt": SqrtSampler,
    "class_aware": ClassAwareSampler,
}


def build_sampler(kind: str, labels: torch.Tensor, num_classes: int, *, seed: int, rank: int = 0,
                  world_size: int = 1, q: float = 1.0, k: int = 2, drop_last: bool = False,
                  num_samples: int | None = None) -> Sampler:
    if kind not in SAMPLERS:
        raise ValueError(f"unknown sampler {kind!r}; choose from {sorted(SAMPLERS)}")
    kwargs: dict = dict(seed=seed, rank=rank, world_size=world_size, drop_last=drop_last,
                        num_samples=num_samples)
    if kind == "power":
        kwargs["q"] = q
    if kind == "class_aware":
        kwargs["k"] = k
    return SAMPLERS[kind](labels, num_classes, **kwargs)
