"""The GPU-resident tensor backend (run on CPU here): Batch contract, sampler fidelity, resume."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torchvision.transforms.v2 import functional as TF

from fasttrain import augment as A
from fasttrain.config import AugmentConfig, LoaderConfig
from fasttrain.data.index import CIFAR10_MEAN, CIFAR10_STD, LTDataset
from fasttrain.loaders import build_loader
from fasttrain.samplers import build_sampler

COUNTS = [60, 30, 15, 8, 4, 2]


def lt_dataset(seed: int = 0) -> LTDataset:
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(len(COUNTS)), COUNTS)
    imgs = rng.integers(0, 256, size=(len(labels), 32, 32, 3), dtype=np.uint8)
    return LTDataset(name="toy_lt", num_classes=len(COUNTS), labels=labels, train_counts=np.array(COUNTS),
                     images=imgs, mean=CIFAR10_MEAN, std=CIFAR10_STD)


def glmc_samplers(ds: LTDataset, seed: int = 0):
    labels = torch.as_tensor(ds.labels)
    return [build_sampler("instance", labels, ds.num_classes, seed=seed),
            build_sampler("power", labels, ds.num_classes, seed=seed, q=0.2)]


def tensor_loader(ds, samplers, *, batch_size=16, views=2, train=True, drop_last=False, seed=0):
    return build_loader("tensor", ds, samplers, batch_size=batch_size, num_views=views, device="cpu",
                        augment=AugmentConfig(), loader=LoaderConfig(backend="tensor", drop_last=drop_last),
                        train=train, seed=seed)


def test_batch_contract_two_streams_two_views():
    ds = lt_dataset()
    loader = tensor_loader(ds, glmc_samplers(ds))
    loader.set_epoch(0)
    n = len(ds)
    assert len(loader) == -(-n // 8)  # batch 16 = 2 streams x 8, last partial batch kept
    batches = list(loader)
    assert len(batches) == len(loader)
    for batch in batches:
        assert batch.num_streams == 2 and len(batch.views) == 2 and len(batch.geometry) == 2
        assert batch.labels.dtype == torch.int64 and batch.stream.dtype == torch.int64
        b = batch.size // 2
        assert torch.equal(batch.stream, torch.arange(2).repeat_interleave(b))
        assert torch.equal(batch.labels, torch.as_tensor(ds.labels)[batch.index])
        for view, geo in zip(batch.views, batch.geometry):
            assert view.dtype == torch.uint8 and view.shape == (batch.size, 3, 32, 32)
            assert view.is_contiguous(memory_format=torch.channels_last)
            assert view.device.type == "cpu"
            want = torch.from_numpy(ds.images[batch.index.numpy()]).permute(0, 3, 1, 2)
            assert torch.equal(view, want)
            assert geo.offsets.shape == (batch.size, 2) and geo.padding == 4
            assert geo.offsets.min() >= 0 and geo.offsets.max() <= 8
    assert batches[-1].size == 2 * (n - (len(batches) - 1) * 8)
    # the two views of a row get independent geometry
    offs = torch.cat([b.geometry[0].offsets for b in batches])
    offs2 = torch.cat([b.geometry[1].offsets for b in batches])
    assert not torch.equal(offs, offs2)


def test_rows_follow_each_samplers_order_stream_major():
    ds = lt_dataset()
    samplers = glmc_samplers(ds)
    loader = tensor_loader(ds, samplers)
    loader.set_epoch(3)
    orders = [s.order(3) for s in samplers]
    pos = 0
    for batch in loader:
        b = batch.size // 2
        assert torch.equal(batch.index[batch.stream_rows(0)], orders[0][pos: pos + b])
        assert torch.equal(batch.index[batch.stream_rows(1)], orders[1][pos: pos + b])
        pos += b
    assert pos == len(orders[0])


def test_class_frequencies_equal_the_samplers():
    """Over an epoch each stream's label histogram is exactly its sampler's (power q=0.2 stream)."""
    ds = lt_dataset()
    samplers = glmc_samplers(ds, seed=5)
    loader = tensor_loader(ds, samplers, batch_size=32, seed=5)
    for epoch in (0, 1):
        loader.set_epoch(epoch)
        hist = [torch.zeros(len(COUNTS), dtype=torch.long) for _ in range(2)]
        for batch in loader:
            for s in range(2):
                hist[s] += torch.bincount(batch.labels[batch.stream_rows(s)], minlength=len(COUNTS))
        for s, sampler in enumerate(samplers):
            want = torch.bincount(torch.as_tensor(ds.labels)[sampler.order(epoch)], minlength=len(COUNTS))
            assert torch.equal(hist[s], want)
    assert not torch.equal(hist[0], hist[1])  # the power stream really is a different draw


def test_drop_last_and_eval_order():
    ds = lt_dataset()
    loader = tensor_loader(ds, glmc_samplers(ds), drop_last=True)
    assert len(loader) == len(ds) // 8
    assert all(b.size == 16 for b in loader)
    ev = tensor_loader(ds, None, batch_size=50, views=1, train=False, drop_last=True)
    batches = list(ev)
    assert len(ev) == len(batches) == -(-len(ds) // 50)  # eval never drops
    assert batches[0].geometry == [None] and batches[0].num_streams == 1
    assert torch.equal(torch.cat([b.index for b in batches]), torch.arange(len(ds)))


def test_deterministic_and_epoch_dependent_geometry():
    ds = lt_dataset()
    first = [b.geometry[0].offsets for b in tensor_loader(ds, glmc_samplers(ds), seed=1)]
    again = [b.geometry[0].offsets for b in tensor_loader(ds, glmc_samplers(ds), seed=1)]
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    other = tensor_loader(ds, glmc_samplers(ds), seed=1)
    other.set_epoch(1)
    assert not all(torch.equal(a, b.geometry[0].offsets) for a, b in zip(first, other))


def test_mid_epoch_resume_reproduces_the_rest_of_the_epoch():
    ds = lt_dataset()
    ref = tensor_loader(ds, glmc_samplers(ds))
    ref.set_epoch(2)
    full = list(ref)
    run = tensor_loader(ds, glmc_samplers(ds))
    run.set_epoch(2)
    it = iter(run)
    for _ in range(3):
        next(it)
    state = run.state_dict()
    resumed = tensor_loader(ds, glmc_samplers(ds))
    resumed.load_state_dict(state)
    rest = list(resumed)
    assert len(rest) == len(full) - 3
    for a, b in zip(rest, full[3:]):
        assert torch.equal(a.index, b.index)
        assert torch.equal(a.geometry[1].offsets, b.geometry[1].offsets)
        assert torch.equal(a.geometry[1].flip, b.geometry[1].flip)


def test_augmented_views_equal_torchvision_for_the_loaders_draws():
    ds = lt_dataset()
    loader = tensor_loader(ds, glmc_samplers(ds))
    batch = next(iter(loader))
    out = A.normalize_views(batch, ds.mean, ds.std, impl="torch")
    geo = batch.geometry[0]
    for i in range(batch.size):
        img = torch.from_numpy(ds.images[int(batch.index[i])]).permute(2, 0, 1)
        dy, dx = geo.offsets[i].tolist()
        want = TF.crop(TF.pad(img, [4]), dy, dx, 32, 32)
        if geo.flip[i]:
            want = TF.horizontal_flip(want)
        want = TF.normalize(TF.to_dtype(want, torch.float32, scale=True), list(ds.mean), list(ds.std))
        torch.testing.assert_close(out[0][i], want, atol=1e-6, rtol=0)


def test_bad_inputs_raise_clear_errors():
    ds = lt_dataset()
    with pytest.raises(ValueError, match="divisible"):
        tensor_loader(ds, glmc_samplers(ds), batch_size=15)
    paths = LTDataset(name="files", num_classes=2, labels=np.array([0, 1]), train_counts=np.array([1, 1]),
                      paths=["a.jpg", "b.jpg"])
    with pytest.raises(ValueError, match="in-memory images"):
        tensor_loader(paths, None)
    with pytest.raises(ValueError, match="augment.train"):
        build_loader("tensor", ds, None, batch_size=4, num_views=1, device="cpu",
                     augment=AugmentConfig(train="imagenet"), loader=LoaderConfig(), train=True)


def test_same_batch_contract_as_the_torch_backend():
    """Both backends ask the same samplers: same steps, rows, labels, streams and (eval) pixels."""
    ds = lt_dataset()
    for train in (True, False):
        samplers = glmc_samplers(ds) if train else None
        kw = dict(batch_size=16, num_views=2, device="cpu", augment=AugmentConfig(),
                  loader=LoaderConfig(num_workers=0, drop_last=False), train=train, seed=0)
        tb = build_loader("torch", ds, samplers, **kw)
        tt = build_loader("tensor", ds, glmc_samplers(ds) if train else None, **kw)
        tb.set_epoch(1)
        tt.set_epoch(1)
        assert len(tb) == len(tt)
        for a, b in zip(tb, tt):
            assert torch.equal(a.index, b.index) and torch.equal(a.labels, b.labels)
            assert torch.equal(a.stream, b.stream) and a.num_streams == b.num_streams
            assert len(a.views) == len(b.views)
            for va, vb in zip(a.views, b.views):
                assert va.dtype == vb.dtype and va.shape == vb.shape
                assert vb.is_contiguous(memory_format=torch.channels_last)
                assert va.is_contiguous(memory_format=torch.channels_last)
                if not train:
                    assert torch.equal(va, vb)


@pytest.mark.slow
def test_short_glmc_run_lowers_the_loss_like_the_torch_backend():
    """20 GLMC steps on learnable toy data: both backends lower the loss by a similar amount."""
    from fasttrain.methods import METHODS, MethodContext, Progress
    from fasttrain.models import create_backbone, to_channels_last

    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(len(COUNTS)), COUNTS)
    colours = rng.integers(0, 256, size=(len(COUNTS), 1, 1, 3))
    noise = rng.integers(-40, 40, size=(len(labels), 16, 16, 3))
    imgs = np.clip(colours[labels] + noise, 0, 255).astype(np.uint8)
    ds = LTDataset(name="toy", num_classes=len(COUNTS), labels=labels, train_counts=np.array(COUNTS),
                   images=imgs, mean=CIFAR10_MEAN, std=CIFAR10_STD)

    def run(backend: str) -> tuple[float, float]:
        torch.manual_seed(0)
        method_cls = METHODS["glmc"]
        ctx = MethodContext(num_classes=ds.num_classes, train_counts=torch.as_tensor(ds.train_counts),
                            mean=ds.mean, std=ds.std, device=torch.device("cpu"), compute_dtype=torch.float32)
        method = method_cls(method_cls.config_class(), ctx)
        model = to_channels_last(method.build_model(create_backbone("resnet32")))
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        loader = build_loader(backend, ds, glmc_samplers(ds), batch_size=32, num_views=2, device="cpu",
                              augment=AugmentConfig(crop_padding=2), loader=LoaderConfig(num_workers=0),
                              train=True, seed=0)
        losses = []
        for epoch in range(4):
            loader.set_epoch(epoch)
            for batch in loader:
                loss, _ = method.loss(model, batch, Progress(epoch=0, epochs=200))
                opt.zero_grad()
                loss.backward()
                opt.step()
                losses.append(float(loss.detach()))
                if len(losses) == 20:
                    return float(np.mean(losses[:5])), float(np.mean(losses[-5:]))
        raise AssertionError("dataset too small for 20 steps")

    first_t, last_t = run("tensor")
    first_r, last_r = run("torch")
    assert last_t < first_t and last_r < first_r
    drop_t, drop_r = first_t - last_t, first_r - last_r
    # λ draws are identical (same method seed), crops differ: allow a factor 3 of noise
    assert drop_r / 3 < drop_t < 3 * drop_r, (first_t, last_t, first_r, last_r)
