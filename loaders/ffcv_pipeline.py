"""The FFCV pieces of the ffcv backend (imports FFCV and numba: loaded only when that backend is built).

- `SamplerOrder`: FFCV's traversal-order hook. Its `sample_order` is the epoch's row order that
  the backend lays out from our samplers (stream-major steps, resumed at any step), so FFCV
  never decides an order itself.
- `ViewsDecoder`: the decoder for FFCV's RGBImageField. Per row it decodes the image ONCE
  (libjpeg-turbo, accurate IDCT unless `fast_dct`; or the raw pixels) and resamples every view
  from it (bilinear, or FFCV's OpenCV INTER_AREA: see `_resample`): a RandomResizedCrop window (torchvision's
  algorithm: 10 tries of area ~ U(scale), log-ratio ~ U(log ratio), then the clamped centre
  crop) + flip for training, Resize(eval_resize) -> CenterCrop(crop) for evaluation, or the
  image as it is (in-memory arrays). The views of a row are written side by side in one row.
- Randomness without a random state: FFCV's own decoders draw from numba's per-thread RNG,
  which depends on how rows land on threads. Here every draw is a hash (splitmix64) of
  (seed, the batch's dataset indices, row, view, draw number). The rows of a step are fixed by
  (seed, epoch, step) through the samplers, so the crops are a pure function of those: the same
  for any thread count and for a run resumed mid-epoch.
- A decode failure is not raised inside FFCV's producer thread (FFCV would then wait forever
  for the batch): the decoder writes a status byte after the views, and `StatusCheck`
  (a host-side stage on the CPU tensor, before any copy to the device) records the failing
  dataset indices for the backend to report.
- Compile once: FFCV compiles every decoder it is given, per loader. The decoder's own code is
  a small serial function (gather the batch's bytes, hash the keys); the parallel work is the
  module-level `_decode_rows`, compiled once per process, so building many loaders (tests,
  train + eval) does not pay numba's parallel compile each time.
- Around FFCV 1.0.2: `EpochLoader` takes its length from the current order and forwards an
  exception of the producer thread to the consumer; `_shield_shared_array_types` keeps FFCV's
  read-only flag off numba's shared array types (see there).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import queue
import threading
from dataclasses import replace

import numba as nb
import numpy as np
import torch
from ffcv.fields.rgb_image import IMAGE_MODES
from ffcv.libffcv import ctypes_resize
from ffcv.loader import Loader
from ffcv.loader.epoch_iterator import EpochIterator
from ffcv.pipeline.compiler import Compiler
from ffcv.pipeline.allocation_query import AllocationQuery
from ffcv.pipeline.operation import Operation
from ffcv.pipeline.pipeline_spec import PipelineSpec
from ffcv.pipeline.state import State
from ffcv.traversal_order.base import TraversalOrder
from ffcv.transforms import ToDevice, ToTensor

from fasttrain.loaders import crop_params

IDENTITY, CENTER, RRC = 0, 1, 2  # what a view is: the stored image, the eval window, a random crop
RESIZE_MODES = {"auto": 0, "linear": 1, "area": 2}  # loader.ffcv_resize
_JPG = IMAGE_MODES["jpg"]


def _turbojpeg():
    """libjpeg-turbo's TurboJPEG API (the library FFCV's own extension links): FFCV's `imdecode`
    always uses the fast integer IDCT, which is ~0.8 grey levels darker on average than the
    accurate IDCT torchvision and DALI use; calling TurboJPEG directly lets the backend choose."""
    lib = ctypes.CDLL(ctypes.util.find_library("turbojpeg") or "libturbojpeg.so.0")
    init, decompress, destroy = lib.tjInitDecompress, lib.tjDecompress2, lib.tjDestroy
    init.argtypes, init.restype = [], ctypes.c_void_p
    decompress.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_ulong, ctypes.c_void_p, ctypes.c_int,
                           ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_int]
    decompress.restype = ctypes.c_int
    destroy.argtypes, destroy.restype = [ctypes.c_void_p], ctypes.c_int
    return init, decompress, destroy


_tj_init, _tj_decompress, _tj_destroy = _turbojpeg()
_TJPF_RGB, _TJFLAG_NOREALLOC, _TJFLAG_FASTDCT, _TJFLAG_ACCURATEDCT = 0, 1024, 2048, 4096
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_S30, _S27, _S31, _S11 = np.uint64(30), np.uint64(27), np.uint64(31), np.uint64(11)
_ATTEMPTS = crop_params.RRC_ATTEMPTS  # torchvision's RandomResizedCrop tries


# ----------------------------------------------------------------------------------------------
# Counter-based draws (numba)
# ----------------------------------------------------------------------------------------------


@nb.njit(inline="always")
def _mix(z):
    """splitmix64's finaliser: a bijective 64-bit hash (uint64 in, uint64 out)."""
    z = (z ^ (z >> _S30)) * _M1
    z = (z ^ (z >> _S27)) * _M2
    return z ^ (z >> _S31)


@nb.njit(inline="always")
def _uniform(key, i):
    """The i-th U[0, 1) draw of `key` (53 random bits)."""
    return np.float64(_mix(key ^ (np.uint64(i + 1) * _GOLDEN)) >> _S11) * (1.0 / 9007199254740992.0)


@nb.njit
def batch_keys(seed, batch_indices):
    """Per-row keys of one batch: a hash of (seed, every dataset index of the batch, row)."""
    n = len(batch_indices)
    h = _mix(np.uint64(seed) ^ np.uint64(0x0FFC0FFC0FFC0FFC))
    for k in range(n):
        h = _mix(h ^ np.uint64(batch_indices[k]))
    keys = np.empty(n, np.uint64)
    for k in range(n):
        keys[k] = _mix(h + np.uint64(k + 1) * _GOLDEN)
    return keys


_rrc_from_draws = nb.njit(crop_params.rrc_window)  # the one RandomResizedCrop law (loaders/crop_params.py)


@nb.njit
def rrc_window(h, w, key, view, scale_lo, scale_hi, ratio_lo, ratio_hi):
    """torchvision RandomResizedCrop.get_params with counter-based draws: (top, left, ch, cw).
    Try t of view v uses draw numbers v·64 + 4t … v·64 + 4t + 3 of `key`."""
    u = np.empty((_ATTEMPTS, 4))
    base = view * 64  # each view has its own block of draw numbers
    for t in range(_ATTEMPTS):
        for j in range(4):
            u[t, j] = _uniform(key, base + 4 * t + j)
    return _rrc_from_draws(h, w, u, scale_lo, scale_hi, ratio_lo, ratio_hi)


@nb.njit
def _flip_rows(dst, height, width):
    """Mirror an (height, width, 3) image stored flat in `dst`, in place."""
    for r in range(height):
        row = r * width * 3
        for c in range(width // 2):
            a = row + 3 * c
            b = row + 3 * (width - 1 - c)
            for ch in range(3):
                t = dst[a + ch]
                dst[a + ch] = dst[b + ch]
                dst[b + ch] = t


@nb.njit(nogil=True)
def _decode_jpeg_into(src, size, h, w, fast_dct, img):
    """Full-size RGB decode into img (h * w * 3 bytes); True when it worked. One TurboJPEG handle
    per image: creating it costs microseconds against milliseconds of decoding, and needs no
    per-thread state."""
    handle = _tj_init()
    flags = _TJFLAG_NOREALLOC | (_TJFLAG_FASTDCT if fast_dct else _TJFLAG_ACCURATEDCT)
    ok = _tj_decompress(handle, src.ctypes.data, size, img.ctypes.data, w, 0, h, _TJPF_RGB, flags) == 0
    _tj_destroy(handle)
    return ok


_ONE = 2048  # bilinear weights in 11-bit fixed point (OpenCV's INTER_LINEAR precision)


@nb.njit(nogil=True, error_model="numpy")
def _resize_linear(img, w, top, left, ch, cw, dst, oh, ow, flip):
    """Bilinear resize of the window [top, top+ch) x [left, left+cw) of an RGB image `w` pixels
    wide into dst (oh x ow x 3), mirrored left-right when `flip`; half-pixel centres (OpenCV
    INTER_LINEAR, torchvision bilinear with antialias=False, within 1 grey level). Separable and
    integer: each output row blends two source rows over the window (a contiguous loop numba
    vectorises), then two columns. The flip only reverses the column table (no second pass).
    Rows are read and written through slices: indexing the whole image inside the loops makes
    numba check every index for wrap-around, which took 2.6x longer (0.76 vs 0.29 ms per
    500x400 -> 224 RandomResizedCrop view, one thread); FFCV's INTER_AREA takes 1.15 ms
    (`fasttrain bench loaders --corpora jpeg --only ffcv_resample`)."""
    xo = np.empty(ow, np.int64)
    wx = np.empty(ow, np.int32)
    sx, sy = cw / ow, ch / oh
    for j in range(ow):
        fx = max((j + 0.5) * sx - 0.5, 0.0)
        ix = min(int(fx), cw - 1)
        jj = ow - 1 - j if flip else j
        xo[jj] = 3 * ix
        wx[jj] = np.int32(round((fx - ix) * _ONE)) if ix < cw - 1 else 0
    n = 3 * cw
    line = np.empty(n + 3, np.int32)  # + one pixel: the right neighbour of the last column
    half = np.int32(1 << 21)
    for i in range(oh):
        fy = max((i + 0.5) * sy - 0.5, 0.0)
        iy = min(int(fy), ch - 1)
        wy = np.int32(round((fy - iy) * _ONE)) if iy < ch - 1 else np.int32(0)
        wy0 = np.int32(_ONE) - wy
        r0 = ((top + iy) * w + left) * 3
        r1 = ((top + min(iy + 1, ch - 1)) * w + left) * 3
        a0, a1 = img[r0:r0 + n], img[r1:r1 + n]
        for q in range(n):
            line[q] = np.int32(a0[q]) * wy0 + np.int32(a1[q]) * wy
        line[n], line[n + 1], line[n + 2] = line[n - 3], line[n - 2], line[n - 1]
        out = dst[3 * i * ow: 3 * (i + 1) * ow]
        for j in range(ow):
            f = wx[j]
            f0 = np.int32(_ONE) - f
            px = line[xo[j]: xo[j] + 6]  # this pixel and its right neighbour
            o = 3 * j
            # each sum <= 255 * 2^22: fits int32
            out[o] = np.uint8((px[0] * f0 + px[3] * f + half) >> 22)
            out[o + 1] = np.uint8((px[1] * f0 + px[4] * f + half) >> 22)
            out[o + 2] = np.uint8((px[2] * f0 + px[5] * f + half) >> 22)


@nb.njit(nogil=True)
def _resample(img, h, w, top, left, ch, cw, dst, oh, ow, mode, flip):
    """Window -> (oh, ow), mirrored when `flip`. mode (RESIZE_MODES) auto: bilinear while the
    window is at most twice the output on both axes (two taps then reach every source pixel, so
    skipping no detail), INTER_AREA beyond (bilinear would alias); linear: always bilinear;
    area: always INTER_AREA."""
    if mode == 1 or (mode == 0 and ch <= 2 * oh and cw <= 2 * ow):
        _resize_linear(img, w, top, left, ch, cw, dst, oh, ow, flip)
    else:
        ctypes_resize(0, img.ctypes.data, h, w, top, top + ch, left, left + cw, dst.ctypes.data, oh, ow)
        if flip:
            _flip_rows(dst, oh, ow)


@nb.njit(nogil=True)
def _center_view(img, h, w, resize, crop, dst, mode):
    """Resize(resize) of the whole image, then its centre crop: the same geometry as torchvision
    (a fractional source window rounded to pixels would shift the content by up to half a pixel)."""
    short, long_ = min(h, w), max(h, w)
    new_long = int(resize * long_ / short)
    nh, nw = (resize, new_long) if h <= w else (new_long, resize)
    top = int(np.rint((nh - crop) / 2.0))
    left = int(np.rint((nw - crop) / 2.0))
    if top < 0 or left < 0:  # eval_resize < crop_size: resize the image to the crop instead
        _resample(img, h, w, 0, 0, h, w, dst, crop, crop, mode, False)
        return
    tmp = np.empty(nh * nw * 3, np.uint8)
    _resample(img, h, w, 0, 0, h, w, tmp, nh, nw, mode, False)
    for r in range(crop):
        a = ((top + r) * nw + left) * 3
        dst[r * crop * 3:(r + 1) * crop * 3] = tmp[a:a + crop * 3]


@nb.njit(parallel=True, nogil=True)
def _decode_rows(buf, offsets, sizes, modes, heights, widths, keys, out, ints, floats):
    """Decode each row once and write its `num_views` resampled views + a status byte into the
    flat batch `out`, view-major (see `batch_layout`): view v of row k at (v * n + k) * vsize, so
    each view of the batch is one contiguous NHWC block; the n status bytes come last.

    ints = [kind, views, out_h, out_w, eval_resize, fast_dct, resize mode, flip of view 0, 1, ...], floats =
    per view (scale lo, scale hi, ratio lo, ratio hi). Settings come as arrays, not scalars:
    constants of the calling closure would reach numba as literal types and compile one kernel
    per configuration."""
    kind, num_views, out_h, out_w, eval_resize, fast_dct = ints[0], ints[1], ints[2], ints[3], ints[4], ints[5] != 0
    mode = ints[6]
    n = len(offsets)
    vsize = out_h * out_w * 3
    for k in nb.prange(n):
        h, w = heights[k], widths[k]
        src = buf[offsets[k]: offsets[k] + sizes[k]]
        status = 0
        if modes[k] == _JPG:
            # The stored image as the view (one size, checked): decoded straight into view 0.
            img = out[k * vsize: (k + 1) * vsize] if kind == IDENTITY else np.empty(h * w * 3, np.uint8)
            if not _decode_jpeg_into(src, sizes[k], h, w, fast_dct, img):
                status = 1
        elif sizes[k] == h * w * 3:
            img = src
        else:
            img = np.zeros(h * w * 3, np.uint8)
            status = 2
        for v in range(num_views):
            dst = out[(v * n + k) * vsize: (v * n + k + 1) * vsize]
            if kind == IDENTITY:
                if v > 0 or modes[k] != _JPG:  # (view 0 of a JPEG is where it was decoded)
                    dst[:] = img[:vsize]
            elif kind == CENTER:
                _center_view(img, h, w, eval_resize, out_h, dst, mode)
            else:
                # per view: scale range, ratio range (floats[4v:4v+4]) and flip (ints[7+v])
                top, left, ch, cw = rrc_window(h, w, keys[k], v, floats[4 * v], floats[4 * v + 1], floats[4 * v + 2],
                                               floats[4 * v + 3])
                flip = ints[7 + v] != 0 and _uniform(keys[k], v * 64 + 63) < 0.5
                _resample(img, h, w, top, left, ch, cw, dst, out_h, out_w, mode, flip)
        out[num_views * n * vsize + k] = status


@nb.njit
def _fresh_rows(destination, n, row_len):
    """A new batch array: the batch stays valid however long the consumer keeps it (CPU)."""
    return np.empty((n, row_len), np.uint8)


@nb.njit
def _given_rows(destination, n, row_len):
    """FFCV's reused (pinned) batch buffer: copied to the device right after (CUDA)."""
    return destination


def status_bytes(images: torch.Tensor) -> torch.Tensor:
    """The n status bytes of a decoded batch: its last n bytes (`_decode_rows`)."""
    return images.reshape(-1)[-len(images):]


def batch_layout(images: torch.Tensor, num_views: int, hw: tuple[int, int]):
    """(the views as (n, h, w, 3) uint8 tensors, the n status bytes) of a decoded batch, without
    copying: the kernel writes the batch view-major (`_decode_rows`)."""
    n = images.shape[0]
    h, w = hw
    vsize = h * w * 3
    flat = images.reshape(-1)
    views = [flat[v * n * vsize:(v + 1) * n * vsize].view(n, h, w, 3) for v in range(num_views)]
    return views, status_bytes(images)


# ----------------------------------------------------------------------------------------------
# FFCV operations
# ----------------------------------------------------------------------------------------------


class ViewsDecoder(Operation):
    """Decode once, resample `num_views` views (see the module docstring).

    Output: a uint8 (n, views × out_h × out_w × 3 + 1) array holding the batch view-major with
    the status bytes last (`batch_layout` reads it). With `own_output` every batch is a new
    array (nothing to copy for the batch to outlive FFCV's buffer reuse: the CPU path); without
    it, FFCV's reused, pinned buffers (the CUDA path: ToDevice copies them right away)."""

    def __init__(self, kind: int, num_views: int, out_hw: tuple[int, int] | None, *, seed: int,
                 crops: list[tuple] | None = None, eval_resize: int = 256, fast_dct: bool = False,
                 resize: str = "auto"):
        """crops: per view (scale range, ratio range, flip) of its RandomResizedCrop (kind RRC)."""
        super().__init__()
        self.own_output = True  # set by `build`
        self.kind = kind
        self.num_views = num_views
        self.out_hw = out_hw
        self.seed = int(seed) & 0xFFFF_FFFF_FFFF_FFFF
        self.crops = [(tuple(map(float, sc)), (min(map(float, ra)), max(map(float, ra))), bool(fl))
                      for sc, ra, fl in (crops or [((0.08, 1.0), (3 / 4, 4 / 3), False)] * num_views)]
        if len(self.crops) != num_views:
            raise ValueError(f"ViewsDecoder: {len(self.crops)} crop settings for {num_views} views")
        self.eval_resize = int(eval_resize)
        self.fast_dct = bool(fast_dct)
        if resize not in RESIZE_MODES:
            raise ValueError(f"ViewsDecoder: resize {resize!r} is not one of {sorted(RESIZE_MODES)}")
        self.resize = resize

    def declare_state_and_memory(self, previous_state: State):
        heights, widths = self.metadata["height"], self.metadata["width"]
        if self.kind == IDENTITY:
            if heights.min() != heights.max() or widths.min() != widths.max():
                raise ValueError("the ffcv backend passes in-memory images through as they are, so they must "
                                 f"all have one size; this .beton holds {widths.min()}x{heights.min()} to "
                                 f"{widths.max()}x{heights.max()}")
            self.out_hw = (int(heights[0]), int(widths[0]))
        h, w = self.out_hw
        shape = (self.num_views * h * w * 3 + 1,)
        return replace(previous_state, jit_mode=True, shape=shape, dtype=np.dtype("u1")), \
            None if self.own_output else AllocationQuery(shape, np.dtype("u1"))

    def generate_code(self):
        mem_read = self.memory_read
        out_h, out_w = self.out_hw
        ints = np.array([self.kind, self.num_views, out_h, out_w, self.eval_resize, self.fast_dct,
                         RESIZE_MODES[self.resize]]
                        + [fl for _, _, fl in self.crops], np.int64)
        floats = np.array([x for sc, ra, _ in self.crops for x in (*sc, *ra)], np.float64)
        seed = np.uint64(self.seed)
        decode_rows, keys_of = _decode_rows, batch_keys
        make_out = _fresh_rows if self.own_output else _given_rows
        row_len = self.num_views * out_h * out_w * 3 + 1

        def decode(batch_indices, destination, metadata, storage_state):
            n = len(batch_indices)
            sizes = np.empty(n, np.int64)
            offsets = np.empty(n, np.int64)
            modes = np.empty(n, np.int64)
            heights = np.empty(n, np.int64)
            widths = np.empty(n, np.int64)
            total = 0
            for k in range(n):
                field = metadata[batch_indices[k]]
                sizes[k] = mem_read(field["data_ptr"], storage_state).size
                offsets[k] = total
                total += sizes[k]
                modes[k], heights[k], widths[k] = field["mode"], field["height"], field["width"]
            # One contiguous copy of the batch's bytes: the parallel kernel then needs neither
            # FFCV's memory reader nor its state type, so it is compiled once per process.
            buf = np.empty(total, np.uint8)
            for k in range(n):
                buf[offsets[k]: offsets[k] + sizes[k]] = mem_read(metadata[batch_indices[k]]["data_ptr"],
                                                                  storage_state)
            keys = keys_of(seed, batch_indices)
            out = make_out(destination, n, row_len)
            decode_rows(buf, offsets, sizes, modes, heights, widths, keys, out.reshape(-1), ints, floats)
            return out

        return decode


class StatusCheck(Operation):
    """Host-side stage after ToTensor: records rows whose status byte says the decode failed."""

    def __init__(self):
        super().__init__()
        self.failed: list[int] = []  # dataset indices (appended by FFCV's producer thread)

    def declare_state_and_memory(self, previous_state: State):
        return previous_state, None

    def generate_code(self):
        failed = self.failed

        def check(images, _dst, batch_indices):
            status = status_bytes(images)
            if bool(status.any()):
                failed.extend(int(i) for i in np.asarray(batch_indices)[status.numpy() != 0])
            return images

        check.with_indices = True
        return check


class SamplerOrder(TraversalOrder):
    """The epoch order, set by the backend before each epoch (FFCV only reads it).

    FFCV 1.0 takes a custom order as an instance and calls it with the loader (`order(loader)`),
    hence `__call__`."""

    def __init__(self, rows: np.ndarray):
        self.rows = rows

    def __call__(self, loader):
        super().__init__(loader)
        return self

    def sample_order(self, epoch: int):
        return self.rows


class EpochLoader(Loader):
    """FFCV's Loader with two changes: the epoch length is the current order's (FFCV's own `len`
    is the length of the order it saw at construction, and its `__iter__` truncates to it), and
    an exception in the producer thread reaches the consumer (FFCV would wait for it forever)."""

    def __len__(self) -> int:
        n = len(self.traversal_order.rows)
        return -(-n // self.batch_size)

    def __iter__(self):
        Compiler.set_num_threads(self.num_workers)
        return _EpochIterator(self, self.traversal_order.rows)


_DECODE_LOCK = threading.Lock()


class _Stopped(Exception):
    """The consumer went away: stop producing (FFCV itself only notices when its queue is full)."""


class _EpochIterator(EpochIterator):
    error: BaseException | None = None

    def run_pipeline(self, *args, **kwargs):
        if self.terminate_event.is_set():
            raise _Stopped
        # One batch at a time per process: a loader left mid-epoch (or a train and an eval loader)
        # would otherwise launch numba's parallel kernel from two threads at once, which numba's
        # fallback "workqueue" threading layer does not allow (the TBB layer would).
        with _DECODE_LOCK:
            return super().run_pipeline(*args, **kwargs)

    def run(self):
        try:
            super().run()
        except _Stopped:
            return
        except BaseException as exc:  # handed to the consumer; None ends its wait
            self.error = exc
            while not self.terminate_event.is_set():
                try:
                    self.output_queue.put(None, timeout=0.5)
                    break
                except queue.Full:
                    pass


def build(path: str, rows_per_step: int, decoder: ViewsDecoder, order: SamplerOrder, *, device: torch.device,
          workers: int, os_cache: bool, batches_ahead: int,
          own_output: bool | None = None) -> tuple[EpochLoader, StatusCheck]:
    """own_output (default: not on CUDA): every batch a new array (see `ViewsDecoder`); False =
    FFCV's reused buffers, for CUDA (pinned, copied by ToDevice) and for consumers that drop each
    batch before the next (the decode-only ceiling: a new array per batch larger than glibc's
    32 MB mmap limit costs page faults, which a decoder alone would not pay)."""
    decoder.own_output = device.type != "cuda" if own_output is None else bool(own_output)
    check = StatusCheck()
    ops = [ToTensor(), check]
    if device.type == "cuda":  # FFCV's copy on its own streams, synchronised with the consumer's
        ops.append(ToDevice(device, non_blocking=True))
    workers = max(1, min(int(workers), nb.config.NUMBA_NUM_THREADS))
    _shield_shared_array_types()
    loader = EpochLoader(path, batch_size=rows_per_step, num_workers=workers, os_cache=os_cache, order=order,
                         pipelines={"image": PipelineSpec("image", decoder=decoder, transforms=ops), "label": None},
                         drop_last=False, batches_ahead=max(1, int(batches_ahead)), seed=0)
    return loader, check


def _shield_shared_array_types() -> None:
    """Keep FFCV's read-only declaration away from the array types the rest of the process uses.

    FFCV's memory managers declare their reader's buffers read-only by setting `mutable = False`
    on numba's interned type objects (`nb.uint8[::1]`, `nb.uint8[:, ::1]`, `nb.uint64[::1]`,
    `nb.uint32[::1]`) when a Loader is built. Whatever instance is interned at that moment is
    changed for everyone: code compiled earlier (e.g. by the previous loader) has cached it,
    and from then on jitted code that writes into a fresh uint8 array fails to type ("Cannot
    modify readonly array"). Dropping those instances from numba's intern table first makes
    FFCV build and flag fresh ones of its own; the old ones stay valid for the code that holds
    them (numba types are compared by value; interning only saves memory)."""
    import weakref

    from numba.core.types import abstract

    table = getattr(abstract, "_typecache", None)
    if table is None:  # pragma: no cover - a numba without the table: nothing to protect
        return
    for t in (nb.uint8[::1], nb.uint8[:, ::1], nb.uint64[::1], nb.uint32[::1]):
        if t.mutable:
            table.pop(weakref.ref(t), None)
