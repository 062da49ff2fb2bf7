"""loaders: every available loader backend on the same data, sampler and augmentation, 1 and 2
views, against the official codes' PIL loader and the decode-only ceilings.

Two corpora:
- cifar: CIFAR-10-LT ρ100 (the real files under --cifar-root; `fasttrain data cifar10 --root data`;
  without them the synthetic stand-in with the same class profile, said in the JSON), RandomCrop(32,
  padding 4) + flip; backends that read arrays (tensor, torch, ffcv) and the official PIL pipeline;
- jpeg: the synthetic ImageNet-like long-tailed JPEG corpus (`fasttrain data synthetic`: 500×400,
  quality 90, ≈ 95 KB), RandomResizedCrop(224) + flip; backends that read files (torch, dali, ffcv),
  the official PIL pipeline, and the ceilings: read + decode only (torch decode_jpeg in DataLoader
  workers, DALI's CPU decoder, FFCV's decoder with the stored image as output).

Every row delivers what the model needs: a backend's batches go through the run's augmenter to
normalised float inputs (the tensor backend defers its crop/flip to it), the official pipeline
ends in ToTensor + Normalize. Same `--workers` for all (DataLoader processes, DALI / FFCV threads),
the same instance sampler order. Each repetition is one pass of `--images` images per loader after
a start-up batch, round-robin over the loaders (rep 0 a discarded warm-up: pipeline build, page
cache). Targets: DALI CPU and FFCV ≥ 1.5× the torch backend, ≥ 0.7× their decode-only ceiling.
Group `resample` (JPEG corpus, FFCV installed): the ffcv backend's resampler alone, ms per
RandomResizedCrop view of a corpus-sized image on one thread, per `loader.ffcv_resize` mode.
The `<backend>_uint8` rows (JPEG corpus) stop at the backend's own output, uint8 views before the
shared normalise: the like-for-like comparison with the uint8 decode-only ceilings (on a GPU the
normalise runs on the device, fused with the mixing).

    fasttrain bench loaders [--corpora cifar,jpeg] [--images 1024] [--reps 5] [--only torch,dali]
"""
from __future__ import annotations

import importlib.util
import os
import time
from pathlib import Path

import torch

from fasttrain.bench import harness as H

DESCRIPTION = "loader backends vs official PIL loader vs decode-only ceilings (CIFAR-10-LT, JPEG corpus)"


def add_arguments(p) -> None:
    H.add_common_arguments(p, reps=5)
    p.add_argument("--corpora", default="cifar,jpeg")
    p.add_argument("--cifar-root", default="data", help="folder holding cifar-10-batches-py")
    p.add_argument("--root", default="/tmp/fasttrain_bench_corpus", help="the JPEG corpus (made on first use)")
    p.add_argument("--classes", type=int, default=20)
    p.add_argument("--max-per-class", type=int, default=250, help="JPEG corpus: largest class (~1,950 images)")
    p.add_argument("--images", type=int, default=1024, help="images per timed pass")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", type=int, default=os.cpu_count() or 2,
                   help="workers = threads of every loader (DataLoader workers, DALI / FFCV threads)")
    p.add_argument("--crop", type=int, default=224)
    p.add_argument("--only", default="", help="comma-separated loader names (see the JSON's names)")


# --- corpora ---------------------------------------------------------------------------------


def cifar_corpus(root: str, dry_run: bool):
    """(dataset, note): the real CIFAR-10-LT ρ100 when its files are there, else the stand-in."""
    from fasttrain.data.cifar import build_cifar_lt, synthetic_cifar_lt
    from fasttrain.data.index import DatasetError

    if not dry_run:
        try:
            return build_cifar_lt(root, 10, 100.0)[0], f"real CIFAR-10-LT rho 100 from {root}"
        except (FileNotFoundError, DatasetError, OSError):
            pass
    ds = synthetic_cifar_lt(10, 100.0)[0]
    return ds, "synthetic CIFAR-10-LT stand-in (random pixels, real class profile)"


def jpeg_size(dry_run: bool) -> tuple[int, int]:
    """(width, height) of the JPEG corpus's images."""
    return (64, 48) if dry_run else (500, 400)


def jpeg_corpus(root: str, classes: int, max_per_class: int, dry_run: bool):
    from fasttrain.data.lists import build_list_dataset
    from fasttrain.data.synthetic import make_synthetic_corpus

    size = jpeg_size(dry_run)
    if dry_run:
        root, classes, max_per_class = str(Path(root) / "dry_run"), 4, 8
    summary = make_synthetic_corpus(root, classes, max_per_class, 10.0, 0, size=size, quality=90, seed=0,
                                    workers=os.cpu_count() or 1)
    # No test split (test_per_class=0): train.txt stands in for the eval list the builder wants,
    # and the corpus was just checked complete, so the per-file check is skipped.
    train_list = Path(root) / "train.txt"
    ds, _ = build_list_dataset("synthetic", root, train_list, train_list, classes, check_files=False)
    return ds, {"images": len(ds), "classes": classes, "size": f"{size[0]}x{size[1]}", "quality": 90,
                "mean_jpeg_kb": round((summary.get("mean_jpeg_bytes") or 0) / 1024, 1)}


# --- candidates ------------------------------------------------------------------------------


class _Normalised:
    """A backend's batches turned into model inputs by the run's augmenter (crop/flip the tensor
    backend defers, normalisation), so every row delivers the same thing."""

    def __init__(self, loader, augmenter):
        self.loader, self.augmenter = loader, augmenter

    def set_epoch(self, e: int) -> None:
        self.loader.set_epoch(e)

    def __iter__(self):
        for batch in self.loader:
            yield _Out(self.augmenter.views(batch))


class _Out:
    def __init__(self, views):
        self.views = views


def candidates(kind: str, ds, sampler, args, device: torch.device, beton_dir: Path) -> dict:
    """name -> maker(views) of every loader for this corpus kind."""
    from fasttrain.augment import Augmenter
    from fasttrain.bench import reference_loaders as R
    from fasttrain.config import AugmentConfig, LoaderConfig
    from fasttrain.loaders import build_loader, loader_class

    aug = AugmentConfig(train="cifar") if kind == "cifar" else AugmentConfig(train="imagenet", crop_size=args.crop)
    augmenter = Augmenter(ds.mean, ds.std)
    bs, w = args.batch_size, args.workers
    reads = "arrays" if kind == "cifar" else "files"

    def backend(name, views, dev=device, raw=False, **opts):
        cfg = LoaderConfig(backend=name, num_workers=w, pin_memory=dev.type == "cuda", dali_threads=w,
                           ffcv_workers=w, ffcv_cache_dir=str(beton_dir), **opts)
        ld = build_loader(name, ds, [sampler], batch_size=bs, num_views=views, device=dev, augment=aug,
                          loader=cfg, train=True, seed=0)
        return ld if raw else _Normalised(ld, augmenter)

    out = {"official_pil": lambda v: R.OfficialLoader(ds, sampler, batch_size=bs, views=v, workers=w, crop=args.crop)}
    for name in ("torch", "tensor", "dali", "ffcv"):
        if reads in loader_class(name).reads:
            out[name] = (lambda n: lambda v: backend(n, v))(name)
    if kind == "jpeg":
        out["dali_cpu_no_antialias"] = lambda v: backend("dali", v, dali_antialias=False)
        out["ffcv_fast_dct"] = lambda v: backend("ffcv", v, ffcv_fast_dct=True)
        out["ffcv_area"] = lambda v: backend("ffcv", v, ffcv_resize="area")  # FFCV's own resampling
        # The backends' own output (uint8 views, before the shared normalise): what their
        # decode-only ceilings (uint8 images too) compare with like for like.
        for name in ("torch", "dali", "ffcv"):
            out[f"{name}_uint8"] = (lambda n: lambda v: backend(n, v, raw=True))(name)
    if "dali" in out and device.type == "cuda":
        out["dali_gpu"] = out["dali"]
        out["dali"] = lambda v: backend("dali", v, dev=torch.device("cpu"))  # DALI's CPU pipeline
    return out


def ceilings(ds, sampler, args, beton_dir: Path) -> dict:
    from fasttrain.bench import reference_loaders as R

    bs, w = args.batch_size, args.workers

    def ffcv_ceiling(fast_dct):
        from fasttrain.data.ffcv_convert import ConvertOptions, cached_beton

        beton = cached_beton(ds, ConvertOptions(), beton_dir, workers=w)
        return R.FfcvDecodeOnly(str(beton), sampler, bs, w, fast_dct=fast_dct)

    return {"torch_decode_only": lambda: R.TorchDecodeOnly(ds, sampler, bs, w),
            "dali_decode_only": lambda: R.DaliDecodeOnly(ds, sampler, bs, w),
            "ffcv_decode_only": lambda: ffcv_ceiling(False),
            "ffcv_fast_dct_decode_only": lambda: ffcv_ceiling(True)}


# --- timing ----------------------------------------------------------------------------------


def one_pass(ld, epoch: int, steps: int, device: torch.device) -> float:
    """img/s of one pass of `steps` batches after one start-up batch (workers, prefetch fill)."""
    ld.set_epoch(epoch)
    it = iter(ld)
    next(it)
    t0 = time.perf_counter()
    n = 0
    for _ in range(steps):
        n += next(it).views[0].shape[0]
    H.sync(device)
    dt = time.perf_counter() - t0
    del it
    return n / dt


def time_loaders(makers: dict, images: int, batch_size: int, reps: int, device: torch.device) -> dict:
    """name -> list of img/s per rep, or the exception that stopped its construction."""
    loaders = {}
    for key, make in makers.items():
        try:
            loaders[key] = make()
        except Exception as exc:  # a missing optional backend (ImportError) or one that cannot read this corpus
            loaders[key] = exc
    steps = max(1, images // batch_size)
    rates: dict = {k: [] for k in loaders}
    for rep in range(reps + 1):  # rep 0 warms up
        for key, ld in loaders.items():
            if isinstance(ld, Exception):
                continue
            r = one_pass(ld, rep, steps, device)
            if rep:
                rates[key].append(r)
                H.log_line(f"{key} rep {rep}: {r:.1f} img/s")
    return {k: (loaders[k] if isinstance(loaders[k], Exception) else v) for k, v in rates.items()}


def run(args, argv) -> dict:
    from fasttrain.samplers import build_sampler

    device = H.apply_common_arguments(args)
    reps = 1 if args.dry_run else args.reps
    if args.dry_run:
        args.images, args.batch_size, args.workers = 8, 4, min(args.workers, 2)
    only = [s for s in args.only.split(",") if s]
    report = H.new_report("loaders", device, {}, argv)
    corpora = {}
    for kind in [c for c in args.corpora.split(",") if c]:
        if kind == "cifar":
            ds, about = cifar_corpus(args.cifar_root, args.dry_run)
        elif kind == "jpeg":
            ds, about = jpeg_corpus(args.root, args.classes, args.max_per_class, args.dry_run)
        else:
            raise SystemExit(f"--corpora: unknown corpus {kind!r} (cifar, jpeg)")
        corpora[kind] = about
        sampler = build_sampler("instance", torch.as_tensor(ds.labels), ds.num_classes, seed=0)
        beton_dir = Path(args.root) / ("ffcv_dry_run" if args.dry_run else "ffcv") / kind
        makers = {}
        for views in (1, 2):
            for name, make in candidates(kind, ds, sampler, args, device, beton_dir).items():
                if not only or name in only:
                    makers[f"{name}/views{views}"] = (lambda m, v: lambda: m(v))(make, views)
        if kind == "jpeg":
            makers.update({n: m for n, m in ceilings(ds, sampler, args, beton_dir).items() if not only or n in only})
            if importlib.util.find_spec("ffcv") is not None and (not only or "ffcv_resample" in only):
                report["results"] += resample_rows(jpeg_size(args.dry_run), args.crop, reps, windows=4 if args.dry_run else 200)
        for key, got in time_loaders(makers, args.images, args.batch_size, reps, device).items():
            if isinstance(got, Exception):
                report["results"].append({"name": key, "group": kind,
                                          "skipped": f"{type(got).__name__}: {str(got).splitlines()[0][:200]}"})
            else:
                report["results"].append(H.row(key, got, "img/s", group=kind))
        H.save_partial(report, args.out_dir, device, _tag(args))  # this corpus's rows, if stopped later
    report["config"] = {"corpora": corpora, "images_per_pass": args.images, "batch_size": args.batch_size,
                        "workers_or_threads": args.workers, "reps": reps, "warmup_excluded": 1,
                        "sampler": "instance", "only": only, "dry_run": args.dry_run}
    report["targets"] = loader_targets(report["results"])
    return H.save_report(report, args.out_dir, device, _tag(args))


def _tag(args) -> str:
    """One corpus alone gets it in the file name, so a cifar run does not overwrite a jpeg one."""
    corpora = [c for c in args.corpora.split(",") if c]
    return args.tag or (corpora[0] if len(corpora) == 1 else "")


def resample_rows(size: tuple[int, int], crop: int, reps: int, windows: int = 200) -> list[dict]:
    """ms per view of the ffcv backend's resampler alone (one thread, no decode): `windows`
    RandomResizedCrop windows (scale 0.08-1, ratio 3/4-4/3) of one corpus-sized image -> crop²,
    per `loader.ffcv_resize` mode, and bilinear with the flip (folded into its column table)."""
    import numpy as np

    from fasttrain.loaders import ffcv_pipeline as fp

    w, h = size
    img = np.random.default_rng(0).integers(0, 256, h * w * 3, dtype=np.uint8)
    wins = [fp.rrc_window(h, w, np.uint64(k * 7919 + 1), 0, 0.08, 1.0, 3 / 4, 4 / 3) for k in range(windows)]
    dst = np.empty(crop * crop * 3, np.uint8)

    def views(mode: int, flip: bool):
        def fn():
            for top, left, ch, cw in wins:
                fp._resample(img, h, w, top, left, ch, cw, dst, crop, crop, mode, flip)
        return fn

    fns = {f"ffcv_resample_{m}": views(code, False) for m, code in fp.RESIZE_MODES.items()}
    fns["ffcv_resample_linear_flip"] = views(fp.RESIZE_MODES["linear"], True)
    got = H.round_robin(fns, torch.device("cpu"), reps, log=H.log_line)
    return [H.row(name, [t * 1e3 / windows for t in secs], "ms/view", group="resample", windows=windows,
                  image=f"{w}x{h}", out=f"{crop}x{crop}") for name, secs in got.items()]


def loader_targets(rows: list[dict]) -> dict:
    """DALI CPU and FFCV ≥ 1.5× the torch backend and ≥ 0.7× their own decode-only ceiling; the
    tensor backend vs the torch backend on CIFAR (its data path)."""
    med = {f"{r['group']}:{r['name']}": r["median"] for r in rows if "median" in r}
    out = {}
    for kind in ("cifar", "jpeg"):
        for views in (1, 2):
            ref = med.get(f"{kind}:torch/views{views}")
            for name, ceiling in (("dali", "dali_decode_only"), ("ffcv", "ffcv_decode_only"), ("tensor", None),
                                  ("official_pil", None)):
                got = med.get(f"{kind}:{name}/views{views}")
                if got is None:
                    continue
                key = f"{kind}:{name}/views{views}"
                if ref and name != "official_pil":
                    out[f"{key}_vs_torch"] = {"ratio": got / ref, **({"target": 1.5, "met": got / ref >= 1.5}
                                                                     if name in ("dali", "ffcv") else {})}
                if ref and name == "official_pil":
                    out[f"torch/views{views}_vs_{kind}_official_pil"] = {"ratio": ref / got}
                ceil = med.get(f"{kind}:{ceiling}") if ceiling else None
                if ceil:
                    out[f"{key}_vs_decode_only"] = {"ratio": got / ceil, "target": 0.7, "met": got / ceil >= 0.7}
                    raw = med.get(f"{kind}:{name}_uint8/views{views}")
                    if raw:  # the loader's own output, like for like with the (uint8) ceiling
                        out[f"{kind}:{name}_uint8/views{views}_vs_decode_only"] = {
                            "ratio": raw / ceil, "target": 0.7, "met": raw / ceil >= 0.7}
    return out
