"""Loader conformance: every registered backend, on every dataset kind it reads, keeps the contract.

The cases come from `fasttrain.loaders.BACKENDS` and each class's `reads`, and loaders are built
only through `build_loader` with the ordinary configs, so a new backend is tested here just by
being registered; nothing below may know a backend by name except the torch reference that the
others are compared with. A backend whose `available()` is False here is skipped with its reason.

Kinds: "arrays" is an in-memory long-tailed set of random uint8 32x32 images (CIFAR augmentation),
"files" a long-tailed corpus of JPEG files (ImageNet-style augmentation at 64 px, so it stays
fast). What each backend does beyond the contract is tested in its own file.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import pytest
import torch
from helpers import glmc_samplers, jpeg_corpus, lt_arrays, make_sampler

from fasttrain.config import AugmentConfig, LoaderConfig
from fasttrain.data.index import LTDataset
from fasttrain.loaders import AUGMENT_POLICIES, BACKENDS, backend_status, build_loader, loader_class
from fasttrain.loaders.base import LoaderBackend

KINDS = ("arrays", "files")
REFERENCE = "torch"  # the DataLoader backend every other one is compared with
DEVICE = torch.device("cpu")
AUGMENT = {
    "arrays": AugmentConfig(train="cifar"),
    "files": AugmentConfig(train="imagenet", crop_size=64, eval_resize=73),
}
# Length of the long re-sampled epoch of the frequency check: every draw of a files epoch is a
# JPEG decode, so that one is shorter (4 standard errors are then still < 0.07 in frequency).
LONG_EPOCH = {"arrays": 3000, "files": 800}


def _cases():
    for name in BACKENDS:
        for kind in loader_class(name).reads:
            yield pytest.param((name, kind), id=f"{name}-{kind}")


@pytest.fixture(scope="module")
def arrays_dataset() -> LTDataset:
    return lt_arrays()


@pytest.fixture(scope="module")
def files_dataset(tmp_path_factory) -> LTDataset:
    return jpeg_corpus(tmp_path_factory.getbasetemp() / "jpeg_lt_corpus")


@dataclass
class Case:
    backend: str
    kind: str
    dataset: LTDataset

    @property
    def view_hw(self) -> tuple[int, int]:
        if self.kind == "arrays":
            return tuple(self.dataset.images.shape[1:3])
        crop = AUGMENT["files"].crop_size
        return crop, crop

    @property
    def labels(self) -> torch.Tensor:
        return torch.as_tensor(self.dataset.labels)

    def loader(self, samplers, *, batch_size: int, views: int = 1, train: bool = True, drop_last: bool = False,
               seed: int = 0, backend: str | None = None, augment: AugmentConfig | None = None):
        name = backend or self.backend
        cfg = LoaderConfig(backend=name, num_workers=0, dali_threads=2, drop_last=drop_last)
        return build_loader(name, self.dataset, samplers, batch_size=batch_size, num_views=views, device=DEVICE,
                            augment=augment or AUGMENT[self.kind], loader=cfg, train=train, seed=seed)

    def sampler(self, kind: str = "instance", seed: int = 0, **kw):
        return make_sampler(self.dataset, kind, seed, **kw)


@pytest.fixture(params=list(_cases()))
def case(request) -> Case:
    name, kind = request.param
    ok, why = loader_class(name).available()
    if not ok:
        pytest.skip(f"loader.backend={name} not available: {why}")
    return Case(name, kind, request.getfixturevalue(f"{kind}_dataset"))


def _same_geometry(a, b) -> bool:
    if a is None or b is None:
        return a is b
    return torch.equal(a.offsets, b.offsets) and torch.equal(a.flip, b.flip) and a.padding == b.padding


def _channel_stats(views: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    x = views.float()
    return x.mean(dim=(0, 2, 3)), x.std(dim=(0, 2, 3))


# --- registration -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(BACKENDS))
def test_registered_backend_declares_what_it_reads(name):
    cls = loader_class(name)
    assert issubclass(cls, LoaderBackend)
    assert cls.reads and set(cls.reads) <= set(KINDS)
    ok, detail = cls.available()
    assert isinstance(ok, bool) and isinstance(detail, str) and detail
    status = backend_status()[name]
    assert status == {"usable": ok, "detail": detail, "reads": list(cls.reads)}


# --- batch contract -----------------------------------------------------------------------------


def test_batch_contract_two_streams_two_views(case):
    samplers = [case.sampler("instance", seed=1), case.sampler("power", seed=2, q=1.0)]
    per_stream = 5
    loader = case.loader(samplers, batch_size=2 * per_stream, views=2)
    n = len(case.dataset)
    assert n % per_stream, "the dataset must leave a partial last batch"
    assert len(loader) == -(-n // per_stream)  # the first sampler defines the epoch length
    orders = [s.order(0) for s in samplers]
    batches = list(loader)
    assert len(batches) == len(loader)
    pos = 0
    for batch in batches:
        assert batch.num_streams == 2 and len(batch.views) == 2 and len(batch.geometry) == 2
        assert not batch.normalized
        size, b = batch.size, batch.size // 2
        for view in batch.views:
            assert view.dtype == torch.uint8 and view.shape == (size, 3, *case.view_hw)
            assert view.is_contiguous(memory_format=torch.channels_last)
            assert view.device == DEVICE
        for t in (batch.labels, batch.stream, batch.index):
            assert t.dtype == torch.int64 and t.shape == (size,) and t.device == DEVICE
        assert torch.equal(batch.labels, case.labels[batch.index])
        # rows are stream-major and follow each sampler's order exactly
        assert torch.equal(batch.stream, torch.arange(2).repeat_interleave(b))
        for s in range(2):
            assert torch.equal(batch.index[batch.stream_rows(s)], orders[s][pos: pos + b])
        pos += b
        # the two views are augmented independently (in their pixels or their pending geometry)
        assert not (torch.equal(batch.views[0], batch.views[1])
                    and _same_geometry(batch.view_geometry(0), batch.view_geometry(1)))
    assert pos == len(orders[0])
    assert batches[-1].size == 2 * (n - (len(batches) - 1) * per_stream) < 2 * per_stream  # partial kept
    # another epoch: the rows follow that epoch's orders
    loader.set_epoch(3)
    orders = [s.order(3) for s in samplers]
    pos = 0
    for batch in loader:
        b = batch.size // 2
        for s in range(2):
            assert torch.equal(batch.index[batch.stream_rows(s)], orders[s][pos: pos + b])
        pos += b
    assert pos == len(orders[0])


def test_streams_of_different_lengths_one_layout(case):
    """The first stream defines the epoch; a shorter second stream wraps (its order again from the
    start) and a longer one is cut at the epoch's length: the same rows in every backend, as laid
    out by `LoaderBackend.set_epoch`."""
    n = len(case.dataset)
    first = case.sampler("instance", seed=1)
    for m in (n // 3, 2 * n):
        second = case.sampler("power", seed=2, q=1.0, num_samples=m)
        loader = case.loader([first, second], batch_size=10)
        o0, o1 = first.order(0), second.order(0)
        want = o1.repeat(-(-n // len(o1)))[:n]
        assert len(loader) == -(-n // 5)
        pos = 0
        for batch in loader:
            b = batch.size // 2
            assert torch.equal(batch.index[batch.stream_rows(0)], o0[pos: pos + b])
            assert torch.equal(batch.index[batch.stream_rows(1)], want[pos: pos + b])
            assert torch.equal(batch.labels, case.labels[batch.index])
            pos += b
        assert pos == n


def test_drop_last_and_eval_order(case):
    n = len(case.dataset)
    for samplers in ([case.sampler()], glmc_samplers(case.dataset)):  # 10 rows, 5 per stream
        loader = case.loader(samplers, batch_size=10, drop_last=True)
        sizes = [b.size for b in loader]
        per_stream = 10 // len(samplers)
        assert len(loader) == len(sizes) == n // per_stream and all(s == 10 for s in sizes)
    ev = case.loader(None, batch_size=10, train=False, drop_last=True)
    batches = list(ev)
    assert len(ev) == len(batches) == -(-n // 10)  # eval never drops
    assert torch.equal(torch.cat([b.index for b in batches]), torch.arange(n))  # sequential
    for b in batches:
        assert b.num_streams == 1 and torch.equal(b.stream, torch.zeros(b.size, dtype=torch.long))
        assert b.geometry == [None]  # nothing left to apply at eval
        assert torch.equal(b.labels, case.labels[b.index])
    if case.kind == "arrays":  # eval of in-memory images is the identity
        for b in batches:
            want = torch.from_numpy(case.dataset.images[b.index.numpy()]).permute(0, 3, 1, 2)
            assert torch.equal(b.views[0], want)


# --- sampler fidelity ---------------------------------------------------------------------------


def test_class_frequencies_equal_the_samplers(case):
    """Over an epoch each stream's label histogram is exactly its sampler's."""
    samplers = glmc_samplers(case.dataset, seed=5)
    loader = case.loader(samplers, batch_size=32, seed=5)
    c = case.dataset.num_classes
    for epoch in (0, 1):
        loader.set_epoch(epoch)
        hist = [torch.zeros(c, dtype=torch.long) for _ in range(2)]
        for batch in loader:
            for s in range(2):
                hist[s] += torch.bincount(batch.labels[batch.stream_rows(s)], minlength=c)
        for s, sampler in enumerate(samplers):
            assert torch.equal(hist[s], torch.bincount(case.labels[sampler.order(epoch)], minlength=c))
    assert not torch.equal(hist[0], hist[1])  # the power stream really is a different draw


def test_class_frequencies_match_the_sampler_probabilities(case):
    """A long re-sampled epoch: labels are the sampler's draws, frequencies within 4 s.e. of its p."""
    s = case.sampler("power", seed=4, q=0.5, num_samples=LONG_EPOCH[case.kind])
    loader = case.loader([s], batch_size=100)
    labels = torch.cat([b.labels for b in loader])
    assert torch.equal(labels, case.labels[s.order(0)])
    freq = torch.bincount(labels, minlength=case.dataset.num_classes).double() / len(labels)
    p = s.class_probabilities()
    assert torch.all((freq - p).abs() < 4 * (p * (1 - p) / len(labels)).sqrt())


def test_sharding_by_rank_partitions_the_epoch(case):
    n, world = len(case.dataset), 2
    seen = []
    for rank in range(world):
        s = case.sampler(rank=rank, world_size=world)
        idx = torch.cat([b.index for b in case.loader([s], batch_size=4)])
        assert torch.equal(idx, s.order(0))  # each rank reads exactly its shard
        seen += idx.tolist()
    # together the ranks read every image once; an odd n is padded by wrapping, as
    # DistributedSampler does, so at most world-1 images come twice
    assert sorted(set(seen)) == list(range(n)) and len(seen) == world * math.ceil(n / world)


# --- resume -------------------------------------------------------------------------------------


@pytest.mark.parametrize("views", [1, 2])
def test_mid_epoch_resume_gives_the_rest_of_the_epoch(case, views):
    k = 3
    ref = case.loader(glmc_samplers(case.dataset), batch_size=10, views=views, seed=1)
    ref.set_epoch(2)
    full = list(ref)
    run = case.loader(glmc_samplers(case.dataset), batch_size=10, views=views, seed=1)
    run.set_epoch(2)
    it = iter(run)
    for _ in range(k):
        next(it)
    state = run.state_dict()
    it.close()  # the interrupted run goes away (its worker threads / processes with it)
    resumed = case.loader(glmc_samplers(case.dataset), batch_size=10, views=views, seed=1)
    resumed.load_state_dict(state)
    rest = list(resumed)
    assert len(rest) == len(full) - k
    for a, b in zip(rest, full[k:]):
        assert torch.equal(a.index, b.index) and torch.equal(a.labels, b.labels)
        assert torch.equal(a.stream, b.stream)
        assert len(a.views) == len(b.views) == views
        for v in range(views):  # same pixels, and the same crops still to be applied
            assert torch.equal(a.views[v], b.views[v])
            assert _same_geometry(a.view_geometry(v), b.view_geometry(v))


# --- the torch reference ------------------------------------------------------------------------


def test_same_steps_and_eval_pixels_as_the_torch_backend(case):
    """Asked the same samplers, a backend yields the reference's steps, rows, labels and streams;
    its eval pixels equal the reference's exactly for in-memory images, and for files up to
    decoder / resampler rounding.

    File tolerance: both decode with libjpeg-turbo-class IDCTs and resample with an antialiased
    linear filter, so pixels differ by rounding only (DALI on CPU vs torch, measured on this
    corpus: mean absolute difference 0.11 grey levels, channel mean/std within 0.002). We allow 1
    level and 0.5 level: an off-by-one crop offset or a non-antialiased resize already exceeds
    these.
    """
    if case.backend == REFERENCE:
        pytest.skip("this is the reference backend")
    if case.kind not in loader_class(REFERENCE).reads:
        pytest.skip(f"the {REFERENCE} reference does not read {case.kind}")
    for train in (True, False):
        def make(backend):
            samplers = glmc_samplers(case.dataset) if train else None
            ld = case.loader(samplers, batch_size=10, views=2, train=train, backend=backend)
            ld.set_epoch(1)
            return ld

        ref, got = make(REFERENCE), make(case.backend)
        assert len(got) == len(ref)
        ref_views, got_views = [], []
        steps = 0
        for a, b in zip(ref, got):
            steps += 1
            assert torch.equal(a.index, b.index) and torch.equal(a.labels, b.labels)
            assert torch.equal(a.stream, b.stream) and a.num_streams == b.num_streams
            assert len(a.views) == len(b.views)
            for va, vb in zip(a.views, b.views):
                assert va.dtype == vb.dtype and va.shape == vb.shape
                assert va.is_contiguous(memory_format=torch.channels_last)
                assert vb.is_contiguous(memory_format=torch.channels_last)
            ref_views += a.views
            got_views += b.views
        assert steps == len(ref)
        if train:
            continue
        rv, gv = torch.cat(ref_views), torch.cat(got_views)
        if case.kind == "arrays":
            assert torch.equal(gv, rv)
        else:
            assert (gv.float() - rv.float()).abs().mean() < 1.0  # measured: 0.11 (DALI)
            (gm, gs), (rm, rs) = _channel_stats(gv), _channel_stats(rv)
            assert (gm - rm).abs().max() < 0.5 and (gs - rs).abs().max() < 0.5  # measured: < 0.002


# --- augmentation policies ----------------------------------------------------------------------


@pytest.mark.parametrize("policy", [p for p in AUGMENT_POLICIES if p != "none"])
def test_each_policy_is_applied_or_refused_by_name(case, policy):
    """`augment.policy` is never ignored: a backend either applies it (its training views differ from
    the policy-free views of the same seed, and are still uint8 images of the view size) or refuses
    it when built, naming the backend and the policy. Evaluation loaders never apply it."""
    augment = dataclasses.replace(AUGMENT[case.kind], policy=policy)

    def first_views(aug, train=True):
        ld = case.loader([case.sampler(seed=3)] if train else None, batch_size=16, views=2, seed=3,
                         augment=aug, train=train)
        return next(iter(ld)).views

    applies = policy in loader_class(case.backend).policies
    if not applies:
        with pytest.raises(ValueError) as exc:
            first_views(augment)
        assert f"loader.backend={case.backend}" in str(exc.value) and f"augment.policy={policy}" in str(exc.value)
        return
    plain, got = first_views(AUGMENT[case.kind]), first_views(augment)
    for a, b in zip(plain, got):
        assert b.dtype == torch.uint8 and b.shape == a.shape == (16, 3, *case.view_hw)
        assert b.is_contiguous(memory_format=torch.channels_last)
        changed = (a != b).flatten(1).any(dim=1)
        assert changed.any(), f"loader.backend={case.backend} ignored augment.policy={policy}"
    for a, b in zip(first_views(AUGMENT[case.kind], train=False), first_views(augment, train=False)):
        assert torch.equal(a, b)  # evaluation is never augmented
