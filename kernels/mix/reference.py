"""Pure-torch reference (the spec) for deferred crop/flip + normalize + MixUp/CutMix.

Everything works on uint8 images in `torch.channels_last` (B, 3, H, W) layout, i.e.
physically NHWC, and returns channels_last tensors of the requested float dtype.

Normalisation is written as ``x * scale[c] + shift[c]`` with ``scale = 1 / (255 * std)`` and
``shift = -mean / std`` computed once in fp32 (`norm_coefficients`). The Triton kernel uses
the very same coefficients, so both agree to a couple of fp32 ulps; the result equals
torchvision's ToDtype(scale=True) + Normalize up to fp32 rounding.

Crop semantics (torchvision RandomCrop(size, padding=p) + RandomHorizontalFlip on the
uint8 image): the image is zero-padded by p on each side, the crop's top-left corner is
(dy, dx) in the padded image, then the crop is mirrored when flip is set. Output pixel
(y, x) therefore reads source pixel (y + dy - p, x' + dx - p) with x' = W-1-x if flip else x,
and is 0 (before normalisation) when that falls outside the image.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch

# A pending crop/flip for N source rows: (offsets int (N, 2) = (dy, dx) in the padded image,
# flip bool/uint8 (N,), padding int), or None when the rows are already cropped. Plain tensors
# and an int: the kernels know nothing of the batch types that carry them.
Crop = tuple[torch.Tensor, torch.Tensor, int]


def norm_coefficients(mean: Sequence[float], std: Sequence[float],
                      device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """fp32 (scale, shift) per channel so that norm(x) = x * scale + shift for uint8 x."""
    if len(mean) != 3 or len(std) != 3:
        raise ValueError(f"mean/std must have 3 entries, got mean={list(mean)} std={list(std)}")
    if any(float(s) <= 0 for s in std):
        raise ValueError(f"std entries must be > 0, got {list(std)}")
    m = torch.tensor([float(v) for v in mean], dtype=torch.float64)
    s = torch.tensor([float(v) for v in std], dtype=torch.float64)
    scale = (1.0 / (255.0 * s)).to(torch.float32)
    shift = (-m / s).to(torch.float32)
    return scale.to(device), shift.to(device)


def check_images(x: torch.Tensor, name: str) -> None:
    if x.dtype != torch.uint8 or x.dim() != 4 or x.shape[1] != 3:
        raise ValueError(f"{name}: expected uint8 (N, 3, H, W), got {x.dtype} {tuple(x.shape)}")


def select_rows(crop: Crop | None, rows: torch.Tensor) -> Crop | None:
    """The crop of the source rows `rows` (crops are stored per source row)."""
    if crop is None:
        return None
    offsets, flip, padding = crop
    return offsets[rows], flip[rows], padding


def apply_geometry(x: torch.Tensor, crop: Crop | None) -> torch.Tensor:
    """Per-sample crop from the zero-padded image + horizontal flip, in uint8 pixel space.

    x: uint8 (N, 3, H, W) (any memory format); returns uint8 channels_last (N, 3, H, W).
    """
    check_images(x, "apply_geometry")
    nhwc = x.permute(0, 2, 3, 1)
    if crop is None:
        return nhwc.contiguous().permute(0, 3, 1, 2)
    n, h, w, _ = nhwc.shape
    crop_offsets, crop_flip, p = crop[0], crop[1], int(crop[2])
    if crop_offsets.shape != (n, 2) or crop_flip.shape != (n,):
        raise ValueError(f"crop for {n} rows expected, got offsets {tuple(crop_offsets.shape)} "
                         f"flip {tuple(crop_flip.shape)}")
    padded = torch.nn.functional.pad(nhwc, (0, 0, p, p, p, p))  # zero pad W and H
    hp, wp = h + 2 * p, w + 2 * p
    dev = x.device
    offsets = crop_offsets.to(device=dev, dtype=torch.long)
    ys = offsets[:, 0:1] + torch.arange(h, device=dev)  # (N, H) rows in the padded image
    cols = torch.arange(w, device=dev).expand(n, w)
    cols = torch.where(crop_flip.to(dev).bool()[:, None], w - 1 - cols, cols)
    xs = offsets[:, 1:2] + cols  # (N, W)
    # One flat gather of whole 3-byte pixels (much cheaper than 3-tensor advanced indexing).
    flat = (torch.arange(n, device=dev)[:, None, None] * (hp * wp) + ys[:, :, None] * wp + xs[:, None, :])
    out = padded.reshape(n * hp * wp, 3).index_select(0, flat.reshape(-1))
    return out.view(n, h, w, 3).permute(0, 3, 1, 2)


def normalize(x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """uint8 channels_last (N, 3, H, W) -> fp32 channels_last, x * scale[c] + shift[c]."""
    nhwc = x.permute(0, 2, 3, 1)
    out = nhwc.to(torch.float32)  # fresh tensor: the in-place ops below round exactly as x*s+h
    out.mul_(scale.to(x.device)).add_(shift.to(x.device))
    return out.permute(0, 3, 1, 2)


def normalize_reference(x: torch.Tensor, crop: Crop | None, mean, std,
                        dtype: torch.dtype = torch.float32) -> torch.Tensor:
    scale, shift = norm_coefficients(mean, std, x.device)
    return normalize(apply_geometry(x, crop), scale, shift).to(dtype)


def mixup_cutmix_reference(view_mix: torch.Tensor, view_cut: torch.Tensor, crop_mix: Crop | None,
                           crop_cut: Crop | None, idx_a: torch.Tensor, idx_b: torch.Tensor,
                           lam: float, box: tuple[int, int, int, int], mean, std,
                           dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """MixUp = lam·norm(view_mix[a]) + (1−lam)·norm(view_mix[b]); CutMix = norm(view_cut[a]) with
    `box` (y0, y1, x0, x1, half-open) replaced by norm(view_cut[b]). Crops are per source row and
    applied before mixing."""
    check_images(view_mix, "view_mix")
    check_images(view_cut, "view_cut")
    scale, shift = norm_coefficients(mean, std, view_mix.device)
    idx_a = idx_a.to(view_mix.device, torch.long)
    idx_b = idx_b.to(view_mix.device, torch.long)

    m = idx_a.shape[0]
    rows = torch.cat([idx_a, idx_b])  # a and b rows of a view in one gather

    def view(x: torch.Tensor, crop: Crop | None) -> tuple[torch.Tensor, torch.Tensor]:
        out = normalize(apply_geometry(x[rows], select_rows(crop, rows)), scale, shift)
        return out[:m], out[m:]

    mix_a, mix_b = view(view_mix, crop_mix)
    # = mix_a*lam + mix_b*(1-lam), same fp32 roundings, without temporaries (both are fresh).
    mixup = mix_a.mul_(lam).add_(mix_b.mul_(1.0 - lam)).to(dtype)
    cut, cut_b = view(view_cut, crop_cut)
    y0, y1, x0, x1 = box
    if y1 > y0 and x1 > x0:
        cut[:, :, y0:y1, x0:x1] = cut_b[:, :, y0:y1, x0:x1]  # `cut` is a fresh tensor: in place is safe
    cutmix = cut.to(dtype)
    return (mixup.contiguous(memory_format=torch.channels_last),
            cutmix.contiguous(memory_format=torch.channels_last))
