"""The GPU-resident tensor backend (run on CPU here): deferred geometry, its torchvision
equivalence, bad inputs, and a short GLMC run against the torch backend.

The batch contract, sampler fidelity, resume, sharding and the match with the torch backend
are in test_loader_conformance.py.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import LT_COUNTS, glmc_samplers, lt_arrays
from torchvision.transforms.v2 import functional as TF

from fasttrain import augment as A
from fasttrain.config import AugmentConfig, LoaderConfig
from fasttrain.data.index import CIFAR10_MEAN, CIFAR10_STD, LTDataset
from fasttrain.loaders import build_loader


def tensor_loader(ds, samplers, *, batch_size=16, views=2, train=True, drop_last=False, seed=0):
    return build_loader("tensor", ds, samplers, batch_size=batch_size, num_views=views, device="cpu",
                        augment=AugmentConfig(), loader=LoaderConfig(backend="tensor", drop_last=drop_last),
                        train=train, seed=seed)


def test_deferred_geometry_two_views():
    """Training views are the raw rows; each view's pad-crop/flip is left in `geometry`."""
    ds = lt_arrays()
    loader = tensor_loader(ds, glmc_samplers(ds))
    batches = list(loader)
    for batch in batches:
        assert len(batch.geometry) == 2
        for view, geo in zip(batch.views, batch.geometry):
            want = torch.from_numpy(ds.images[batch.index.numpy()]).permute(0, 3, 1, 2)
            assert torch.equal(view, want)
            assert geo.offsets.shape == (batch.size, 2) and geo.flip.shape == (batch.size,)
            assert geo.padding == 4
            assert geo.offsets.min() >= 0 and geo.offsets.max() <= 8
    # the two views of a row get independent geometry
    offs = torch.cat([b.geometry[0].offsets for b in batches])
    offs2 = torch.cat([b.geometry[1].offsets for b in batches])
    assert not torch.equal(offs, offs2)


def test_deterministic_and_epoch_dependent_geometry():
    ds = lt_arrays()
    first = [b.geometry[0].offsets for b in tensor_loader(ds, glmc_samplers(ds), seed=1)]
    again = [b.geometry[0].offsets for b in tensor_loader(ds, glmc_samplers(ds), seed=1)]
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    other = tensor_loader(ds, glmc_samplers(ds), seed=1)
    other.set_epoch(1)
    assert not all(torch.equal(a, b.geometry[0].offsets) for a, b in zip(first, other))


def test_augmented_views_equal_torchvision_for_the_loaders_draws():
    ds = lt_arrays()
    loader = tensor_loader(ds, glmc_samplers(ds))
    batch = next(iter(loader))
    out = A.Augmenter(ds.mean, ds.std, impl="torch").views(batch)
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
    ds = lt_arrays()
    with pytest.raises(ValueError, match="divisible"):
        tensor_loader(ds, glmc_samplers(ds), batch_size=15)
    paths = LTDataset(name="files", num_classes=2, labels=np.array([0, 1]), train_counts=np.array([1, 1]),
                      paths=["a.jpg", "b.jpg"])
    with pytest.raises(ValueError, match="in-memory images"):
        tensor_loader(paths, None)
    with pytest.raises(ValueError, match="augment.train"):
        build_loader("tensor", ds, None, batch_size=4, num_views=1, device="cpu",
                     augment=AugmentConfig(train="imagenet"), loader=LoaderConfig(), train=True)


@pytest.mark.slow
def test_short_glmc_run_lowers_the_loss_like_the_torch_backend():
    """20 GLMC steps on learnable toy data: both backends lower the loss by a similar amount."""
    from fasttrain.augment import Augmenter
    from fasttrain.methods import METHODS, MethodContext, Progress
    from fasttrain.models import create_backbone, to_channels_last

    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(len(LT_COUNTS)), LT_COUNTS)
    colours = rng.integers(0, 256, size=(len(LT_COUNTS), 1, 1, 3))
    noise = rng.integers(-40, 40, size=(len(labels), 16, 16, 3))
    imgs = np.clip(colours[labels] + noise, 0, 255).astype(np.uint8)
    ds = LTDataset(name="toy", num_classes=len(LT_COUNTS), labels=labels, train_counts=np.array(LT_COUNTS),
                   images=imgs, mean=CIFAR10_MEAN, std=CIFAR10_STD)

    def run(backend: str) -> tuple[float, float]:
        torch.manual_seed(0)
        method_cls = METHODS["glmc"]
        ctx = MethodContext(num_classes=ds.num_classes, train_counts=torch.as_tensor(ds.train_counts),
                            augmenter=Augmenter(ds.mean, ds.std), device=torch.device("cpu"))
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
