"""Triton kernel of the reweighted soft-label cross-entropy (spec: reference.py).

One program handles BLOCK_B rows; the class axis is walked in BLOCK_C chunks with an online
softmax (running max m, running sum l of exp(z' - m)), all in fp32 whatever the logits dtype.
For dense targets the target mass s = sum_c a_c (a_c = t_c w_c) and d = sum_c a_c (z'_c - m) are
carried along, d re-based whenever m grows, so the loss s*log(l) - d never subtracts two large
numbers. For sparse targets the loss needs only two gathered logits per row.

    z'_c = (z_c + b_c) / T,  lse = m + log l,  p_c = exp(z'_c - lse)
    loss  = mult * sum_c a_c (lse - z'_c)          (terms with a_c == 0 are 0, even at z' = -inf)
    dL/dz = mult * g_row * (s p_c - a_c) / T

Label smoothing eps (SMOOTH) makes a_c = ((1 - eps) t_c + eps / C) w_c: the given target scaled by
1 - eps (folded into the two sparse coefficients), plus a uniform eps / C (times w_c, read with the
chunk) on every class of the chunk. Sparse targets then take the dense formula s*log(l) - d, whose
running sums carry sum_c a_c = (1 - eps) s_t + eps/C sum_c w_c and the uniform part of d in the same
pass over the logits (sum_c w_c logp_c = sum_c w_c (z'_c - m) - (sum_c w_c) (lse - m)): no extra
read of the logits, and the gradient formula is unchanged. eps = 0 compiles the code without it.

When the row fits one chunk (C <= MAX_BLOCK_C, e.g. iNaturalist's 8142 -> 8192) the logits are
read once and the gradient is computed from registers (ONE_CHUNK); otherwise a second pass
re-reads them. No B x C temporary is allocated besides the gradient itself.

Out-of-range labels give a NaN loss for their row (raising would need a host sync).
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Optional

import torch
import triton
import triton.language as tl

# Largest class chunk held in registers per row; tests shrink it to exercise the multi-chunk path.
MAX_BLOCK_C = 8192
# Target number of elements per program tile (rows x chunk), caps rows per program for small C.
TILE_ELEMS = 4096
MIN_PROGRAMS = 128  # keep the GPU busy for small C: never fewer programs than this if B allows


@triton.jit
def _logits_tile(z_ptr, stride_zb, off_ptr, stride_ob, rows64, cols, mask2, inv_T, HAS_OFF: tl.constexpr):
    z = tl.load(z_ptr + rows64[:, None] * stride_zb + cols[None, :], mask=mask2, other=float("-inf")).to(tl.float32)
    if HAS_OFF:
        z = z + tl.load(off_ptr + rows64[:, None] * stride_ob + cols[None, :], mask=mask2, other=0.0).to(tl.float32)
    return z * inv_T


@triton.jit
def _coef_tile(t_ptr, stride_tb, w_ptr, rows64, cols, mask2, C, ya, yb, coef_a, coef_b, smooth_keep, smooth_u,
               SPARSE: tl.constexpr, HAS_W: tl.constexpr, SMOOTH: tl.constexpr):
    """a_c = t_c * w_c for this tile (sparse: built from the two labels, w and 1 - eps already folded
    in); with SMOOTH, t_c is the smoothed target (1 - eps) t_c + eps / C."""
    if SPARSE:
        a = tl.where(cols[None, :] == ya[:, None], coef_a[:, None], 0.0)
        a += tl.where(cols[None, :] == yb[:, None], coef_b[:, None], 0.0)
        if SMOOTH:
            u = tl.where(mask2, smooth_u, 0.0)  # eps / C on the real classes, 0 on the padding
            if HAS_W:
                w = tl.load(w_ptr + cols, mask=cols < C, other=0.0).to(tl.float32)
                u = u * w[None, :]
            a += u
    else:
        a = tl.load(t_ptr + rows64[:, None] * stride_tb + cols[None, :], mask=mask2, other=0.0).to(tl.float32)
        if SMOOTH:
            a = tl.where(mask2, a * smooth_keep + smooth_u, 0.0)
        if HAS_W:
            w = tl.load(w_ptr + cols, mask=cols < C, other=0.0).to(tl.float32)
            a = a * w[None, :]
    return a


@triton.jit
def _online_step(zc, a, m, l, s, d, SUMS: tl.constexpr):
    """Fold one chunk into the running (max m, sum l, and with SUMS mass s, d = sum a (z' - m)) of
    each row."""
    neg_inf = float("-inf")
    m_new = tl.maximum(m, tl.max(zc, axis=1))
    # "Safe" pivots are 0 while everything seen is -inf, so no (-inf) - (-inf) = NaN appears.
    m_new_safe = tl.where(m_new == neg_inf, 0.0, m_new)
    m_old_safe = tl.where(m == neg_inf, 0.0, m)
    alpha = tl.where(m == neg_inf, 0.0, tl.exp(m - m_new_safe))
    l = l * alpha + tl.sum(tl.exp(zc - m_new_safe[:, None]), axis=1)
    if SUMS:
        # Re-base d on the new pivot, then add this chunk (0 * (-inf) terms are 0).
        d = d + tl.where(s != 0.0, s * (m_old_safe - m_new_safe), 0.0)
        d = d + tl.sum(a * tl.where(a != 0.0, zc - m_new_safe[:, None], 0.0), axis=1)
        s = s + tl.sum(a, axis=1)
    return m_new, l, s, d


@triton.jit
def _grad_tile(g_ptr, stride_gb, rows64, cols, mask2, zc, a, lse, s, gm):
    p = tl.exp(zc - lse[:, None])
    g = (s[:, None] * p - a) * gm[:, None]
    tl.store(g_ptr + rows64[:, None] * stride_gb + cols[None, :], g.to(g_ptr.dtype.element_ty), mask=mask2)


@triton.jit
def _soft_ce_kernel(
    z_ptr, stride_zb,
    ya_ptr, yb_ptr, lam_ptr, stride_lam, lam_value,
    t_ptr, stride_tb,
    w_ptr,
    off_ptr, stride_ob,
    lse_ptr, mass_ptr, loss_ptr,
    g_ptr, stride_gb,
    go_ptr, stride_go,
    B, C,
    inv_T, loss_mult, grad_mult, smooth_keep, smooth_u,
    SPARSE: tl.constexpr, HAS_YB: tl.constexpr, LAM_IS_PTR: tl.constexpr,
    HAS_W: tl.constexpr, HAS_OFF: tl.constexpr, SMOOTH: tl.constexpr,
    COMPUTE_LOSS: tl.constexpr, WRITE_GRAD: tl.constexpr, LSE_GIVEN: tl.constexpr, HAS_GO: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_C: tl.constexpr, ONE_CHUNK: tl.constexpr,
):
    pid = tl.program_id(0)
    rows = pid * BLOCK_B + tl.arange(0, BLOCK_B)
    row_mask = rows < B
    rows64 = rows.to(tl.int64)
    cols0 = tl.arange(0, BLOCK_C)
    neg_inf = float("-inf")

    # Sparse targets: per-row label indices and coefficients (weights folded in).
    label_ok = row_mask
    ya = tl.zeros([BLOCK_B], dtype=tl.int64) - 1
    yb = ya
    coef_a = tl.zeros([BLOCK_B], dtype=tl.float32)
    coef_b = coef_a
    if SPARSE:
        ya = tl.load(ya_ptr + rows, mask=row_mask, other=0).to(tl.int64)
        label_ok = row_mask & (ya >= 0) & (ya < C)
        coef_a = coef_a + 1.0
        if HAS_YB:
            yb = tl.load(yb_ptr + rows, mask=row_mask, other=0).to(tl.int64)
            label_ok = label_ok & (yb >= 0) & (yb < C)
            if LAM_IS_PTR:
                lam = tl.load(lam_ptr + rows * stride_lam, mask=row_mask, other=1.0).to(tl.float32)
            else:
                lam = coef_a * lam_value
            coef_a = lam
            coef_b = 1.0 - lam
        else:
            yb = ya  # coef_b stays 0: hard labels
        if HAS_W:
            coef_a = coef_a * tl.load(w_ptr + ya, mask=label_ok, other=0.0).to(tl.float32)
            coef_b = coef_b * tl.load(w_ptr + yb, mask=label_ok, other=0.0).to(tl.float32)
        if SMOOTH:
            coef_a = coef_a * smooth_keep
            coef_b = coef_b * smooth_keep
    # Per-row sums s, d are needed by dense targets and by smoothed sparse ones (the uniform part);
    # plain sparse targets gather their two logits instead.
    SUMS: tl.constexpr = (not SPARSE) or SMOOTH

    if LSE_GIVEN:
        lse = tl.load(lse_ptr + rows, mask=row_mask, other=0.0)
        s = tl.load(mass_ptr + rows, mask=row_mask, other=0.0)
    else:
        m = tl.full([BLOCK_B], neg_inf, tl.float32)
        l = tl.zeros([BLOCK_B], dtype=tl.float32)
        s = tl.zeros([BLOCK_B], dtype=tl.float32)
        d = tl.zeros([BLOCK_B], dtype=tl.float32)
        if ONE_CHUNK:
            # Whole row in registers: zc / a stay live for the gradient below (no second read).
            cols = cols0
            mask2 = row_mask[:, None] & (cols < C)[None, :]
            zc = _logits_tile(z_ptr, stride_zb, off_ptr, stride_ob, rows64, cols, mask2, inv_T, HAS_OFF)
            a = _coef_tile(t_ptr, stride_tb, w_ptr, rows64, cols, mask2, C, ya, yb, coef_a, coef_b, smooth_keep,
                           smooth_u, SPARSE, HAS_W, SMOOTH)
            m, l, s, d = _online_step(zc, a, m, l, s, d, SUMS)
        else:
            for k in range(0, tl.cdiv(C, BLOCK_C)):
                cols_k = k * BLOCK_C + cols0
                mask_k = row_mask[:, None] & (cols_k < C)[None, :]
                z_k = _logits_tile(z_ptr, stride_zb, off_ptr, stride_ob, rows64, cols_k, mask_k, inv_T, HAS_OFF)
                a_k = _coef_tile(t_ptr, stride_tb, w_ptr, rows64, cols_k, mask_k, C, ya, yb, coef_a, coef_b,
                                 smooth_keep, smooth_u, SPARSE, HAS_W, SMOOTH)
                m, l, s, d = _online_step(z_k, a_k, m, l, s, d, SUMS)
        m_safe = tl.where(m == neg_inf, 0.0, m)
        log_l = tl.log(l)
        lse = m_safe + log_l
        if not SUMS:
            s = coef_a + coef_b
        if COMPUTE_LOSS:
            if not SUMS:
                za = tl.load(z_ptr + rows64 * stride_zb + ya, mask=label_ok, other=0.0).to(tl.float32)
                zb = tl.load(z_ptr + rows64 * stride_zb + yb, mask=label_ok, other=0.0).to(tl.float32)
                if HAS_OFF:
                    za += tl.load(off_ptr + rows64 * stride_ob + ya, mask=label_ok, other=0.0).to(tl.float32)
                    zb += tl.load(off_ptr + rows64 * stride_ob + yb, mask=label_ok, other=0.0).to(tl.float32)
                za = za * inv_T
                zb = zb * inv_T
                loss = coef_a * tl.where(coef_a != 0.0, lse - za, 0.0)
                loss += coef_b * tl.where(coef_b != 0.0, lse - zb, 0.0)
            else:
                loss = tl.where(s != 0.0, s * log_l, 0.0) - d
            loss = tl.where(label_ok, loss * loss_mult, float("nan"))
            tl.store(loss_ptr + rows, loss, mask=row_mask)
            tl.store(lse_ptr + rows, lse, mask=row_mask)
            tl.store(mass_ptr + rows, s, mask=row_mask)

    if WRITE_GRAD:
        gm = tl.zeros([BLOCK_B], dtype=tl.float32) + grad_mult * inv_T
        if HAS_GO:
            gm = gm * tl.load(go_ptr + rows * stride_go, mask=row_mask, other=0.0).to(tl.float32)
        if ONE_CHUNK:
            if LSE_GIVEN:
                cols = cols0
                mask2 = row_mask[:, None] & (cols < C)[None, :]
                zc = _logits_tile(z_ptr, stride_zb, off_ptr, stride_ob, rows64, cols, mask2, inv_T, HAS_OFF)
                a = _coef_tile(t_ptr, stride_tb, w_ptr, rows64, cols, mask2, C, ya, yb, coef_a, coef_b,
                               smooth_keep, smooth_u, SPARSE, HAS_W, SMOOTH)
            # else: cols, mask2, zc and a of the single chunk are still live from the first pass
            _grad_tile(g_ptr, stride_gb, rows64, cols, mask2, zc, a, lse, s, gm)
        else:
            for k in range(0, tl.cdiv(C, BLOCK_C)):
                cols = k * BLOCK_C + cols0
                mask2 = row_mask[:, None] & (cols < C)[None, :]
                zc = _logits_tile(z_ptr, stride_zb, off_ptr, stride_ob, rows64, cols, mask2, inv_T, HAS_OFF)
                a = _coef_tile(t_ptr, stride_tb, w_ptr, rows64, cols, mask2, C, ya, yb, coef_a, coef_b,
                               smooth_keep, smooth_u, SPARSE, HAS_W, SMOOTH)
                _grad_tile(g_ptr, stride_gb, rows64, cols, mask2, zc, a, lse, s, gm)


def _row_major(t: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    """Kernels index rows by stride and classes contiguously: copy only if the class axis is strided."""
    if t is None or t.dim() == 0 or t.stride(-1) == 1:
        return t
    return t.contiguous()


@dataclass
class Prepared:
    """Kernel-ready arguments (tensors may be None) plus launch configuration."""

    logits: torch.Tensor
    y_a: Optional[torch.Tensor]
    y_b: Optional[torch.Tensor]
    lam: Optional[torch.Tensor]
    targets: Optional[torch.Tensor]
    class_weights: Optional[torch.Tensor]
    logit_offset: Optional[torch.Tensor]
    lam_value: float
    inv_T: float
    loss_mult: float
    block_b: int
    block_c: int
    num_warps: int
    label_smoothing: float = 0.0  # eps; 0 launches the kernel specialised without smoothing

    _TENSORS = ("logits", "y_a", "y_b", "lam", "targets", "class_weights", "logit_offset")

    def tensors(self) -> list:
        return [getattr(self, n) for n in self._TENSORS]

    def without_tensors(self) -> "Prepared":
        """Copy holding no tensors (ctx keeps them in save_for_backward instead)."""
        return replace(self, **{n: None for n in self._TENSORS})

    def with_tensors(self, tensors: list) -> "Prepared":
        return replace(self, **dict(zip(self._TENSORS, tensors)))


def launch_config(B: int, C: int) -> tuple[int, int, int]:
    """(BLOCK_B, BLOCK_C, num_warps): whole row in one chunk up to MAX_BLOCK_C classes, several
    rows per program for small C (bounded so that at least MIN_PROGRAMS programs exist)."""
    block_c = min(triton.next_power_of_2(max(C, 1)), MAX_BLOCK_C)
    block_b = max(1, TILE_ELEMS // block_c)
    block_b = min(block_b, max(1, triton.next_power_of_2(triton.cdiv(B, MIN_PROGRAMS))))
    num_warps = max(1, min(16, block_b * block_c // 512))
    return block_b, block_c, num_warps


def prepare(
    logits: torch.Tensor,
    y_a: Optional[torch.Tensor],
    y_b: Optional[torch.Tensor],
    lam: Optional[torch.Tensor],
    lam_value: float,
    targets: Optional[torch.Tensor],
    class_weights: Optional[torch.Tensor],
    logit_offset: Optional[torch.Tensor],
    temperature: float,
    t2_scale: bool,
    label_smoothing: float = 0.0,
) -> Prepared:
    B, C = logits.shape
    block_b, block_c, num_warps = launch_config(B, C)
    contiguous = lambda t: None if t is None else t.contiguous()  # noqa: E731 - 1-D vectors only
    return Prepared(
        logits=_row_major(logits),
        y_a=contiguous(y_a),
        y_b=contiguous(y_b),
        lam=lam,
        targets=_row_major(targets),
        class_weights=contiguous(class_weights),
        logit_offset=_row_major(logit_offset),
        lam_value=float(lam_value),
        inv_T=1.0 / float(temperature),
        loss_mult=float(temperature) ** 2 if t2_scale else 1.0,
        block_b=block_b,
        block_c=block_c,
        num_warps=num_warps,
        label_smoothing=float(label_smoothing),
    )


def _launch(
    p: Prepared,
    *,
    lse: torch.Tensor,
    mass: torch.Tensor,
    loss: torch.Tensor,
    grad: Optional[torch.Tensor],
    grad_out: Optional[torch.Tensor],
    grad_mult: float,
    compute_loss: bool,
    lse_given: bool,
) -> None:
    z = p.logits
    B, C = z.shape
    dummy = lse  # any valid pointer for arguments a constexpr flag switches off
    off = p.logit_offset
    lam = p.lam
    go = grad_out
    grid = (triton.cdiv(B, p.block_b),)
    eps = p.label_smoothing
    _soft_ce_kernel[grid](
        z, z.stride(0),
        p.y_a if p.y_a is not None else dummy,
        p.y_b if p.y_b is not None else dummy,
        lam if lam is not None else dummy,
        (lam.stride(0) if lam.dim() == 1 else 0) if lam is not None else 0,
        p.lam_value,
        p.targets if p.targets is not None else dummy,
        p.targets.stride(0) if p.targets is not None else 0,
        p.class_weights if p.class_weights is not None else dummy,
        off if off is not None else dummy,
        (off.stride(0) if off.dim() == 2 else 0) if off is not None else 0,
        lse, mass, loss,
        grad if grad is not None else dummy,
        grad.stride(0) if grad is not None else 0,
        go if go is not None else dummy,
        (go.stride(0) if go.dim() == 1 else 0) if go is not None else 0,
        B, C,
        p.inv_T, p.loss_mult, grad_mult, 1.0 - eps, eps / C if eps else 0.0,
        SPARSE=p.targets is None,
        HAS_YB=p.y_b is not None,
        LAM_IS_PTR=lam is not None,
        HAS_W=p.class_weights is not None,
        HAS_OFF=off is not None,
        SMOOTH=eps != 0.0,
        COMPUTE_LOSS=compute_loss,
        WRITE_GRAD=grad is not None,
        LSE_GIVEN=lse_given,
        HAS_GO=go is not None,
        BLOCK_B=p.block_b,
        BLOCK_C=p.block_c,
        ONE_CHUNK=C <= p.block_c,
        num_warps=p.num_warps,
    )


def forward(p: Prepared, grad_mult: Optional[float] = None):
    """Loss per row (fp32), lse and target mass per row; with grad_mult also the gradient
    (for grad_output = 1, already scaled by grad_mult) written in the same launch."""
    B, C = p.logits.shape
    dev = p.logits.device
    loss = torch.empty(B, dtype=torch.float32, device=dev)
    lse = torch.empty(B, dtype=torch.float32, device=dev)
    mass = torch.empty(B, dtype=torch.float32, device=dev)
    grad = None
    if grad_mult is not None:
        grad = torch.empty((B, C), dtype=p.logits.dtype, device=dev)
    if B > 0:
        _launch(p, lse=lse, mass=mass, loss=loss, grad=grad, grad_out=None,
                grad_mult=grad_mult if grad_mult is not None else 0.0, compute_loss=True, lse_given=False)
    return loss, lse, mass, grad


def backward(p: Prepared, lse: torch.Tensor, mass: torch.Tensor, grad_out: torch.Tensor, grad_mult: float) -> torch.Tensor:
    """Gradient w.r.t. the logits from the saved per-row lse / mass, scaled by grad_out
    (0-dim for mean/sum, (B,) for reduction='none') inside the kernel."""
    B, C = p.logits.shape
    grad = torch.empty((B, C), dtype=p.logits.dtype, device=p.logits.device)
    if B > 0:
        _launch(p, lse=lse, mass=mass, loss=lse, grad=grad, grad_out=grad_out.float(),
                grad_mult=grad_mult, compute_loss=False, lse_given=True)
    return grad
