"""FFCV loader backend: a .beton of the split, read in exactly our samplers' order.

Design (why it looks like this):

- **Which .beton.** `loader.ffcv_path` (training loaders) / `loader.ffcv_eval_path` (evaluation
  loaders) name files written by `fasttrain data convert-ffcv`; their sidecar must describe the
  split the loader is given (class counts and a content hash of the list), else the error names
  both. Left null, the split is converted once into `loader.ffcv_cache_dir` (default: beside
  the data) under a name made of its content hash and the conversion options, and found there
  by later runs (`loader.ffcv_convert: false` turns that into an error instead).
- **Order.** `set_epoch` asks every sampler for its order (already sharded by rank) and lays the
  epoch out step-major, stream-major (rows [s*b, (s+1)*b) of a step are stream s; the first
  sampler defines the epoch length, shorter streams wrap: `LoaderBackend.set_epoch`). FFCV gets
  that row list through its traversal-order hook (`ffcv_pipeline.SamplerOrder`), starting at
  the first step not yet delivered, so a resumed run continues mid-epoch exactly.
  `loader.ffcv_quasi_random` reorders each stream's rows so that a window of steps reads few
  file pages (FFCV's quasi-random idea, useful with `ffcv_os_cache: false`): the same multiset
  of samples, hence the same class frequencies, in a different order.
- **Decoding.** One decoder per loader decodes every row once and resamples all views from it
  (`ffcv_pipeline.ViewsDecoder`): RandomResizedCrop + flip for `augment.train: imagenet`, the
  Resize(eval_resize) -> CenterCrop(crop_size) window for evaluation and `augment.train: none`,
  the stored image for in-memory arrays (CIFAR), whose pad-crop + flip are deferred to
  `Batch.geometry` (drawn per epoch from (seed, epoch), as the tensor backend does) and applied
  by the augmenter. Crops are hashes of (seed, the step's rows), hence independent of threads.
- **Output.** uint8 (B,3,H,W) channels_last on the training device (FFCV's `ToDevice` on CUDA,
  on its own streams). A batch stays valid after the next one: on the CPU the decoder writes
  every batch into a new array (view-major, so each view is one NHWC block: no copy at all); on
  CUDA each view is cloned out of ToDevice's reused device buffers. Labels, indices and stream
  ids come from the host-side order.
- **Per view** (`augment.views`): the RandomResizedCrop scale / ratio and the flip (files), or
  the pad-crop padding and the flip (arrays). Photometric augmentation (colour jitter, hue,
  grayscale, blur) is not done by this backend: it raises an error naming the keys (use the
  torch or dali backend for those recipes). So is `augment.policy` (RandAugment & co.): refused
  when the loader is built (`base.policy_refusal`). RandomErasing is the augmenter's, so it works here.
"""
from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

import numpy as np
import torch

from fasttrain.batch import Batch, Geometry, random_geometry
from fasttrain.data.ffcv_convert import (INSTALL_HINT, ConvertOptions, cached_beton, check_sidecar,
                                         read_sidecar)
from fasttrain.data.index import DatasetError, LTDataset
from fasttrain.loaders.base import LoaderBackend, epoch_generator, register_backend, view_augments
from fasttrain.loaders.crop_params import ViewDraw

log = logging.getLogger(__name__)

# Photometric augmentation keys (not done by this backend), for the error message.
_PHOTOMETRIC = ("color_jitter", "color_jitter_hue", "grayscale_p", "blur_p")


def _check_supported(augment, per_view: list) -> None:
    """Training augmentation this backend draws: the crop (RandomResizedCrop or CIFAR pad-crop)
    and the flip, per view. Anything else that would be drawn is refused, naming its keys."""
    for i, a in enumerate(per_view):
        where = f"augment.views[{i}]." if getattr(augment, "views", None) else "augment."
        if a.train != augment.train:
            raise ValueError(f"{where}train={a.train!r}: loader.backend=ffcv uses one augment.train for every view "
                             f"({augment.train!r}); use loader.backend=torch for mixed views")
        drawn = [f for f in ViewDraw.from_config(a, True).fields if f not in ("anchor", "shape", "flip")]
        if drawn and a.train == "imagenet":
            keys = [f"{where}{k}={getattr(a, k)}" for k in _PHOTOMETRIC if getattr(a, k, 0)] or drawn
            raise ValueError(f"loader.backend=ffcv does not implement photometric augmentation ({', '.join(keys)}); "
                             "use loader.backend=torch or dali for this recipe")


def ffcv_available() -> tuple[bool, str]:
    """(usable, one-line description) without importing FFCV when it is not installed."""
    if importlib.util.find_spec("ffcv") is None:
        return False, INSTALL_HINT
    try:
        from importlib.metadata import version

        import ffcv.libffcv  # noqa: F401  (loads the compiled libjpeg-turbo / OpenCV helpers)

        return True, f"ffcv {version('ffcv')} (numba {version('numba')}); decodes on CPU threads"
    except Exception as exc:  # a broken install (missing system library) must not break `info`
        return False, f"{INSTALL_HINT} ({type(exc).__name__}: {exc})"


def _import_pipeline():
    try:
        from fasttrain.loaders import ffcv_pipeline
    except ImportError as exc:
        raise ImportError(f"loader.backend=ffcv: {INSTALL_HINT} ({exc})") from exc
    return ffcv_pipeline


GEOMETRY_SALT = 0xFFC  # this backend's stream of crop/flip draws (base.epoch_generator)


@register_backend("ffcv")
class FfcvLoader(LoaderBackend):
    reads = ("arrays", "files")
    # augment.policy: none only (the numba decoder draws crops and flips, no image ops); build_loader and
    # the config check refuse the others by name (use loader.backend=torch or dali).
    policies = ()

    @classmethod
    def available(cls) -> tuple[bool, str]:
        return ffcv_available()

    def __init__(self, dataset: LTDataset, samplers, *, batch_size: int, num_views: int, device,
                 augment, loader, train: bool, seed: int = 0):
        pipe = self._pipe = _import_pipeline()
        if batch_size <= 0 or num_views <= 0:
            raise ValueError(f"ffcv loader: batch_size and num_views must be > 0, got {batch_size}, {num_views}")
        arrays = dataset.images is not None
        if train and augment.train == "cifar" and not arrays:
            raise ValueError("augment.train=cifar (pad-crop) is for in-memory 32x32 datasets; the ffcv backend "
                             "reads this file dataset with augment.train=imagenet or none")
        per_view = view_augments(augment, num_views, train)
        if train:
            _check_supported(augment, per_view)
        self._init_streams(dataset, samplers, batch_size, bool(loader.drop_last) if train else False)
        self.num_views = num_views
        self.device = torch.device(device)
        self.train = train
        self.seed = int(seed)
        self.quasi_random = bool(loader.ffcv_quasi_random) and bool(self.samplers)
        # What the decoder produces per row: every view is the stored image (in-memory arrays
        # without RandomResizedCrop: their pad-crop + flip is deferred to Batch.geometry), a
        # random crop per view, or the one deterministic eval window shared by all views.
        random_crop = train and augment.train == "imagenet"
        self.defer_geometry = arrays and train and augment.train == "cifar"
        self.view_geometry = [(int(a.crop_padding), bool(a.flip)) for a in per_view]
        size = (int(augment.crop_size), int(augment.crop_size))
        if arrays and not random_crop:
            kind, hw, decoded = pipe.IDENTITY, None, 1
        elif random_crop:
            kind, hw, decoded = pipe.RRC, size, num_views
        else:
            kind, hw, decoded = pipe.CENTER, size, 1
        self.decoded_views = decoded
        self.path = self._beton(loader)
        workers = loader.ffcv_workers or _cpu_count()
        crops = [(tuple(a.rrc_scale), tuple(a.rrc_ratio), bool(a.flip)) for a in per_view][:decoded]
        decoder = pipe.ViewsDecoder(kind, decoded, hw, seed=self.seed, crops=crops,
                                    eval_resize=int(augment.eval_resize), fast_dct=bool(loader.ffcv_fast_dct),
                                    resize=str(loader.ffcv_resize))
        self._order = pipe.SamplerOrder(np.zeros(0, np.uint64))  # each epoch's rows, set in __iter__
        self._ffcv, self._check = pipe.build(str(self.path), self.step_rows, decoder,
                                             self._order, device=self.device, workers=workers,
                                             os_cache=bool(loader.ffcv_os_cache),
                                             batches_ahead=int(loader.ffcv_batches_ahead))
        self.view_hw = decoder.out_hw
        self._check_labels()
        self._pages: np.ndarray | None = None  # file page of each sample (quasi-random order)
        self.set_epoch(0)

    # --- the .beton ------------------------------------------------------------------------
    def _beton(self, loader) -> Path:
        explicit = loader.ffcv_path if self.train else loader.ffcv_eval_path
        if explicit:
            check_sidecar(explicit, read_sidecar(explicit), self.dataset)
            return Path(explicit)
        return cached_beton(self.dataset, ConvertOptions.from_loader_config(loader), loader.ffcv_cache_dir,
                            workers=loader.ffcv_workers, convert_missing=bool(loader.ffcv_convert))

    def _check_labels(self) -> None:
        """The labels stored in the .beton are the split's (a last check beyond the sidecar)."""
        stored = np.asarray(self._ffcv.reader.metadata["f1"])
        if len(stored) != len(self.dataset) or not np.array_equal(stored, self.dataset.labels):
            raise DatasetError(f"{self.path}: its labels differ from split {self.dataset.name!r} "
                               "although its sidecar matches (file edited after conversion?)")

    # --- epochs ----------------------------------------------------------------------------
    # (laid out by LoaderBackend.set_epoch, with these two hooks)
    def arrange(self, orders: list[torch.Tensor], epoch: int) -> list[torch.Tensor]:
        if not self.quasi_random:
            return orders
        return [self._page_local(o, epoch, s) for s, o in enumerate(orders)]

    def on_epoch(self, epoch: int) -> None:
        self.rows = self.rows.numpy().astype(np.int64)  # step-major, then stream-major
        self.geometry: list[Geometry] = []
        if self.defer_geometry:
            g = epoch_generator(self.seed, epoch, self.device, GEOMETRY_SALT)
            self.geometry = [random_geometry(len(self.rows), padding, flip, g, self.device)
                             for padding, flip in self.view_geometry]

    def _page_local(self, order: torch.Tensor, epoch: int, stream: int) -> torch.Tensor:
        """Reorder so consecutive rows come from few file pages: pages in a random order, rows
        jittered by up to a few pages' worth so that batches still mix pages (deterministic)."""
        if self._pages is None:
            reader = self._ffcv.reader
            table = reader.alloc_table
            pages = np.zeros(len(self.dataset), np.int64)
            pages[table["sample_id"].astype(np.int64)] = (table["ptr"] // reader.page_size).astype(np.int64)
            self._pages = pages
        rng = np.random.default_rng([self.seed & 0xFFFF_FFFF, epoch, stream, 0xFFC0])
        o = order.numpy()
        page_of = self._pages[o]
        uniq, inv = np.unique(page_of, return_inverse=True)
        rank = rng.permutation(len(uniq))[inv].astype(np.float64)
        key = rank + rng.uniform(0.0, 4.0, len(o))  # rows of ~4 neighbouring pages interleave
        return torch.from_numpy(o[np.argsort(key, kind="stable")].copy())

    # --- iteration -------------------------------------------------------------------------
    def __iter__(self):
        start = self.position
        rows_per_step = self.step_rows
        if start >= len(self.step_sizes):
            self.position = 0
            return
        first_row = start * rows_per_step  # every step before the last is full
        self._order.rows = self.rows[first_row:].astype(np.uint64)
        it = iter(self._ffcv)
        stream_ids: dict[int, torch.Tensor] = {}
        try:
            step, row = start, first_row
            for (images,) in it:
                size = self.step_sizes[step] * self.num_streams
                if self._check.failed:
                    self._raise_undecodable()
                index = self.rows[row: row + size]
                batch = self._batch(images, index, row, size, stream_ids)
                step += 1
                row += size
                # Before the yield: a state_dict() taken while the consumer holds this batch
                # counts it as delivered (the contract of `position`).
                self.position = step
                for sampler in self.samplers:
                    sampler.position = min(step * self.stream_batch, len(sampler))
                yield batch
        finally:
            _stop(it)
        if it.error is not None:
            raise RuntimeError(f"{self.path}: FFCV's decoding thread failed: {it.error}") from it.error
        self.position = 0

    def _batch(self, images: torch.Tensor, index: np.ndarray, row: int, size: int,
               stream_ids: dict[int, torch.Tensor]) -> Batch:
        decoded, _ = self._pipe.batch_layout(images, self.decoded_views, self.view_hw)  # NHWC, no copy
        if self.device.type == "cuda":  # ToDevice's output buffers are reused a few batches later
            decoded = [d.clone() for d in decoded]
        views = [d.permute(0, 3, 1, 2) for d in decoded]  # (B,3,H,W) channels_last views
        if len(views) < self.num_views:  # deterministic views are one decode, shared
            views = views * self.num_views
        if size not in stream_ids:
            stream_ids[size] = torch.arange(self.num_streams, device=self.device).repeat_interleave(
                size // self.num_streams)
        geometry = [g.rows(slice(row, row + size)) for g in self.geometry] or [None] * self.num_views
        nb = self.device.type == "cuda"
        idx = torch.from_numpy(index)
        labels = torch.from_numpy(self.dataset.labels[index])
        if nb:
            idx, labels = idx.pin_memory(), labels.pin_memory()
        return Batch(views=views, labels=labels.to(self.device, non_blocking=nb), stream=stream_ids[size],
                     num_streams=self.num_streams, geometry=geometry, index=idx.to(self.device, non_blocking=nb))

    def _raise_undecodable(self):
        bad = sorted(set(self._check.failed))
        names = [self.dataset.paths[i] if self.dataset.paths is not None else f"{self.dataset.name}[{i}]"
                 for i in bad[:5]]
        raise DatasetError(f"{self.path}: cannot decode the stored image of {', '.join(names)}"
                           f"{' ...' if len(bad) > 5 else ''} (re-run fasttrain data convert-ffcv)")

    # --- resume ----------------------------------------------------------------------------
    def state_dict(self) -> dict:
        # The keys of the torch and tensor backends: a run may resume with another backend's state.
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed}

    def load_state_dict(self, state: dict) -> None:
        if state.get("seed", self.seed) != self.seed:
            raise ValueError(f"ffcv loader state is for seed {state.get('seed')}, not {self.seed}")
        self.set_epoch(int(state["epoch"]))
        self.position = int(state.get("position", 0))


def _stop(it) -> None:
    """End FFCV's producer thread before returning: it must not decode into buffers (or run a
    parallel kernel) while the next epoch or another loader starts."""
    it.terminate_event.set()
    it.join(timeout=60)
    it.close()


def _cpu_count() -> int:
    import os

    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1
