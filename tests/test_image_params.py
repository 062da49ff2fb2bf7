"""Host-side image parameters without DALI: header parsing, RandomResizedCrop / eval-ROI draws."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import smooth_jpeg

from fasttrain.config import AugmentConfig
from fasttrain.loaders.crop_params import (NO_BLUR_SIGMA, RRC_ATTEMPTS, ViewDraw, eval_roi, rrc_window, sample_rrc,
                                           step_generator)
from fasttrain.loaders.image_header import CorruptImage, image_size


# --- headers ------------------------------------------------------------------------------------


def test_image_size_header_parse(tmp_path):
    for i, (h, w) in enumerate([(300, 200), (240, 320)]):
        p = tmp_path / f"{i}.jpg"
        p.write_bytes(smooth_jpeg(i, h, w))
        assert image_size(np.fromfile(p, dtype=np.uint8)) == (h, w)
        assert image_size(p.read_bytes()) == (h, w)  # bytes work as well as arrays


def test_image_size_png_header():
    from torchvision.io import encode_png

    from fasttrain.compat import quiet_tvio_deprecation

    with quiet_tvio_deprecation():
        data = encode_png(torch.zeros(3, 7, 11, dtype=torch.uint8)).numpy()
    assert image_size(data) == (7, 11)


@pytest.mark.parametrize("damage, why", [
    (lambda b: b[:3], "only 3 bytes"),
    (lambda b: b"GIF89a" + b[6:], "no SOI"),
    (lambda b: b[: len(b) // 2], "truncated"),
    (lambda b: b[:2] + b"\x00" + b[3:], "bad JPEG marker"),
    (lambda b: b"\x89PNG\r\n\x1a\n" + b"\x00" * 16, "PNG without IHDR"),
])
def test_image_size_rejects_bytes_that_cannot_be_an_image(damage, why):
    with pytest.raises(CorruptImage, match=why):
        image_size(damage(smooth_jpeg(0, 40, 30)))


# --- RandomResizedCrop --------------------------------------------------------------------------


def test_rrc_params_follow_torchvision_semantics():
    rng = np.random.default_rng(0)
    h = np.full(4000, 300)
    w = np.full(4000, 200)
    anchor, shape = sample_rrc(rng, h, w, (0.08, 1.0), (3 / 4, 4 / 3))
    assert (anchor >= 0).all()
    assert (anchor[:, 0] + shape[:, 0] <= 300).all() and (anchor[:, 1] + shape[:, 1] <= 200).all()
    frac = shape.prod(1) / (300 * 200)
    assert frac.min() >= 0.07 and frac.max() <= 1.0
    # torchvision's distribution: area ~ U(0.08, 1) before rejection -> mean area fraction ~0.5
    # (rejection of tall/wide large crops lowers it a bit); flips of the log-ratio are symmetric.
    assert 0.35 < frac.mean() < 0.55
    # impossible ratio -> centre fallback with the ratio clamped
    a2, s2 = sample_rrc(rng, np.array([100]), np.array([1000]), (0.9, 1.0), (1.0, 1.0))
    assert s2.tolist() == [[100, 100]] and a2.tolist() == [[0, 450]]


@pytest.mark.parametrize("h, w, scale, ratio", [
    (100, 1000, (0.9, 1.0), (1.0, 1.0)),  # wider than the ratio allows
    (999, 101, (0.9, 1.0), (3 / 4, 4 / 3)),  # taller
    (120, 130, (1.5, 2.0), (3 / 4, 4 / 3)),  # within the ratio, but no crop can be that large
])
def test_rrc_fallback_equals_torchvision(h, w, scale, ratio):
    """When no try fits, torchvision's result is deterministic: ours must be the same window."""
    from torchvision.transforms import RandomResizedCrop

    top, left, ch, cw = RandomResizedCrop.get_params(torch.empty(3, h, w), list(scale), list(ratio))
    anchor, shape = sample_rrc(np.random.default_rng(1), np.array([h]), np.array([w]), scale, ratio)
    assert anchor.tolist() == [[top, left]] and shape.tolist() == [[ch, cw]]


def test_rrc_window_follows_torchvision_s_law():
    """The one RandomResizedCrop implementation (DALI's host draws, FFCV's compiled decoder) against
    torchvision's get_params: the same law (means of top, left, height, width within 4 standard
    errors over 4,000 draws each) and every window inside the image."""
    from torchvision.transforms import v2

    h, w, n = 240, 320, 4000
    scale, ratio = (0.08, 1.0), (3 / 4, 4 / 3)
    u = np.random.default_rng(0).random((n, RRC_ATTEMPTS, 4))
    ours = np.array([rrc_window(h, w, u[i], *scale, *ratio) for i in range(n)], dtype=np.float64)
    torch.manual_seed(0)
    ref = np.array([v2.RandomResizedCrop.get_params(torch.zeros(3, h, w), list(scale), list(ratio))
                    for _ in range(n)], np.float64)
    for col in range(4):  # top, left, height, width
        se = np.sqrt(ours[:, col].var() / n + ref[:, col].var() / n)
        assert abs(ours[:, col].mean() - ref[:, col].mean()) < 4 * se, col
    assert (ours[:, 0] + ours[:, 2] <= h).all() and (ours[:, 1] + ours[:, 3] <= w).all()


def test_rrc_window_compiles_with_numba_to_the_same_windows():
    """The FFCV decoder runs rrc_window compiled by numba: same windows as the Python function."""
    nb = pytest.importorskip("numba")
    compiled = nb.njit(rrc_window)
    rng = np.random.default_rng(3)
    for h, w in [(240, 320), (100, 1000), (999, 101), (7, 5)]:
        for _ in range(50):
            u = rng.random((RRC_ATTEMPTS, 4))
            assert tuple(compiled(h, w, u, 0.08, 1.0, 3 / 4, 4 / 3)) == rrc_window(h, w, u, 0.08, 1.0, 3 / 4, 4 / 3)
    u = np.zeros((RRC_ATTEMPTS, 4))  # fallback path: no try of area 1.5-2x fits
    assert tuple(compiled(120, 130, u, 1.5, 2.0, 3 / 4, 4 / 3)) == rrc_window(120, 130, u, 1.5, 2.0, 3 / 4, 4 / 3)


# --- eval ROI -----------------------------------------------------------------------------------


def test_eval_roi_matches_resize_then_center_crop():
    anchor, shape = eval_roi(np.array([300]), np.array([200]), 73, 64)
    # Resize(73) of 200x300 (w x h) -> 73 x int(73*300/200)=109; crop top = round((109-64)/2) = 22
    sy, sx = 300 / 109, 200 / 73
    assert np.allclose(anchor[0], [22 * sy, round((73 - 64) / 2) * sx], atol=1e-4)
    assert np.allclose(shape[0], [64 * sy, 64 * sx], atol=1e-4)


# --- per-view draws -----------------------------------------------------------------------------


def _draw(train=True, **aug) -> ViewDraw:
    return ViewDraw.from_config(AugmentConfig(train="imagenet", crop_size=64, eval_resize=73, **aug), train)


def test_eval_draw_is_the_deterministic_roi_and_nothing_random():
    d = _draw(train=False, color_jitter=0.4, grayscale_p=0.2, blur_p=0.5)
    assert not d.random_crop and not d.flip and d.fields == ["anchor", "shape"]
    h, w = np.array([300, 240]), np.array([200, 320])
    vp = d.draw(np.random.default_rng(0), h, w)
    anchor, shape = eval_roi(h, w, 73, 64)
    assert np.array_equal(vp.anchor, anchor) and np.array_equal(vp.shape, shape)
    assert vp.flip.tolist() == [0, 0] and vp.brightness is None and vp.sigma is None


def test_train_draw_fields_and_ranges():
    d = _draw(color_jitter=0.4, grayscale_p=1.0, blur_p=0.5)
    assert d.fields == ["anchor", "shape", "flip", "brightness", "contrast", "saturation", "sigma"]
    n = 2000
    vp = d.draw(np.random.default_rng(0), np.full(n, 300), np.full(n, 200))
    assert set(vp.flip.tolist()) == {0, 1} and vp.flip.dtype == np.int32
    for f in (vp.brightness, vp.contrast):
        assert f.dtype == np.float32 and f.min() >= 0.6 - 1e-6 and f.max() <= 1.4 + 1e-6
    assert (vp.saturation == 0).all()  # grayscale_p=1: every row is gray
    blurred = vp.sigma != np.float32(NO_BLUR_SIGMA)
    assert 0.4 < blurred.mean() < 0.6 and vp.sigma[blurred].min() >= 0.1 and vp.sigma[blurred].max() <= 2.0
    assert _draw().fields == ["anchor", "shape", "flip"]  # nothing else drawn when off
    assert _draw(flip=False, grayscale_p=0.2).fields == ["anchor", "shape", "brightness", "contrast", "saturation"]


def test_draws_are_a_pure_function_of_seed_epoch_step():
    d = _draw(color_jitter=0.4, grayscale_p=0.2, blur_p=0.5)
    h, w = np.full(16, 300), np.full(16, 200)

    def draw(seed, epoch, step):
        return d.draw(step_generator(seed, epoch, step), h, w)

    a, b = draw(1, 2, 3), draw(1, 2, 3)
    for f in ("anchor", "shape", "flip", "brightness", "contrast", "saturation", "sigma"):
        assert np.array_equal(getattr(a, f), getattr(b, f))
    for other in (draw(2, 2, 3), draw(1, 3, 3), draw(1, 2, 4)):
        assert not np.array_equal(a.anchor, other.anchor)
    keep = np.array([0, 5, 9])
    t = a.take(keep)
    assert np.array_equal(t.anchor, a.anchor[keep]) and np.array_equal(t.sigma, a.sigma[keep])
