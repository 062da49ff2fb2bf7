"""SSD stage I's queue of keys with labels and its label-aware contrastive loss
(docs: user-guide/methods/ssd.md, Stage I).

MoCo keeps the keys of the last K samples in a FIFO queue as negatives. SSD stores each key's
label with it and removes the queue entries of the query's own class from the negatives; they are
not made positives (the only positive of a query is the key of the other view of the same image):

    L_con = −(1/B) Σ_i log [ exp(q_i·k_i/τ) / (exp(q_i·k_i/τ) + Σ_{j: label_j ≠ y_i} exp(q_i·u_j/τ)) ]

The queue lives in the model as buffers (keys, labels, write position), so checkpoints and resume
carry it. It starts as random unit vectors labelled `init_label` (0 in the code: those entries are
no negatives for class-0 queries until they are overwritten). Everything runs on the device: no
host sync, the write position is a device tensor.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class LabeledQueue(nn.Module):
    """FIFO of `size` unit keys of width `dim` with their labels (buffers `keys`, `labels`, `ptr`)."""

    def __init__(self, size: int, dim: int, init_label: int = 0, generator: torch.Generator | None = None):
        super().__init__()
        if size <= 0 or dim <= 0:
            raise ValueError(f"queue size and key width must be > 0, got {size}, {dim}")
        self.size = size
        self.register_buffer("keys", F.normalize(torch.randn(size, dim, generator=generator), dim=1))
        self.register_buffer("labels", torch.full((size,), init_label, dtype=torch.long))
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def enqueue(self, keys: torch.Tensor, labels: torch.Tensor) -> None:
        """Write the rows of `keys` / `labels` over the oldest entries (wrapping around the end)."""
        n = keys.shape[0]
        if n > self.size:
            raise ValueError(f"cannot enqueue {n} keys into a queue of {self.size}")
        idx = (self.ptr + torch.arange(n, device=self.keys.device)) % self.size
        self.keys.index_copy_(0, idx, keys.detach().to(self.keys.dtype))
        self.labels.index_copy_(0, idx, labels.to(self.labels.dtype))
        self.ptr.copy_((self.ptr + n) % self.size)


def label_aware_contrastive_loss(q: torch.Tensor, k: torch.Tensor, queue_keys: torch.Tensor,
                                 queue_labels: torch.Tensor, labels: torch.Tensor, temperature: float,
                                 label_aware: bool = True) -> torch.Tensor:
    """L_con above, batch mean, in fp32 (autocast off: the code runs fp32; B×K logits over τ = 0.2).

    q, k: (B, d) unit queries and their positive keys; queue_keys (K, d), queue_labels (K,); labels
    (B,). `label_aware=False` keeps same-class entries as negatives (plain MoCo). `queue_keys` must
    not be written in place before the backward (the caller passes a copy if it enqueues first).
    """
    with torch.autocast(q.device.type, enabled=False):
        q, k = q.float(), k.float()
        pos = (q * k).sum(dim=1, keepdim=True)
        neg = q @ queue_keys.float().t()
        if label_aware:
            neg = neg.masked_fill(queue_labels[None, :] == labels[:, None], float("-inf"))
        logits = torch.cat([pos, neg], dim=1) / temperature
        # −log softmax at the positive (column 0); removed negatives (−inf) weigh exactly 0.
        return (torch.logsumexp(logits, dim=1) - logits[:, 0]).mean()
