"""The momentum (key) encoder of SSD stage I / MoCo: its EMA update and its shuffled-BN forward.

- `ema_update_`: θ_k ← m·θ_k + (1 − m)·θ_q for every parameter pair, as MoCo's
  `_momentum_update_key_encoder` (buffers are not copied: the key encoder's BatchNorm keeps its own
  running statistics from its own forwards, as in MoCo).
- `shuffled_forward`: the keys with BatchNorm statistics of random sub-batches. MoCo/SSD compute
  keys under DDP on a batch shuffled across GPUs (shuffle-BN), so a key is never normalised with the
  statistics of its own query's sub-batch. Under torchrun `ddp_shuffled_forward` is MoCo's
  shuffle-BN: the key views of all ranks are gathered, permuted (the same permutation on every
  rank: drawn from generators seeded alike), each rank encodes its slice of the shuffled global
  batch (one BN batch per rank), and the keys are gathered and un-shuffled. One process has no
  ranks to shuffle across: `shuffled_forward` permutes the rows, encodes them `splits` sub-batches
  at a time and restores the order.
"""
from __future__ import annotations

import torch
import torch.nn as nn


@torch.no_grad()
def ema_update_(target: nn.Module, source: nn.Module, momentum: float) -> None:
    """In place: target's parameters ← momentum·target + (1 − momentum)·source (same order)."""
    tgt, src = list(target.parameters()), list(source.parameters())
    if len(tgt) != len(src):
        raise ValueError(f"EMA between modules of {len(tgt)} and {len(src)} parameters")
    torch._foreach_mul_(tgt, momentum)
    torch._foreach_add_(tgt, src, alpha=1.0 - momentum)


def key_permutation(n: int, generator: torch.Generator, device: torch.device) -> torch.Tensor:
    """The row order of one step's shuffled sub-batches, drawn on the device (no host sync)."""
    return torch.randperm(n, generator=generator, device=device)


def shuffled_forward(encoder: nn.Module, x: torch.Tensor, splits: int, perm: torch.Tensor | None) -> torch.Tensor:
    """encoder(x), the rows encoded in `splits` sub-batches of the order `perm` (each with its own
    BatchNorm batch statistics), returned in the original row order. perm None or splits 1: encoder(x)."""
    if perm is None or splits <= 1:
        return encoder(x)
    out = torch.cat([encoder(chunk) for chunk in x[perm].tensor_split(splits)])
    return torch.empty_like(out).index_copy_(0, perm, out)  # row perm[i] of the result = out[i]


@torch.no_grad()
def ddp_shuffled_forward(encoder: nn.Module, x: torch.Tensor, perm: torch.Tensor) -> torch.Tensor:
    """MoCo's batch shuffle across ranks: this rank's rows of encoder(x_global) where every rank
    encoded its slice of x_global[perm]; `perm` permutes the global batch (world x B rows) and is
    the same on every rank. Returns (B, ...) keys of this rank's own rows, in their order."""
    from fasttrain import distributed

    world, rank, n = distributed.world_size(), distributed.rank(), x.shape[0]
    x_all = distributed.all_gather_equal(x)
    mine = x_all[perm[rank * n:(rank + 1) * n]]
    keys_shuffled = distributed.all_gather_equal(encoder(mine).contiguous())
    keys = torch.empty_like(keys_shuffled).index_copy_(0, perm, keys_shuffled)  # row perm[i] = shuffled[i]
    assert keys.shape[0] == world * n
    return keys[rank * n:(rank + 1) * n]
