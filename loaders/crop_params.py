"""Host-side augmentation parameters for decoders that take them per sample (the DALI backend).

numpy only, so the draws can be used and tested without DALI. Drawing crop windows, flips,
jitter factors, grayscale and blur sigmas on the host from a generator keyed by
(seed, epoch, step) — instead of with the decoder's own RNG — makes an epoch reproducible
without rebuilding the pipeline (a DALI pipeline's seed is fixed when it is built), independent
of thread counts, and identical for a run resumed mid-epoch. The crops need each image's size,
which `image_header.image_size` reads from the file header.

Semantics follow torchvision: `rrc_window` is RandomResizedCrop.get_params exactly (10 tries
of area ~ U(scale), log-ratio ~ U(log ratio), then the clamped centre fallback) — the one
implementation, which the FFCV decoder compiles with numba — and `eval_roi` is the source window
of Resize(resize) -> CenterCrop(crop).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# DALI rejects sigma 0; with this sigma a 23-tap Gaussian kernel is the identity, so rows that
# drew "no blur" can share one blur operator with the rows that did.
NO_BLUR_SIGMA = 1e-3


def step_generator(seed: int, epoch: int, step: int) -> np.random.Generator:
    """The generator all of one step's draws come from: a pure function of (seed, epoch, step)."""
    return np.random.default_rng([seed & 0xFFFF_FFFF, epoch, step, 0x0DA11])


RRC_ATTEMPTS = 10  # torchvision's tries before the centre fallback


def rrc_window(h, w, u, scale_lo, scale_hi, ratio_lo, ratio_hi):
    """torchvision RandomResizedCrop.get_params given its uniform draws: the one implementation of
    the crop law, used by the DALI backend (`sample_rrc`, in Python) and by the FFCV decoder
    (compiled by numba: plain scalar math, no Python objects).

    `u` is (tries, 4) floats in [0, 1): per try, the area, the log-ratio, the top and the left
    draw (area ~ U(scale) · h · w, log-ratio ~ U(log ratio), position uniform over the places the
    crop fits). The first try whose crop fits wins; if none does, the centre crop with the ratio
    clamped into `ratio` (torchvision's fallback, deterministic). Returns (top, left, ch, cw)."""
    area = float(h) * float(w)
    logr_lo, logr_hi = np.log(ratio_lo), np.log(ratio_hi)
    for t in range(u.shape[0]):
        target = area * (scale_lo + (scale_hi - scale_lo) * u[t, 0])
        aspect = np.exp(logr_lo + (logr_hi - logr_lo) * u[t, 1])
        cw = int(np.rint(np.sqrt(target * aspect)))
        ch = int(np.rint(np.sqrt(target / aspect)))
        if 0 < cw <= w and 0 < ch <= h:
            return int(u[t, 2] * (h - ch + 1)), int(u[t, 3] * (w - cw + 1)), ch, cw
    in_ratio = float(w) / float(h)
    if in_ratio < ratio_lo:
        cw, ch = w, int(np.rint(w / ratio_lo))
    elif in_ratio > ratio_hi:
        ch, cw = h, int(np.rint(h * ratio_hi))
    else:
        ch, cw = h, w
    return (h - ch) // 2, (w - cw) // 2, ch, cw


def sample_rrc(rng: np.random.Generator, heights: np.ndarray, widths: np.ndarray,
               scale: tuple[float, float], ratio: tuple[float, float],
               attempts: int = RRC_ATTEMPTS) -> tuple[np.ndarray, np.ndarray]:
    """One RandomResizedCrop window per image (`rrc_window`), all draws from `rng`:
    (anchor [y, x], shape [h, w]) as float32 arrays, the DALI slice's arguments."""
    n = len(heights)
    u = rng.random((n, attempts, 4))
    wins = np.array([rrc_window(int(heights[i]), int(widths[i]), u[i], scale[0], scale[1], ratio[0], ratio[1])
                     for i in range(n)], dtype=np.float32).reshape(n, 4)
    return wins[:, :2].copy(), wins[:, 2:].copy()


def eval_roi(heights: np.ndarray, widths: np.ndarray, resize: int, crop: int) -> tuple[np.ndarray, np.ndarray]:
    """ROI in the original image equal to Resize(resize) -> CenterCrop(crop) (torchvision v2 sizes).

    Resampling that ROI straight to crop x crop samples the same source positions as resizing
    the whole image and cropping afterwards, but only computes the kept pixels.
    """
    short = np.minimum(heights, widths)
    long_ = np.maximum(heights, widths)
    new_long = np.floor(resize * long_ / short)  # int(size * long / short)
    new_h = np.where(heights <= widths, resize, new_long).astype(np.float64)
    new_w = np.where(heights <= widths, new_long, resize).astype(np.float64)
    top = np.round((new_h - crop) / 2)  # int(round(...)): Python's round half to even, as np.round
    left = np.round((new_w - crop) / 2)
    sy, sx = heights / new_h, widths / new_w
    anchor = np.stack([top * sy, left * sx], 1).astype(np.float32)
    shape = np.stack([np.full_like(sy, crop) * sy, np.full_like(sx, crop) * sx], 1).astype(np.float32)
    return anchor, shape


@dataclass
class ViewParams:
    """One view's per-sample parameters for a batch (None: that operation is off)."""

    anchor: np.ndarray  # (n, 2) float32 [y, x]
    shape: np.ndarray  # (n, 2) float32 [h, w]
    flip: np.ndarray  # (n,) int32
    brightness: np.ndarray | None = None  # (n,) float32
    contrast: np.ndarray | None = None
    saturation: np.ndarray | None = None  # 0 where grayscale was drawn
    sigma: np.ndarray | None = None
    hue: np.ndarray | None = None  # degrees (DALI colour twist); 0 where the jitter was not applied

    def take(self, keep: np.ndarray) -> "ViewParams":
        """The parameters of the rows `keep` (rows of unreadable files are dropped after drawing)."""
        return ViewParams(*(None if v is None else v[keep] for v in
                            (self.anchor, self.shape, self.flip, self.brightness, self.contrast,
                             self.saturation, self.sigma, self.hue)))


@dataclass(frozen=True)
class ViewDraw:
    """What is drawn per view, from the augmentation config: `draw(rng, h, w)` gives ViewParams.

    Training with augment.train=imagenet draws RandomResizedCrop windows plus the optional flip,
    colour jitter, grayscale and blur; anything else (eval, or train=none) is the deterministic
    Resize(eval_resize) -> CenterCrop(crop_size) window and no random operation.
    """

    crop: int
    eval_resize: int
    random_crop: bool
    scale: tuple[float, float]
    ratio: tuple[float, float]
    flip: bool
    jitter: float
    jitter_p: float
    gray_p: float
    blur_p: float
    hue: float = 0.0  # torchvision hue factor h: shift ~ U[-h, h] of the colour circle

    @classmethod
    def from_config(cls, augment, train: bool) -> "ViewDraw":
        random_crop = train and augment.train == "imagenet"
        return cls(crop=int(augment.crop_size), eval_resize=int(augment.eval_resize), random_crop=random_crop,
                   scale=tuple(augment.rrc_scale), ratio=tuple(augment.rrc_ratio),
                   flip=bool(augment.flip) and random_crop,
                   jitter=augment.color_jitter if random_crop else 0.0,
                   jitter_p=augment.color_jitter_p,
                   gray_p=augment.grayscale_p if random_crop else 0.0,
                   blur_p=augment.blur_p if random_crop else 0.0,
                   hue=getattr(augment, "color_jitter_hue", 0.0) if random_crop else 0.0)

    @property
    def fields(self) -> list[str]:
        """The ViewParams fields that are drawn (and fed to the pipeline), in feeding order."""
        fields = ["anchor", "shape"] + (["flip"] if self.flip else [])
        if self.jitter > 0 or self.gray_p > 0 or self.hue > 0:  # grayscale is colour twist with saturation 0
            fields += ["brightness", "contrast", "saturation"]
        if self.blur_p > 0:
            fields.append("sigma")
        if self.hue > 0:
            fields.append("hue")
        return fields

    def draw(self, rng: np.random.Generator, h: np.ndarray, w: np.ndarray) -> ViewParams:
        """One view's parameters for images of heights `h`, widths `w`. The order of the draws
        from `rng` is part of reproducibility: changing it changes every run's crops."""
        n = len(h)
        if self.random_crop:
            anchor, shape = sample_rrc(rng, h, w, self.scale, self.ratio)
        else:
            anchor, shape = eval_roi(h, w, self.eval_resize, self.crop)
        flip = (rng.random(n) < 0.5).astype(np.int32) if self.flip else np.zeros(n, np.int32)
        vp = ViewParams(anchor, shape, flip)
        fields = self.fields
        on = np.zeros(n, bool)
        if "brightness" in fields:
            j = self.jitter
            on = rng.random(n) < self.jitter_p if (j > 0 or self.hue > 0) else on
            lo = max(0.0, 1.0 - j)
            factors = rng.uniform(lo, 1.0 + j, (3, n))
            b, c, s = (np.where(on, f, 1.0) for f in factors)
            gray = rng.random(n) < self.gray_p
            vp.brightness, vp.contrast = b.astype(np.float32), c.astype(np.float32)
            vp.saturation = np.where(gray, 0.0, s).astype(np.float32)
        if "sigma" in fields:
            blur = rng.random(n) < self.blur_p
            vp.sigma = np.where(blur, rng.uniform(0.1, 2.0, n), NO_BLUR_SIGMA).astype(np.float32)
        if "hue" in fields:  # drawn last: runs without hue keep every earlier draw unchanged
            shift = rng.uniform(-self.hue, self.hue, n)
            vp.hue = (np.where(on, shift, 0.0) * 360.0).astype(np.float32)
        return vp
