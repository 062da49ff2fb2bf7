"""FFCV backend throughput vs the torch DataLoader backend vs DALI, with decode-only ceilings.

Same synthetic ImageNet-like long-tailed JPEG corpus as bench_loaders.py (500x400, quality 90,
~95 KB; for FFCV the .beton stores those files byte for byte), same number of CPU
workers/threads, RandomResizedCrop(224) + flip, one and two views (two views = one decode, two
crops, in every backend):

- torch_backend: our reference DataLoader backend (`--workers` processes);
- dali_cpu: the DALI backend on CPU (`--workers` threads), when DALI is installed;
- ffcv: the ffcv backend (`--workers` threads), accurate IDCT (the default), and ffcv_fast_dct
  (`loader.ffcv_fast_dct`, FFCV's own choice);
- *_decode_only: the ceiling of each: read + decode every image at full size, no crop, no
  resize, nothing copied to the consumer beyond the decoded batch (torch: decode_jpeg in the
  workers; DALI: its CPU decoder; FFCV: the same decoder with the stored image as its output).

Each rep is one pass over `--images` images after a start-up batch, round-robin over the
loaders (rep 0 is a discarded warm-up); reported: median / min / max img/s, and the issue's
targets: ffcv >= 1.5x torch_backend, ffcv >= 0.7x its own decode-only ceiling.

With `--e2e` on a CUDA device it also times the trainer's step (`fasttrain.step.train_step`,
CE, ResNet-50, bf16 autocast, channels_last) fed by the ffcv backend against the same step on
one batch already on the device (synthetic ceiling): loader efficiency = real / synthetic.

    python benchmarks/bench_ffcv.py --images 1024 --reps 5 --out benchmarks/results/ffcv_cpu.json
(read the --out file: with numba's TBB layer, a DataLoader fork after FFCV ran prints a TBB
notice on stdout, ahead of the JSON printed there)
    python benchmarks/bench_ffcv.py --e2e --out benchmarks/results/ffcv_h100.json       # GPU machine
"""
from __future__ import annotations

import argparse
import itertools
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_loaders import add_corpus_arguments, load_corpus, time_loaders  # noqa: E402  (shared corpus, timing)

from fasttrain.benchmarking import emit_json, report_header, spread  # noqa: E402
from fasttrain.config import AugmentConfig, LoaderConfig  # noqa: E402
from fasttrain.environment import cpu_model  # noqa: E402
from fasttrain.samplers import build_sampler  # noqa: E402


class _Decoded:
    """What the decode-only loaders yield: the timing loop only needs the batch size."""

    def __init__(self, n: int):
        self.views = [torch.empty(n, 0)]


class TorchDecodeOnly:
    """DataLoader workers: read + torchvision decode_jpeg at full size, nothing else."""

    def __init__(self, ds, sampler, batch_size: int, workers: int):
        self.ds, self.sampler, self.bs, self.workers = ds, sampler, batch_size, workers

    def set_epoch(self, e: int) -> None:
        self.order = self.sampler.order(e).tolist()

    def __iter__(self):
        dl = torch.utils.data.DataLoader(_DecodeDataset(self.ds), sampler=self.order, batch_size=self.bs,
                                         num_workers=self.workers, collate_fn=len,
                                         prefetch_factor=2 if self.workers else None)
        return (_Decoded(n) for n in dl)


class _DecodeDataset(torch.utils.data.Dataset):
    def __init__(self, ds):
        self.ds = ds

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i: int) -> int:
        from torchvision.io import decode_jpeg, read_file

        from fasttrain.compat import quiet_tvio_deprecation

        with quiet_tvio_deprecation():
            decode_jpeg(read_file(self.ds.paths[i]))
        return 0


class DaliDecodeOnly:
    """DALI's CPU decoder over the same files (its file reader, no resize)."""

    def __init__(self, ds, sampler, batch_size: int, threads: int):
        import nvidia.dali.fn as fn
        from nvidia.dali import Pipeline

        self.ds, self.sampler, self.bs = ds, sampler, batch_size
        pipe = Pipeline(batch_size=batch_size, num_threads=threads, device_id=None, prefetch_queue_depth=2)
        with pipe:
            jpegs, _ = fn.readers.file(files=list(ds.paths), labels=[int(x) for x in ds.labels],
                                       random_shuffle=True, name="files")
            pipe.set_outputs(fn.decoders.image(jpegs, device="cpu"))
        pipe.build()
        self.pipe = pipe

    def set_epoch(self, e: int) -> None:
        pass

    def __iter__(self):
        while True:
            (out,) = self.pipe.run()
            yield _Decoded(len(out))


class FfcvDecodeOnly:
    """The ffcv backend's decoder with the stored image as its output (the corpus has one size)."""

    def __init__(self, path: str, sampler, batch_size: int, workers: int, fast_dct: bool):
        import numpy as np

        from fasttrain.loaders import ffcv_pipeline as fp

        self.sampler = sampler
        decoder = fp.ViewsDecoder(fp.IDENTITY, 1, None, seed=0, fast_dct=fast_dct)
        self.order = fp.SamplerOrder(np.zeros(0, np.uint64))
        self.loader, _ = fp.build(path, batch_size, decoder, self.order, device=torch.device("cpu"),
                                  workers=workers, os_cache=True, batches_ahead=3)

    def set_epoch(self, e: int) -> None:
        self.order.rows = self.sampler.order(e).numpy().astype("uint64")

    def __iter__(self):
        from fasttrain.loaders.ffcv import _stop

        it = iter(self.loader)
        try:
            for (x,) in it:
                yield _Decoded(len(x))
        finally:  # a pass ends early: stop FFCV's producer thread
            _stop(it)


# --- end to end on a GPU --------------------------------------------------------------------------


def end_to_end(ds, args) -> dict:
    """ResNet-50 CE training step (bf16) on ffcv batches vs on one batch already on the device."""
    from fasttrain.build import build_run
    from fasttrain.config import config_from_dict
    from fasttrain.methods import Progress
    from fasttrain.step import train_step

    cfg = config_from_dict({
        "device": "cuda", "seed": 0, "method": {"name": "ce"}, "model": {"arch": "resnet50"},
        "augment": {"train": "imagenet", "crop_size": 224},
        "loader": {"backend": "ffcv", "batch_size": args.e2e_batch, "ffcv_workers": args.workers,
                   "ffcv_cache_dir": str(Path(args.root) / "ffcv")},
        "train": {"amp": "bf16", "compile": args.compile},
    }, "bench_ffcv")
    run = build_run(cfg, training=True, datasets=(ds, ds))
    progress = Progress(epoch=0, epochs=1)

    def endless():
        for epoch in itertools.count():
            run.train_loader.set_epoch(epoch)
            yield from run.train_loader

    batches = endless()
    real = []
    for _ in range(args.e2e_warmup):
        train_step(run.learner, next(batches), progress)
    for _ in range(args.reps):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(args.e2e_steps):
            train_step(run.learner, next(batches), progress)
        torch.cuda.synchronize()
        real.append(args.e2e_batch * args.e2e_steps / (time.perf_counter() - t0))
    fixed = next(batches)
    synthetic = []
    for rep in range(args.reps + 1):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(args.e2e_steps):
            train_step(run.learner, fixed, progress)
        torch.cuda.synchronize()
        if rep:
            synthetic.append(args.e2e_batch * args.e2e_steps / (time.perf_counter() - t0))
    r, s = spread(real), spread(synthetic)
    return {"model": "resnet50", "method": "ce", "dtype": "bf16", "batch": args.e2e_batch, "compile": args.compile,
            "ffcv_img_per_s": r, "synthetic_img_per_s": s, "loader_efficiency": r["median"] / s["median"]}


def _version(dist: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return None


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_corpus_arguments(p)
    p.add_argument("--e2e", action="store_true", help="also the ResNet-50 training step (CUDA only)")
    p.add_argument("--e2e-batch", type=int, default=256)
    p.add_argument("--e2e-steps", type=int, default=20)
    p.add_argument("--e2e-warmup", type=int, default=10)
    p.add_argument("--compile", action="store_true")
    p.add_argument("--out", default="")
    args = p.parse_args(argv)

    from fasttrain.data.ffcv_convert import ConvertOptions, cached_beton

    ds = load_corpus(args.root, args.classes, args.max_per_class)
    t0 = time.perf_counter()
    beton = cached_beton(ds, ConvertOptions(), Path(args.root) / "ffcv", workers=args.workers)
    convert_s = time.perf_counter() - t0
    load_before = os.getloadavg()
    sampler = build_sampler("instance", torch.as_tensor(ds.labels), ds.num_classes, seed=0)
    aug = AugmentConfig(train="imagenet", crop_size=args.crop)  # RRC(0.08-1, 3/4-4/3) + flip
    bs, w = args.batch_size, args.workers

    def backend(name, views, **cfg):
        from fasttrain.loaders import build_loader

        loader = LoaderConfig(backend=name, num_workers=w, pin_memory=False, dali_threads=w, ffcv_workers=w,
                              ffcv_cache_dir=str(Path(args.root) / "ffcv"), **cfg)
        return build_loader(name, ds, [sampler], batch_size=bs, num_views=views, device="cpu", augment=aug,
                            loader=loader, train=True, seed=0)

    candidates = {
        "torch_backend": lambda v: backend("torch", v),
        "dali_cpu": lambda v: backend("dali", v),
        "ffcv": lambda v: backend("ffcv", v),
        "ffcv_fast_dct": lambda v: backend("ffcv", v, ffcv_fast_dct=True),
    }
    ceilings = {
        "torch_decode_only": lambda: TorchDecodeOnly(ds, sampler, bs, w),
        "dali_cpu_decode_only": lambda: DaliDecodeOnly(ds, sampler, bs, w),
        "ffcv_decode_only": lambda: FfcvDecodeOnly(str(beton), sampler, bs, w, fast_dct=False),
        "ffcv_fast_dct_decode_only": lambda: FfcvDecodeOnly(str(beton), sampler, bs, w, fast_dct=True),
    }
    only = [s for s in args.only.split(",") if s]
    results: dict = {}
    for views in (1, 2):
        makers = {f"{n}/views{views}": (lambda m: lambda: m(views))(m) for n, m in candidates.items()
                  if not only or n in only}
        results.update(time_loaders(makers, args.images, bs, args.reps))
    results.update(time_loaders({n: m for n, m in ceilings.items() if not only or n in only},
                                args.images, bs, args.reps))

    def med(key):
        return results.get(key, {}).get("img_per_s_median")

    targets = {}
    for views in (1, 2):
        for name in ("ffcv", "ffcv_fast_dct"):
            got, ref, ceil = med(f"{name}/views{views}"), med(f"torch_backend/views{views}"), med(f"{name}_decode_only")
            if got and ref:
                targets[f"{name}/views{views}_vs_torch_backend"] = {"ratio": round(got / ref, 2), "target": 1.5,
                                                                    "met": got / ref >= 1.5}
            if got and ceil:
                targets[f"{name}/views{views}_vs_own_decode_only"] = {"ratio": round(got / ceil, 2), "target": 0.7,
                                                                      "met": got / ceil >= 0.7}
            if got and med(f"dali_cpu/views{views}"):
                targets[f"{name}/views{views}_vs_dali_cpu"] = {"ratio": round(got / med(f"dali_cpu/views{views}"), 2)}
    out = {
        **report_header("ffcv vs torch vs dali: decode + RandomResizedCrop(224) + flip",
                        torch.device("cuda" if torch.cuda.is_available() else "cpu")),
        "cpu": cpu_model(),
        "ffcv_numba_versions": [_version("ffcv"), _version("numba")],
        "workers_or_threads": w,
        "load_average_1m_before_after": [round(load_before[0], 2), round(os.getloadavg()[0], 2)],
        "batch_size": bs,
        "corpus": {"images": len(ds), "classes": ds.num_classes, "size": "500x400", "quality": 90,
                   "mean_jpeg_kb": round((ds.extra.get("mean_jpeg_bytes") or 0) / 1024, 1)},
        "beton": {"path": str(beton), "mb": round(beton.stat().st_size / 2**20, 1),
                  "convert_or_cache_hit_s": round(convert_s, 2), "write_mode": "jpg (files stored as they are)"},
        "results": results,
        "targets": targets,
    }
    if args.e2e:
        out["end_to_end"] = end_to_end(ds, args) if torch.cuda.is_available() else {"skipped": "no CUDA device"}
    return emit_json(out, args.out, indent=1)


if __name__ == "__main__":
    main()
