"""On-device augmentation: deferred crop/flip, normalize, MixUp / CutMix.

Loaders hand over uint8 channels_last views (plus, for the tensor backend, a pending
per-sample `Geometry`). One `Augmenter`, built once per run from (mean, std, dtype, impl), turns
them into normalised float/bf16 channels_last tensors for every method and for evaluation: this
is the one place where uint8 becomes the model's input dtype. Methods only say *which* mix they
want (`views`, `mix_pairs`, `mix_streams`) and draw the mixing parameters themselves (`sample_mix`
on a host generator); the mixing description (pairing indices and λ) stays with the caller,
which builds its (soft) targets from (y_a, y_b, λ) — no dense B×C targets here.

GLMC semantics (METHODS.md §2.3–2.4) are the default:
- one λ per step, λ ~ Beta(β, β) with β = 1 (= Uniform(0, 1)) by default;
- CutMix box side s = ceil(L·sqrt(1−λ)) per axis, centre uniform over integer pixels [0, L),
  box [clip(c − ⌊s/2⌋, 0, L), clip(c + ⌊s/2⌋, 0, L)) per axis;
- the CutMix label weight is the same λ (no area correction); `area_correct=True` gives
  standard CutMix's 1 − box_area / (H·W).

`impl` (config key `augment.mix_impl`): "auto" runs the fused Triton kernel (kernels/mix) on
CUDA tensors and the pure-torch reference elsewhere; "triton" / "torch" force one.
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

    def __post_init__(self) -> None:
        _check_impl(self.impl)

    def _layout(self, x: torch.Tensor) -> torch.Tensor:
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        return x.contiguous(memory_format=fmt)  # free when x already has the format

    def views(self, batch: Batch) -> list[torch.Tensor]:
        """Every view with its pending geometry applied, normalised: (B, 3, H, W) in the model's
        memory format (channels_last unless `channels_last=False`)."""
        if batch.normalized:
            return [self._layout(v) for v in batch.views]
        return [self._layout(fused_normalize(view, _crop(batch.view_geometry(i)), self.mean, self.std,
                                             dtype=self.dtype, impl=self.impl))
                for i, view in enumerate(batch.views)]

    def mix_pairs(self, batch: Batch, spec: MixSpec, idx_a: torch.Tensor, idx_b: torch.Tensor
                  ) -> tuple[torch.Tensor, torch.Tensor]:
        """MixUp of view 0 and CutMix of view 1 (view 0 again for 1-view batches) over row pairs."""
        cut = 1 if len(batch.views) > 1 else 0
        mix, cutmix = mixup_cutmix(batch.views[0], batch.views[cut], batch.view_geometry(0),
                                   batch.view_geometry(cut), idx_a, idx_b, spec, self.mean, self.std,
                                   dtype=self.dtype, impl=self.impl)
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
