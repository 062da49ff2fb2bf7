"""Triton soft-label CE kernel vs the reference: on the CPU under TRITON_INTERPRET=1 (fp32, small),
or compiled on a GPU.

Collected only where the kernel can run (tests/conftest.py): in a process started with
TRITON_INTERPRET=1 (test_triton_kernels.py starts one from the normal run; the variable must be set
before triton is imported), or on a CUDA machine, where the same cases run compiled and carry the
`gpu` marker (`pytest -m gpu`). Both backward strategies ("recompute", "fused") and both code paths
of the kernel (whole row in one chunk, and several chunks with the online softmax, forced by
shrinking MAX_BLOCK_C) are hit.
"""
import itertools
import os

import pytest
import torch

pytest.importorskip("triton")

from fasttrain.kernels.soft_ce import soft_target_cross_entropy, soft_target_cross_entropy_reference  # noqa: E402
from fasttrain.kernels.soft_ce import triton_kernel as tk  # noqa: E402
from fasttrain.kernels.soft_ce.function import triton_soft_target_cross_entropy  # noqa: E402
from fasttrain.kernels.soft_ce.reference import validate_inputs  # noqa: E402

TARGET_KINDS = ("hard", "mix_scalar", "mix_rows", "dense")
DEV = torch.device("cpu" if os.environ.get("TRITON_INTERPRET") == "1" else "cuda")
if DEV.type == "cuda" and not torch.cuda.is_available():  # e.g. this file named on a CPU-only command line
    pytest.skip("needs CUDA, or TRITON_INTERPRET=1 set before triton is imported (tests/test_triton_kernels.py "
                "runs this file so)", allow_module_level=True)


def on_dev(kw: dict) -> dict:
    return {k: v.to(DEV) if isinstance(v, torch.Tensor) else v for k, v in kw.items()}


def make_case(B, C, kind, opts, seed, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    z = (torch.randn(B, C, generator=g) * 3).to(dtype)
    ya, yb = torch.randint(0, C, (B,), generator=g), torch.randint(0, C, (B,), generator=g)
    kw = {
        "hard": dict(y_a=ya),
        "mix_scalar": dict(y_a=ya, y_b=yb, lam=0.35),
        "mix_rows": dict(y_a=ya, y_b=yb, lam=torch.rand(B, generator=g)),
        "dense": dict(targets=torch.softmax(torch.randn(B, C, generator=g), 1)),
    }[kind]
    if "w" in opts:
        kw["class_weights"] = torch.rand(C, generator=g) + 0.05
    if "b" in opts:
        kw["logit_offset"] = torch.randn(C, generator=g)
    if "T" in opts:
        kw.update(temperature=1.7, t2_scale=True)
    return z.to(DEV), on_dev(kw)  # drawn on the CPU: the same cases on every device


def compare(z, kw, grad_mode="recompute", reduction="mean", rtol=1e-5, atol=1e-5):
    """Values and logits-gradients (for a random grad_output) of Triton vs the reference."""
    z, kw = z.to(DEV), on_dev(kw)
    results = []
    for use_triton in (False, True):
        zz = z.detach().clone().requires_grad_()
        if use_triton:
            out = triton_soft_target_cross_entropy(validate_inputs(zz, reduction=reduction, **kw), grad_mode=grad_mode)
        else:
            out = soft_target_cross_entropy_reference(zz, reduction=reduction, **kw)
        go = torch.rand(out.shape, generator=torch.Generator().manual_seed(11)).to(DEV) + 0.5
        (out * go).sum().backward()
        results.append((out.detach(), zz.grad))
    (v_ref, g_ref), (v_tri, g_tri) = results
    torch.testing.assert_close(v_tri, v_ref, rtol=rtol, atol=atol)
    torch.testing.assert_close(g_tri, g_ref, rtol=rtol, atol=atol)
    return v_tri, g_tri


OPTION_SETS = ((), ("w",), ("b", "T"), ("w", "b", "T"))
CASES = [
    (B, C, kind, OPTION_SETS[i % 4], ("recompute", "fused")[i % 2], ("mean", "sum", "none")[i % 3])
    for i, (B, C, kind) in enumerate(itertools.product([1, 7, 33], [10, 100, 1000], TARGET_KINDS))
]


@pytest.mark.parametrize("B,C,kind,opts,grad_mode,reduction", CASES)
def test_matches_reference_one_chunk(B, C, kind, opts, grad_mode, reduction):
    z, kw = make_case(B, C, kind, opts, seed=B * 7919 + C)
    compare(z, kw, grad_mode=grad_mode, reduction=reduction)


@pytest.mark.parametrize("kind", TARGET_KINDS)
@pytest.mark.parametrize("grad_mode", ["recompute", "fused"])
@pytest.mark.parametrize("B,C", [(7, 100), (5, 1000)])
def test_matches_reference_multi_chunk(monkeypatch, B, C, kind, grad_mode):
    monkeypatch.setattr(tk, "MAX_BLOCK_C", 64)  # online softmax over several chunks, ragged tail
    z, kw = make_case(B, C, kind, ("w", "b", "T"), seed=C + B)
    z[:, -1] += 20.0  # the running max jumps in the last chunk: exercises the re-basing
    compare(z, kw, grad_mode=grad_mode, reduction="none")


def test_non_contiguous_inputs_and_int32_labels():
    g = torch.Generator().manual_seed(3)
    big = torch.randn(9, 60, generator=g).to(DEV)  # strided views of tensors already on DEV
    z = big[::2, 5:45]  # row-strided view
    zt = torch.randn(40, 5, generator=g).to(DEV).t()  # class axis strided
    ya = torch.randint(0, 40, (10,), generator=g).to(DEV)[::2].int()
    off = torch.randn(5, 80, generator=g).to(DEV)[:, ::2]  # per-sample offset, strided
    compare(z, dict(y_a=ya, logit_offset=off))
    compare(zt, dict(targets=torch.softmax(torch.randn(10, 40, generator=g), 1).to(DEV)[::2]))


def test_edge_cases_lambda_extremes_same_labels_zero_rows():
    g = torch.Generator().manual_seed(4)
    z = torch.randn(6, 30, generator=g)
    ya, yb = torch.randint(0, 30, (6,), generator=g), torch.randint(0, 30, (6,), generator=g)
    for lam in (0.0, 1.0):
        compare(z, dict(y_a=ya, y_b=yb, lam=lam))
    compare(z, dict(y_a=ya, y_b=ya, lam=0.3))
    compare(z, dict(y_a=ya, y_b=yb, lam=torch.tensor([0.0, 1.0, 0.5, 0.0, 1.0, 0.2])), grad_mode="fused")
    dense = torch.softmax(torch.randn(6, 30, generator=g), 1)
    dense[2] = 0.0
    v, grad = compare(z, dict(targets=dense), reduction="none")
    assert v[2] == 0 and (grad[2] == 0).all()


@pytest.mark.parametrize("max_block", [8192, 8])
def test_neg_inf_and_huge_logits_no_nan(monkeypatch, max_block):
    monkeypatch.setattr(tk, "MAX_BLOCK_C", max_block)
    z = torch.randn(4, 20)
    z[0, :15] = float("-inf")  # whole first chunks masked: running max starts at -inf
    z[1, 3] = 3e38
    z[1, 4] = -1e37
    z[2, 7] = float("-inf")
    ya = torch.tensor([16, 4, 2, 5])
    yb = torch.tensor([3, 3, 7, 5])  # lam=1 rows put 0 mass on -inf logits
    v, grad = compare(z, dict(y_a=ya, y_b=yb, lam=torch.tensor([1.0, 0.5, 1.0, 0.3])), reduction="none")
    assert torch.isfinite(v).all() and torch.isfinite(grad).all()
    dense = torch.softmax(torch.randn(4, 20), 1)
    dense[0, :15] = 0.0
    dense[2, 7] = 0.0
    dense[1, 4] = 0.0
    v, grad = compare(z, dict(targets=dense), reduction="none")
    assert torch.isfinite(v).all() and torch.isfinite(grad).all()


def test_dispatch_module_and_temperature_only():
    z, kw = make_case(5, 12, "mix_scalar", (), seed=5)
    zz = z.clone().requires_grad_()
    out = soft_target_cross_entropy(zz, impl="triton", temperature=3.0, **kw)
    torch.testing.assert_close(out, soft_target_cross_entropy_reference(z, temperature=3.0, **kw))


def test_out_of_range_label_gives_nan_not_a_crash():
    z = torch.randn(3, 10, device=DEV)
    out = soft_target_cross_entropy(z, y_a=torch.tensor([1, 10, 2], device=DEV), impl="triton", reduction="none")
    assert torch.isnan(out[1]) and torch.isfinite(out[[0, 2]]).all()


def test_fused_mode_refuses_second_backward():
    z = torch.randn(4, 10, device=DEV, requires_grad=True)
    out = triton_soft_target_cross_entropy(validate_inputs(z, y_a=torch.tensor([1, 2, 3, 4], device=DEV)),
                                           grad_mode="fused")
    out.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="twice"):
        out.backward()


def test_no_grad_forward_allocates_no_gradient():
    p = tk.prepare(torch.randn(3, 10, device=DEV), torch.tensor([0, 1, 2], device=DEV), None, None, 1.0, None, None,
                   None, 1.0, False)
    loss, lse, mass, grad = tk.forward(p)
    assert grad is None
    torch.testing.assert_close(lse, torch.logsumexp(p.logits, 1))
    torch.testing.assert_close(mass, torch.ones(3, device=DEV))


@pytest.mark.slow
@pytest.mark.parametrize("kind", TARGET_KINDS)
def test_matches_reference_large(kind):
    z, kw = make_case(513, 8142, kind, ("w", "b", "T"), seed=8142)
    compare(z, kw, grad_mode="recompute", reduction="mean")


# --- label smoothing: targets (1 - eps) t + eps / C, class weights on the smoothed target --------------

SMOOTH_CASES = [
    (kind, OPTION_SETS[i % 4], grad_mode, (0.1, 0.35, 1.0)[i % 3], ("mean", "sum", "none")[i % 3])
    for i, (kind, grad_mode) in enumerate(itertools.product(TARGET_KINDS, ("recompute", "fused")))
]


@pytest.mark.parametrize("kind,opts,grad_mode,eps,reduction", SMOOTH_CASES)
def test_label_smoothing_matches_reference_one_chunk(kind, opts, grad_mode, eps, reduction):
    z, kw = make_case(7, 100, kind, opts, seed=101 + len(opts))
    compare(z, dict(kw, label_smoothing=eps), grad_mode=grad_mode, reduction=reduction)


@pytest.mark.parametrize("kind", TARGET_KINDS)
@pytest.mark.parametrize("grad_mode", ["recompute", "fused"])
def test_label_smoothing_matches_reference_multi_chunk(monkeypatch, kind, grad_mode):
    monkeypatch.setattr(tk, "MAX_BLOCK_C", 64)  # several chunks and a ragged tail: the uniform part re-based
    z, kw = make_case(5, 200, kind, ("w", "b", "T"), seed=200)
    z[:, -1] += 20.0
    compare(z, dict(kw, label_smoothing=0.15), grad_mode=grad_mode, reduction="none")


@pytest.mark.parametrize("max_block", [8192, 16])
def test_label_smoothing_equals_torch_cross_entropy(monkeypatch, max_block):
    """Hard labels through the kernel give F.cross_entropy(label_smoothing=eps), values and gradients;
    with class weights the "sum" is torch's weighted sum (weights on the smoothed target)."""
    import torch.nn.functional as F

    monkeypatch.setattr(tk, "MAX_BLOCK_C", max_block)
    g = torch.Generator().manual_seed(21)
    z, y, w = torch.randn(9, 40, generator=g) * 3, torch.randint(0, 40, (9,), generator=g), torch.rand(40, generator=g)
    z, y, w = z.to(DEV), y.to(DEV), w.to(DEV)
    for eps in (0.05, 0.4):
        for weights, reduction in ((None, "mean"), (w, "sum")):
            grads = []
            for fn in (lambda zz: soft_target_cross_entropy(zz, y_a=y, class_weights=weights, reduction=reduction,
                                                            label_smoothing=eps, impl="triton"),
                       lambda zz: F.cross_entropy(zz, y, weight=weights, reduction=reduction, label_smoothing=eps)):
                zz = z.clone().requires_grad_()
                out = fn(zz)
                out.backward()
                grads.append((out.detach(), zz.grad))
            torch.testing.assert_close(grads[0][0], grads[1][0], rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(grads[0][1], grads[1][1], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("max_block", [8192, 8])
def test_label_smoothing_neg_inf_zero_weights_and_mixed_extremes(monkeypatch, max_block):
    """A -inf logit gets eps / C of the target: the loss is +inf (as in torch) but nothing is NaN; a
    class with weight 0 carries no mass, so its -inf logit costs nothing; lam at 0 / 1 and y_a == y_b."""
    monkeypatch.setattr(tk, "MAX_BLOCK_C", max_block)
    g = torch.Generator().manual_seed(22)
    z = torch.randn(4, 20, generator=g)
    z[0, :15] = float("-inf")
    z[2, 7] = float("-inf")
    ya, yb = torch.tensor([16, 4, 2, 5]), torch.tensor([3, 3, 7, 5])
    lam = torch.tensor([1.0, 0.5, 1.0, 0.3])
    v, grad = compare(z, dict(y_a=ya, y_b=yb, lam=lam, label_smoothing=0.1), reduction="none")
    assert v[0] == float("inf") and v[2] == float("inf") and torch.isfinite(v[[1, 3]]).all()
    assert not torch.isnan(grad).any()
    w = torch.rand(20, generator=g) + 0.1
    w[:15] = 0.0
    w[7] = 0.0
    v, grad = compare(z, dict(y_a=ya, y_b=yb, lam=lam, class_weights=w, label_smoothing=0.1), reduction="none",
                      grad_mode="fused")
    assert torch.isfinite(v).all() and torch.isfinite(grad).all()
    zf = torch.randn(6, 30, generator=g)
    ya, yb = torch.randint(0, 30, (6,), generator=g), torch.randint(0, 30, (6,), generator=g)
    for lam in (0.0, 1.0):
        compare(zf, dict(y_a=ya, y_b=yb, lam=lam, label_smoothing=0.2))
    compare(zf, dict(y_a=ya, y_b=ya, lam=0.3, label_smoothing=0.2))


def test_label_smoothing_zero_launches_the_unsmoothed_kernel():
    """eps = 0 is the kernel without smoothing: identical values, lse and target mass."""
    z, kw = make_case(7, 50, "mix_rows", ("w",), seed=23)
    args = (z, kw["y_a"], kw["y_b"], kw["lam"].float(), 1.0, None, kw["class_weights"], None, 1.0, False)
    plain, zero = tk.forward(tk.prepare(*args)), tk.forward(tk.prepare(*args, label_smoothing=0.0))
    for a, b in zip(plain[:3], zero[:3]):
        assert torch.equal(a, b)
    smoothed = tk.forward(tk.prepare(*args, label_smoothing=0.1))
    w = kw["class_weights"]
    torch.testing.assert_close(smoothed[2], 0.9 * plain[2] + 0.1 / 50 * w.sum())  # mass of the smoothed target
