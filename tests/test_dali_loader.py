"""DALI loader backend: augmentation, normalised output, reproducibility, bad files, GPU decode.

The batch contract, sampler order, resume, sharding and the eval match with the torch backend
are in test_loader_conformance.py; header parsing and the crop-parameter draws (no DALI needed)
in test_image_params.py. CPU tests run the DALI CPU pipeline (device_id=None); `gpu`-marked
tests run the mixed decoder.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import jpeg_corpus, make_sampler

dali = pytest.importorskip("nvidia.dali", reason="DALI not installed (pip install fasttrain[dali])")

from fasttrain.config import AugmentConfig, LoaderConfig  # noqa: E402
from fasttrain.data.index import DatasetError, LTDataset  # noqa: E402
from fasttrain.loaders.dali import DaliLoader, dali_available  # noqa: E402


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> LTDataset:
    return jpeg_corpus(tmp_path_factory.getbasetemp() / "jpeg_lt_corpus")


def _aug(**kw) -> AugmentConfig:
    return AugmentConfig(train="imagenet", crop_size=64, eval_resize=73, **kw)


def _loader(ds, samplers, *, views=1, train=True, bs=8, seed=0, aug=None, **cfg) -> DaliLoader:
    return DaliLoader(ds, samplers, batch_size=bs, num_views=views, device="cpu", augment=aug or _aug(),
                      loader=LoaderConfig(**{"dali_threads": 2, **cfg}), train=train, seed=seed)


def _sampler(ds, kind="instance", seed=0, **kw):
    return make_sampler(ds, kind, seed, **kw)


# --- availability ------------------------------------------------------------------------------


def test_available_reports_version():
    ok, msg = dali_available()
    assert ok and dali.__version__ in msg
    assert DaliLoader.available() == (ok, msg)  # what `fasttrain info` and the conformance suite see


# --- augmentation -------------------------------------------------------------------------------


def test_two_views_differ_and_decode_once_path(corpus):
    ld = _loader(corpus, [_sampler(corpus)], views=2, aug=_aug(color_jitter=0.4, grayscale_p=0.2, blur_p=0.5))
    assert not ld.roi_decode  # several views: decode once, resize one ROI per view
    b = next(iter(ld))
    a, c = b.views[0].float(), b.views[1].float()
    per_row = (a - c).abs().mean(dim=(1, 2, 3))
    assert (per_row > 1.0).all(), per_row


def test_grayscale_p1_gives_gray_views(corpus):
    ld = _loader(corpus, [_sampler(corpus)], aug=_aug(grayscale_p=1.0))
    v = next(iter(ld)).views[0].float()
    assert (v[:, 0] - v[:, 1]).abs().max() <= 2 and (v[:, 1] - v[:, 2]).abs().max() <= 2


def _torch_loader(ds, samplers, *, train, views=1, bs=8, aug=None):
    from fasttrain.loaders.torch_backend import TorchLoader

    return TorchLoader(ds, samplers, batch_size=bs, num_views=views, device="cpu", augment=aug or _aug(),
                       loader=LoaderConfig(num_workers=0), train=train, seed=0)


def _channel_stats(batches) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.cat([v.float() for b in batches for v in b.views])
    return x.mean(dim=(0, 2, 3)), x.std(dim=(0, 2, 3))


def test_train_statistics_close_to_torch_backend(corpus):
    """RandomResizedCrop + flip over several epochs: channel mean/std close to the torch backend.

    The crops are random in both, so the statistics differ by sampling noise: a crop's mean over
    this corpus varies by ~15 grey levels; over 8 epochs x 24 crops the standard error of the
    mean is ~1 level, so 4 levels (4 s.e.) for the mean and 4 for the std is a test that still
    fails for a wrong colour order (RGB vs BGR moves the means by > 10), missing flips/crops of the
    wrong scale, or a wrong resize.
    """
    pytest.importorskip("fasttrain.loaders.torch_backend")
    stats = []
    for make in (lambda s: _loader(corpus, [s]), lambda s: _torch_loader(corpus, [s], train=True)):
        s = _sampler(corpus)
        ld = make(s)
        batches = []
        for e in range(8):
            ld.set_epoch(e)
            batches += list(ld)
        stats.append(_channel_stats(batches))
    (dm, ds), (tm, ts) = stats
    assert (dm - tm).abs().max() < 4.0, (dm, tm)
    assert (ds - ts).abs().max() < 4.0, (ds, ts)


def test_normalized_output_equals_normalized_uint8(corpus):
    aug = _aug()
    u = next(iter(_loader(corpus, [_sampler(corpus)], aug=aug)))
    f = next(iter(_loader(corpus, [_sampler(corpus)], aug=aug, dali_normalize=True)))
    assert f.normalized and f.views[0].dtype == torch.float32
    assert f.views[0].is_contiguous(memory_format=torch.channels_last)
    mean = torch.tensor(corpus.mean).view(1, 3, 1, 1) * 255
    std = torch.tensor(corpus.std).view(1, 3, 1, 1) * 255
    ref = (u.views[0].float() - mean) / std
    # uint8 rounding happens before normalising on one side only: <= 0.5 level / (0.224*255)
    assert (f.views[0] - ref).abs().max() < 0.6 / (0.224 * 255) + 1e-4


# --- reproducibility ----------------------------------------------------------------------------


def _epoch_views(ld, epoch):
    ld.set_epoch(epoch)
    return [torch.cat(b.views) for b in ld]


def test_epoch_reproducible_with_fixed_seed(corpus):
    aug = _aug(color_jitter=0.4, grayscale_p=0.2, blur_p=0.5)
    a = _loader(corpus, [_sampler(corpus)], views=2, aug=aug, seed=5)
    b = _loader(corpus, [_sampler(corpus)], views=2, aug=aug, seed=5, dali_threads=1, dali_reader_thread=False)
    a1, b1 = _epoch_views(a, 1), _epoch_views(b, 1)
    assert all(torch.equal(x, y) for x, y in zip(a1, b1))
    a0 = _epoch_views(a, 0)
    assert not torch.equal(a0[0], a1[0])  # a new epoch re-samples
    assert all(torch.equal(x, y) for x, y in zip(_epoch_views(a, 1), a1))  # and going back repeats
    c = _loader(corpus, [_sampler(corpus)], views=2, aug=aug, seed=6)
    assert not torch.equal(_epoch_views(c, 1)[0], a1[0])


def test_stopping_early_then_a_full_epoch(corpus):
    ld = _loader(corpus, [_sampler(corpus)], seed=2)
    full = [b.views[0] for b in ld]
    for i, _ in enumerate(ld):  # e.g. train.max_steps_per_epoch: the consumer breaks
        if i == 0:
            break
    assert ld.position == 1  # the step it received counts as delivered
    ld.position = 0  # start the epoch over
    again = [b.views[0] for b in ld]
    assert len(again) == len(full) and all(torch.equal(x, y) for x, y in zip(again, full))


# --- bad files ----------------------------------------------------------------------------------


def _with_bad(corpus: LTDataset, tmp_path: Path, kind: str) -> tuple[LTDataset, str]:
    good = Path(corpus.paths[5]).read_bytes()
    bad = tmp_path / f"bad_{kind}.jpg"
    if kind == "truncated":
        bad.write_bytes(good[: len(good) // 2])
    elif kind == "bad_scan":  # headers intact (passes the host check), DALI's decoder fails
        data = bytearray(good)
        sos = data.find(b"\xff\xda")
        data[sos + 5] = 0x77  # component id that the frame does not have
        bad.write_bytes(bytes(data))
    paths = list(corpus.paths)
    paths[5] = str(bad)  # kind == "missing": never written
    return dataclasses.replace(corpus, paths=paths), str(bad)


@pytest.mark.parametrize("kind", ["missing", "truncated", "bad_scan"])
def test_bad_file_error_names_the_file(corpus, tmp_path, kind):
    ds, bad = _with_bad(corpus, tmp_path, kind)
    ld = _loader(ds, None, train=False, bs=4)
    with pytest.raises(DatasetError, match=bad.replace(".", r"\.")):
        list(ld)


@pytest.mark.parametrize("kind", ["missing", "bad_scan"])
def test_skip_corrupt_skips_and_counts(corpus, tmp_path, kind):
    ds, bad = _with_bad(corpus, tmp_path, kind)
    ld = _loader(ds, None, train=False, bs=4, skip_corrupt=True)
    batches = list(ld)
    idx = torch.cat([b.index for b in batches]).tolist()
    assert idx == [i for i in range(len(ds)) if i != 5]
    assert ld.skipped == [bad] and ld.skipped_rows == 1
    assert [b.size for b in batches] == [4, 3, 4, 4, 4, 4]
    # the other rows are unchanged by the skip
    ref = list(_loader(corpus, None, train=False, bs=4))
    assert torch.equal(batches[0].views[0], ref[0].views[0])
    assert torch.equal(batches[1].views[0], ref[1].views[0][[0, 2, 3]])
    # a second epoch skips without counting the file again
    list(ld)
    assert ld.skipped == [bad] and ld.skipped_rows == 2


def test_skip_counts_each_row_once_across_a_pipeline_restart(corpus, tmp_path):
    # A DALI-level failure (index 5, step 1) rebuilds the pipeline and re-reads the steps in
    # flight, including step 2 whose file (index 9) is missing: still one count per bad row.
    ds, bad_scan = _with_bad(corpus, tmp_path, "bad_scan")
    paths = list(ds.paths)
    paths[9] = str(tmp_path / "missing.jpg")
    ds = dataclasses.replace(ds, paths=paths)
    ld = _loader(ds, None, train=False, bs=4, skip_corrupt=True)
    idx = torch.cat([b.index for b in ld]).tolist()
    assert idx == [i for i in range(len(ds)) if i not in (5, 9)]
    assert sorted(ld.skipped) == sorted([bad_scan, paths[9]]) and ld.skipped_rows == 2


def test_in_memory_dataset_rejected():
    ds = LTDataset("mem", 2, np.array([0, 1]), np.array([1, 1]), images=np.zeros((2, 8, 8, 3), np.uint8))
    with pytest.raises(ValueError, match="loader.backend=tensor"):
        _loader(ds, None, train=False)


# --- GPU ----------------------------------------------------------------------------------------


@pytest.mark.gpu
def test_mixed_decoder_batch_on_gpu(corpus):
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    aug = _aug(color_jitter=0.4, grayscale_p=0.2, blur_p=0.5)
    ld = DaliLoader(corpus, [_sampler(corpus), _sampler(corpus, "class_balanced")], batch_size=8, num_views=2,
                    device="cuda", augment=aug, loader=LoaderConfig(), train=True, seed=0)
    b = next(iter(ld))
    for v in b.views:
        assert v.is_cuda and v.dtype == torch.uint8 and v.is_contiguous(memory_format=torch.channels_last)
    assert b.labels.is_cuda and b.stream.is_cuda and b.index.is_cuda
    assert not torch.equal(b.views[0], b.views[1])


@pytest.mark.gpu
def test_mixed_decoder_matches_cpu_eval(corpus):
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    g = DaliLoader(corpus, None, batch_size=8, num_views=1, device="cuda", augment=_aug(),
                   loader=LoaderConfig(), train=False)
    gv = torch.cat([b.views[0].cpu() for b in g]).float()
    cv = torch.cat([b.views[0] for b in _loader(corpus, None, train=False)]).float()
    # nvJPEG vs libjpeg-turbo IDCT/upsampling differ by a few levels at most
    assert (gv - cv).abs().mean() < 3.0


@pytest.mark.gpu
def test_gpu_normalized_single_view(corpus):
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    ld = DaliLoader(corpus, [_sampler(corpus)], batch_size=8, num_views=1, device="cuda", augment=_aug(),
                    loader=LoaderConfig(dali_normalize=True), train=True, seed=0)
    b = next(iter(ld))
    assert b.normalized and b.views[0].is_cuda and b.views[0].dtype == torch.float32


# --- augment.policy (nvidia.dali.auto_aug) ------------------------------------------------------


@pytest.mark.parametrize("policy", ["randaugment", "trivialaugment", "autoaugment"])
def test_policy_applies_after_the_crop_in_every_output_path(corpus, policy):
    """The policy runs on the cropped, flipped uint8 view: with ROI decoding (1 view), decode-once
    (2 views) and normalised output; the crops themselves are the policy-free ones (host draws)."""
    plain = next(iter(_loader(corpus, [_sampler(corpus)], views=2))).views
    got = next(iter(_loader(corpus, [_sampler(corpus)], views=2, aug=_aug(policy=policy)))).views
    for a, b in zip(plain, got):
        assert b.dtype == torch.uint8 and b.shape == a.shape and not torch.equal(a, b)
    one = next(iter(_loader(corpus, [_sampler(corpus)], aug=_aug(policy=policy))))
    assert one.views[0].shape == (8, 3, 64, 64)
    f = next(iter(_loader(corpus, [_sampler(corpus)], aug=_aug(policy=policy), dali_normalize=True)))
    assert f.normalized and f.views[0].dtype == torch.float32 and torch.isfinite(f.views[0]).all()
    ev = next(iter(_loader(corpus, None, train=False, aug=_aug(policy=policy))))  # eval: no policy
    assert torch.equal(ev.views[0], next(iter(_loader(corpus, None, train=False))).views[0])


def test_policy_keys_reach_dali(corpus):
    """RandAugment's magnitude is used: magnitude 0 changes less than magnitude 30 (same seed)."""
    base = torch.cat([b.views[0] for b in _loader(corpus, [_sampler(corpus)])]).float()

    def change(m):
        ld = _loader(corpus, [_sampler(corpus)], aug=_aug(policy="randaugment", policy_magnitude=m, policy_num_ops=3))
        return (torch.cat([b.views[0] for b in ld]).float() - base).abs().mean()

    assert change(0) < change(30)


@pytest.mark.gpu
def test_gpu_policy_pipeline(corpus):
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    for policy in ("randaugment", "trivialaugment", "autoaugment"):
        ld = DaliLoader(corpus, [_sampler(corpus)], batch_size=8, num_views=2, device="cuda",
                        augment=_aug(policy=policy), loader=LoaderConfig(), train=True, seed=0)
        b = next(iter(ld))
        assert all(v.is_cuda and v.dtype == torch.uint8 and v.shape == (8, 3, 64, 64) for v in b.views)
