"""Loader throughput: decode + RandomResizedCrop + flip, one and two views, img/s.

Loaders compared on the same synthetic ImageNet-like long-tailed JPEG corpus (500x400,
quality 90, ~95 KB, `fasttrain.data.synthetic`) and the same number of CPU workers/threads:

- official: the official codes' loader: PIL decode + torchvision v1 RandomResizedCrop +
  RandomHorizontalFlip + ToTensor in a DataLoader (two views = the transform applied twice to
  one decoded image, as GLMC's TwoCropTransform);
- torch: our reference backend (decode_jpeg + transforms.v2 on uint8), when present;
- dali_cpu*: the DALI backend on CPU in a few settings (ROI decoding, antialiasing, reader thread);
- dali_gpu: the DALI backend with the mixed (nvJPEG) decoder, when CUDA is available.

Each rep is one pass over `--images` images (fresh epoch order) after a start-up batch, taken
round-robin over the loaders (rep 0 is a discarded warm-up); the JSON has median, min and max
over `--reps` reps and the speed-up of each median over the official loader's. Usage:
    python benchmarks/bench_loaders.py --images 1024 --reps 5 --out benchmarks/results/loaders_cpu.json
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch

from fasttrain.benchmarking import emit_json, report_header
from fasttrain.config import AugmentConfig, LoaderConfig
from fasttrain.environment import cpu_model
from fasttrain.data.index import LTDataset
from fasttrain.samplers import build_sampler


def load_corpus(root: str, num_classes: int, max_per_class: int) -> LTDataset:
    from fasttrain.data.lists import build_list_dataset
    from fasttrain.data.synthetic import make_synthetic_corpus

    summary = make_synthetic_corpus(root, num_classes, max_per_class, 10.0, 0, size=(500, 400), quality=90,
                                    seed=0, workers=os.cpu_count() or 1)
    # The corpus has no test split (test_per_class=0, so test.txt is empty) and the builder wants
    # an eval list: train.txt stands in and that half is dropped. make_synthetic_corpus has just
    # checked the corpus complete, so the per-file existence check is skipped.
    train_list = Path(root) / "train.txt"
    ds, _ = build_list_dataset("synthetic", root, train_list, train_list, num_classes, check_files=False)
    ds.extra["mean_jpeg_bytes"] = summary.get("mean_jpeg_bytes")
    return ds


# --- the official codes' loader ----------------------------------------------------------------


class _PILDataset(torch.utils.data.Dataset):
    def __init__(self, ds: LTDataset, views: int, crop: int):
        from torchvision import transforms

        self.ds, self.views = ds, views
        self.t = transforms.Compose([transforms.RandomResizedCrop(crop), transforms.RandomHorizontalFlip(),
                                     transforms.ToTensor()])

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i: int):
        from PIL import Image

        with open(self.ds.paths[i], "rb") as f:
            img = Image.open(f).convert("RGB")
        return [self.t(img) for _ in range(self.views)], int(self.ds.labels[i])


class OfficialLoader:
    def __init__(self, ds, sampler, *, batch_size, views, workers, crop):
        self.ds, self.sampler = ds, sampler
        self.args = dict(batch_size=batch_size, num_workers=workers, prefetch_factor=2 if workers else None)
        self.data = _PILDataset(ds, views, crop)

    def set_epoch(self, e: int) -> None:
        self.order = self.sampler.order(e).tolist()

    def __iter__(self):
        return iter(torch.utils.data.DataLoader(self.data, sampler=self.order, **self.args))


# --- timing ------------------------------------------------------------------------------------


def _one_pass(ld, epoch: int, steps: int) -> float:
    """img/s of one pass of `steps` batches (after one start-up batch) in epoch `epoch`."""
    ld.set_epoch(epoch)
    it = iter(ld)
    next(it)  # first batch: start-up (workers, prefetch fill), not throughput
    t0 = time.perf_counter()
    n = 0
    for _ in range(steps):
        b = next(it)
        views = b.views if hasattr(b, "views") else b[0]
        n += views[0].shape[0]
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    del it
    return n / dt


def time_loaders(makers: dict, images: int, batch_size: int, reps: int) -> dict:
    """Round-robin over the loaders, one pass each per rep, so that drifting machine load (a
    shared CI box) hits all of them alike and the ratios stay meaningful."""
    loaders = {}
    for key, make in makers.items():
        try:
            loaders[key] = make()
        except ImportError as exc:
            loaders[key] = exc
    steps = images // batch_size
    rates: dict = {k: [] for k in loaders}
    for rep in range(reps + 1):  # rep 0 warms up (pipeline build, page cache)
        for key, ld in loaders.items():
            if isinstance(ld, Exception):
                continue
            r = _one_pass(ld, rep, steps)
            if rep:
                rates[key].append(r)
                print(key, f"rep {rep}: {r:.1f} img/s", file=sys.stderr, flush=True)
    out = {}
    for key, ld in loaders.items():
        if isinstance(ld, Exception):
            out[key] = {"skipped": str(ld)}
            continue
        r = rates[key]
        out[key] = {"img_per_s_median": round(statistics.median(r), 1), "img_per_s_min": round(min(r), 1),
                    "img_per_s_max": round(max(r), 1), "reps": reps, "images_per_rep": steps * batch_size}
    return out


def add_corpus_arguments(p: argparse.ArgumentParser) -> None:
    """The corpus and timing options every loader benchmark shares (this one and bench_ffcv.py)."""
    p.add_argument("--root", default="/tmp/fasttrain_bench_corpus")
    p.add_argument("--classes", type=int, default=20)
    p.add_argument("--max-per-class", type=int, default=250)  # ~1,950 images, long-tailed (rho 10)
    p.add_argument("--images", type=int, default=1024, help="images per timed rep")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--workers", type=int, default=os.cpu_count() or 2,
                   help="workers = threads of every loader (DataLoader workers, DALI / FFCV threads)")
    p.add_argument("--crop", type=int, default=224)
    p.add_argument("--only", default="", help="comma-separated loader names to run")


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_corpus_arguments(p)
    p.add_argument("--out", default="")
    args = p.parse_args(argv)

    ds = load_corpus(args.root, args.classes, args.max_per_class)
    load_before = os.getloadavg()
    sampler = build_sampler("instance", torch.as_tensor(ds.labels), ds.num_classes, seed=0)
    aug = AugmentConfig(train="imagenet", crop_size=args.crop)  # RRC(0.08-1, 3/4-4/3) + flip
    bs, w = args.batch_size, args.workers

    def torch_backend(views):
        from fasttrain.loaders.torch_backend import TorchLoader

        return TorchLoader(ds, [sampler], batch_size=bs, num_views=views, device="cpu", augment=aug,
                           loader=LoaderConfig(num_workers=w, pin_memory=False), train=True, seed=0)

    def dali(views, device="cpu", **opts):
        from fasttrain.loaders.dali import DaliLoader

        cfg = LoaderConfig(dali_threads=w, dali_prefetch=2, **opts)
        return DaliLoader(ds, [sampler], batch_size=bs, num_views=views, device=device, augment=aug, loader=cfg,
                          train=True, seed=0)

    candidates = {
        "official_pil_v1": lambda v: OfficialLoader(ds, sampler, batch_size=bs, views=v, workers=w, crop=args.crop),
        "torch_backend": torch_backend,
        # default: ROI decode for one view (decode once + one ROI resize per view for two), antialias on
        "dali_cpu": lambda v: dali(v),
        "dali_cpu_no_antialias": lambda v: dali(v, dali_antialias=False),
        "dali_cpu_full_decode": lambda v: dali(v, dali_roi_decode=False),
        "dali_cpu_no_reader_thread": lambda v: dali(v, dali_reader_thread=False),
    }
    if torch.cuda.is_available():
        candidates["dali_gpu"] = lambda v: dali(v, device="cuda")
        # the hardware JPEG decoder may not do ROI decoding: compare with full decode + ROI resize
        candidates["dali_gpu_full_decode"] = lambda v: dali(v, device="cuda", dali_roi_decode=False)
    only = [s for s in args.only.split(",") if s]
    results: dict = {}
    for views in (1, 2):
        makers = {}
        for name, make in candidates.items():
            if (only and name not in only) or (name.endswith("_full_decode") and views == 2):
                continue  # two views always decode the full image once
            makers[f"{name}/views{views}"] = (lambda m: lambda: m(views))(make)
        results.update(time_loaders(makers, args.images, bs, args.reps))
    base = {v: results.get(f"official_pil_v1/views{v}", {}).get("img_per_s_median") for v in (1, 2)}
    for key, r in results.items():
        v = int(key[-1])
        if base[v] and "img_per_s_median" in r:
            r["speedup_vs_official"] = round(r["img_per_s_median"] / base[v], 2)
    out = {
        **report_header("loaders: decode + RandomResizedCrop(224) + flip",
                        torch.device("cuda" if torch.cuda.is_available() else "cpu")),
        "cpu": cpu_model(),
        "workers_or_threads": w,
        # other jobs on a shared box slow every loader; the round-robin keeps ratios comparable
        "load_average_1m_before_after": [round(load_before[0], 2), round(os.getloadavg()[0], 2)],
        "batch_size": bs,
        "corpus": {"images": len(ds), "classes": ds.num_classes, "size": "500x400", "quality": 90,
                   "mean_jpeg_kb": round((ds.extra.get("mean_jpeg_bytes") or 0) / 1024, 1),
                   "max_count": int(ds.counts.max()), "min_count": int(ds.counts.min())},
        "results": results,
    }
    return emit_json(out, args.out, indent=1)


if __name__ == "__main__":
    main()
