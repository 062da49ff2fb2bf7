"""Dispatch between the fused Triton kernel and the pure-torch reference.

Inputs are uint8 images, so there is nothing to differentiate: these are plain functions
rather than `torch.autograd.Function`s (the outputs are leaves of the training graph).
Which one runs is `kernels.dispatch.use_triton` (the package's one dispatch rule): `impl="auto"`
picks Triton for CUDA tensors and the reference everywhere else.
"""
from __future__ import annotations

import functools
from collections.abc import Sequence

import torch

from . import reference
from ..dispatch import IMPLS, triton_available, use_triton  # noqa: F401 - IMPLS, triton_available: this kernel's API
from .reference import Crop

OUT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
BLOCK = 1024
WHAT = "mix kernel"  # the name dispatch messages give this kernel


def _nhwc(x: torch.Tensor, name: str) -> torch.Tensor:
    """Physically-NHWC view of a (N,3,H,W) uint8 tensor; free for channels_last inputs."""
    reference.check_images(x, name)
    return x.permute(0, 2, 3, 1).contiguous()


def _crop_args(crop: Crop | None, n: int, device: torch.device, dummy: torch.Tensor):
    if crop is None:
        return dummy, dummy, 0, False
    offsets, flip, padding = crop
    if offsets.shape != (n, 2) or flip.shape != (n,):
        raise ValueError(f"crop for {n} source rows expected, got offsets {tuple(offsets.shape)} "
                         f"flip {tuple(flip.shape)}")
    offsets = offsets.to(device=device, dtype=torch.int32).contiguous()
    flip = flip.to(device=device)
    flip = (flip.view(torch.uint8) if flip.dtype == torch.bool else flip.to(torch.uint8)).contiguous()
    return offsets, flip, int(padding), True


@functools.lru_cache(maxsize=64)
def _kernel_scalars(mean: tuple[float, ...], std: tuple[float, ...]) -> tuple[list[float], list[float]]:
    """The normalisation as the kernel's fp32 scalars, computed once per (mean, std): the launcher
    runs every step, and building float64 tensors on the host each time is work the step waits for."""
    scale, shift = reference.norm_coefficients(mean, std)
    return [float(v) for v in scale], [float(v) for v in shift]


@functools.lru_cache(maxsize=16)
def _placeholder(device: torch.device) -> torch.Tensor:
    """The pointer passed for an unused kernel argument (no crop, no gather): one per device, never
    written or read by the kernel, so one allocation serves every launch."""
    return torch.zeros(1, dtype=torch.int32, device=device)


def _launch(views: list[tuple[torch.Tensor, Crop | None, int]], idx_a, idx_b, lam: float,
            box: tuple[int, int, int, int], mean, std, dtype: torch.dtype, m: int) -> list[torch.Tensor]:
    import triton

    from .triton_kernel import mix_kernel

    src0 = views[0][0]
    n, h, w = src0.shape[0], src0.shape[2], src0.shape[3]
    dev = src0.device
    sc, sh = _kernel_scalars(tuple(float(v) for v in mean), tuple(float(v) for v in std))
    dummy = _placeholder(dev)
    args, outs, modes, has_geo = [], [], [], []
    for x, crop, mode in views:
        if x.shape[0] != n or x.shape[2:] != src0.shape[2:]:
            raise ValueError(f"views differ in shape: {tuple(x.shape)} vs {tuple(src0.shape)}")
        out = torch.empty((m, h, w, 3), dtype=dtype, device=dev)
        off, flip, pad, g = _crop_args(crop, n, dev, dummy)
        args += [out, _nhwc(x, "view"), off, flip, pad]
        outs.append(out)
        modes.append(mode)
        has_geo.append(g)
    if len(views) == 1:  # second slot unused (grid has one view)
        args += args[:5]
        modes.append(modes[0])
        has_geo.append(has_geo[0])
    gather = idx_a is not None
    ia = idx_a.to(device=dev, dtype=torch.int64).contiguous() if gather else dummy
    ib = idx_b.to(device=dev, dtype=torch.int64).contiguous() if idx_b is not None else dummy
    y0, y1, x0, x1 = (int(v) for v in box)
    grid = (m, triton.cdiv(h * w * 3, BLOCK), len(views))
    mix_kernel[grid](*args, ia, ib, float(lam), float(1.0 - lam), y0, y1, x0, x1,
                     sc[0], sc[1], sc[2], sh[0], sh[1], sh[2],
                     H=h, W=w, MODE0=modes[0], MODE1=modes[1], HAS_GEO0=has_geo[0],
                     HAS_GEO1=has_geo[1], GATHER=gather, BLOCK=BLOCK)
    return [o.permute(0, 3, 1, 2) for o in outs]  # channels_last (M, 3, H, W)


def _check_dtype(dtype: torch.dtype) -> None:
    if dtype not in OUT_DTYPES:
        raise ValueError(f"output dtype must be one of {OUT_DTYPES}, got {dtype}")


def fused_normalize(x: torch.Tensor, crop: Crop | None, mean: Sequence[float], std: Sequence[float],
                    dtype: torch.dtype = torch.float32, impl: str = "auto") -> torch.Tensor:
    """Pending crop/flip + normalise one uint8 view -> channels_last `dtype`."""
    _check_dtype(dtype)
    reference.check_images(x, "view")
    if not use_triton(impl, x.device, WHAT):
        return reference.normalize_reference(x, crop, mean, std, dtype).contiguous(
            memory_format=torch.channels_last)
    from .triton_kernel import MODE_PLAIN
    return _launch([(x, crop, MODE_PLAIN)], None, None, 1.0, (0, 0, 0, 0), mean, std, dtype, x.shape[0])[0]


def fused_mix(view_mix: torch.Tensor, view_cut: torch.Tensor, crop_mix: Crop | None,
              crop_cut: Crop | None, idx_a: torch.Tensor, idx_b: torch.Tensor, lam: float,
              box: tuple[int, int, int, int], mean: Sequence[float], std: Sequence[float],
              dtype: torch.dtype = torch.float32, impl: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """MixUp of view_mix and CutMix of view_cut over pairs (idx_a, idx_b); see reference.mixup_cutmix_reference."""
    _check_dtype(dtype)
    reference.check_images(view_mix, "view_mix")
    reference.check_images(view_cut, "view_cut")
    if idx_a.shape != idx_b.shape or idx_a.dim() != 1:
        raise ValueError(f"idx_a/idx_b must be 1-D of equal length, got {tuple(idx_a.shape)} {tuple(idx_b.shape)}")
    if not 0.0 <= float(lam) <= 1.0:
        raise ValueError(f"lam must be in [0, 1], got {lam}")
    if view_mix.shape != view_cut.shape:
        raise ValueError(f"view_mix {tuple(view_mix.shape)} and view_cut {tuple(view_cut.shape)} differ")
    if not use_triton(impl, view_mix.device, WHAT):
        return reference.mixup_cutmix_reference(view_mix, view_cut, crop_mix, crop_cut, idx_a, idx_b,
                                                lam, box, mean, std, dtype)
    from .triton_kernel import MODE_CUTMIX, MODE_MIXUP
    mixup, cutmix = _launch([(view_mix, crop_mix, MODE_MIXUP), (view_cut, crop_cut, MODE_CUTMIX)],
                            idx_a, idx_b, lam, box, mean, std, dtype, idx_a.shape[0])
    return mixup, cutmix
