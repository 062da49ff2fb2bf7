"""Fused mix kernel vs the pure-torch reference: under the Triton CPU interpreter, or compiled on a GPU.

Collected only where the kernel can run (tests/conftest.py): in a process started with
TRITON_INTERPRET=1 (test_triton_kernels.py starts one from the normal run; the variable must be set
before triton is imported), or on a CUDA machine, where the same cases run compiled and carry the
`gpu` marker (`pytest -m gpu`).
"""
import os

import pytest
import torch

pytest.importorskip("triton")

from fasttrain import augment as A  # noqa: E402
from fasttrain.batch import Batch, random_geometry  # noqa: E402
from fasttrain.data.index import CIFAR100_MEAN, CIFAR100_STD  # noqa: E402
from fasttrain.kernels.mix import function as F  # noqa: E402

DEV = torch.device("cpu" if os.environ.get("TRITON_INTERPRET") == "1" else "cuda")
if DEV.type == "cuda" and not torch.cuda.is_available():  # e.g. this file named on a CPU-only command line
    pytest.skip("needs CUDA, or TRITON_INTERPRET=1 set before triton is imported (tests/test_triton_kernels.py "
                "runs this file so)", allow_module_level=True)

MEAN, STD = CIFAR100_MEAN, CIFAR100_STD  # std 0.2: the largest normalised magnitudes


def images(n, h, w, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n, 3, h, w), dtype=torch.uint8, generator=g).to(DEV)
    return x.contiguous(memory_format=torch.channels_last)


def bf16_ulp(x: torch.Tensor) -> torch.Tensor:
    """Spacing of bf16 numbers at |x| (8 significant bits)."""
    e = torch.floor(torch.log2(x.float().abs().clamp_min(2.0**-126)))
    return torch.pow(2.0, e - 7)


def draws(n, h, w, pad, seed):
    g = torch.Generator().manual_seed(seed)
    geo_m = random_geometry(n, pad, True, g, "cpu") if pad is not None else None
    geo_c = random_geometry(n, pad, True, g, "cpu") if pad is not None else None
    perm = torch.randperm(n, generator=g).to(DEV)
    m = n // 2
    spec = A.sample_mix(h, w, generator=g)
    return on_dev(geo_m), on_dev(geo_c), perm[:m], perm[m: 2 * m], spec


def on_dev(geo):
    """The geometry drawn on the CPU (the same draws on every device), moved to DEV."""
    return None if geo is None else type(geo)(geo.offsets.to(DEV), geo.flip.to(DEV), geo.padding)


# (N source rows, H, W, padding or None = already cropped); 20×20×3 = 1200 > BLOCK: a tail block.
SHAPES = [(6, 8, 8, 2), (4, 20, 20, 4), (4, 6, 10, 3), (4, 12, 12, None)]


@pytest.mark.parametrize("n,h,w,pad", SHAPES)
def test_mix_kernel_fp32_matches_reference(n, h, w, pad):
    xm, xc = images(n, h, w, 1), images(n, h, w, 2)
    geo_m, geo_c, ia, ib, spec = draws(n, h, w, pad, 3)
    got = A.mixup_cutmix(xm, xc, geo_m, geo_c, ia, ib, spec, MEAN, STD, impl="triton")
    want = A.mixup_cutmix(xm, xc, geo_m, geo_c, ia, ib, spec, MEAN, STD, impl="torch")
    for g_, w_ in zip(got, want):
        assert g_.shape == w_.shape == (len(ia), 3, h, w) and g_.dtype == torch.float32
        assert g_.is_contiguous(memory_format=torch.channels_last)
        torch.testing.assert_close(g_, w_, atol=1e-6, rtol=0)


@pytest.mark.parametrize("box", [(0, 0, 0, 0), (0, 8, 0, 8), (2, 5, 1, 7)])
def test_cutmix_box_edges_fp32(box):
    x = images(4, 8, 8, 5)
    geo_m, geo_c, ia, ib, _ = draws(4, 8, 8, 2, 6)
    spec = A.MixSpec(lam=0.3, box=box, lam_cut=0.3)
    got = A.mixup_cutmix(x, x, geo_m, geo_c, ia, ib, spec, MEAN, STD, impl="triton")
    want = A.mixup_cutmix(x, x, geo_m, geo_c, ia, ib, spec, MEAN, STD, impl="torch")
    for g_, w_ in zip(got, want):
        torch.testing.assert_close(g_, w_, atol=1e-6, rtol=0)


@pytest.mark.parametrize("n,h,w,pad", SHAPES[:2])
def test_mix_kernel_bf16_within_one_rounding_step(n, h, w, pad):
    xm, xc = images(n, h, w, 7), images(n, h, w, 8)
    geo_m, geo_c, ia, ib, spec = draws(n, h, w, pad, 9)
    got = A.mixup_cutmix(xm, xc, geo_m, geo_c, ia, ib, spec, MEAN, STD, dtype=torch.bfloat16, impl="triton")
    want = A.mixup_cutmix(xm, xc, geo_m, geo_c, ia, ib, spec, MEAN, STD, impl="torch")  # fp32 spec
    for g_, w_ in zip(got, want):
        assert g_.dtype == torch.bfloat16
        assert ((g_.float() - w_).abs() <= bf16_ulp(w_)).all()


@pytest.mark.parametrize("pad", [4, None])
def test_normalize_kernel_matches_reference(pad):
    x = images(5, 16, 16, 10)
    geo = on_dev(random_geometry(5, pad, True, torch.Generator().manual_seed(1), "cpu")) if pad else None
    batch = Batch(views=[x], labels=torch.zeros(5, dtype=torch.long, device=DEV),
                  stream=torch.zeros(5, dtype=torch.long, device=DEV), geometry=[geo])
    (got,) = A.Augmenter(MEAN, STD, impl="triton").views(batch)
    (want,) = A.Augmenter(MEAN, STD, impl="torch").views(batch)
    assert got.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(got, want, atol=1e-6, rtol=0)
    (got16,) = A.Augmenter(MEAN, STD, dtype=torch.bfloat16, impl="triton").views(batch)
    assert ((got16.float() - want).abs() <= bf16_ulp(want)).all()


def test_launches_reuse_the_normalisation_scalars_and_placeholder():
    """The launcher runs every step: (mean, std) -> kernel scalars and the unused-argument
    placeholder are built once, not on every call."""
    x = images(3, 8, 8, 2)
    batch = Batch(views=[x], labels=torch.zeros(3, dtype=torch.long, device=DEV),
                  stream=torch.zeros(3, dtype=torch.long, device=DEV), geometry=[None])
    mean, std = (0.11, 0.22, 0.33), (0.3, 0.2, 0.1)  # a pair no other test uses
    before = F._kernel_scalars.cache_info()
    aug = A.Augmenter(mean, std, impl="triton")
    first, = aug.views(batch)
    second, = aug.views(batch)
    after = F._kernel_scalars.cache_info()
    assert after.misses == before.misses + 1 and after.hits >= before.hits + 1
    assert F._placeholder(x.device) is F._placeholder(x.device)
    torch.testing.assert_close(first, second)


def test_auto_dispatch_uses_reference_on_cpu(monkeypatch):
    called = []
    monkeypatch.setattr(F, "_launch", lambda *a, **k: called.append(1))
    x = images(2, 4, 4, 0).cpu()  # CPU tensors on every machine: this is the CPU rule
    A.mixup_cutmix(x, x, None, None, torch.tensor([0]), torch.tensor([1]), A.MixSpec(0.5, (0, 2, 0, 2), 0.5),
                   MEAN, STD, impl="auto")
    assert not called
