"""Reference of the soft-label CE (kernels/soft_ce/reference.py) against naive dense formulas,
the methods that go through it (CE, Balanced Softmax, logit adjustment, LDAM, KD), edge cases,
argument checks; plus an ahead-of-time compile of the Triton kernel for sm_90 (no GPU needed)
and GPU comparisons (marked gpu)."""
from __future__ import annotations

import itertools
import math
import os

import pytest
import torch
import torch.nn.functional as F

from fasttrain.kernels.soft_ce import (
    SoftTargetCrossEntropy,
    soft_target_cross_entropy,
    soft_target_cross_entropy_reference,
)

ref = soft_target_cross_entropy_reference


def naive(z, t, w=None, b=None, T=1.0, t2=False, reduction="mean"):
    """The textbook dense formula: full target matrix times weights times log_softmax."""
    zz = z.float() + (b.float() if b is not None else 0.0)
    logp = torch.log_softmax(zz / T, dim=1)
    tw = t.float() * (w.float() if w is not None else 1.0)
    loss = -(tw * logp).sum(1) * (T * T if t2 else 1.0)
    return {"mean": loss.mean(), "sum": loss.sum(), "none": loss}[reduction]


def mix_targets(ya, yb, lam, C):
    lam = torch.as_tensor(lam, dtype=torch.float32).expand(ya.shape[0])[:, None]
    return lam * F.one_hot(ya, C).float() + (1 - lam) * F.one_hot(yb, C).float()


def value_and_grad(fn, z, **kw):
    z = z.detach().clone().requires_grad_()
    out = fn(z, **kw)
    gen = torch.Generator().manual_seed(7)
    (out * torch.rand(out.shape, generator=gen)).sum().backward()
    return out.detach(), z.grad


@pytest.mark.parametrize("C,B", list(itertools.product([10, 100, 1000, 8142], [1, 7, 64, 513])))
def test_reference_matches_naive_sparse_and_dense(C, B):
    g = torch.Generator().manual_seed(C * 1000 + B)
    z = torch.randn(B, C, generator=g) * 4
    ya, yb = torch.randint(0, C, (B,), generator=g), torch.randint(0, C, (B,), generator=g)
    lam = torch.rand(B, generator=g)
    w, b = torch.rand(C, generator=g) + 0.1, torch.randn(C, generator=g)
    dense = torch.softmax(torch.randn(B, C, generator=g), 1)
    cases = [
        (dict(y_a=ya), F.one_hot(ya, C).float(), {}),
        (dict(y_a=ya, y_b=yb, lam=0.37), mix_targets(ya, yb, 0.37, C), dict(class_weights=w, reduction="sum")),
        (dict(y_a=ya, y_b=yb, lam=lam), mix_targets(ya, yb, lam, C), dict(logit_offset=b, temperature=2.5, t2_scale=True, reduction="none")),
        (dict(targets=dense), dense, dict(class_weights=w, logit_offset=b, temperature=0.7)),
    ]
    for sparse_kw, t, opts in cases:
        v_ref, g_ref = value_and_grad(ref, z, **sparse_kw, **opts)
        nkw = {"w": opts.get("class_weights"), "b": opts.get("logit_offset"), "T": opts.get("temperature", 1.0),
               "t2": opts.get("t2_scale", False), "reduction": opts.get("reduction", "mean")}
        v_nv, g_nv = value_and_grad(lambda zz: naive(zz, t, **nkw), z)
        torch.testing.assert_close(v_ref, v_nv, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(g_ref, g_nv, rtol=1e-5, atol=1e-6)


def test_hard_labels_equal_torch_cross_entropy():
    g = torch.Generator().manual_seed(0)
    z, y, w = torch.randn(33, 17, generator=g), torch.randint(0, 17, (33,), generator=g), torch.rand(17, generator=g)
    torch.testing.assert_close(ref(z, y_a=y), F.cross_entropy(z, y))
    # Weights are not renormalised: "sum" equals torch's weighted sum, "mean" divides by B.
    torch.testing.assert_close(ref(z, y_a=y, class_weights=w, reduction="sum"), F.cross_entropy(z, y, weight=w, reduction="sum"))
    torch.testing.assert_close(ref(z, y_a=y, class_weights=w), F.cross_entropy(z, y, weight=w, reduction="sum") / 33)


def test_lam_forms_agree_and_lambda_extremes():
    g = torch.Generator().manual_seed(1)
    z, ya, yb = torch.randn(9, 12, generator=g), torch.randint(0, 12, (9,), generator=g), torch.randint(0, 12, (9,), generator=g)
    a = ref(z, y_a=ya, y_b=yb, lam=0.3)
    torch.testing.assert_close(a, ref(z, y_a=ya, y_b=yb, lam=torch.tensor(0.3)))
    torch.testing.assert_close(a, ref(z, y_a=ya, y_b=yb, lam=torch.full((9,), 0.3)))
    torch.testing.assert_close(ref(z, y_a=ya, y_b=yb, lam=1.0), ref(z, y_a=ya))
    torch.testing.assert_close(ref(z, y_a=ya, y_b=yb, lam=0.0), ref(z, y_a=yb))
    torch.testing.assert_close(ref(z, y_a=ya, y_b=ya, lam=0.42), ref(z, y_a=ya))


def test_balanced_softmax_and_logit_adjustment_through_offset():
    g = torch.Generator().manual_seed(2)
    counts = torch.tensor([500.0, 120, 40, 9, 3])
    z, y = torch.randn(16, 5, generator=g), torch.randint(0, 5, (16,), generator=g)
    # Balanced Softmax: softmax over z + log n_c.
    torch.testing.assert_close(ref(z, y_a=y, logit_offset=counts.log()), F.cross_entropy(z + counts.log(), y))
    # Logit adjustment (loss form): z + tau * log prior.
    tau, prior = 1.5, counts / counts.sum()
    torch.testing.assert_close(ref(z, y_a=y, logit_offset=tau * prior.log()), F.cross_entropy(z + tau * prior.log(), y))


def test_ldam_margin_as_per_sample_offset():
    g = torch.Generator().manual_seed(3)
    counts = torch.tensor([500.0, 120, 40, 9, 3])
    m = 1.0 / counts.pow(0.25)
    m = m * (0.5 / m.max())
    s = 30.0
    z, y = torch.randn(16, 5, generator=g), torch.randint(0, 5, (16,), generator=g)
    margin = -m[y][:, None] * F.one_hot(y, 5)  # subtract m_y on the target logit only
    expected = F.cross_entropy(s * (z + margin), y)
    # LDAM: CE(s * (z - m_y e_y)) == our loss with offset (B, C) and T = 1 / s.
    torch.testing.assert_close(ref(z, y_a=y, logit_offset=margin, temperature=1.0 / s), expected, rtol=1e-5, atol=1e-5)


def test_distillation_term_is_t2_kl_plus_entropy():
    g = torch.Generator().manual_seed(4)
    T = 4.0
    zs, zt = torch.randn(8, 20, generator=g), torch.randn(8, 20, generator=g) * 2
    pt = torch.softmax(zt / T, 1)
    kl = F.kl_div(torch.log_softmax(zs / T, 1), pt, reduction="batchmean")
    entropy = -(pt * pt.log()).sum(1).mean()
    torch.testing.assert_close(ref(zs, targets=pt, temperature=T, t2_scale=True), T * T * (kl + entropy))


def test_zero_rows_neg_inf_and_huge_logits_have_no_nan():
    z = torch.randn(4, 6)
    z[0, 2] = float("-inf")  # masked class with zero target mass
    z[1] = torch.tensor([3e38, -1e37, 1e30, 0.0, 5.0, -1.0])
    dense = torch.softmax(torch.randn(4, 6), 1)
    dense[0, 2] = 0.0
    dense[2] = 0.0  # all-zero target row: loss 0, gradient 0
    v, gr = value_and_grad(ref, z, targets=dense, reduction="none")
    assert torch.isfinite(v).all() and torch.isfinite(gr).all()
    assert v[2] == 0 and (gr[2] == 0).all()
    ya, yb = torch.tensor([0, 0, 1, 1]), torch.tensor([2, 3, 4, 5])
    v, gr = value_and_grad(ref, z, y_a=ya, y_b=yb, lam=1.0, reduction="none")  # lam=1: -inf class 2 unused
    assert torch.isfinite(v).all() and torch.isfinite(gr).all()
    # A target on a -inf logit is an infinite loss, but still no NaN anywhere.
    v, gr = value_and_grad(ref, z, y_a=yb, reduction="none")
    assert v[0] == float("inf") and not torch.isnan(v).any() and torch.isfinite(gr).all()


def test_bf16_logits_computed_in_fp32():
    g = torch.Generator().manual_seed(5)
    z, y = torch.randn(8, 50, generator=g).bfloat16(), torch.randint(0, 50, (8,), generator=g)
    out = ref(z, y_a=y)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, F.cross_entropy(z.float(), y))


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(), "exactly one of y_a"),
        (dict(y_a=torch.zeros(4, dtype=torch.long), targets=torch.zeros(4, 10)), "exactly one of y_a"),
        (dict(y_a=torch.zeros(3, dtype=torch.long)), r"y_a must have shape \(4,\)"),
        (dict(y_a=torch.zeros(4)), "int64/int32"),
        (dict(y_a=torch.zeros(4, dtype=torch.long), lam=0.5), "lam given without y_b"),
        (dict(y_a=torch.zeros(4, dtype=torch.long), y_b=torch.zeros(4, dtype=torch.long), lam=torch.ones(3)), "lam must be"),
        (dict(targets=torch.zeros(4, 9)), r"targets must have shape \(4, 10\)"),
        (dict(y_a=torch.zeros(4, dtype=torch.long), class_weights=torch.ones(9)), "class_weights"),
        (dict(y_a=torch.zeros(4, dtype=torch.long), logit_offset=torch.ones(3, 10)), "logit_offset"),
        (dict(y_a=torch.zeros(4, dtype=torch.long), reduction="avg"), "reduction"),
        (dict(y_a=torch.zeros(4, dtype=torch.long), temperature=0.0), "temperature"),
        (dict(y_a=torch.full((4,), 10)), r"labels must lie in \[0, 10\)"),
    ],
)
def test_bad_arguments_raise_clear_errors(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        soft_target_cross_entropy(torch.randn(4, 10), **kwargs)


def test_impl_switch_and_module():
    z, y = torch.randn(5, 7), torch.randint(0, 7, (5,))
    with pytest.raises(ValueError, match="impl"):
        soft_target_cross_entropy(z, y_a=y, impl="cuda")
    if os.environ.get("TRITON_INTERPRET") != "1":
        with pytest.raises(RuntimeError, match="CUDA"):
            soft_target_cross_entropy(z, y_a=y, impl="triton")
    w = torch.rand(7)
    mod = SoftTargetCrossEntropy(class_weights=w, temperature=2.0, reduction="sum")
    torch.testing.assert_close(mod(z, y), ref(z, y_a=y, class_weights=w, temperature=2.0, reduction="sum"))
    assert "class_weights" in dict(mod.named_buffers())
    mod.set_class_weights(torch.ones(7))  # DRW: weights switched between epochs
    torch.testing.assert_close(mod(z, y), ref(z, y_a=y, temperature=2.0, reduction="sum"))


# --- label smoothing ---------------------------------------------------------------------------------


def smoothed(t: torch.Tensor, eps: float) -> torch.Tensor:
    """The smoothed target, written out: (1 - eps) t + eps / C on every class."""
    return (1.0 - eps) * t.float() + eps / t.shape[1]


@pytest.mark.parametrize("eps", [0.0, 0.05, 0.1, 0.3, 1.0])
def test_label_smoothing_hard_labels_equal_torch_cross_entropy(eps):
    """Values and gradients of F.cross_entropy(label_smoothing=eps), without and with class weights
    (torch weights the smoothed target per class too: "sum" is its weighted sum, "mean" divides by B)."""
    g = torch.Generator().manual_seed(40)
    z, y, w = torch.randn(33, 17, generator=g) * 3, torch.randint(0, 17, (33,), generator=g), torch.rand(17, generator=g)
    for ours, theirs in [
        (dict(), dict()),
        (dict(reduction="none"), dict(reduction="none")),
        (dict(class_weights=w, reduction="sum"), dict(weight=w, reduction="sum")),
        (dict(class_weights=w, reduction="none"), dict(weight=w, reduction="none")),
    ]:
        got = value_and_grad(ref, z, y_a=y, label_smoothing=eps, **ours)
        want = value_and_grad(lambda zz: F.cross_entropy(zz, y, label_smoothing=eps, **theirs), z)
        torch.testing.assert_close(got[0], want[0], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(got[1], want[1], rtol=1e-5, atol=1e-6)
    got = ref(z, y_a=y, class_weights=w, label_smoothing=eps)
    torch.testing.assert_close(got, F.cross_entropy(z, y, weight=w, reduction="sum", label_smoothing=eps) / 33)


@pytest.mark.parametrize("eps", [0.1, 0.45])
def test_label_smoothing_mixed_dense_weights_offsets_against_hand_formula(eps):
    """Mixed targets: the mix of the two smoothed one-hots (timm's MixUp + smoothing) = the smoothed mix;
    dense targets smoothed the same way (torch's class-probability CE); weights on the smoothed target
    (t~_c w_c); logit offsets, temperature and T^2 act as without smoothing."""
    g = torch.Generator().manual_seed(41)
    B, C = 19, 23
    z = torch.randn(B, C, generator=g) * 3
    ya, yb = torch.randint(0, C, (B,), generator=g), torch.randint(0, C, (B,), generator=g)
    lam = torch.rand(B, generator=g)
    w, b = torch.rand(C, generator=g) + 0.1, torch.randn(C, generator=g)
    dense = torch.softmax(torch.randn(B, C, generator=g), 1)
    lam_c = lam[:, None]
    timm_mix = lam_c * smoothed(F.one_hot(ya, C), eps) + (1 - lam_c) * smoothed(F.one_hot(yb, C), eps)
    torch.testing.assert_close(timm_mix, smoothed(mix_targets(ya, yb, lam, C), eps))
    cases = [
        (dict(y_a=ya), smoothed(F.one_hot(ya, C), eps), dict(class_weights=w, logit_offset=b)),
        (dict(y_a=ya, y_b=yb, lam=0.37), smoothed(mix_targets(ya, yb, 0.37, C), eps), dict(class_weights=w, reduction="sum")),
        (dict(y_a=ya, y_b=yb, lam=lam), timm_mix, dict(logit_offset=b, temperature=2.5, t2_scale=True, reduction="none")),
        (dict(y_a=ya, y_b=yb, lam=lam), timm_mix, dict(class_weights=w, reduction="none")),
        (dict(targets=dense), smoothed(dense, eps), dict(class_weights=w, logit_offset=b, temperature=0.7)),
    ]
    for target_kw, t, opts in cases:
        got = value_and_grad(ref, z, label_smoothing=eps, **target_kw, **opts)
        nkw = {"w": opts.get("class_weights"), "b": opts.get("logit_offset"), "T": opts.get("temperature", 1.0),
               "t2": opts.get("t2_scale", False), "reduction": opts.get("reduction", "mean")}
        want = value_and_grad(lambda zz: naive(zz, t, **nkw), z)
        torch.testing.assert_close(got[0], want[0], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(got[1], want[1], rtol=1e-5, atol=1e-6)
    # Dense targets are smoothed as torch smooths class probabilities (weights included).
    torch.testing.assert_close(ref(z, targets=dense, class_weights=w, reduction="sum", label_smoothing=eps),
                               F.cross_entropy(z, dense, weight=w, reduction="sum", label_smoothing=eps))
    # The weighted formula, by hand: (1 - eps) * [loss of t] - eps / C * sum_c w_c logp_c.
    logp = torch.log_softmax(z, 1)
    by_hand = -(1 - eps) * w[ya] * logp.gather(1, ya[:, None])[:, 0] - eps / C * (w * logp).sum(1)
    torch.testing.assert_close(ref(z, y_a=ya, class_weights=w, reduction="none", label_smoothing=eps), by_hand)


def test_label_smoothing_zero_is_the_unsmoothed_loss_bit_for_bit_and_bad_values_raise():
    g = torch.Generator().manual_seed(42)
    z, ya, yb = torch.randn(9, 12, generator=g), torch.randint(0, 12, (9,), generator=g), torch.randint(0, 12, (9,), generator=g)
    w, dense = torch.rand(12, generator=g), torch.softmax(torch.randn(9, 12, generator=g), 1)
    for kw in (dict(y_a=ya), dict(y_a=ya, y_b=yb, lam=0.3, class_weights=w), dict(targets=dense, class_weights=w)):
        a, b = value_and_grad(ref, z, **kw), value_and_grad(ref, z, label_smoothing=0.0, **kw)
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    for bad in (-0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match=r"label_smoothing must lie in \[0, 1\]"):
            soft_target_cross_entropy(z, y_a=ya, label_smoothing=bad)
        with pytest.raises(ValueError, match="label_smoothing"):
            SoftTargetCrossEntropy(label_smoothing=bad)
    mod = SoftTargetCrossEntropy(class_weights=w, label_smoothing=0.2, reduction="sum")
    torch.testing.assert_close(mod(z, ya), F.cross_entropy(z, ya, weight=w, reduction="sum", label_smoothing=0.2))
    assert "label_smoothing=0.2" in repr(mod) and "label_smoothing" not in repr(SoftTargetCrossEntropy())


def test_triton_kernel_compiles_for_sm90_without_gpu():
    """The interpreter does not catch compile-mode errors (scoping, types): build real cubins."""
    triton = pytest.importorskip("triton")
    try:
        from triton.backends.compiler import GPUTarget
        from triton.compiler import ASTSource
    except ImportError:
        pytest.skip("this triton has no ASTSource/GPUTarget API")
    if not os.path.exists(os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")):
        pytest.skip("triton wheel without the NVIDIA backend")
    from fasttrain.kernels.soft_ce import triton_kernel as tk

    fn = tk._soft_ce_kernel
    constexpr_names = {"SPARSE", "HAS_YB", "LAM_IS_PTR", "HAS_W", "HAS_OFF", "SMOOTH", "COMPUTE_LOSS", "WRITE_GRAD",
                       "LSE_GIVEN", "HAS_GO", "BLOCK_B", "BLOCK_C", "ONE_CHUNK"}
    floats = {"lam_value", "inv_T", "loss_mult", "grad_mult", "smooth_keep", "smooth_u"}
    sig = {}
    for n in fn.arg_names:
        if n in constexpr_names:
            sig[n] = "constexpr"
        elif n in ("z_ptr", "g_ptr"):
            sig[n] = "*bf16"
        elif n in ("ya_ptr", "yb_ptr"):
            sig[n] = "*i64"
        elif n.endswith("_ptr"):
            sig[n] = "*fp32"
        else:
            sig[n] = "fp32" if n in floats else "i32"
    for sparse, one_chunk, lse_given, smooth in itertools.product([True, False], repeat=4):
        block_b, block_c, warps = (1, 8192, 16) if one_chunk else (4, 256, 2)
        const = dict(SPARSE=sparse, HAS_YB=True, LAM_IS_PTR=True, HAS_W=True, HAS_OFF=True, SMOOTH=smooth,
                     COMPUTE_LOSS=not lse_given, WRITE_GRAD=True, LSE_GIVEN=lse_given, HAS_GO=lse_given,
                     BLOCK_B=block_b, BLOCK_C=block_c, ONE_CHUNK=one_chunk)
        k = triton.compile(ASTSource(fn=fn, signature=sig, constexprs=const), target=GPUTarget("cuda", 90, 32),
                           options={"num_warps": warps})
        assert "cubin" in k.asm


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("C,B", list(itertools.product([10, 1000, 8142, 20000], [7, 513])))
def test_triton_matches_reference_on_gpu(C, B, dtype):
    """Compiled kernels vs the reference at the shapes that matter (one and several chunks per row,
    a ragged batch), every target form the methods use — GLMC's is a plain float λ with class
    weights — and both backward strategies. A matrix that compiles in seconds."""
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    from fasttrain.kernels.soft_ce.function import triton_soft_target_cross_entropy
    from fasttrain.kernels.soft_ce.reference import validate_inputs

    g = torch.Generator(device="cuda").manual_seed(C + B)
    z = (torch.randn(B, C, device="cuda", generator=g) * 3).to(dtype)
    ya = torch.randint(0, C, (B,), device="cuda", generator=g)
    yb = torch.randint(0, C, (B,), device="cuda", generator=g)
    w = torch.rand(C, device="cuda", generator=g)
    b = torch.randn(C, device="cuda", generator=g)
    dense = torch.softmax(torch.randn(B, C, device="cuda", generator=g), 1)
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=2e-2, atol=2e-2)
    cases = [dict(y_a=ya),
             dict(y_a=ya, y_b=yb, lam=0.37, class_weights=w),  # GLMC's reweighted mixed-label term
             dict(y_a=ya, y_b=yb, lam=torch.rand(B, device="cuda", generator=g), class_weights=w, logit_offset=b),
             dict(targets=dense, temperature=2.0, t2_scale=True, reduction="sum"),
             # label smoothing: hard labels; mixed with weights (the uniform part weighted); dense
             dict(y_a=ya, label_smoothing=0.1),
             dict(y_a=ya, y_b=yb, lam=torch.rand(B, device="cuda", generator=g), class_weights=w, label_smoothing=0.2),
             dict(targets=dense, class_weights=w, label_smoothing=0.1, reduction="sum")]
    for kw in cases:
        for grad_mode in ("recompute", "fused"):
            outs = []
            for impl in ("torch", "triton"):
                zz = z.detach().clone().requires_grad_()
                if impl == "torch":
                    out = soft_target_cross_entropy(zz, impl="torch", **kw)
                else:
                    out = triton_soft_target_cross_entropy(validate_inputs(zz, **kw), grad_mode=grad_mode)
                out.backward()
                outs.append((out.detach(), zz.grad.float()))
            torch.testing.assert_close(outs[1][0], outs[0][0], **tol)
            torch.testing.assert_close(outs[1][1], outs[0][1], **tol)
