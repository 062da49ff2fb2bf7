"""The torch (reference) backend: batch contract, sampler class frequencies, determinism."""
import numpy as np
import pytest
import torch

from fasttrain.config import AugmentConfig, LoaderConfig
from fasttrain.data.cifar import lt_counts
from fasttrain.data.index import LTDataset
from fasttrain.loaders import build_loader
from fasttrain.samplers import build_sampler

COUNTS = lt_counts(60, 10, 20)


@pytest.fixture
def cifar_like():
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(10), COUNTS)
    images = rng.integers(0, 256, size=(len(labels), 32, 32, 3), dtype=np.uint8)
    return LTDataset(name="toy", num_classes=10, labels=labels, images=images, train_counts=np.array(COUNTS))


def make(ds, samplers, workers=0, batch=16, views=2, drop_last=False, train=True, seed=0):
    return build_loader("torch", ds, samplers, batch_size=batch, num_views=views, device="cpu",
                        augment=AugmentConfig(train="cifar"),
                        loader=LoaderConfig(num_workers=workers, drop_last=drop_last), train=train, seed=seed)


def test_batch_contract_two_streams(cifar_like):
    ds = cifar_like
    samplers = [build_sampler("instance", torch.as_tensor(ds.labels), 10, seed=1),
                build_sampler("power", torch.as_tensor(ds.labels), 10, seed=2, q=1.0)]
    loader = make(ds, samplers, batch=16)
    n = len(ds)
    assert len(loader) == -(-n // 8)  # 8 rows per stream per step, last batch kept
    batches = list(loader)
    assert len(batches) == len(loader)
    b = batches[0]
    assert b.num_streams == 2 and len(b.views) == 2
    for v in b.views:
        assert v.dtype == torch.uint8 and v.shape == (16, 3, 32, 32)
        assert v.is_contiguous(memory_format=torch.channels_last)
    assert b.labels.dtype == torch.int64 and torch.equal(b.stream, torch.tensor([0] * 8 + [1] * 8))
    assert torch.equal(b.labels, torch.as_tensor(ds.labels)[b.index])
    # stream rows follow the samplers' orders exactly
    order0, order1 = samplers[0].order(0), samplers[1].order(0)
    assert torch.equal(b.index[:8], order0[:8]) and torch.equal(b.index[8:], order1[:8])
    assert not torch.equal(b.views[0], b.views[1])  # two independently augmented views
    tail = batches[-1]
    assert tail.size == 2 * (n - (len(loader) - 1) * 8)


def test_drop_last_and_eval_order(cifar_like):
    ds = cifar_like
    loader = make(ds, [build_sampler("instance", torch.as_tensor(ds.labels), 10, seed=0)], batch=16, drop_last=True)
    assert len(loader) == len(ds) // 16 and all(b.size == 16 for b in loader)
    ev = make(ds, None, batch=50, views=1, train=False)
    idx = torch.cat([b.index for b in ev])
    assert torch.equal(idx, torch.arange(len(ds)))
    first = next(iter(ev))
    assert torch.equal(first.views[0], torch.from_numpy(ds.images[:50]).permute(0, 3, 1, 2))  # no augmentation


def test_class_frequencies_equal_the_samplers(cifar_like):
    ds = cifar_like
    s = build_sampler("power", torch.as_tensor(ds.labels), 10, seed=4, q=0.5, num_samples=3000)
    loader = make(ds, [s], batch=100, views=1)
    labels = torch.cat([b.labels for b in loader])
    assert torch.equal(labels, torch.as_tensor(ds.labels)[s.order(0)])
    freq = torch.bincount(labels, minlength=10).double() / len(labels)
    p = s.class_probabilities()
    assert torch.all((freq - p).abs() < 4 * (p * (1 - p) / len(labels)).sqrt())


def test_augmentation_independent_of_workers_and_reproducible(cifar_like):
    ds = cifar_like
    def first(workers, seed=0, epoch=0):
        loader = make(ds, [build_sampler("instance", torch.as_tensor(ds.labels), 10, seed=3)], workers=workers, seed=seed)
        loader.set_epoch(epoch)
        return next(iter(loader)).views[0]
    a = first(0)
    assert torch.equal(a, first(2))  # same images whatever the worker count
    assert not torch.equal(a, first(0, epoch=1))
    assert not torch.equal(a, first(0, seed=1))


def test_mid_epoch_position_resumes_the_same_batches(cifar_like):
    ds = cifar_like
    s = lambda: [build_sampler("instance", torch.as_tensor(ds.labels), 10, seed=3)]
    full = list(make(ds, s()))
    resumed = make(ds, s())
    resumed.load_state_dict({"epoch": 0, "position": 3})
    rest = list(resumed)
    assert len(rest) == len(full) - 3
    for x, y in zip(rest, full[3:]):
        assert torch.equal(x.views[0], y.views[0]) and torch.equal(x.labels, y.labels)
