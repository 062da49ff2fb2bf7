"""DALI loader backend: JPEG decode on the GPU ("mixed") or CPU, in exactly our sampler's order.

Design (why it looks like this):

- **Order.** File bytes enter the pipeline through `fn.external_source`, one batch per step, in
  the order `Sampler.order(epoch)` gives (already sharded by rank / world size). Several
  samplers are streams, laid out as in every backend (`LoaderBackend.set_epoch`): rows are
  stream-major in one batch, the first sampler defines the epoch length, a shorter stream
  wraps. `samplers=None` means sequential eval order.
- **Randomness on the host.** Crop windows (torchvision's RandomResizedCrop algorithm, exactly),
  flips, jitter factors, grayscale and blur sigmas are drawn with numpy from a generator keyed
  by (seed, epoch, step) and fed to DALI as per-sample arguments (`crop_params`, which says
  why). This needs the image size, read from the header on the host while the bytes are
  validated (`image_header`).
- **Policies** (`augment.policy`): `nvidia.dali.auto_aug`'s RandAugment / TrivialAugment Wide /
  AutoAugment run on each training view after its crop, jitter, blur and flip (uint8, as in the
  torch backend); the pipeline is then traced with conditionals on (`pipeline_def(enable_conditionals
  =True)`). Their random choices come from DALI's own generator, seeded by the pipeline seed and
  advanced per batch the pipeline runs: unlike the crops, they are not a pure function of (seed,
  epoch, step) — a resumed run (or a pipeline rebuilt after a bad file) draws other policy ops.
- **Decode once.** With several views the image is decoded once and every view is one
  `fn.resize` with its own ROI (crop + resize in one pass). With one view the decoder itself
  crops (`fn.decoders.image_slice`, ROI decoding: only the crop is produced), which is cheaper.
- **Bytes are read by a reader thread** (file reads release the GIL) that keeps
  `dali_prefetch + 1` batches ready; DALI's process-based parallel external source was not
  used: the callback only reads files, and extra processes compete with DALI's own threads.
- **Output**: uint8 (B,3,H,W) channels_last on the training device (the `Batch` contract), or
  normalised float32 channels_last (`Batch.normalized=True`) when `dali_normalize` is on and the
  loader has one view (no mixing then needs the uint8 crops).
- **Bad files.** Missing, truncated (no EOI marker) or unparsable files are caught on the host
  before DALI sees them; a decode failure inside DALI is mapped back to the file(s) of the
  in-flight batches by re-decoding them one by one. The error names the file; with
  `loader.skip_corrupt` such files are dropped from their batch and counted instead.
"""
from __future__ import annotations

import logging
import queue
import threading
from collections import deque
from dataclasses import dataclass, field

import numpy as np
import torch

from fasttrain.batch import Batch
from fasttrain.data.index import DatasetError, LTDataset
from fasttrain.loaders.base import LoaderBackend, register_backend, view_augments
from fasttrain.loaders.crop_params import ViewDraw, ViewParams, step_generator
from fasttrain.loaders.image_header import CorruptImage, image_size

log = logging.getLogger(__name__)

INSTALL_HINT = "DALI is not installed: pip install fasttrain[dali]  (nvidia-dali-cuda130)"
# augment.autoaugment_policy (torchvision's names) -> nvidia.dali.auto_aug's: torchvision's CIFAR10
# policy is the AutoAugment paper's reduced-CIFAR-10 one.
DALI_AUTOAUGMENT = {"imagenet": "image_net", "cifar10": "reduced_cifar10", "svhn": "svhn"}
# Same kernel size as the torch backend's v2.GaussianBlur(23, (0.1, 2.0)); crop_params'
# NO_BLUR_SIGMA makes this kernel the identity for the rows that drew no blur.
_BLUR_WINDOW = 23


def dali_available() -> tuple[bool, str]:
    """(usable, one-line description): what `DaliLoader.available()` reports to `fasttrain info`."""
    try:
        import nvidia.dali as dali
    except Exception as exc:  # ImportError, or a broken install raising something else
        return False, f"{INSTALL_HINT} ({type(exc).__name__}: {exc})"
    gpu = "GPU decode available" if torch.cuda.is_available() else "CPU only (no CUDA device)"
    return True, f"nvidia-dali {dali.__version__}; {gpu}"


def _import_dali():
    try:
        import nvidia.dali as dali  # noqa: F401
        import nvidia.dali.fn as fn
        import nvidia.dali.types as types
        from nvidia.dali.plugin.pytorch import feed_ndarray
    except ImportError as exc:
        raise ImportError(f"loader.backend=dali: {INSTALL_HINT}") from exc
    return dali, fn, types, feed_ndarray


@dataclass
class _Step:
    """One batch prepared on the host: bytes, per-view parameters, labels (stream-major rows)."""

    step: int
    jpegs: list[np.ndarray]
    views: list[ViewParams]
    index: np.ndarray
    labels: np.ndarray
    stream: np.ndarray
    paths: list[str] = field(default_factory=list)
    skipped: int = 0  # rows dropped from this step (unreadable files); counted when delivered


# ----------------------------------------------------------------------------------------------
# The backend
# ----------------------------------------------------------------------------------------------


class _EpochSource:
    """The external_source callback: hands DALI the prepared steps of one epoch, in order."""

    def __init__(self, num_views: int, fields: list[list[str]]):
        self.num_views = num_views
        self.fields = fields  # per view: the ViewParams fields fed for it, in order
        # Returns the next prepared step, None at the end of the epoch, or an exception to raise.
        self.next_item = lambda: None
        self.in_flight: deque[_Step] = deque()

    def __call__(self):
        item = self.next_item()
        if item is None:
            raise StopIteration
        if isinstance(item, BaseException):
            raise item
        self.in_flight.append(item)
        out = [item.jpegs]
        for vp, names in zip(item.views, self.fields):
            for name in names:
                arr = getattr(vp, name)
                out.append(list(arr))  # one array per sample
        return tuple(out)


@register_backend("dali")
class DaliLoader(LoaderBackend):
    # Decodes files only: in-memory arrays are served by the tensor (or torch) backend.
    reads = ("files",)
    policies = ("randaugment", "trivialaugment", "autoaugment")  # nvidia.dali.auto_aug's (_apply_policy)

    @classmethod
    def available(cls) -> tuple[bool, str]:
        return dali_available()

    def __init__(self, dataset: LTDataset, samplers, *, batch_size: int, num_views: int, device,
                 augment, loader, train: bool, seed: int = 0):
        self.dali, self.fn, self.types, self._feed_ndarray = _import_dali()
        if dataset.paths is None:
            raise ValueError(f"loader.backend=dali reads image files, but dataset {dataset.name!r} is held "
                             "in memory; use loader.backend=tensor (CIFAR) or torch")
        if train and augment.train == "cifar":
            raise ValueError("augment.train=cifar (pad-crop) is for in-memory 32x32 datasets; the dali "
                             "backend supports augment.train=imagenet or none")
        self._init_streams(dataset, samplers, batch_size, bool(loader.drop_last) if train else False)
        self.num_views = num_views
        self.device = torch.device(device)
        self.augment = augment
        self.train = train
        self.seed = seed
        self.policy = getattr(augment, "policy", "none") if train else "none"
        # What each view draws per sample (augment.views: its own keys; else one draw shared).
        self.draws = [ViewDraw.from_config(a, train) for a in view_augments(augment, num_views, train)]
        self.draw = self.draws[0]
        self.random_crop = self.draw.random_crop
        self.crop = self.draw.crop  # crop_size is shared by every view (not a per-view key)
        self.threads = int(loader.dali_threads)
        self.prefetch = max(1, int(loader.dali_prefetch))
        self.skip_corrupt = bool(loader.skip_corrupt)
        self.normalize = bool(loader.dali_normalize) and num_views == 1
        self.roi_decode = bool(loader.dali_roi_decode) and num_views == 1 and self.random_crop
        self.antialias = bool(loader.dali_antialias)
        self.reader_thread = bool(loader.dali_reader_thread)
        self.mean = tuple(augment.mean) if augment.mean is not None else tuple(dataset.mean)
        self.std = tuple(augment.std) if augment.std is not None else tuple(dataset.std)
        self.skipped: list[str] = []  # unreadable files found so far (skip_corrupt=True)
        self.skipped_rows = 0  # batch rows dropped because their file was unreadable
        self._bad: set[int] = set()  # dataset indices known to be unreadable
        self._pipe = None
        self._fields = [d.fields for d in self.draws]
        self._source = _EpochSource(num_views, self._fields)
        self.set_epoch(0)

    # --- pipeline --------------------------------------------------------------------------
    @property
    def _cuda(self) -> bool:
        return self.device.type == "cuda"

    def _build_pipeline(self):
        device_id = (self.device.index if self.device.index is not None else torch.cuda.current_device()) \
            if self._cuda else None
        op_dev = "gpu" if self._cuda else "cpu"
        dec_dev = "mixed" if self._cuda else "cpu"
        kwargs = dict(batch_size=self.step_rows, num_threads=self.threads, device_id=device_id,
                      prefetch_queue_depth=self.prefetch, seed=self.seed & 0x7FFF_FFFF)
        if self.policy != "none":
            # nvidia.dali.auto_aug selects its operations with `if` on DALI data: the graph must be
            # traced with conditionals on, which only a @pipeline_def function can be.
            def graph():
                return tuple(self._graph(op_dev, dec_dev))

            pipe = self.dali.pipeline_def(graph, enable_conditionals=True)(**kwargs)
        else:
            pipe = self.dali.Pipeline(**kwargs)
            with pipe:
                pipe.set_outputs(*self._graph(op_dev, dec_dev))
        pipe.build()
        return pipe

    def _graph(self, op_dev: str, dec_dev: str) -> list:
        """The pipeline's operators, from the external source to one output per view."""
        fn, types = self.fn, self.types
        # nvJPEG buffers sized for ImageNet-class JPEGs up front (MLPerf-style values), so the
        # first epochs do not reallocate; CPU decoding takes no such hints.
        dec_kw = dict(device_memory_padding=211_025_920, host_memory_padding=140_544_512) if self._cuda else {}
        n_in = 1 + sum(len(f) for f in self._fields)
        crop = [self.crop, self.crop]
        ins = fn.external_source(source=self._source, num_outputs=n_in, batch=True)
        jpegs, rest = ins[0], ins[1:]
        offsets = np.cumsum([0] + [len(f) for f in self._fields])
        decoded = None
        outs = []
        for v in range(self.num_views):
            p = dict(zip(self._fields[v], rest[offsets[v]:offsets[v + 1]]))
            if self.roi_decode:
                # Decoder crops: only the RRC window is decoded (one view only).
                img = fn.decoders.image_slice(jpegs, p["anchor"], p["shape"], device=dec_dev,
                                              output_type=types.RGB, axis_names="HW",
                                              normalized_anchor=False, normalized_shape=False, **dec_kw)
                img = fn.resize(img, size=crop, antialias=self.antialias,
                                interp_type=types.INTERP_LINEAR)
            else:
                if decoded is None:  # decode ONCE, every view resamples its own ROI
                    decoded = fn.decoders.image(jpegs, device=dec_dev, output_type=types.RGB, **dec_kw)
                img = fn.resize(decoded, size=crop, roi_start=p["anchor"], roi_end=p["anchor"] + p["shape"],
                                roi_relative=False, antialias=self.antialias,
                                interp_type=types.INTERP_LINEAR)
            if "brightness" in p:
                hue = {"hue": p["hue"]} if "hue" in p else {}  # degrees
                img = fn.color_twist(img, brightness=p["brightness"], contrast=p["contrast"],
                                     saturation=p["saturation"], device=op_dev, **hue)
            if "sigma" in p:
                img = fn.gaussian_blur(img, sigma=p["sigma"], window_size=_BLUR_WINDOW, device=op_dev)
            policy = self.policy != "none"
            if "flip" in p and (policy or not self.normalize):  # else crop_mirror_normalize mirrors
                img = fn.flip(img, horizontal=p["flip"], device=op_dev)
            if policy:  # on the flipped uint8 view, as in the torch backend
                img = self._apply_policy(img)
            if self.normalize:
                img = fn.crop_mirror_normalize(img, mirror=0 if policy else p.get("flip", 0), dtype=types.FLOAT,
                                               output_layout="HWC",
                                               mean=[255.0 * m for m in self.mean],
                                               std=[255.0 * s for s in self.std], device=op_dev)
            outs.append(img)
        return outs

    def _apply_policy(self, img):
        """`augment.policy` with nvidia.dali.auto_aug on a uint8 HWC view of crop x crop pixels: fill 0
        and nearest interpolation for the geometric operations, as torchvision's defaults. Its random
        choices come from DALI's generator (seeded by the pipeline seed)."""
        from nvidia.dali.auto_aug import auto_augment, rand_augment, trivial_augment

        a = self.augment
        kw = dict(shape=[self.crop, self.crop], fill_value=0, interp_type=self.types.INTERP_NN)
        if self.policy == "randaugment":
            return rand_augment.rand_augment(img, n=a.policy_num_ops, m=a.policy_magnitude,
                                             num_magnitude_bins=a.policy_magnitude_bins, **kw)
        if self.policy == "trivialaugment":
            return trivial_augment.trivial_augment_wide(img, num_magnitude_bins=a.policy_magnitude_bins, **kw)
        if self.policy == "autoaugment":
            return auto_augment.auto_augment(img, policy_name=DALI_AUTOAUGMENT[a.autoaugment_policy], **kw)
        raise ValueError(f"augment.policy: loader.backend=dali has no policy {self.policy!r}")

    # --- epochs (laid out by LoaderBackend.set_epoch) -----------------------------------------
    def epoch_counters(self) -> dict:
        return {"skipped_files": len(self.skipped)}  # skip_corrupt: files dropped so far

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position, "skipped": list(self.skipped),
                "skipped_rows": self.skipped_rows}

    def load_state_dict(self, state: dict) -> None:
        self.set_epoch(state["epoch"])
        self.position = state["position"]
        self.skipped = list(state.get("skipped", []))
        self.skipped_rows = int(state.get("skipped_rows", 0))
        paths = {p: i for i, p in enumerate(self.dataset.paths)}
        self._bad = {paths[p] for p in self.skipped if p in paths}

    @property
    def num_skipped(self) -> int:
        return len(self.skipped)

    # --- host side: one step ---------------------------------------------------------------
    def _read(self, idx: int) -> tuple[np.ndarray | None, tuple[int, int]]:
        path = self.dataset.paths[idx]
        if idx in self._bad:
            return None, (0, 0)
        try:
            data = np.fromfile(path, dtype=np.uint8)
        except OSError as exc:
            return self._bad_file(idx, f"cannot read ({exc.strerror or exc})")
        try:
            size = image_size(data)
        except CorruptImage as exc:
            return self._bad_file(idx, str(exc))
        return data, size

    def _bad_file(self, idx: int, why: str):
        self._mark_bad(idx, why)
        return None, (0, 0)

    def _mark_bad(self, idx: int, why: str) -> None:
        path = self.dataset.paths[idx]
        if not self.skip_corrupt:
            raise DatasetError(f"{path}: {why} (set loader.skip_corrupt=true to skip and count such files)")
        if idx not in self._bad:
            self._bad.add(idx)
            self.skipped.append(path)
            log.warning("skipping unreadable image %s: %s", path, why)

    def _prepare(self, step: int) -> _Step | None:
        idx = self.rows[self.step_span(step)].numpy()
        stream = np.repeat(np.arange(self.num_streams), self.step_sizes[step])
        datas, sizes = [], []
        for i in idx:
            d, hw = self._read(int(i))
            datas.append(d)
            sizes.append(hw)
        h = np.array([s[0] for s in sizes], np.int64)
        w = np.array([s[1] for s in sizes], np.int64)
        # Parameters are drawn for every row (bad ones get a dummy size) so that skipping a
        # file never changes the crops of the other rows.
        ok = np.array([d is not None for d in datas])
        h[~ok], w[~ok] = 1, 1
        rng = step_generator(self.seed, self.epoch, step)
        views = [d.draw(rng, h, w) for d in self.draws]
        if not ok.all():
            keep = np.nonzero(ok)[0]
            views = [vp.take(keep) for vp in views]
            idx, stream = idx[keep], stream[keep]
            datas = [datas[i] for i in keep]
        if len(idx) == 0:  # never delivered: count its rows here
            self.skipped_rows += len(ok)
            return None
        labels = self.dataset.labels[idx]
        return _Step(step, datas, views, idx.astype(np.int64), labels.astype(np.int64), stream.astype(np.int64),
                     [self.dataset.paths[i] for i in idx], int((~ok).sum()))

    def _producer(self, steps: list[int], out: queue.Queue, stop: threading.Event) -> None:
        try:
            for step in steps:
                if stop.is_set():
                    return
                item = self._prepare(step)
                if item is not None:
                    out.put(item)
            out.put(None)
        except BaseException as exc:  # handed to the consumer, raised in the training thread
            out.put(exc)

    # --- failure mapping -------------------------------------------------------------------
    def _probe_pipeline(self):
        fn, types = self.fn, self.types
        pipe = self.dali.Pipeline(batch_size=1, num_threads=1, device_id=None, prefetch_queue_depth=1,
                                  exec_pipelined=False, exec_async=False)
        with pipe:
            x = fn.external_source(name="probe", batch=True)
            pipe.set_outputs(fn.decoders.image(x, device="cpu", output_type=types.RGB))
        pipe.build()
        return pipe

    def _find_undecodable(self, steps: list[_Step]) -> list[tuple[int, str]]:
        """Re-decode the files of the given steps one by one; (dataset index, path) that fail."""
        bad = []
        pipe = self._probe_pipeline()
        for st in steps:
            for data, i, path in zip(st.jpegs, st.index, st.paths):
                try:
                    pipe.feed_input("probe", [data])
                    pipe.run()
                except Exception:
                    bad.append((int(i), path))
                    pipe = self._probe_pipeline()  # a failed DALI pipeline cannot be reused
        return bad

    # --- iteration -------------------------------------------------------------------------
    def __iter__(self):
        start = self.position
        while True:
            try:
                yield from self._run_epoch(start)
                break
            except _RestartFrom as restart:
                start = restart.step
        self.position = 0

    def _run_epoch(self, start: int):
        todo = list(range(start, len(self.step_sizes)))
        if not todo:
            return
        q: queue.Queue = queue.Queue(maxsize=self.prefetch + 1)
        stop = threading.Event()
        worker = None
        if self.reader_thread:
            worker = threading.Thread(target=self._producer, args=(todo, q, stop), daemon=True,
                                      name="fasttrain-dali-reader")
            worker.start()
            self._source.next_item = q.get
        else:  # read in the calling thread when DALI asks for the batch
            self._source.next_item = _inline_steps(self, todo)
        if self._pipe is None:
            self._pipe = self._build_pipeline()
        self._source.in_flight.clear()
        finished = False
        try:
            while True:
                try:
                    outs = self._pipe.run()
                except StopIteration:
                    self._pipe.reset()
                    finished = True
                    return
                except (DatasetError, _RestartFrom):
                    self._pipe = None
                    raise
                except RuntimeError as exc:
                    self._pipe = None  # DALI invalidates a pipeline after an operator error
                    self._handle_failure(exc)
                st = self._source.in_flight.popleft()
                self.skipped_rows += st.skipped  # counted on delivery: a restarted step is not counted twice
                batch = self._to_batch(outs, st)
                # Before the yield: a state_dict() taken while the consumer holds this batch
                # must count it as delivered (the contract of `position`, as the other backends).
                self.position = st.step + 1
                yield batch
        finally:
            stop.set()
            if worker is not None:
                while worker.is_alive():  # unblock a producer waiting on a full queue
                    try:
                        q.get_nowait()
                    except queue.Empty:
                        worker.join(timeout=0.05)
            if not finished and self._pipe is not None:
                self._drain()

    def _drain(self) -> None:
        """The consumer stopped early (max_steps_per_epoch, break): drop the batches DALI already
        prefetched so the next epoch starts clean, keeping the built pipeline."""
        self._source.next_item = lambda: None
        try:
            while True:
                self._pipe.run()
        except StopIteration:
            self._pipe.reset()
        except Exception:  # a failing prefetched batch nobody asked for: rebuild next time
            self._pipe = None
        self._source.in_flight.clear()

    def _handle_failure(self, exc: RuntimeError):
        pending = list(self._source.in_flight)
        bad = self._find_undecodable(pending)
        if not bad:
            raise RuntimeError(f"DALI pipeline failed on a batch of files {pending[0].paths[:3] if pending else []}"
                               f"...: {exc}") from exc
        if not self.skip_corrupt:
            names = ", ".join(p for _, p in bad)
            raise DatasetError(f"{names}: cannot be decoded by DALI (set loader.skip_corrupt=true to skip "
                               f"and count such files)") from None
        for i, path in bad:
            self._mark_bad(i, "cannot be decoded by DALI")
        raise _RestartFrom(pending[0].step)

    def _to_batch(self, outs, st: _Step) -> Batch:
        n = len(st.index)
        dtype = torch.float32 if self.normalize else torch.uint8
        stream_ptr = torch.cuda.current_stream(self.device) if self._cuda else None
        views = []
        for tl in outs:
            out = torch.empty((n, self.crop, self.crop, 3), dtype=dtype, device=self.device)
            self._feed_ndarray(tl.as_tensor(), out, cuda_stream=stream_ptr)
            views.append(out.permute(0, 3, 1, 2))  # (B,3,H,W) view of NHWC memory = channels_last
        nb = self._cuda
        labels = torch.from_numpy(st.labels)
        index = torch.from_numpy(st.index)
        stream = torch.from_numpy(st.stream)
        if nb:
            labels, index, stream = labels.pin_memory(), index.pin_memory(), stream.pin_memory()
        return Batch(views=views, labels=labels.to(self.device, non_blocking=nb),
                     stream=stream.to(self.device, non_blocking=nb), num_streams=self.num_streams,
                     geometry=[None] * len(views), index=index.to(self.device, non_blocking=nb),
                     normalized=self.normalize)


def _inline_steps(loader: DaliLoader, todo: list[int]):
    """next_item for reading in the calling thread: prepares each step when DALI asks for it."""
    it = iter(todo)

    def next_item():
        for step in it:
            item = loader._prepare(step)
            if item is not None:
                return item
        return None

    return next_item


class _RestartFrom(Exception):
    """Internal: a skipped file invalidated the pipeline; resume the epoch at `step`."""

    def __init__(self, step: int):
        super().__init__(step)
        self.step = step
