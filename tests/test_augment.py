"""fasttrain.augment: geometry vs torchvision, normalisation, MixUp/CutMix semantics, λ and box draws."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from fasttrain import augment as A
from fasttrain.data.index import CIFAR10_MEAN, CIFAR10_STD
from fasttrain.kernels.mix import reference as R
from fasttrain.batch import Batch, Geometry, random_geometry

MEAN, STD = CIFAR10_MEAN, CIFAR10_STD


def images(n: int, h: int = 32, w: int = 32, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n, 3, h, w), dtype=torch.uint8, generator=g)
    return x.contiguous(memory_format=torch.channels_last)


def torchvision_view(img: torch.Tensor, dy: int, dx: int, flip: bool, padding: int) -> torch.Tensor:
    """RandomCrop(size, padding) + horizontal flip for the given offsets/flag, then Normalize."""
    h, w = img.shape[-2:]
    out = TF.pad(img, [padding])
    out = TF.crop(out, dy, dx, h, w)
    if flip:
        out = TF.horizontal_flip(out)
    out = TF.to_dtype(out, torch.float32, scale=True)
    return TF.normalize(out, list(MEAN), list(STD))


# --- geometry ------------------------------------------------------------------------------------


def test_geometry_equals_torchvision_pad_crop_flip_for_every_offset():
    x = images(2 * 9 * 9)
    offs = torch.tensor([(dy, dx) for dy in range(9) for dx in range(9)] * 2, dtype=torch.int32)
    flips = torch.tensor([False] * 81 + [True] * 81)
    geo = Geometry(offsets=offs, flip=flips, padding=4)
    ours = R.apply_geometry(x, (geo.offsets, geo.flip, geo.padding))
    for i in range(len(x)):
        dy, dx = offs[i].tolist()
        want = TF.pad(x[i], [4])
        want = TF.crop(want, dy, dx, 32, 32)
        if flips[i]:
            want = TF.horizontal_flip(want)
        assert torch.equal(ours[i], want), (i, dy, dx, bool(flips[i]))


def test_normalize_views_matches_torchvision_pipeline_and_is_channels_last():
    x = images(16)
    geo = random_geometry(16, 4, True, torch.Generator().manual_seed(3), "cpu")
    batch = Batch(views=[x, x], labels=torch.zeros(16, dtype=torch.long),
                  stream=torch.zeros(16, dtype=torch.long), geometry=[geo, None])
    out = A.Augmenter(MEAN, STD, impl="torch").views(batch)
    assert len(out) == 2
    for v in out:
        assert v.dtype == torch.float32 and v.shape == (16, 3, 32, 32)
        assert v.is_contiguous(memory_format=torch.channels_last)
    for i in range(16):
        dy, dx = geo.offsets[i].tolist()
        want = torchvision_view(x[i], dy, dx, bool(geo.flip[i]), 4)
        torch.testing.assert_close(out[0][i], want, atol=1e-6, rtol=0)
    plain = TF.normalize(TF.to_dtype(x, torch.float32, scale=True), list(MEAN), list(STD))
    torch.testing.assert_close(out[1], plain, atol=1e-6, rtol=0)


def test_normalize_views_bf16_and_passthrough():
    x = images(4)
    batch = Batch(views=[x], labels=torch.zeros(4, dtype=torch.long), stream=torch.zeros(4, dtype=torch.long))
    (bf,) = A.Augmenter(MEAN, STD, dtype=torch.bfloat16, impl="torch").views(batch)
    assert bf.dtype == torch.bfloat16
    (fp,) = A.Augmenter(MEAN, STD, impl="torch").views(batch)
    assert torch.equal(bf, fp.to(torch.bfloat16))
    done = Batch(views=[fp], labels=batch.labels, stream=batch.stream, normalized=True)
    assert A.Augmenter(MEAN, STD).views(done)[0] is fp


def test_random_geometry_ranges_and_flip_switch():
    g = torch.Generator().manual_seed(0)
    geo = random_geometry(4000, 4, True, g, "cpu")
    assert geo.offsets.min() == 0 and geo.offsets.max() == 8 and geo.padding == 4
    counts = torch.bincount(geo.offsets.flatten().long(), minlength=9).double() / 8000
    assert torch.allclose(counts, torch.full((9,), 1 / 9, dtype=torch.double), atol=0.02)
    assert 0.45 < geo.flip.double().mean() < 0.55
    assert not random_geometry(100, 4, False, g, "cpu").flip.any()


# --- mixing semantics ----------------------------------------------------------------------------


def test_mixup_cutmix_semantics_by_hand():
    x_mix, x_cut = images(6, seed=1), images(6, seed=2)
    idx_a, idx_b = torch.tensor([0, 1, 2]), torch.tensor([5, 3, 4])
    spec = A.MixSpec(lam=0.25, box=(3, 11, 20, 32), lam_cut=0.25)
    mix, cut = A.mixup_cutmix(x_mix, x_cut, None, None, idx_a, idx_b, spec, MEAN, STD, impl="torch")
    assert mix.shape == cut.shape == (3, 3, 32, 32)
    assert mix.is_contiguous(memory_format=torch.channels_last)
    norm = lambda t: TF.normalize(TF.to_dtype(t, torch.float32, scale=True), list(MEAN), list(STD))
    torch.testing.assert_close(mix, 0.25 * norm(x_mix[idx_a]) + 0.75 * norm(x_mix[idx_b]), atol=2e-6, rtol=0)
    want = norm(x_cut[idx_a]).clone()
    want[:, :, 3:11, 20:32] = norm(x_cut[idx_b])[:, :, 3:11, 20:32]
    torch.testing.assert_close(cut, want, atol=1e-6, rtol=0)


def test_mix_applies_geometry_per_source_row():
    x = images(4, seed=3)
    g = torch.Generator().manual_seed(1)
    geo_m, geo_c = random_geometry(4, 4, True, g, "cpu"), random_geometry(4, 4, True, g, "cpu")
    idx_a, idx_b = torch.tensor([0, 1]), torch.tensor([2, 3])
    spec = A.MixSpec(lam=0.6, box=(0, 16, 0, 16), lam_cut=0.6)
    mix, cut = A.mixup_cutmix(x, x, geo_m, geo_c, idx_a, idx_b, spec, MEAN, STD, impl="torch")

    def tv(geo: Geometry, r: int) -> torch.Tensor:
        dy, dx = geo.offsets[r].tolist()
        return torchvision_view(x[r], dy, dx, bool(geo.flip[r]), 4)

    for i, (a, b) in enumerate(zip(idx_a.tolist(), idx_b.tolist())):
        torch.testing.assert_close(mix[i], 0.6 * tv(geo_m, a) + 0.4 * tv(geo_m, b), atol=2e-6, rtol=0)
        want = tv(geo_c, a).clone()
        want[:, :16, :16] = tv(geo_c, b)[:, :16, :16]
        torch.testing.assert_close(cut[i], want, atol=1e-6, rtol=0)


def test_mix_glmc_pairs_streams_and_returns_labels():
    x = images(8, seed=4)
    labels = torch.arange(8) * 10
    batch = Batch(views=[x, x], labels=labels, stream=torch.arange(2).repeat_interleave(4), num_streams=2,
                  geometry=[None, None])
    spec = A.MixSpec(lam=1.0, box=(0, 0, 0, 0), lam_cut=1.0)
    mix, cut, y_a, y_b = A.Augmenter(MEAN, STD, impl="torch").mix_streams(batch, spec)
    assert torch.equal(y_a, labels[:4]) and torch.equal(y_b, labels[4:])
    torch.testing.assert_close(mix, R.normalize_reference(x[:4], None, MEAN, STD), atol=1e-6, rtol=0)
    torch.testing.assert_close(cut, mix, atol=0, rtol=0)  # empty box: CutMix keeps row a


def test_bad_impl_and_bad_input_raise_clear_errors():
    x = images(2)
    with pytest.raises(ValueError, match="augment.mix_impl"):
        A.mixup_cutmix(x, x, None, None, torch.tensor([0]), torch.tensor([1]),
                       A.MixSpec(0.5, (0, 0, 0, 0), 0.5), MEAN, STD, impl="cuda")
    with pytest.raises(ValueError, match="uint8"):
        A.mixup_cutmix(x.float(), x, None, None, torch.tensor([0]), torch.tensor([1]),
                       A.MixSpec(0.5, (0, 0, 0, 0), 0.5), MEAN, STD, impl="torch")
    with pytest.raises(RuntimeError, match="CUDA"):
        A.mixup_cutmix(x, x, None, None, torch.tensor([0]), torch.tensor([1]),
                       A.MixSpec(0.5, (0, 0, 0, 0), 0.5), MEAN, STD, impl="triton")


# --- λ and box draws -----------------------------------------------------------------------------


def ks_statistic(samples: np.ndarray, cdf) -> float:
    s = np.sort(samples)
    n = len(s)
    f = cdf(s)
    return float(max(np.max(np.arange(1, n + 1) / n - f), np.max(f - np.arange(n) / n)))


@pytest.mark.parametrize("beta, cdf", [
    (1.0, lambda x: x),
    (0.5, lambda x: 2 / np.pi * np.arcsin(np.sqrt(x))),
    (2.0, lambda x: 3 * x**2 - 2 * x**3),
])
def test_lambda_distribution_beta_ks(beta, cdf):
    g = torch.Generator().manual_seed(1234)
    lam = np.array([A.sample_lambda(beta, g) for _ in range(4000)])
    assert lam.min() >= 0 and lam.max() <= 1
    # KS critical value at alpha = 0.001 is 1.95 / sqrt(n) ≈ 0.031; a wrong law is far above it.
    assert ks_statistic(lam, cdf) < 1.95 / math.sqrt(len(lam))
    if beta != 1.0:  # and the uniform law is rejected, so the test has power
        assert ks_statistic(lam, lambda x: x) > 1.95 / math.sqrt(len(lam))


@pytest.mark.parametrize("lam, centre, box", [
    (0.75, (16, 16), (8, 24, 8, 24)),  # s = ceil(32 * 0.5) = 16, unclipped side 16
    (0.75, (0, 31), (0, 8, 23, 32)),  # clipped at both borders
    (1 - (15 / 32) ** 2, (16, 16), (9, 23, 9, 23)),  # s = 15 (odd): side 2*7 = 14
    (0.0, (16, 16), (0, 32, 0, 32)),  # s = 32: the whole image
    (1.0, (5, 7), (5, 5, 7, 7)),  # s = 0: empty box
])
def test_cutmix_box_hand_computed(lam, centre, box):
    assert A.cutmix_box(32, 32, lam, *centre) == box


def test_sample_mix_area_correction_switch():
    g1, g2 = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    for _ in range(50):
        plain = A.sample_mix(32, 32, generator=g1)
        corr = A.sample_mix(32, 32, area_correct=True, generator=g2)
        assert plain.lam == corr.lam and plain.box == corr.box and plain.lam_cut == plain.lam
        y0, y1, x0, x1 = corr.box
        assert corr.lam_cut == pytest.approx(1 - (y1 - y0) * (x1 - x0) / 1024)


def test_box_area_distribution_matches_independent_monte_carlo():
    """E[pasted area] and P(box touches the top edge) vs a NumPy simulation of the spec."""
    g = torch.Generator().manual_seed(99)
    specs = [A.sample_mix(32, 32, generator=g) for _ in range(6000)]
    area = np.array([(s.box[1] - s.box[0]) * (s.box[3] - s.box[2]) / 1024 for s in specs])
    top = np.array([s.box[0] == 0 for s in specs])
    rng = np.random.default_rng(5)
    lam = rng.uniform(size=200_000)
    half = np.ceil(32 * np.sqrt(1 - lam)).astype(int) // 2
    cy, cx = rng.integers(0, 32, size=(2, lam.size))
    side = lambda c: np.clip(c + half, 0, 32) - np.clip(c - half, 0, 32)
    want_area = side(cy) * side(cx) / 1024
    assert abs(area.mean() - want_area.mean()) < 4 * want_area.std() / math.sqrt(len(area))
    want_top = (cy - half <= 0).mean()
    assert abs(top.mean() - want_top) < 4 * math.sqrt(want_top * (1 - want_top) / len(top))
    # λ is the label weight even though the pasted area differs (GLMC: no area correction).
    assert all(s.lam_cut == s.lam for s in specs)


def test_sample_mix_is_host_side_and_seeded():
    a = A.sample_mix(32, 32, beta=0.5, generator=torch.Generator().manual_seed(3))
    b = A.sample_mix(32, 32, beta=0.5, generator=torch.Generator().manual_seed(3))
    assert a == b and isinstance(a.lam, float)
    with pytest.raises(ValueError, match="beta"):
        A.sample_mix(32, 32, beta=0.0)


def test_torchvision_v2_mixup_is_a_different_but_comparable_baseline():
    """Sanity check the benchmark baseline runs on our layout (dense targets, float input)."""
    x = R.normalize_reference(images(8), None, MEAN, STD)
    out, target = v2.MixUp(num_classes=10)(x, torch.arange(8))
    assert out.shape == x.shape and target.shape == (8, 10)


# --- GPU (deselected by default; run with -m gpu on a CUDA machine) ------------------------------


@pytest.mark.gpu
@pytest.mark.parametrize("size, geometry", [(32, True), (224, False), (20, True)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fused_kernel_on_cuda_matches_reference(size, geometry, dtype):
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    dev = torch.device("cuda")
    x_mix, x_cut = images(64, size, size, seed=1).to(dev), images(64, size, size, seed=2).to(dev)
    g = torch.Generator(device=dev).manual_seed(0)
    geos = [random_geometry(64, 4, True, g, dev) if geometry else None for _ in range(2)]
    idx_a, idx_b = torch.arange(32, device=dev), torch.randperm(64, device=dev, generator=g)[:32]
    spec = A.sample_mix(size, size, generator=torch.Generator().manual_seed(1))
    got = A.mixup_cutmix(x_mix, x_cut, geos[0], geos[1], idx_a, idx_b, spec, MEAN, STD, dtype, impl="triton")
    want = A.mixup_cutmix(x_mix, x_cut, geos[0], geos[1], idx_a, idx_b, spec, MEAN, STD, impl="torch")
    for g_, w_ in zip(got, want):
        assert g_.dtype == dtype and g_.is_contiguous(memory_format=torch.channels_last)
        tol = 1e-6 if dtype == torch.float32 else 0.0
        ulp = torch.pow(2.0, torch.floor(torch.log2(w_.abs().clamp_min(2.0**-126))) - 7)
        bound = tol if dtype == torch.float32 else ulp
        assert ((g_.float() - w_).abs() <= bound).all()
    batch = Batch(views=[x_mix], labels=torch.zeros(64, dtype=torch.long, device=dev),
                  stream=torch.zeros(64, dtype=torch.long, device=dev), geometry=[geos[0]])
    (got_n,) = A.Augmenter(MEAN, STD, impl="auto").views(batch)  # auto -> Triton on CUDA
    (want_n,) = A.Augmenter(MEAN, STD, impl="torch").views(batch)
    torch.testing.assert_close(got_n, want_n, atol=1e-6, rtol=0)


# --- RandomErasing (augment.random_erasing*) ---------------------------------------------------


def _boxes(before: torch.Tensor, after: torch.Tensor) -> list[tuple[int, int, int, int] | None]:
    """Per sample, the (top, left, h, w) bounding box of the changed pixels (None: unchanged)."""
    out = []
    for a, b in zip(before, after):
        changed = (a != b).any(dim=0)
        if not changed.any():
            out.append(None)
            continue
        ys, xs = changed.nonzero(as_tuple=True)
        out.append((int(ys.min()), int(xs.min()), int(ys.max() - ys.min() + 1), int(xs.max() - xs.min() + 1)))
    return out


def _normalised(n: int, h: int = 32, w: int = 48, seed: int = 0) -> torch.Tensor:
    """A normalised batch with no zero and no repeated value inside a row, so every erased pixel shows."""
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, h, w, generator=g) + 1.0


def test_random_erasing_boxes_lie_inside_the_image_with_area_and_aspect_in_range():
    x = _normalised(400)
    scale, ratio = (0.02, 0.33), (0.3, 3.3)
    out = A.random_erase(x, 1.0, torch.Generator().manual_seed(1), scale=scale, ratio=ratio)
    boxes = _boxes(x, out)
    area = 32 * 48
    for b, (before, after) in zip(boxes, zip(x, out)):
        assert b is not None  # p = 1 and these sizes always fit within 10 attempts here
        top, left, h, w = b
        assert 0 <= top and top + h <= 32 and 0 <= left and left + w <= 48
        assert h < 32 and w < 48
        # the changed region is exactly the box (const fill = 0; every pixel is >= 1 before)
        assert torch.all(after[:, top: top + h, left: left + w] == 0)
        assert int((after == 0).any(dim=0).sum()) == h * w
        # h, w are sqrt(A r), sqrt(A / r) rounded: area A within scale, aspect r within ratio
        assert (h - 0.5) * (w - 0.5) <= scale[1] * area and (h + 0.5) * (w + 0.5) >= scale[0] * area
        assert (h - 0.5) / (w + 0.5) <= ratio[1] and (h + 0.5) / (w - 0.5) >= ratio[0]
    sizes = torch.tensor([b[2] * b[3] for b in boxes], dtype=torch.float64) / area
    assert sizes.min() < 0.05 and sizes.max() > 0.25  # the draws span the scale range


@pytest.mark.parametrize("p", [0.25, 0.5])
def test_random_erasing_probability_is_respected(p):
    n = 4000
    x = _normalised(n, 16, 16)
    out = A.random_erase(x, p, torch.Generator().manual_seed(7))
    erased = sum(b is not None for b in _boxes(x, out)) / n
    assert abs(erased - p) < 4 * math.sqrt(p * (1 - p) / n)  # 4 standard errors


def test_random_erasing_fill_modes():
    x = _normalised(64)
    g = lambda: torch.Generator().manual_seed(3)  # noqa: E731 - the same draws for each mode
    const = A.random_erase(x, 1.0, g(), mode="const")
    rand = A.random_erase(x, 1.0, g(), mode="rand")
    pixel = A.random_erase(x, 1.0, g(), mode="pixel")
    boxes = _boxes(x, const)
    assert _boxes(x, rand) == boxes  # the box draws do not depend on the mode
    fills = []
    for i, (top, left, h, w) in enumerate(boxes):
        region = (slice(None), slice(top, top + h), slice(left, left + w))
        assert torch.all(const[i][region] == 0)
        r = rand[i][region]  # one value per channel, the same over the box
        assert torch.all(r == r[:, :1, :1]) and not torch.all(r == 0)
        fills.append(r[:, 0, 0])
        q = pixel[i][region]  # per pixel: varies inside the box (boxes of >= 4 pixels here)
        assert q.flatten(1).std(dim=1).min() > 0.2 and torch.equal(pixel[i][:, :top], x[i][:, :top])
    fills = torch.cat(fills)
    assert abs(float(fills.mean())) < 0.3 and 0.7 < float(fills.std()) < 1.3  # N(0, 1) per channel
    assert pixel.dtype == rand.dtype == const.dtype == x.dtype
    bf = A.random_erase(x.bfloat16(), 1.0, g(), mode="pixel")
    assert bf.dtype == torch.bfloat16


def test_random_erasing_keeps_the_input_and_its_memory_format():
    x = _normalised(8).contiguous(memory_format=torch.channels_last)
    keep = x.clone()
    out = A.random_erase(x, 1.0, torch.Generator().manual_seed(0))
    assert torch.equal(x, keep) and not torch.equal(out, x)


def _train_batch(n=16, views=1, key=(0, 0)):
    x = images(n, seed=5)
    return Batch(views=[x] * views, labels=torch.zeros(n, dtype=torch.long),
                 stream=torch.zeros(n, dtype=torch.long), geometry=[None] * views, step_key=key)


def test_augmenter_erasing_is_a_pure_function_of_seed_epoch_step_and_view():
    er = A.RandomErasing(p=0.5, mode="pixel", seed=3)
    aug = A.Augmenter(MEAN, STD, impl="torch", erasing=er)
    a = aug.views(_train_batch(views=2, key=(2, 5)))
    b = A.Augmenter(MEAN, STD, impl="torch", erasing=er).views(_train_batch(views=2, key=(2, 5)))
    assert all(torch.equal(u, v) for u, v in zip(a, b))  # same (seed, epoch, step): bit-identical
    c = aug.views(_train_batch(views=2, key=(2, 6)))
    assert not torch.equal(a[0], c[0])  # another step: other boxes
    assert not torch.equal(a[0], a[1])  # the views draw independently
    other = A.Augmenter(MEAN, STD, impl="torch", erasing=A.RandomErasing(p=0.5, mode="pixel", seed=4))
    assert not torch.equal(other.views(_train_batch(key=(2, 5)))[0], a[0])
    rank1 = A.Augmenter(MEAN, STD, impl="torch", erasing=A.RandomErasing(p=0.5, mode="pixel", seed=3, rank=1))
    assert not torch.equal(rank1.views(_train_batch(key=(2, 5)))[0], a[0])


def test_augmenter_never_erases_evaluation_batches_and_p0_is_bit_identical():
    plain = A.Augmenter(MEAN, STD, impl="torch")
    erasing = A.Augmenter(MEAN, STD, impl="torch", erasing=A.RandomErasing(p=1.0))
    ev = _train_batch(key=None)  # evaluation: no step key
    assert torch.equal(erasing.views(ev)[0], plain.views(ev)[0])
    tr = _train_batch(key=(0, 1))
    assert not torch.equal(erasing.views(tr)[0], plain.views(tr)[0])
    # p = 0 builds no erasing object: the run's augmenter is today's
    from fasttrain.build import build_augmenter
    from fasttrain.config import RunConfig
    ds = type("DS", (), {"mean": MEAN, "std": STD})()  # build_augmenter reads only the dataset's mean / std
    cfg = RunConfig()
    assert build_augmenter(cfg, ds, None, torch.device("cpu")).erasing is None
    assert build_augmenter(cfg, ds, None, torch.device("cpu")) == plain.__class__(
        MEAN, STD, impl=cfg.augment.mix_impl, channels_last=plain.channels_last)
    cfg.augment.random_erasing, cfg.augment.random_erasing_mode = 0.25, "rand"
    built = build_augmenter(cfg, ds, None, torch.device("cpu"), rank=2).erasing
    assert (built.p, built.mode, built.scale, built.ratio, built.seed, built.rank) == (
        0.25, "rand", (0.02, 0.33), (0.3, 3.3), cfg.seed, 2)


def test_augmenter_erases_mixed_views_and_normalized_batches():
    er = A.Augmenter(MEAN, STD, impl="torch", erasing=A.RandomErasing(p=1.0))
    plain = A.Augmenter(MEAN, STD, impl="torch")
    batch = _train_batch(n=8, views=2, key=(1, 1))
    spec = A.MixSpec(lam=0.7, box=(0, 16, 0, 16), lam_cut=0.7)
    idx = torch.arange(8)
    got, want = er.mix_pairs(batch, spec, idx, idx.flip(0)), plain.mix_pairs(batch, spec, idx, idx.flip(0))
    for g_, w_ in zip(got, want):
        assert not torch.equal(g_, w_) and (g_ != w_).any(dim=1).flatten(1).any(dim=1).all()  # every row erased
    norm = Batch(views=[_normalised(8)], labels=torch.zeros(8, dtype=torch.long),
                 stream=torch.zeros(8, dtype=torch.long), normalized=True, step_key=(0, 0))
    assert all(b is not None for b in _boxes(norm.views[0], er.views(norm)[0]))


def test_train_step_marks_the_batch_with_epoch_and_step():
    from fasttrain.methods import Progress
    from fasttrain.step import Learner, train_step

    seen = []

    class Probe:
        def loss(self, model, batch, progress):
            seen.append(batch.step_key)
            return model.weight.sum(), {}

        def after_step(self, model, progress):
            pass

    model = torch.nn.Linear(1, 1)
    learner = Learner(method=Probe(), model=model, forward_model=model,
                      optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
                      scaler=torch.amp.GradScaler("cpu", enabled=False), amp=None, device=torch.device("cpu"))
    train_step(learner, _train_batch(key=None), Progress(3, 10, 7, 20))
    assert seen == [(3, 7)]
