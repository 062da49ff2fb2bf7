"""On-device augmentation: deferred crop/flip, normalize, MixUp / CutMix.

Loaders hand over uint8 channels_last views (plus, for the tensor backend, a pending
per-sample `Geometry`). One `Augmenter`, built once per run from (mean, std, dtype, impl), turns
them into normalised float/bf16 channels_last tensors for every method and for evaluation: this
is the one place where uint8 becomes the model's input dtype. Methods only say *which* mix they
want (`views`, `mix_pairs`, `mix_streams`) and draw the mixing parameters themselves (`sample_mix`
on a host generator); the mixing description (pairing indices and λ) stays with the caller,
which builds its (soft) targets from (y_a, y_b, λ) — no dense B×C targets here.

GLMC semantics (the official code's `GLMC_mixed` in utils/util.py; docs: user-guide/methods/glmc.md)
are the default:
- one λ per step, λ ~ Beta(β, β) with β = 1 (= Uniform(0, 1)) by default;
- CutMix box side s = ceil(L·sqrt(1−λ)) per axis, centre uniform over integer pixels [0, L),
  box [clip(c − ⌊s/2⌋, 0, L), clip(c + ⌊s/2⌋, 0, L)) per axis;
- the CutMix label weight is the same λ (no area correction); `area_correct=True` gives
  standard CutMix's 1 − box_area / (H·W).

`impl` (config key `augment.mix_impl`): "auto" runs the fused Triton kernel (kernels/mix) on
CUDA tensors and the pure-torch reference elsewhere; "triton" / "torch" force one.

RandomErasing (`augment.random_erasing*`, timm's definition) is applied here, once for every loader
backend: to each training image the augmenter returns (after normalisation, and after the mix for
mixing methods), per sample, vectorised over the batch. A batch is a training batch when the step
has marked it (`Batch.step_key`, set by `fasttrain.step.train_step`); evaluation batches carry no key
and are never erased. The draws come from a generator on the batch's device keyed by (seed, rank,
epoch, step, view), so a resumed run erases exactly what the uninterrupted run would have.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from fasttrain.batch import Batch, Geometry
from fasttrain.kernels.mix import IMPLS, fused_mix, fused_normalize


@dataclass
class MixSpec:
    lam: float  # MixUp pixel weight of row a; also label weight of y_a for the MixUp view
    box: tuple[int, int, int, int]  # CutMix box (y0, y1, x0, x1), half-open, output-image coords
    lam_cut: float  # label weight of y_a for the CutMix view (== lam unless area_correct)


def _uniform(generator: torch.Generator | None) -> float:
    return float(torch.rand((), generator=generator, dtype=torch.float64))


def _gamma(shape: float, generator: torch.Generator | None) -> float:
    """Gamma(shape, 1) by Marsaglia–Tsang, drawn from a torch generator (host, no device)."""
    if shape < 1.0:  # boost: Gamma(a) = Gamma(a + 1) * U^(1/a)
        u = _uniform(generator)
        return _gamma(shape + 1.0, generator) * u ** (1.0 / shape)
    d = shape - 1.0 / 3.0
    c = 1.0 / math.sqrt(9.0 * d)
    while True:
        z = float(torch.randn((), generator=generator, dtype=torch.float64))
        v = (1.0 + c * z) ** 3
        if v <= 0:
            continue
        u = _uniform(generator)
        if math.log(max(u, 1e-300)) < 0.5 * z * z + d - d * v + d * math.log(v):
            return d * v


def sample_lambda(beta: float = 1.0, generator: torch.Generator | None = None) -> float:
    """λ ~ Beta(β, β); β = 1 is Uniform(0, 1) (GLMC's code)."""
    if not beta > 0:
        raise ValueError(f"mix beta must be > 0, got {beta!r}")
    if beta == 1.0:
        return _uniform(generator)
    x, y = _gamma(beta, generator), _gamma(beta, generator)
    return x / (x + y) if x + y > 0 else _uniform(generator)


def cutmix_box(height: int, width: int, lam: float, cy: int, cx: int) -> tuple[int, int, int, int]:
    """GLMC box for λ and centre (cy, cx): side s = ceil(L·sqrt(1−λ)), half-width ⌊s/2⌋, clipped."""
    cut = math.sqrt(max(0.0, 1.0 - lam))
    half_h = math.ceil(height * cut) // 2
    half_w = math.ceil(width * cut) // 2
    y0, y1 = min(max(cy - half_h, 0), height), min(max(cy + half_h, 0), height)
    x0, x1 = min(max(cx - half_w, 0), width), min(max(cx + half_w, 0), width)
    return y0, y1, x0, x1


def sample_mix(height: int, width: int, *, beta: float = 1.0, area_correct: bool = False,
               generator: torch.Generator | None = None) -> MixSpec:
    """Draw λ and the CutMix box on the host (CPU generator; never touches the device)."""
    if generator is not None and generator.device.type != "cpu":
        raise ValueError("sample_mix needs a CPU generator (it is a host-side draw)")
    lam = sample_lambda(beta, generator)
    cy = int(torch.randint(height, (), generator=generator))
    cx = int(torch.randint(width, (), generator=generator))
    box = cutmix_box(height, width, lam, cy, cx)
    lam_cut = lam
    if area_correct:
        y0, y1, x0, x1 = box
        lam_cut = 1.0 - (y1 - y0) * (x1 - x0) / float(height * width)
    return MixSpec(lam=lam, box=box, lam_cut=lam_cut)


# --- RandomErasing -----------------------------------------------------------------------------

ERASING_MODES = ("const", "rand", "pixel")  # fill: zeros | normal per channel | normal per pixel
ERASING_ATTEMPTS = 10  # timm's: box draws per image until one fits inside it
ERASING_SALT = 0xE7A5E  # this module's stream of erasing draws


def random_erase(x: torch.Tensor, p: float, generator: torch.Generator | None, *, mode: str = "const",
                 scale: Sequence[float] = (0.02, 0.33), ratio: Sequence[float] = (0.3, 3.3)) -> torch.Tensor:
    """RandomErasing of a normalised batch (B, C, H, W), one box per sample, as timm defines it.

    Each sample is erased with probability `p`: up to 10 attempts draw an area fraction
    U(scale) and an aspect ratio h/w = exp(U(log ratio)); h = round(sqrt(A·r)), w = round(sqrt(A/r));
    the first attempt with h < H and w < W is used (none: the sample is kept), its top-left corner
    uniform over [0, H−h] × [0, W−w]. The box is filled with zeros (`const`), one N(0, 1) value per
    channel (`rand`) or N(0, 1) per pixel (`pixel`). Returns a new tensor (the input is not written);
    every draw comes from `generator`, on x's device, in one pass for the whole batch."""
    if mode not in ERASING_MODES:
        raise ValueError(f"augment.random_erasing_mode: expected one of {list(ERASING_MODES)}, got {mode!r}")
    b, c, height, width = x.shape
    dev, n = x.device, ERASING_ATTEMPTS
    u = torch.rand(b, 2 * n + 3, generator=generator, device=dev, dtype=torch.float64)
    area = (scale[0] + (scale[1] - scale[0]) * u[:, :n]) * (height * width)
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = torch.exp(log_lo + (log_hi - log_lo) * u[:, n: 2 * n])
    h = torch.round(torch.sqrt(area * aspect)).long()
    w = torch.round(torch.sqrt(area / aspect)).long()
    fits = (h < height) & (w < width)
    first = fits.long().argmax(dim=1, keepdim=True)  # the first attempt that fits (0 when none does)
    h, w = h.gather(1, first), w.gather(1, first)  # (B, 1)
    erase = (u[:, 2 * n: 2 * n + 1] < p) & fits.any(dim=1, keepdim=True)
    top = torch.floor(u[:, 2 * n + 1: 2 * n + 2] * (height - h + 1)).long().clamp_max(height - h)
    left = torch.floor(u[:, 2 * n + 2:] * (width - w + 1)).long().clamp_max(width - w)
    ys = torch.arange(height, device=dev).view(1, height, 1)
    xs = torch.arange(width, device=dev).view(1, 1, width)
    box = ((ys >= top.view(b, 1, 1)) & (ys < (top + h).view(b, 1, 1)) & (xs >= left.view(b, 1, 1))
           & (xs < (left + w).view(b, 1, 1)) & erase.view(b, 1, 1)).unsqueeze(1)  # (B, 1, H, W)
    if mode == "const":
        fill = torch.zeros((), dtype=x.dtype, device=dev)
    else:
        shape = (b, c, 1, 1) if mode == "rand" else (b, c, height, width)
        fill = torch.randn(shape, generator=generator, device=dev, dtype=torch.float32).to(x.dtype)
    return torch.where(box, fill, x)


@dataclass(frozen=True)
class RandomErasing:
    """`augment.random_erasing*` of a run: probability, fill mode, area and aspect ranges, and the
    (seed, rank) that key its per-step generators."""

    p: float
    mode: str = "const"
    scale: tuple[float, float] = (0.02, 0.33)
    ratio: tuple[float, float] = (0.3, 3.3)
    seed: int = 0
    rank: int = 0

    def generator(self, step_key: tuple[int, int], view: int, device: torch.device) -> torch.Generator:
        """The generator of one view of one training step: a pure function of (seed, rank, epoch,
        step, view), so nothing needs checkpointing for an exact resume."""
        g = torch.Generator(device=device)
        g.manual_seed(hash((self.seed, self.rank, *step_key, view, ERASING_SALT)) & 0x7FFF_FFFF_FFFF_FFFF)
        return g

    def __call__(self, x: torch.Tensor, step_key: tuple[int, int], view: int) -> torch.Tensor:
        return random_erase(x, self.p, self.generator(step_key, view, x.device), mode=self.mode,
                            scale=self.scale, ratio=self.ratio)


def _check_impl(impl: str) -> None:
    if impl not in IMPLS:
        raise ValueError(f"augment.mix_impl: expected one of {list(IMPLS)}, got {impl!r}")


def _crop(geo: Geometry | None):
    """The kernels' plain (offsets, flip, padding) form of a pending geometry."""
    return None if geo is None else (geo.offsets, geo.flip, geo.padding)


def mixup_cutmix(view_mix: torch.Tensor, view_cut: torch.Tensor, geo_mix: Geometry | None,
                 geo_cut: Geometry | None, idx_a: torch.Tensor, idx_b: torch.Tensor, spec: MixSpec,
                 mean: Sequence[float], std: Sequence[float], dtype: torch.dtype = torch.float32,
                 impl: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """MixUp view and CutMix view of M = len(idx_a) pairs, in one pass over the uint8 sources.

    MixUp  = lam·norm(view_mix[idx_a]) + (1−lam)·norm(view_mix[idx_b]);
    CutMix = norm(view_cut[idx_a]) with spec.box replaced by norm(view_cut[idx_b]).
    Geometry (if given) is per source row and applied before mixing. Returns channels_last
    `dtype` tensors (M, 3, H, W).
    """
    _check_impl(impl)
    return fused_mix(view_mix, view_cut, _crop(geo_mix), _crop(geo_cut), idx_a, idx_b, spec.lam, spec.box,
                     mean, std, dtype=dtype, impl=impl)


def stream_pairs(batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """(idx_a, idx_b) pairing row i of stream 0 with row i of stream 1 (GLMC's pairing)."""
    if batch.num_streams != 2:
        raise ValueError(f"stream pairing needs a 2-stream batch, got num_streams={batch.num_streams}")
    dev = batch.labels.device
    a, b = batch.stream_rows(0), batch.stream_rows(1)
    return (torch.arange(a.start, a.stop, device=dev), torch.arange(b.start, b.stop, device=dev))


def permutation_pairs(n: int, generator: torch.Generator | None,
                      device: torch.device | str) -> tuple[torch.Tensor, torch.Tensor]:
    """(idx_a, idx_b) for single-stream MixUp/CutMix: every row with a random partner."""
    idx_a = torch.arange(n, device=device)
    idx_b = torch.randperm(n, generator=generator, device=device)
    return idx_a, idx_b


@dataclass(frozen=True)
class Augmenter:
    """uint8 views -> normalised (and mixed) model inputs; one per run, shared by every method
    and by evaluation. `dtype` is the model's input dtype (bf16 under bf16 autocast).

    `channels_last` is the memory format the model sees (`model.channels_last` resolved): the
    kernels write NHWC; with False the inputs are made contiguous NCHW here, since oneDNN and
    cuDNN keep the layout of their input and a channels-last input would make an NCHW model run
    channels-last anyway."""

    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    dtype: torch.dtype = torch.float32
    impl: str = "auto"
    channels_last: bool = True
    erasing: RandomErasing | None = None  # augment.random_erasing > 0: erase training images (Batch.step_key)

    def __post_init__(self) -> None:
        _check_impl(self.impl)

    def _erase(self, batch: Batch, images: list[torch.Tensor]) -> list[torch.Tensor]:
        """RandomErasing of a training batch's images (view i with its own draws); others as they are."""
        key = batch.step_key
        if self.erasing is None or key is None:
            return images
        return [self.erasing(x, key, i) for i, x in enumerate(images)]

    def _layout(self, x: torch.Tensor) -> torch.Tensor:
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        return x.contiguous(memory_format=fmt)  # free when x already has the format

    def views(self, batch: Batch) -> list[torch.Tensor]:
        """Every view with its pending geometry applied, normalised (and RandomErasing'd when the
        batch is a training step's): (B, 3, H, W) in the model's memory format (channels_last unless
        `channels_last=False`)."""
        if batch.normalized:
            return [self._layout(v) for v in self._erase(batch, list(batch.views))]
        images = [fused_normalize(view, _crop(batch.view_geometry(i)), self.mean, self.std, dtype=self.dtype,
                                  impl=self.impl) for i, view in enumerate(batch.views)]
        return [self._layout(x) for x in self._erase(batch, images)]

    def mix_pairs(self, batch: Batch, spec: MixSpec, idx_a: torch.Tensor, idx_b: torch.Tensor
                  ) -> tuple[torch.Tensor, torch.Tensor]:
        """MixUp of view 0 and CutMix of view 1 (view 0 again for 1-view batches) over row pairs."""
        cut = 1 if len(batch.views) > 1 else 0
        mix, cutmix = mixup_cutmix(batch.views[0], batch.views[cut], batch.view_geometry(0),
                                   batch.view_geometry(cut), idx_a, idx_b, spec, self.mean, self.std,
                                   dtype=self.dtype, impl=self.impl)
        mix, cutmix = self._erase(batch, [mix, cutmix])
        return self._layout(mix), self._layout(cutmix)

    def mix_streams(self, batch: Batch, spec: MixSpec
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """GLMC's mixing of a 2-stream, 2-view batch: (mixup, cutmix, y_a, y_b).

        Rows of stream 0 are a, rows of stream 1 are b; view 0 is MixUp-ed, view 1 CutMix-ed.
        """
        if len(batch.views) < 2:
            raise ValueError(f"GLMC mixing needs 2 views per row, got {len(batch.views)}")
        idx_a, idx_b = stream_pairs(batch)
        mixup, cutmix = self.mix_pairs(batch, spec, idx_a, idx_b)
        return mixup, cutmix, batch.labels[idx_a], batch.labels[idx_b]
