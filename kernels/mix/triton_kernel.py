"""Fused Triton kernel: uint8 NHWC (+ deferred crop/flip) -> normalised MixUp / CutMix views.

One launch writes up to two output views. Program (m, blk, v) produces `BLOCK` consecutive
elements of the flat NHWC output row m of view v, so stores are fully coalesced; each output
element reads its (at most two) source bytes straight from the uint8 image, applying the
per-source-row crop/flip on the fly: the padded/cropped/flipped/normalised intermediate
images are never materialised. Semantics are those of `reference.py` (the spec).

Modes per view: 0 = plain (normalise row a), 1 = MixUp (lam·a + (1−lam)·b), 2 = CutMix
(b inside the box, a outside). A crop pixel outside the source image reads 0 (zero padding in
uint8 space, as torchvision's RandomCrop(padding) does before Normalize).
"""
from __future__ import annotations

import triton
import triton.language as tl

MODE_PLAIN, MODE_MIXUP, MODE_CUTMIX = 0, 1, 2


@triton.jit
def _load_source(src_ptr, off_ptr, flip_ptr, pad, row, e, y, x, c, mask,
                 H: tl.constexpr, W: tl.constexpr, HAS_GEO: tl.constexpr):
    """uint8 source value (as fp32) for flat output element e = (y, x, c) of source row `row`."""
    base = src_ptr + row.to(tl.int64) * (H * W * 3)
    if HAS_GEO:
        dy = tl.load(off_ptr + row * 2)
        dx = tl.load(off_ptr + row * 2 + 1)
        fl = tl.load(flip_ptr + row)
        xx = tl.where(fl != 0, W - 1 - x, x)
        sy = y + dy - pad
        sx = xx + dx - pad
        valid = mask & (sy >= 0) & (sy < H) & (sx >= 0) & (sx < W)
        v = tl.load(base + (sy * W + sx) * 3 + c, mask=valid, other=0)
    else:
        # Pre-cropped source: the element sits at the same flat offset; addressing by `e`
        # lets the compiler see contiguity and vectorise the byte loads.
        v = tl.load(base + e, mask=mask, other=0)
    return v.to(tl.float32)


@triton.jit
def _one_view(out_ptr, src_ptr, off_ptr, flip_ptr, pad, idx_a_ptr, idx_b_ptr, m, e, emask,
              lam, one_minus_lam, by0, by1, bx0, bx1, sc0, sc1, sc2, sh0, sh1, sh2,
              H: tl.constexpr, W: tl.constexpr, MODE: tl.constexpr, HAS_GEO: tl.constexpr,
              GATHER: tl.constexpr):
    c = e % 3
    p = e // 3
    y = p // W
    x = p % W
    scale = tl.where(c == 0, sc0, tl.where(c == 1, sc1, sc2))
    shift = tl.where(c == 0, sh0, tl.where(c == 1, sh1, sh2))
    if GATHER:
        ia = tl.load(idx_a_ptr + m)
    else:
        ia = m.to(tl.int64)
    if MODE == 2:
        ib = tl.load(idx_b_ptr + m)
        inbox = (y >= by0) & (y < by1) & (x >= bx0) & (x < bx1)
        va = _load_source(src_ptr, off_ptr, flip_ptr, pad, ia, e, y, x, c, emask & (inbox == 0), H, W, HAS_GEO)
        vb = _load_source(src_ptr, off_ptr, flip_ptr, pad, ib, e, y, x, c, emask & inbox, H, W, HAS_GEO)
        res = tl.where(inbox, vb * scale + shift, va * scale + shift)
    elif MODE == 1:
        ib = tl.load(idx_b_ptr + m)
        va = _load_source(src_ptr, off_ptr, flip_ptr, pad, ia, e, y, x, c, emask, H, W, HAS_GEO)
        vb = _load_source(src_ptr, off_ptr, flip_ptr, pad, ib, e, y, x, c, emask, H, W, HAS_GEO)
        res = (va * scale + shift) * lam + (vb * scale + shift) * one_minus_lam
    else:
        va = _load_source(src_ptr, off_ptr, flip_ptr, pad, ia, e, y, x, c, emask, H, W, HAS_GEO)
        res = va * scale + shift
    out = out_ptr + m.to(tl.int64) * (H * W * 3) + e
    tl.store(out, res.to(out_ptr.dtype.element_ty), mask=emask)


# Per-step scalars (box corners, padding) must not be value-specialised: Triton would compile
# a new variant whenever a corner changes between "divisible by 16" and not.
@triton.jit(do_not_specialize=["pad0", "pad1", "by0", "by1", "bx0", "bx1"])
def mix_kernel(out0_ptr, src0_ptr, off0_ptr, flip0_ptr, pad0,
               out1_ptr, src1_ptr, off1_ptr, flip1_ptr, pad1,
               idx_a_ptr, idx_b_ptr, lam, one_minus_lam, by0, by1, bx0, bx1,
               sc0, sc1, sc2, sh0, sh1, sh2,
               H: tl.constexpr, W: tl.constexpr, MODE0: tl.constexpr, MODE1: tl.constexpr,
               HAS_GEO0: tl.constexpr, HAS_GEO1: tl.constexpr, GATHER: tl.constexpr,
               BLOCK: tl.constexpr):
    m = tl.program_id(0)
    blk = tl.program_id(1)
    v = tl.program_id(2)
    e = blk * BLOCK + tl.arange(0, BLOCK)
    emask = e < H * W * 3
    if v == 0:
        _one_view(out0_ptr, src0_ptr, off0_ptr, flip0_ptr, pad0, idx_a_ptr, idx_b_ptr, m, e, emask,
                  lam, one_minus_lam, by0, by1, bx0, bx1, sc0, sc1, sc2, sh0, sh1, sh2,
                  H, W, MODE0, HAS_GEO0, GATHER)
    else:
        _one_view(out1_ptr, src1_ptr, off1_ptr, flip1_ptr, pad1, idx_a_ptr, idx_b_ptr, m, e, emask,
                  lam, one_minus_lam, by0, by1, bx0, bx1, sc0, sc1, sc2, sh0, sh1, sh2,
                  H, W, MODE1, HAS_GEO1, GATHER)
