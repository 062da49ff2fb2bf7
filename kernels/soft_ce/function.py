"""Dispatch, autograd.Function and nn.Module for the reweighted soft-label cross-entropy.

impl="auto" runs the fused Triton kernel on CUDA tensors and the pure-torch reference
elsewhere; "triton" / "torch" force one. "triton" on CPU tensors
only works under TRITON_INTERPRET=1 (the kernel tests use that). The rule is the package's one
dispatch helper, `kernels.dispatch.use_triton`.

Gradients flow to the logits only: targets, lam, class weights and logit offsets are treated as
constants (their gradient is None, i.e. they are never trained through this loss).

Backward strategy of the Triton path (`grad_mode`):
- "recompute" (default): the forward reads the logits once and saves two fp32 numbers per row
  (log-sum-exp and the target mass sum_c t_c w_c); the backward kernel reads the logits again and
  writes the gradient already multiplied by grad_output, read from device memory (no host sync,
  works for reduction="none" and GradScaler-scaled losses). HBM traffic per element: forward
  1 read, backward 1 read + 1 write = 3 passes, and no extra B x C buffer lives between forward
  and backward (the saved logits are the only one).
- "fused": the forward writes the gradient in the same launch (as Liger-Kernel does) and the
  backward scales it by grad_output in place: 1 read + 1 write forward, 1 read + 1 write
  backward = 4 passes. Kept as an option for the benchmark to compare on a GPU; calling
  backward twice through it (retain_graph=True) is refused because the buffer is scaled in place.
"""
from __future__ import annotations

import functools
from typing import Optional

import torch
from torch import nn

from ..dispatch import IMPLS, use_triton
from .reference import Lam, SoftCEInputs, reference_from_inputs, validate_inputs

WHAT = "soft_target_cross_entropy"  # the name dispatch messages give this kernel
GRAD_MODES = ("recompute", "fused")


@functools.lru_cache(maxsize=1)
def _triton_module():
    """Import the kernel lazily: CPU-only installs never need Triton."""
    try:
        from . import triton_kernel
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise ImportError(
            "soft_target_cross_entropy: impl='triton' needs the `triton` package (pip install triton)"
        ) from exc
    return triton_kernel


class _SoftCETriton(torch.autograd.Function):
    """Triton forward/backward; only `logits` gets a gradient."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx,
        logits: torch.Tensor,
        y_a: Optional[torch.Tensor],
        y_b: Optional[torch.Tensor],
        lam: Optional[torch.Tensor],
        targets: Optional[torch.Tensor],
        class_weights: Optional[torch.Tensor],
        logit_offset: Optional[torch.Tensor],
        lam_value: float,
        temperature: float,
        t2_scale: bool,
        reduction: str,
        grad_mode: str,
        label_smoothing: float,
    ) -> torch.Tensor:
        tk = _triton_module()
        prep = tk.prepare(logits, y_a, y_b, lam, lam_value, targets, class_weights, logit_offset, temperature, t2_scale,
                          label_smoothing)
        B = logits.shape[0]
        grad_mult = prep.loss_mult / B if reduction == "mean" else prep.loss_mult
        write_grad = ctx.needs_input_grad[0] and grad_mode == "fused"
        loss_rows, lse, mass, grad = tk.forward(prep, grad_mult=grad_mult if write_grad else None)

        ctx.grad_mode = grad_mode
        ctx.reduction = reduction
        ctx.grad_mult = grad_mult
        ctx.consumed = False
        if ctx.needs_input_grad[0]:
            if grad_mode == "fused":
                ctx.save_for_backward(grad)
            else:
                ctx.prep = prep.without_tensors()
                ctx.save_for_backward(*prep.tensors(), lse, mass)
        if reduction == "mean":
            return loss_rows.mean()
        if reduction == "sum":
            return loss_rows.sum()
        return loss_rows

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):  # type: ignore[override]
        nones = (None,) * 12
        if ctx.grad_mode == "fused":
            if ctx.consumed:
                raise RuntimeError(
                    "soft_target_cross_entropy(grad_mode='fused') cannot be backpropagated twice "
                    "(its saved gradient is scaled in place); use grad_mode='recompute'"
                )
            ctx.consumed = True
            (grad,) = ctx.saved_tensors
            scale = grad_out[:, None] if ctx.reduction == "none" else grad_out
            return (grad.mul_(scale.to(grad.dtype)),) + nones
        tk = _triton_module()
        *tensors, lse, mass = ctx.saved_tensors
        prep = ctx.prep.with_tensors(tensors)
        return (tk.backward(prep, lse, mass, grad_out, ctx.grad_mult),) + nones


def triton_soft_target_cross_entropy(x: SoftCEInputs, grad_mode: str = "recompute") -> torch.Tensor:
    """Triton path on validated inputs (the benchmark calls this to compare grad modes)."""
    if grad_mode not in GRAD_MODES:
        raise ValueError(f"soft_target_cross_entropy: grad_mode must be one of {GRAD_MODES}, got {grad_mode!r}")
    lam_t = x.lam if isinstance(x.lam, torch.Tensor) else None
    lam_value = float(x.lam) if isinstance(x.lam, float) else 1.0
    return _SoftCETriton.apply(
        x.logits, x.y_a, x.y_b, lam_t, x.targets, x.class_weights, x.logit_offset,
        lam_value, x.temperature, x.t2_scale, x.reduction, grad_mode, x.label_smoothing,
    )


def soft_target_cross_entropy(
    logits: torch.Tensor,
    *,
    y_a: Optional[torch.Tensor] = None,
    y_b: Optional[torch.Tensor] = None,
    lam: Lam = 1.0,
    targets: Optional[torch.Tensor] = None,
    class_weights: Optional[torch.Tensor] = None,
    logit_offset: Optional[torch.Tensor] = None,
    temperature: float = 1.0,
    t2_scale: bool = False,
    reduction: str = "mean",
    impl: str = "auto",
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """loss_i = -sum_c t_ic w_c log_softmax((z_i + b) / T)_c, reduced over rows; fp32 result.

    Targets: sparse (y_a, y_b, lam) meaning t = lam e_{y_a} + (1 - lam) e_{y_b} (y_b None: hard
    labels y_a; lam a float, 0-dim or (B,) tensor), or dense `targets` (B, C).
    class_weights (C,) are not renormalised; logit_offset is (C,) or per-sample (B, C) (e.g. an
    LDAM margin on the target class). t2_scale multiplies by T**2 (distillation).
    reduction: "mean" (over the B rows) | "sum" | "none". impl: "auto" | "triton" | "torch".
    label_smoothing eps in [0, 1]: the target (sparse, mixed or dense) becomes (1 - eps) t + eps / C,
    as in F.cross_entropy(label_smoothing=eps); class weights multiply the smoothed target per class
    (t~_c w_c, the uniform part too); offsets and temperature are unchanged; 0 = no smoothing.
    """
    x = validate_inputs(
        logits, y_a=y_a, y_b=y_b, lam=lam, targets=targets, class_weights=class_weights,
        logit_offset=logit_offset, temperature=temperature, t2_scale=t2_scale, reduction=reduction,
        label_smoothing=label_smoothing,
    )
    if use_triton(impl, logits.device, WHAT):
        return triton_soft_target_cross_entropy(x)
    return reference_from_inputs(x)


class SoftTargetCrossEntropy(nn.Module):
    """Module form: class weights / logit offset are buffers (they follow .to(device)); label
    smoothing as in `soft_target_cross_entropy`.

    DRW-style schedules change the weights with `set_class_weights` between epochs.
    """

    def __init__(
        self,
        class_weights: Optional[torch.Tensor] = None,
        logit_offset: Optional[torch.Tensor] = None,
        temperature: float = 1.0,
        t2_scale: bool = False,
        reduction: str = "mean",
        impl: str = "auto",
        label_smoothing: float = 0.0,
    ) -> None:
        super().__init__()
        if impl not in IMPLS:
            raise ValueError(f"SoftTargetCrossEntropy: impl must be one of {IMPLS}, got {impl!r}")
        if not 0.0 <= float(label_smoothing) <= 1.0:
            raise ValueError(f"SoftTargetCrossEntropy: label_smoothing must lie in [0, 1], got {label_smoothing}")
        self.register_buffer("class_weights", None if class_weights is None else class_weights.detach().clone())
        self.register_buffer("logit_offset", None if logit_offset is None else logit_offset.detach().clone())
        self.temperature = float(temperature)
        self.t2_scale = bool(t2_scale)
        self.reduction = reduction
        self.impl = impl
        self.label_smoothing = float(label_smoothing)

    def set_class_weights(self, class_weights: Optional[torch.Tensor]) -> None:
        self.class_weights = None if class_weights is None else class_weights.detach().to(
            device=self.class_weights.device if self.class_weights is not None else class_weights.device
        )

    def forward(
        self,
        logits: torch.Tensor,
        y_a: Optional[torch.Tensor] = None,
        y_b: Optional[torch.Tensor] = None,
        lam: Lam = 1.0,
        targets: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        return soft_target_cross_entropy(
            logits, y_a=y_a, y_b=y_b, lam=lam, targets=targets, class_weights=self.class_weights,
            logit_offset=self.logit_offset, temperature=self.temperature, t2_scale=self.t2_scale,
            reduction=self.reduction, impl=self.impl, label_smoothing=self.label_smoothing,
        )

    def extra_repr(self) -> str:
        smoothing = f", label_smoothing={self.label_smoothing}" if self.label_smoothing else ""
        return (f"temperature={self.temperature}, t2_scale={self.t2_scale}, reduction={self.reduction!r}, "
                f"impl={self.impl!r}{smoothing}")
