"""Class-prior helpers shared by methods: functions of the per-class training counts n_c.

All return fp32 tensors computed in float64 (as the official codes' numpy arithmetic), on the
counts' device. A class with n_c = 0 is treated as n_c = 1 where a formula would divide by 0 or
take log 0, so every weight/offset stays finite (LT training sets have n_c >= 1 anyway).
"""
from __future__ import annotations

import torch


def power_weights(counts: torch.Tensor, gamma: float) -> torch.Tensor:
    """w_c = C·n_c^-γ / Σ_k n_k^-γ (mean 1 over classes): GLMC's soft-label weights."""
    n = counts.double().clamp_min(1)
    w = n.pow(-gamma)
    return (w / w.sum() * len(n)).float()


def effective_number_weights(counts: torch.Tensor, beta: float) -> torch.Tensor:
    """Cui et al.'s class-balanced weights w_c = (1 − β) / (1 − β^{n_c}), normalised to sum to C."""
    n = counts.double()
    w = (1.0 - beta) / (1.0 - torch.pow(torch.full_like(n, beta), n)).clamp_min(1e-12)
    return (w / w.sum() * len(n)).float()


def log_count_offset(counts: torch.Tensor) -> torch.Tensor:
    """log n_c (Balanced Softmax's training offset). An absent class gets a singleton's offset
    instead of −inf, so its logit stays trainable and finite."""
    return counts.double().clamp_min(1).log().float()


def log_prior(counts: torch.Tensor) -> torch.Tensor:
    """log π_c = log(n_c / N) (Logit Adjustment's offset); finite for an absent class."""
    n = counts.double().clamp_min(1)
    return (n / n.sum()).log().float()


def ldam_margins(counts: torch.Tensor, max_margin: float) -> torch.Tensor:
    """LDAM margins m_c = n_c^{-1/4} · max_margin / max_k n_k^{-1/4} (the rarest class gets
    `max_margin`)."""
    m = counts.double().clamp_min(1).pow(-0.25)
    return (m * (max_margin / m.max())).float()


def fbl_stimulus(counts: torch.Tensor, normalise: bool = True) -> torch.Tensor:
    """FBL's per-class stimulus a_c = log n_max − log n_c, divided by its maximum
    (log n_max − log n_min) so a_c ∈ [0, 1] as the official code does (`normalise=False`: the
    paper's unnormalised log ratio). Built in float32 like the code (not float64)."""
    log_n = counts.float().clamp_min(1).log()
    a = log_n.max() - log_n
    if normalise:
        a = a / (log_n.max() - log_n.min()).clamp_min(1e-12)
    return a
