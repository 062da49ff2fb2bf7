"""Reweighted soft-label cross-entropy: one loss implementation for every method.

    loss_i = -sum_c t_ic * w_c * log_softmax((z_i + b) / T)_c   (x T**2 if t2_scale)

with t optionally label-smoothed, (1 - eps) t + eps / C (`label_smoothing=eps`).

`soft_target_cross_entropy` / `SoftTargetCrossEntropy` dispatch to a fused Triton kernel on CUDA
(`impl="auto"`) and to the pure-torch reference (`reference.py`, the specification) elsewhere.
"""
from .function import IMPLS, SoftTargetCrossEntropy, soft_target_cross_entropy
from .reference import soft_target_cross_entropy_reference

__all__ = ["IMPLS", "soft_target_cross_entropy", "SoftTargetCrossEntropy", "soft_target_cross_entropy_reference"]
