"""Shared test helpers (import as `from helpers import ...`): tiny backbones, method contexts,
toy long-tailed datasets. One place, so the per-topic test files do not each re-define them."""
from __future__ import annotations

# --- loader datasets --------------------------------------------------------------------------

from pathlib import Path

import numpy as np
import torch

from fasttrain.data.index import CIFAR10_MEAN, CIFAR10_STD, LTDataset
from fasttrain.samplers import build_sampler

# In-memory ("arrays") toy set: 119 random uint8 32x32 images, 6 classes. 119 is odd and not a
# multiple of the small batch sizes the loader tests use, so partial last batches and the
# samplers' wrap-around padding of shards are exercised.
LT_COUNTS = (60, 30, 15, 8, 4, 2)
# File ("files") toy corpus: 24 JPEGs, 4 classes, landscape 320x240 and portrait 200x300 (the
# DALI-vs-torch pixel tolerances in the tests were measured on exactly these images).
JPEG_COUNTS = (12, 6, 4, 2)


def lt_arrays(seed: int = 0) -> LTDataset:
    """The in-memory long-tailed toy set (random pixels: only the bookkeeping is meaningful)."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(len(LT_COUNTS)), LT_COUNTS)
    imgs = rng.integers(0, 256, size=(len(labels), 32, 32, 3), dtype=np.uint8)
    return LTDataset(name="toy_lt", num_classes=len(LT_COUNTS), labels=labels, train_counts=np.array(LT_COUNTS),
                     images=imgs, mean=CIFAR10_MEAN, std=CIFAR10_STD)


def make_sampler(ds: LTDataset, kind: str = "instance", seed: int = 0, **kw):
    return build_sampler(kind, torch.as_tensor(ds.labels), ds.num_classes, seed=seed, **kw)


def glmc_samplers(ds: LTDataset, seed: int = 0) -> list:
    """GLMC's two streams: uniform instance sampling + the re-balanced power (q=0.2) stream."""
    return [make_sampler(ds, "instance", seed), make_sampler(ds, "power", seed, q=0.2)]


def smooth_jpeg(seed: int, height: int, width: int) -> bytes:
    """Smooth random content (bicubic upsampled 6x6 noise + mild texture), quality 90: natural-ish
    images, so decoder / resampler differences stay at rounding level as on real photos."""
    from torchvision.io import encode_jpeg

    from fasttrain.compat import quiet_tvio_deprecation

    g = torch.Generator().manual_seed(seed)
    low = torch.rand(1, 3, 6, 6, generator=g) * 255
    img = torch.nn.functional.interpolate(low, size=(height, width), mode="bicubic", align_corners=False)
    img = img + 8 * torch.randn(1, 3, height, width, generator=g)
    with quiet_tvio_deprecation():
        return encode_jpeg(img.clamp(0, 255).to(torch.uint8)[0], quality=90).numpy().tobytes()


def jpeg_corpus(root: Path) -> LTDataset:
    """The long-tailed JPEG corpus under `root`, written on first use (several test modules pass
    the same session directory and share one copy). Image k is portrait 300x200 when k % 3 == 0,
    else landscape 240x320."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    paths, labels = [], []
    for c, n in enumerate(JPEG_COUNTS):
        for i in range(n):
            k = len(paths)
            p = root / f"c{c}_{i}.jpg"
            if not p.exists():
                h, w = (240, 320) if k % 3 else (300, 200)
                tmp = p.with_suffix(".part")
                tmp.write_bytes(smooth_jpeg(k, h, w))
                tmp.rename(p)  # never a half-written file under the final name
            paths.append(str(p))
            labels.append(c)
    return LTDataset("jpeg_lt", len(JPEG_COUNTS), np.array(labels), np.array(JPEG_COUNTS), paths=paths)

# --- methods ----------------------------------------------------------------------------------

import torch.nn as nn  # noqa: E402

from fasttrain.augment import Augmenter  # noqa: E402
from fasttrain.methods import MethodContext  # noqa: E402

METHOD_MEAN, METHOD_STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)


def method_context(counts=(100, 10, 1), seed: int = 0, mean=METHOD_MEAN, std=METHOD_STD) -> MethodContext:
    """A CPU fp32 MethodContext with the pure-torch kernels (what the method unit tests use)."""
    return MethodContext(num_classes=len(counts), train_counts=torch.tensor(counts),
                         augmenter=Augmenter(mean, std, torch.float32, "torch"), device=torch.device("cpu"),
                         loss_impl="torch", seed=seed)


class TinyBackbone(nn.Module):
    """Flatten + Linear (+ optional BatchNorm1d): a backbone small enough for exact unit tests.
    Without BN, fused and separate forwards agree exactly."""

    def __init__(self, hw: int = 8, d: int = 16, bn: bool = False):
        super().__init__()
        self.feature_dim = d
        self.lin = nn.Linear(3 * hw * hw, d)
        self.bn = nn.BatchNorm1d(d) if bn else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.lin(x.float().flatten(1))
        return torch.relu(self.bn(h) if self.bn is not None else h)


# --- trainer interruption -----------------------------------------------------------------------

def after_step_at(trainer, epoch: int, step: int, action) -> None:
    """Run `action()` right after the trainer's step `step` (0-based) of epoch `epoch` — e.g. ask for
    the clean stop a signal would, or send the signal itself — to test mid-epoch checkpoints."""
    original = trainer.method.after_step

    def hooked(model, progress):
        original(model, progress)
        if progress.epoch == epoch and progress.step == step:
            action()

    trainer.method.after_step = hooked


def refuse_downloads(tmp_path: Path, monkeypatch) -> None:
    """The library caches (HOME, TORCH_HOME, the Hugging Face hub) under `tmp_path`, and any download
    raises: the backbone / CLIP tests never touch the network (the autouse fixtures of their files)."""
    import urllib.error
    import urllib.request

    import huggingface_hub.constants as hf

    def refuse(*args, **kwargs):
        raise urllib.error.URLError("downloads are disabled in the tests")

    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)
    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    monkeypatch.setattr(hf, "HF_HUB_CACHE", str(tmp_path / "hf_cache"))
    monkeypatch.setattr(hf, "HF_HUB_OFFLINE", True)
