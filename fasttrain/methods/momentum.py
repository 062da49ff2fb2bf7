"""The momentum (key) encoder of SSD stage I / MoCo: its EMA update and its shuffled-BN forward.

- `ema_update_`: θ_k ← m·θ_k + (1 − m)·θ_q for every parameter pair, as MoCo's
  `_momentum_update_key_encoder` (buffers are not copied: the key encoder's BatchNorm keeps its own
  running statistics from its own forwards, as in MoCo).
- `shuffled_forward`: the keys with BatchNorm statistics of random sub-batches. MoCo/SSD compute
  keys under DDP on a batch shuffled across GPUs (shuffle-BN), so a key is never normalised with the
  statistics of its own query's sub-batch. One process has no GPUs to shuffle across: this stand-in
  permutes the rows, encodes them `splits` sub-batches at a time and restores the order. The real
  shuffle-BN (all-gather + per-rank shuffle) comes with multi-process training (DDP).
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
