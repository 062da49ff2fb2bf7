"""Synthetic long-tailed JPEG corpus: ImageNet-like file sizes, learnable classes, no downloads.

Layout under `root` (both a list-file dataset and a folder-per-class dataset):

    train/c0000/000000.jpg ...   test/c0000/000000.jpg ...
    train.txt, test.txt          "train/c0000/000000.jpg 0" per line
    synthetic.json               the generation parameters; written last = corpus complete

Each image is a smooth two-colour gradient, a few ellipses and multi-scale noise texture. The
gradient and ellipse colours are drawn around a class-specific hue, so a model can learn the
classes from colour statistics; the noise makes JPEG sizes realistic (about 95 KB at 500×400,
quality 90, close to ImageNet's average). Pixels depend only on (seed, split, class, index), so
the corpus is identical whatever the number of worker processes.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import numpy as np

from fasttrain.data.cifar import lt_counts
from fasttrain.compat import quiet_tvio_deprecation

META_FILE = "synthetic.json"
INCOMPLETE_MARK = ".synthetic-incomplete"
FORMAT_VERSION = 1
# Texture amplitudes (0..255 units) for noise at 32-, 8- and 2-pixel scales, then per-pixel noise.
# Tuned so that 500×400 quality-90 JPEGs average ≈ 95 KB.
TEXTURE = ((32, 30.0), (8, 15.0), (2, 28.0))
PIXEL_NOISE = 6.0


def class_counts(num_classes: int, max_per_class: int, imbalance: float) -> list[int]:
    """Exponential profile n_i = int(n_max * (1/imbalance)^(i/(C-1))), at least 1 per class."""
    if num_classes == 1:
        return [max_per_class]
    return [max(1, n) for n in lt_counts(max_per_class, num_classes, imbalance)]


def _hsv(h: float, s: float, v: float):
    import torch

    k = (torch.tensor([5.0, 3.0, 1.0]) + h * 6.0) % 6.0
    return 255.0 * (v - v * s * torch.clamp(torch.minimum(k, 4.0 - k), 0.0, 1.0))


def render(label: int, width: int, height: int, seed: int):
    """One 3×H×W uint8 image of class `label`."""
    import torch
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(seed)

    def u() -> float:
        return float(torch.rand(1, generator=g))

    hue = (label * 0.6180339887) % 1.0  # golden-ratio spacing keeps class hues apart
    ys = torch.linspace(-1, 1, height)[:, None]
    xs = torch.linspace(-1, 1, width)[None, :]
    angle = 2 * math.pi * u()
    t = ((xs * math.cos(angle) + ys * math.sin(angle)) * 0.5 + 0.5).clamp(0, 1)
    a = _hsv((hue + 0.05 * (u() - 0.5)) % 1.0, 0.6, 0.9)
    b = _hsv((hue + 0.15) % 1.0, 0.8, 0.35)
    img = a[:, None, None] * (1 - t) + b[:, None, None] * t
    for _ in range(3 + int(5 * u())):
        cx, cy = 2 * u() - 1, 2 * u() - 1
        rx, ry = 0.1 + 0.5 * u(), 0.1 + 0.5 * u()
        mask = ((((xs - cx) / rx) ** 2 + ((ys - cy) / ry) ** 2) <= 1).to(torch.float32)
        colour = _hsv((hue + 0.3 * u()) % 1.0, 0.7, 0.3 + 0.7 * u())
        img = img * (1 - mask) + colour[:, None, None] * mask
    for scale, amp in TEXTURE:
        noise = torch.randn(1, 3, height // scale + 1, width // scale + 1, generator=g)
        img = img + amp * F.interpolate(noise, size=(height, width), mode="bilinear", align_corners=False)[0]
    img = img + PIXEL_NOISE * torch.randn(3, height, width, generator=g)
    return img.clamp(0, 255).to(torch.uint8)


def _image_seed(seed: int, split: int, label: int, index: int) -> int:
    return int(np.random.SeedSequence([seed, split, label, index]).generate_state(1)[0])


def _write_class(job: tuple) -> int:
    """Render + encode every image of one (split, class); returns the bytes written."""
    import torch
    from torchvision.io import encode_jpeg

    root, split_id, split, label, count, width, height, quality, seed = job
    folder = Path(root) / split / f"c{label:04d}"
    folder.mkdir(parents=True, exist_ok=True)
    total = 0
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one process per core does better than threads on small tensors
    try:
        for i in range(count):
            with quiet_tvio_deprecation():
                data = encode_jpeg(render(label, width, height, _image_seed(seed, split_id, label, i)),
                                   quality=quality).numpy().tobytes()
            (folder / f"{i:06d}.jpg").write_bytes(data)
            total += len(data)
    finally:
        torch.set_num_threads(threads)  # in-process use must not change the caller's setting
    return total


def _params(num_classes: int, max_per_class: int, imbalance: float, test_per_class: int,
            size: tuple[int, int], quality: int, seed: int) -> dict:
    return {"version": FORMAT_VERSION, "num_classes": num_classes, "max_per_class": max_per_class,
            "imbalance": float(imbalance), "test_per_class": test_per_class,
            "size": [int(size[0]), int(size[1])], "quality": quality, "seed": seed}


def corpus_is_complete(root: str | Path, params: dict) -> bool:
    meta = Path(root) / META_FILE
    if not meta.is_file() or (Path(root) / INCOMPLETE_MARK).exists():
        return False
    try:
        return json.loads(meta.read_text()).get("params") == params
    except ValueError:
        return False


def _clear_previous(root: Path) -> None:
    """Remove an earlier corpus, but only one this module provably made (meta or marker file)."""
    ours = (root / META_FILE).is_file() or (root / INCOMPLETE_MARK).exists()
    if not ours:
        for name in ("train", "test", "train.txt", "test.txt"):
            if (root / name).exists():
                raise FileExistsError(f"{root / name} exists and is not a synthetic corpus made by "
                                      f"fasttrain (no {META_FILE}); choose another root")
        return
    (root / META_FILE).unlink(missing_ok=True)
    for name in ("train", "test"):
        shutil.rmtree(root / name, ignore_errors=True)
    for name in ("train.txt", "test.txt"):
        (root / name).unlink(missing_ok=True)


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + f".tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def make_synthetic_corpus(root: str | Path, num_classes: int, max_per_class: int, imbalance: float,
                          test_per_class: int, size: tuple[int, int] = (500, 400), quality: int = 90,
                          seed: int = 0, workers: int = 1) -> dict:
    """Write the corpus (skipped when `root` already holds one with the same parameters).

    size is (width, height). Returns a summary: counts, totals, mean JPEG size, seconds.
    """
    if num_classes < 1 or max_per_class < 1 or test_per_class < 0 or imbalance < 1:
        raise ValueError(f"synthetic corpus: need classes >= 1, max_per_class >= 1, test_per_class >= 0, "
                         f"imbalance >= 1; got {num_classes}, {max_per_class}, {test_per_class}, {imbalance}")
    if not (1 <= quality <= 100) or min(size) < 8:
        raise ValueError(f"synthetic corpus: quality must be 1..100 and size >= 8 px, got {quality}, {size}")
    root = Path(root)
    params = _params(num_classes, max_per_class, imbalance, test_per_class, size, quality, seed)
    counts = class_counts(num_classes, max_per_class, imbalance)
    if corpus_is_complete(root, params):
        return json.loads((root / META_FILE).read_text())["summary"] | {"skipped": True}
    root.mkdir(parents=True, exist_ok=True)
    _clear_previous(root)
    (root / INCOMPLETE_MARK).touch()
    start = time.perf_counter()
    width, height = int(size[0]), int(size[1])
    jobs = [(str(root), 0, "train", c, n, width, height, quality, seed) for c, n in enumerate(counts)]
    if test_per_class > 0:
        jobs += [(str(root), 1, "test", c, test_per_class, width, height, quality, seed)
                 for c in range(num_classes)]
    jobs.sort(key=lambda j: -j[4])  # biggest first: better load balance across workers
    if workers > 1:
        with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
            total_bytes = sum(pool.map(_write_class, jobs))
    else:
        total_bytes = sum(_write_class(j) for j in jobs)
    train_lines = [f"train/c{c:04d}/{i:06d}.jpg {c}\n" for c, n in enumerate(counts) for i in range(n)]
    test_lines = [f"test/c{c:04d}/{i:06d}.jpg {c}\n" for c in range(num_classes) for i in range(test_per_class)]
    _write_atomic(root / "train.txt", "".join(train_lines))
    _write_atomic(root / "test.txt", "".join(test_lines))
    n_images = len(train_lines) + len(test_lines)
    summary = {"root": str(root), "num_classes": num_classes, "train_images": len(train_lines),
               "test_images": len(test_lines), "train_counts": counts,
               "mean_jpeg_bytes": total_bytes / max(n_images, 1),
               "seconds": round(time.perf_counter() - start, 3)}
    _write_atomic(root / META_FILE, json.dumps({"params": params, "summary": summary}, indent=1))
    (root / INCOMPLETE_MARK).unlink()
    return summary | {"skipped": False}
