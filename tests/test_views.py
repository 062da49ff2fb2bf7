"""Per-view augmentation (`augment.views`, `augment.color_jitter_hue`): config checks, and each
backend giving every view its own augmentation from one decode — while a run without per-view
keys (or with empty overrides) builds exactly what it built before."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from helpers import jpeg_corpus, lt_arrays, make_sampler

from fasttrain.config import AugmentConfig, ConfigError, LoaderConfig, config_from_dict
from fasttrain.loaders import build_loader
from fasttrain.loaders.crop_params import ViewDraw

KEY_VIEW = {"rrc_scale": [0.2, 1], "color_jitter_p": 0.8, "color_jitter_hue": 0.1, "grayscale_p": 0.2, "blur_p": 0.5}


def ssd_config(**augment):
    return config_from_dict({"method": {"name": "ssd_stage1"}, "augment": augment})


# --- config ------------------------------------------------------------------------------------


def test_views_are_checked_and_stored_typed():
    cfg = ssd_config(train="imagenet", views=[{}, KEY_VIEW])
    assert cfg.augment.views[1]["rrc_scale"] == [0.2, 1.0] and isinstance(cfg.augment.views[1]["rrc_scale"][1], float)
    assert cfg.augment.views[0] == {}
    with pytest.raises(ConfigError, match=r"unknown key 'augment.views\[1\].rrc_scal'; did you mean 'rrc_scale'"):
        ssd_config(views=[{}, {"rrc_scal": [0.2, 1.0]}])
    with pytest.raises(ConfigError, match=r"augment.views\[0\].crop_size: not a per-view key"):
        ssd_config(views=[{"crop_size": 32}, {}])
    with pytest.raises(ConfigError, match=r"augment.views\[1\].grayscale_p: expected a probability"):
        ssd_config(views=[{}, {"grayscale_p": 2.0}])
    with pytest.raises(ConfigError, match=r"augment.views\[1\].flip: expected bool"):
        ssd_config(views=[{}, {"flip": "yes"}])
    with pytest.raises(ConfigError, match=r"augment.views\[1\].train: expected one of"):
        ssd_config(views=[{}, {"train": "simclr"}])
    with pytest.raises(ConfigError, match=r"augment.views\[1\].color_jitter_hue: expected a hue factor in \[0, 0.5\]"):
        ssd_config(views=[{}, {"color_jitter_hue": 0.7}])
    with pytest.raises(ConfigError, match=r"augment.color_jitter_hue: expected a hue factor"):
        ssd_config(color_jitter_hue=-0.1)
    with pytest.raises(ConfigError, match=r"augment.views: 2 per-view entries, but method ce uses 1 view"):
        config_from_dict({"augment": {"views": [{}, {}]}})


# --- torch backend -------------------------------------------------------------------------------


def _torch(ds, augment, views=2, train=True):
    return build_loader("torch", ds, [make_sampler(ds, "instance", seed=3)], batch_size=8, num_views=views,
                        device="cpu", augment=augment, loader=LoaderConfig(num_workers=0), train=train, seed=0)


def _gray(v: torch.Tensor) -> bool:
    v = v.float()
    return bool((v[:, 0] - v[:, 1]).abs().max() <= 2 and (v[:, 1] - v[:, 2]).abs().max() <= 2)


def test_torch_backend_per_view_transforms_from_one_decode(tmp_path):
    corpus = jpeg_corpus(tmp_path / "jpegs")
    base = AugmentConfig(train="imagenet", crop_size=48, eval_resize=56, color_jitter=0.4)
    plain = _torch(corpus, base)
    assert plain.views.transforms[0] is plain.views.transforms[1]  # no views: one transform, as before
    same = next(iter(_torch(corpus, dataclasses.replace(base, views=[{}, {}]))))
    ref = next(iter(plain))
    assert all(torch.equal(a, b) for a, b in zip(ref.views, same.views))  # empty overrides change nothing
    per_view = next(iter(_torch(corpus, dataclasses.replace(base, views=[{}, {"grayscale_p": 1.0, "color_jitter_hue": 0.1}]))))
    assert torch.equal(per_view.views[0], ref.views[0])  # view 0 unchanged (own seed per view)
    assert _gray(per_view.views[1]) and not _gray(per_view.views[0])
    # The CIFAR port's MoCo-v2 key view on the torch backend: RandomResizedCrop(32) of the array image.
    arrays = lt_arrays()
    moco = dataclasses.replace(AugmentConfig(crop_size=32), views=[{}, {"train": "imagenet", "rrc_scale": [0.2, 1.0],
                                                                     "color_jitter": 0.4, "grayscale_p": 1.0}])
    b = next(iter(_torch(arrays, moco)))
    assert b.views[1].shape == b.views[0].shape == (8, 3, 32, 32) and _gray(b.views[1])


# --- tensor backend ------------------------------------------------------------------------------


def _tensor(augment, views=2):
    ds = lt_arrays()
    return build_loader("tensor", ds, [make_sampler(ds, "instance")], batch_size=16, num_views=views, device="cpu",
                        augment=augment, loader=LoaderConfig(backend="tensor"), train=True, seed=0)


def test_tensor_backend_per_view_crop_and_flip_only():
    ref = next(iter(_tensor(AugmentConfig())))
    same = next(iter(_tensor(AugmentConfig(views=[{}, {}]))))
    for a, b in zip(ref.geometry, same.geometry):
        assert torch.equal(a.offsets, b.offsets) and torch.equal(a.flip, b.flip)
    b = next(iter(_tensor(AugmentConfig(views=[{}, {"crop_padding": 0, "flip": False}]))))
    assert torch.equal(b.geometry[0].offsets, ref.geometry[0].offsets)
    assert b.geometry[1].padding == 0 and not b.geometry[1].offsets.any() and not b.geometry[1].flip.any()
    with pytest.raises(ValueError, match=r"augment.views\[1\]: loader.backend=tensor draws only crop/flip.*grayscale_p"):
        _tensor(AugmentConfig(views=[{}, {"grayscale_p": 0.2}]))


# --- DALI ----------------------------------------------------------------------------------------


def test_hue_draws_in_degrees_only_where_the_jitter_applies():
    aug = AugmentConfig(train="imagenet", color_jitter=0.4, color_jitter_p=0.5, color_jitter_hue=0.1)
    draw = ViewDraw.from_config(aug, train=True)
    assert draw.fields[-1] == "hue" and "brightness" in draw.fields
    vp = draw.draw(np.random.default_rng(0), np.full(4000, 300), np.full(4000, 200))
    on = vp.brightness != 1.0
    assert np.abs(vp.hue).max() <= 36.0 + 1e-4 and np.abs(vp.hue[on]).max() > 30  # h·360 degrees
    assert (vp.hue[~on] == 0).all() and 0.4 < on.mean() < 0.6
    # Without hue nothing about the draws changes (no field, same numbers as before the key existed).
    old = ViewDraw.from_config(dataclasses.replace(aug, color_jitter_hue=0.0), train=True)
    assert "hue" not in old.fields
    a = old.draw(np.random.default_rng(0), np.full(8, 300), np.full(8, 200))
    b = draw.draw(np.random.default_rng(0), np.full(8, 300), np.full(8, 200))
    assert np.array_equal(a.brightness, b.brightness) and np.array_equal(a.anchor, b.anchor)


def test_dali_backend_per_view_augmentation(tmp_path):
    pytest.importorskip("nvidia.dali", reason="DALI not installed")
    corpus = jpeg_corpus(tmp_path / "jpegs")
    base = AugmentConfig(train="imagenet", crop_size=48, eval_resize=56, color_jitter=0.4)

    def first(augment):
        ld = build_loader("dali", corpus, [make_sampler(corpus, "instance")], batch_size=8, num_views=2,
                          device="cpu", augment=augment, loader=LoaderConfig(dali_threads=2), train=True, seed=0)
        return next(iter(ld))

    ref = first(base)
    same = first(dataclasses.replace(base, views=[{}, {}]))
    assert all(torch.equal(a, b) for a, b in zip(ref.views, same.views))
    b = first(dataclasses.replace(base, views=[{}, {"grayscale_p": 1.0, "color_jitter_hue": 0.1, "blur_p": 0.5}]))
    assert _gray(b.views[1]) and not _gray(b.views[0])
