"""FFCV backend and .beton conversion: round trips, order, reproducibility, statistics, failures.

The batch contract, sampler order, resume, sharding and the eval match with the torch backend
are in test_loader_conformance.py (the ffcv cases there run on a .beton converted on the fly).
CPU only; the `gpu`-marked test runs FFCV's copy to a CUDA device.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import glmc_samplers, jpeg_corpus, lt_arrays, make_sampler

pytest.importorskip("ffcv", reason="FFCV not installed (pip install 'fasttrain[ffcv]' + its apt packages)")

from fasttrain.config import AugmentConfig, LoaderConfig  # noqa: E402
from fasttrain.data import ffcv_convert as fc  # noqa: E402
from fasttrain.data.index import DatasetError, LTDataset  # noqa: E402
from fasttrain.loaders import build_loader  # noqa: E402
from fasttrain.loaders.ffcv import FfcvLoader, ffcv_available  # noqa: E402

AUG = AugmentConfig(train="imagenet", crop_size=64, eval_resize=73)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> LTDataset:
    return jpeg_corpus(tmp_path_factory.getbasetemp() / "jpeg_lt_corpus")


@pytest.fixture(scope="module")
def arrays() -> LTDataset:
    return lt_arrays()


def _loader(ds, samplers, *, views=1, train=True, bs=8, seed=0, aug=AUG, backend="ffcv", **cfg):
    loader = LoaderConfig(backend=backend, num_workers=0, **cfg)
    return build_loader(backend, ds, samplers, batch_size=bs, num_views=views, device="cpu", augment=aug,
                        loader=loader, train=train, seed=seed)


def _stored(path: Path) -> tuple[np.ndarray, list[np.ndarray]]:
    """(labels, per-sample stored bytes) of a .beton, read with FFCV's Reader only."""
    from ffcv.reader import Reader

    r = Reader(str(path))
    data = np.memmap(path, np.uint8, mode="r")
    size_of = dict(zip(r.alloc_table["ptr"].tolist(), r.alloc_table["size"].tolist()))
    image = r.metadata["f0"]
    blobs = [np.asarray(data[p: p + size_of[int(p)]]) for p in image["data_ptr"].tolist()]
    return np.asarray(r.metadata["f1"]), blobs, image


# --- availability -----------------------------------------------------------------------------


def test_available_names_the_version_and_the_install_hint_when_missing(monkeypatch):
    ok, msg = ffcv_available()
    assert ok and "ffcv 1.0.2" in msg
    assert FfcvLoader.available() == (ok, msg)
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "ffcv" else real(name, *a))
    ok, msg = ffcv_available()
    assert not ok and "pip install 'fasttrain[ffcv]'" in msg and "libturbojpeg0-dev" in msg


# --- conversion -------------------------------------------------------------------------------


def test_raw_round_trip_is_exact_for_arrays_and_files(tmp_path, arrays, corpus):
    from PIL import Image

    out = tmp_path / "arrays.beton"
    side = fc.convert(arrays, out, fc.ConvertOptions(), workers=2, progress=False)
    assert side["options"]["write_mode"] == "raw"  # auto = raw for in-memory images
    labels, blobs, meta = _stored(out)
    assert np.array_equal(labels, arrays.labels)
    for i, blob in enumerate(blobs):
        assert np.array_equal(blob.reshape(32, 32, 3), arrays.images[i])
    out = tmp_path / "files_raw.beton"
    fc.convert(corpus, out, fc.ConvertOptions(write_mode="raw"), workers=2, progress=False)
    labels, blobs, meta = _stored(out)
    assert np.array_equal(labels, corpus.labels)
    for i, blob in enumerate(blobs):
        want = np.asarray(Image.open(corpus.paths[i]).convert("RGB"))
        assert (meta["height"][i], meta["width"][i]) == want.shape[:2]
        assert np.array_equal(blob.reshape(want.shape), want)


def test_jpg_mode_stores_files_byte_for_byte_and_resizes_above_max_resolution(tmp_path, corpus):
    out = tmp_path / "files.beton"
    side = fc.convert(corpus, out, fc.ConvertOptions(), workers=2, progress=False)
    assert side["options"]["write_mode"] == "jpg" and side["class_counts"] == [12, 6, 4, 2]
    _, blobs, meta = _stored(out)
    for path, blob in zip(corpus.paths, blobs):
        assert blob.tobytes() == Path(path).read_bytes()  # no generation loss
    fc.convert(corpus, out, fc.ConvertOptions(max_resolution=160, jpeg_quality=80), workers=1, progress=False)
    _, blobs, meta = _stored(out)
    assert max(meta["height"].max(), meta["width"].max()) == 160
    assert all(b[:2].tobytes() == b"\xff\xd8" for b in blobs)  # re-encoded JPEGs


def test_proportion_mode_is_a_fixed_per_sample_choice(tmp_path, corpus):
    modes = []
    for workers in (1, 2):
        out = tmp_path / f"p{workers}.beton"
        fc.convert(corpus, out, fc.ConvertOptions(write_mode="proportion", compress_probability=0.5),
                   workers=workers, progress=False)
        modes.append(_stored(out)[2]["mode"].copy())
    assert np.array_equal(modes[0], modes[1])  # not the workers' RNG
    assert 0 < modes[0].sum() < len(corpus)  # both kinds present (raw = 1, jpg = 0)


def test_interrupted_or_failed_conversion_leaves_no_finished_looking_file(tmp_path, corpus, monkeypatch):
    from ffcv.writer import DatasetWriter

    out = tmp_path / "x.beton"
    fc.convert(corpus, out, progress=False, workers=1)
    before = out.read_bytes()

    def interrupted(self, allocations):
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(DatasetWriter, "finalize", interrupted)
        with pytest.raises(KeyboardInterrupt):
            fc.convert(corpus, tmp_path / "y.beton", progress=False, workers=1)
        with pytest.raises(KeyboardInterrupt):  # over an existing file: the old one survives
            fc.convert(corpus, out, progress=False, workers=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.beton", "x.beton.json"]
    assert out.read_bytes() == before
    # a bad image: the error names it, nothing is left behind
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(Path(corpus.paths[0]).read_bytes()[:3000])
    broken = dataclasses.replace(corpus, paths=corpus.paths[:5] + [str(bad)], labels=corpus.labels[:6])
    with pytest.raises(DatasetError, match="bad.jpg"):
        fc.convert(broken, tmp_path / "z.beton", progress=False, workers=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.jpg", "x.beton", "x.beton.json"]


def test_a_beton_of_another_split_is_an_error_naming_both(tmp_path, corpus):
    train = dataclasses.replace(corpus, name="jpeg_train")
    other = dataclasses.replace(corpus, name="jpeg_eval", paths=corpus.paths[:20], labels=corpus.labels[:20])
    out = tmp_path / "train.beton"
    fc.convert(train, out, progress=False, workers=1)
    with pytest.raises(DatasetError, match=r"'jpeg_train' \(24 images.*'jpeg_eval' \(20 images"):
        _loader(other, None, train=False, ffcv_eval_path=str(out))
    with pytest.raises(DatasetError, match="jpeg_train.*jpeg_eval"):
        _loader(other, [make_sampler(other)], ffcv_path=str(out))
    # same images, other labels: the hash of the list differs
    relabeled = dataclasses.replace(train, labels=np.roll(train.labels, 1))
    with pytest.raises(DatasetError, match="list "):
        _loader(relabeled, [make_sampler(relabeled)], ffcv_path=str(out))
    side = fc.sidecar_path(out)
    side.write_text(json.dumps({**json.loads(side.read_text()), "beton_bytes": 1}))
    with pytest.raises(DatasetError, match="replaced or truncated"):
        _loader(train, [make_sampler(train)], ffcv_path=str(out))
    side.unlink()
    with pytest.raises(DatasetError, match="sidecar .* is missing"):
        _loader(train, [make_sampler(train)], ffcv_path=str(out))


def test_cached_conversion_is_reused_and_never_converted_when_disabled(tmp_path, corpus):
    a = _loader(corpus, None, train=False, ffcv_cache_dir=str(tmp_path))
    (path,) = list(tmp_path.glob("*.beton"))
    assert a.path == path and path.name.startswith("jpeg_lt-")
    stamp = path.stat().st_mtime_ns
    b = _loader(corpus, None, train=False, ffcv_cache_dir=str(tmp_path))
    assert b.path == path and path.stat().st_mtime_ns == stamp  # found by content, not rewritten
    with pytest.raises(DatasetError, match="convert-ffcv"):
        _loader(corpus, None, train=False, ffcv_cache_dir=str(tmp_path / "empty"), ffcv_convert=False)


def test_cli_converts_a_folder_dataset(tmp_path, corpus, capsys):
    from fasttrain.data.cli import main

    root = tmp_path / "folder"
    for split, n in (("train", 3), ("test", 1)):
        for c in range(2):
            d = root / split / f"class{c}"
            d.mkdir(parents=True)
            for i in range(n):
                (d / f"{i}.jpg").write_bytes(Path(corpus.paths[c * 12 + i]).read_bytes())
    out = tmp_path / "eval.beton"
    assert main(["convert-ffcv", "folder", "--root", str(root), "--split", "eval", "--out", str(out),
                 "--workers", "1", "--no-progress"]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["out"] == str(out) and report["dataset"] == "folder_eval" and report["num_samples"] == 2
    assert json.loads(fc.sidecar_path(out).read_text())["class_counts"] == [1, 1]
    assert main(["convert-ffcv", "folder", "--root", str(tmp_path / "missing")]) == 1  # one-line errors
    assert "folder not found" in capsys.readouterr().err
    assert main(["convert-ffcv", "folder", "--root", str(root), "--quality", "0"]) == 1
    assert "loader.ffcv_jpeg_quality (--quality)" in capsys.readouterr().err


# --- the loader -------------------------------------------------------------------------------


def test_training_views_are_reproducible_across_thread_counts_and_differ_by_seed(corpus):
    def views(workers, seed=0):
        ld = _loader(corpus, glmc_samplers(corpus, seed=3), views=2, bs=10, seed=seed, ffcv_workers=workers)
        ld.set_epoch(1)
        return [torch.cat([b.views[v] for b in ld]) for v in range(2)]

    one, two = views(1), views(2)
    assert all(torch.equal(a, b) for a, b in zip(one, two))
    assert not torch.equal(one[0], one[1])  # two independent crops of each row
    assert not torch.equal(views(2, seed=1)[0], one[0])


def test_training_image_statistics_are_close_to_the_torch_backend(corpus):
    """RandomResizedCrop + flip on the same files: per-crop channel means and standard deviations
    agree with the torch backend's within 4 standard errors (different random crops, same law)."""
    def crops(backend):
        s = make_sampler(corpus, "instance", seed=2, num_samples=8 * len(corpus))
        ld = _loader(corpus, [s], views=2, bs=48, backend=backend)
        x = torch.cat([torch.cat(b.views) for b in ld]).float()
        return x.mean(dim=(2, 3)), x.std(dim=(2, 3))  # per crop, per channel

    (fm, fs), (tm, ts) = crops("ffcv"), crops("torch")
    for a, b in ((fm, tm), (fs, ts)):
        se = (a.var(0) / len(a) + b.var(0) / len(b)).sqrt()
        assert torch.all((a.mean(0) - b.mean(0)).abs() < 4 * se), (a.mean(0), b.mean(0), se)


def test_random_crop_windows_are_the_shared_law_with_counter_based_draws():
    """The decoder's windows are crop_params.rrc_window (the one implementation, tested against
    torchvision in test_image_params.py) fed with draws v·64 + 4t + j of the row's key."""
    from fasttrain.loaders import crop_params
    from fasttrain.loaders.ffcv_pipeline import _uniform, rrc_window

    for k, (h, w) in enumerate([(240, 320), (100, 1000), (999, 101), (32, 32)]):
        key, view = np.uint64(k * 7919 + 1), k % 2
        u = np.array([[_uniform(key, view * 64 + 4 * t + j) for j in range(4)]
                      for t in range(crop_params.RRC_ATTEMPTS)])
        want = crop_params.rrc_window(h, w, u, 0.08, 1.0, 3 / 4, 4 / 3)
        assert tuple(rrc_window(h, w, key, view, 0.08, 1.0, 3 / 4, 4 / 3)) == want


def test_quasi_random_keeps_each_stream_s_samples_and_resumes(corpus):
    samplers = glmc_samplers(corpus, seed=4)
    ld = _loader(corpus, samplers, bs=10, ffcv_quasi_random=True, seed=4)
    batches = list(ld)
    for s, sampler in enumerate(samplers):
        got = torch.cat([b.index[b.stream_rows(s)] for b in batches])
        assert sorted(got.tolist()) == sorted(sampler.order(0).tolist())  # same multiset, hence frequencies
    again = _loader(corpus, glmc_samplers(corpus, seed=4), bs=10, ffcv_quasi_random=True, seed=4)
    again.load_state_dict({"epoch": 0, "position": 2, "seed": 4})
    rest = list(again)
    assert all(torch.equal(a.index, b.index) and torch.equal(a.views[0], b.views[0])
               for a, b in zip(rest, batches[2:]))


def test_photometric_augmentation_is_refused_with_the_keys(corpus):
    with pytest.raises(ValueError, match="augment.color_jitter=0.4.*augment.blur_p=0.5.*torch or dali"):
        _loader(corpus, [make_sampler(corpus)], aug=dataclasses.replace(AUG, color_jitter=0.4, blur_p=0.5))
    with pytest.raises(ValueError, match="augment.train=cifar"):
        _loader(corpus, [make_sampler(corpus)], aug=dataclasses.replace(AUG, train="cifar"))


def test_per_view_crop_settings_change_only_their_view(corpus):
    def views(aug):
        ld = _loader(corpus, [make_sampler(corpus, seed=1)], views=2, bs=12, aug=aug)
        return [torch.cat([b.views[v] for b in ld]) for v in range(2)]

    plain = views(AUG)
    wide = views(dataclasses.replace(AUG, views=[{}, {"rrc_scale": [0.9, 1.0], "flip": False}]))
    assert torch.equal(plain[0], wide[0]) and not torch.equal(plain[1], wide[1])
    with pytest.raises(ValueError, match=r"augment.views\[1\].grayscale_p=0.2"):
        _loader(corpus, [make_sampler(corpus)], views=2, aug=dataclasses.replace(AUG, views=[{}, {"grayscale_p": 0.2}]))


def test_an_undecodable_stored_image_is_an_error_naming_the_file(tmp_path, corpus):
    out = tmp_path / "c.beton"
    fc.convert(corpus, out, progress=False, workers=1)
    _, blobs, meta = _stored(out)
    ptr = int(meta["data_ptr"][3])
    with open(out, "r+b") as f:  # garble the entropy-coded data of sample 3
        f.seek(ptr + len(blobs[3]) // 2)
        f.write(bytes(range(256)) * 4)
    ld = _loader(corpus, None, train=False, ffcv_eval_path=str(out))
    with pytest.raises(DatasetError, match="c0_3.jpg"):
        list(ld)


def test_a_failure_in_ffcv_s_thread_reaches_the_consumer(corpus, monkeypatch):
    from fasttrain.loaders import ffcv_pipeline

    ld = _loader(corpus, [make_sampler(corpus)], bs=4)

    def boom(self, *a, **k):
        raise OSError("disk gone")

    monkeypatch.setattr(ffcv_pipeline._EpochIterator, "run_pipeline", boom)
    with pytest.raises(RuntimeError, match="disk gone"):
        list(ld)


def test_cpu_batches_stay_valid_while_later_ones_are_decoded(corpus):
    """On the CPU every batch is its own array: holding all of them (FFCV reuses its buffers
    after `batches_ahead` + 2 batches) must give the pixels of batches cloned at once."""
    held = list(_loader(corpus, [make_sampler(corpus, seed=3)], views=2, bs=4, ffcv_batches_ahead=1))
    fresh = [[v.clone() for v in b.views] for b in _loader(corpus, [make_sampler(corpus, seed=3)], views=2, bs=4,
                                                             ffcv_batches_ahead=1)]
    assert len(held) > 4
    for a, b in zip(held, fresh):
        assert all(torch.equal(x, y) for x, y in zip(a.views, b))


def test_reused_buffers_hold_the_same_view_major_batch(corpus, tmp_path):
    """FFCV's own reused buffers (the CUDA path, and the decode-only ceiling) carry the same
    bytes in the same layout as the per-batch arrays of the CPU path."""
    from fasttrain.loaders import ffcv_pipeline as fp

    out = tmp_path / "c.beton"
    fc.convert(corpus, out, progress=False, workers=1)
    rows = make_sampler(corpus, seed=5).order(0).numpy().astype(np.uint64)

    def batches(own):
        decoder = fp.ViewsDecoder(fp.RRC, 2, (24, 20), seed=7, crops=[((0.1, 1.0), (0.75, 1.33), True)] * 2)
        order = fp.SamplerOrder(rows)
        loader, check = fp.build(str(out), 6, decoder, order, device=torch.device("cpu"), workers=2,
                                 os_cache=True, batches_ahead=1, own_output=own)
        got = []
        for (images,) in loader:
            views, status = fp.batch_layout(images, 2, (24, 20))
            got.append(([v.clone() for v in views], status.clone()))
        assert not check.failed
        return got

    mine, reused = batches(True), batches(False)
    assert len(mine) == len(reused) == -(-len(rows) // 6)
    for (va, sa), (vb, sb) in zip(mine, reused):
        assert all(torch.equal(x, y) for x, y in zip(va, vb)) and not sa.any() and not sb.any()
        assert va[0].shape[1:] == (24, 20, 3) and not torch.equal(va[0], va[1])


@pytest.mark.gpu
def test_cuda_output_stays_valid_after_later_batches(corpus):
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    cfg = LoaderConfig(backend="ffcv", ffcv_batches_ahead=1)
    ld = build_loader("ffcv", corpus, [make_sampler(corpus)], batch_size=4, num_views=2, device="cuda",
                      augment=AUG, loader=cfg, train=True, seed=0)
    cpu = _loader(corpus, [make_sampler(corpus)], views=2, bs=4)
    for a, b in zip(list(ld), list(cpu)):  # all held at once: no buffer was reused under them
        assert a.views[0].device.type == "cuda" and a.views[0].is_contiguous(memory_format=torch.channels_last)
        assert torch.equal(a.views[0].cpu(), b.views[0]) and torch.equal(a.index.cpu(), b.index)


# --- resampling (loader.ffcv_resize) ------------------------------------------------------------


def _torch_bilinear(img: np.ndarray, top, left, ch, cw, oh, ow) -> np.ndarray:
    x = torch.from_numpy(img[top:top + ch, left:left + cw]).permute(2, 0, 1)[None].float()
    y = torch.nn.functional.interpolate(x, size=(oh, ow), mode="bilinear", align_corners=False, antialias=False)
    return y[0].permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8).numpy()


def test_bilinear_resize_equals_torch_bilinear_without_antialias_within_one_level():
    from fasttrain.loaders.ffcv_pipeline import _resize_linear

    rng = np.random.default_rng(0)
    h, w = 61, 83
    img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    flat = img.reshape(-1)
    # downscale, upscale, mixed, a one-pixel window, the whole image, odd sizes
    for top, left, ch, cw, oh, ow in [(3, 5, 50, 70, 32, 29), (10, 20, 9, 13, 40, 37), (0, 0, 61, 20, 30, 45),
                                      (7, 9, 1, 1, 5, 4), (0, 0, h, w, h, w), (1, 2, 33, 47, 17, 31)]:
        dst = np.empty(oh * ow * 3, np.uint8)
        _resize_linear(flat, w, top, left, ch, cw, dst, oh, ow, False)
        ref = _torch_bilinear(img, top, left, ch, cw, oh, ow)
        diff = np.abs(dst.reshape(oh, ow, 3).astype(int) - ref.astype(int))
        assert diff.max() <= 1 and diff.mean() < 0.05, (top, left, ch, cw, oh, ow, diff.max(), diff.mean())
    dst = np.empty(h * w * 3, np.uint8)
    _resize_linear(flat, w, 0, 0, h, w, dst, h, w, False)
    assert np.array_equal(dst, flat)  # same size: the identity


def test_auto_resize_is_bilinear_up_to_2x_downscale_and_inter_area_beyond():
    from ffcv.libffcv import ctypes_resize

    from fasttrain.loaders.ffcv_pipeline import RESIZE_MODES, _resample, _resize_linear

    rng = np.random.default_rng(1)
    h, w = 120, 160
    flat = np.ascontiguousarray(rng.integers(0, 256, h * w * 3, dtype=np.uint8))

    def run(mode, top, left, ch, cw, oh, ow):
        dst = np.empty(oh * ow * 3, np.uint8)
        _resample(flat, h, w, top, left, ch, cw, dst, oh, ow, RESIZE_MODES[mode], False)
        return dst

    def linear(top, left, ch, cw, oh, ow):
        dst = np.empty(oh * ow * 3, np.uint8)
        _resize_linear(flat, w, top, left, ch, cw, dst, oh, ow, False)
        return dst

    def area(top, left, ch, cw, oh, ow):
        dst = np.empty(oh * ow * 3, np.uint8)
        ctypes_resize(0, flat.ctypes.data, h, w, top, top + ch, left, left + cw, dst.ctypes.data, oh, ow)
        return dst

    within, beyond = (5, 7, 60, 64, 32, 32), (0, 0, 100, 150, 32, 32)  # 2.0x; 3.1x / 4.7x
    assert np.array_equal(run("auto", *within), linear(*within))
    assert np.array_equal(run("auto", *beyond), area(*beyond))
    assert np.array_equal(run("linear", *beyond), linear(*beyond))
    assert np.array_equal(run("area", *within), area(*within))
    assert not np.array_equal(linear(*beyond), area(*beyond))  # the two filters do differ


def test_the_flip_is_the_mirror_of_the_unflipped_view_in_every_resize_mode():
    from fasttrain.loaders.ffcv_pipeline import RESIZE_MODES, _resample

    rng = np.random.default_rng(2)
    h, w = 90, 130
    flat = np.ascontiguousarray(rng.integers(0, 256, h * w * 3, dtype=np.uint8))
    for mode in RESIZE_MODES:
        for win in [(5, 7, 60, 64, 32, 31), (0, 0, 90, 130, 20, 24), (3, 4, 10, 12, 40, 33)]:
            top, left, ch, cw, oh, ow = win
            plain, flipped = np.empty(oh * ow * 3, np.uint8), np.empty(oh * ow * 3, np.uint8)
            _resample(flat, h, w, top, left, ch, cw, plain, oh, ow, RESIZE_MODES[mode], False)
            _resample(flat, h, w, top, left, ch, cw, flipped, oh, ow, RESIZE_MODES[mode], True)
            assert np.array_equal(flipped.reshape(oh, ow, 3), plain.reshape(oh, ow, 3)[:, ::-1]), (mode, win)


@pytest.mark.parametrize("resize, mad", [("linear", 2.0), ("area", 1.0)])
def test_eval_pixels_of_each_resize_mode_stay_close_to_the_torch_backend(corpus, resize, mad):
    """At a 1.6x eval downscale (the one auto resamples bilinearly) pixels stay within a grey
    level or two of torchvision's antialiased bilinear on average (measured: linear 1.34, area
    0.65) and channel statistics within half a level (measured: < 0.06 / < 0.08)."""
    aug = dataclasses.replace(AUG, crop_size=128, eval_resize=150)
    got = torch.cat([torch.cat(b.views) for b in _loader(corpus, None, train=False, bs=16, aug=aug,
                                                         ffcv_resize=resize)]).float()
    ref = torch.cat([torch.cat(b.views) for b in _loader(corpus, None, train=False, bs=16, aug=aug,
                                                         backend="torch")]).float()
    assert got.shape == ref.shape
    assert (got - ref).abs().mean() < mad
    assert (got.mean(dim=(0, 2, 3)) - ref.mean(dim=(0, 2, 3))).abs().max() < 0.5
    assert (got.std(dim=(0, 2, 3)) - ref.std(dim=(0, 2, 3))).abs().max() < 0.5
