"""Write any LTDataset as an FFCV .beton, with a sidecar that ties the file to its split.

    fasttrain data convert-ffcv CONFIG_OR_DATASET [--split train|eval] [--out FILE.beton]
        [--mode auto|jpg|raw|proportion] [--max-resolution N] [--quality Q]
        [--compress-probability P] [--workers N] [--root DIR] [section.key=value ...]

What is written
- The .beton has two fields, `image` (FFCV's RGBImageField, so any FFCV reader decodes it) and
  `label` (IntField), one sample per dataset item in dataset order.
- `FILE.beton.json` beside it records the dataset name, its class counts, the number of
  samples, the conversion options and a content hash of the list (`list_hash`: relative paths
  and labels for file datasets, the pixel bytes and labels for in-memory ones). The ffcv loader
  backend refuses a .beton whose sidecar does not match the split it is given, naming both.

Modes (per image)
- `jpg`: a JPEG file that needs no resizing is stored byte for byte (no generation loss, and
  the conversion is a copy); other inputs (PNG, CMYK JPEGs, images resized to
  `max_resolution`) are encoded at `jpeg_quality`.
- `raw`: uint8 pixels (exact; large). `auto` = raw for in-memory arrays (CIFAR), jpg for files.
- `proportion`: JPEG with probability `compress_probability`, else raw; the choice is a hash of
  the sample index, so it is the same for every run and worker count (FFCV draws it with the
  workers' global RNG).
`max_resolution` bounds the longer side (antialiased bilinear, as torchvision's Resize).

Atomicity: the .beton is written under a hidden temporary name in the target folder, the
sidecar is renamed into place first and the .beton last, so a file under the final name is
always complete; an interrupted or failed conversion removes its temporary files.

FFCV is imported only by the functions that write; hashing and sidecar checks need numpy only.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

import numpy as np

from fasttrain.data.index import DatasetError, LTDataset

log = logging.getLogger(__name__)

FORMAT = "fasttrain-ffcv/1"
FIELDS = ("image", "label")
WRITE_MODES = ("auto", "jpg", "raw", "proportion")
INSTALL_HINT = ("FFCV is not installed: pip install 'fasttrain[ffcv]' (needs the system packages "
                "pkg-config libopencv-dev libturbojpeg0-dev, e.g. apt-get install -y --no-install-recommends "
                "pkg-config libopencv-dev libturbojpeg0-dev)")


# --------------------------------------------------------------------------------------------
# Options, identity of a split, sidecars
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ConvertOptions:
    write_mode: str = "auto"  # auto | jpg | raw | proportion
    max_resolution: int | None = None  # longer side bound; None = keep the size
    jpeg_quality: int = 90
    compress_probability: float = 0.5  # proportion mode only

    def __post_init__(self):
        def bad(key: str, flag: str, expected: str, got) -> ValueError:
            return ValueError(f"loader.ffcv_{key} ({flag}): expected {expected}, got {got!r}")

        if self.write_mode not in WRITE_MODES:
            raise bad("write_mode", "--mode", f"one of {list(WRITE_MODES)}", self.write_mode)
        if self.max_resolution is not None and self.max_resolution <= 0:
            raise bad("max_resolution", "--max-resolution", "a value > 0 or null", self.max_resolution)
        if not 1 <= self.jpeg_quality <= 100:
            raise bad("jpeg_quality", "--quality", "1..100", self.jpeg_quality)
        if not 0.0 <= self.compress_probability <= 1.0:
            raise bad("compress_probability", "--compress-probability", "a probability in [0, 1]",
                      self.compress_probability)

    @classmethod
    def from_loader_config(cls, loader) -> "ConvertOptions":
        return cls(write_mode=loader.ffcv_write_mode, max_resolution=loader.ffcv_max_resolution,
                   jpeg_quality=int(loader.ffcv_jpeg_quality),
                   compress_probability=float(loader.ffcv_compress_probability))

    def resolved(self, dataset: LTDataset) -> "ConvertOptions":
        """`auto` made concrete for this dataset (what is recorded and what keys the cache)."""
        if self.write_mode != "auto":
            return self
        mode = "raw" if dataset.images is not None else "jpg"
        return ConvertOptions(mode, self.max_resolution, self.jpeg_quality, self.compress_probability)


def _relative_paths(dataset: LTDataset) -> list[str]:
    """Paths relative to the dataset root (its `source`) when they lie under it, else to their
    common folder: the same list under another root hashes the same, and two splits that differ
    only by their top folder (train/ vs val/) hash differently when the root is known."""
    paths = [os.path.abspath(p) for p in dataset.paths]
    base = os.path.abspath(dataset.source) if dataset.source else ""
    if not base or not os.path.isdir(base) or not all(p.startswith(base + os.sep) for p in paths):
        base = os.path.commonpath([os.path.dirname(p) for p in paths]) if paths else ""
    return [os.path.relpath(p, base) for p in paths]


def list_hash(dataset: LTDataset) -> str:
    """Content hash of a split's list: what a .beton must have been written from."""
    h = hashlib.sha256()
    labels = np.ascontiguousarray(dataset.labels, dtype="<i8")
    if dataset.images is not None:
        images = np.ascontiguousarray(dataset.images)
        h.update(f"arrays {images.dtype.str} {images.shape}\n".encode())
        h.update(memoryview(images.reshape(-1)))
        h.update(labels.tobytes())
    else:
        h.update(f"files {len(dataset.paths)}\n".encode())
        for rel, label in zip(_relative_paths(dataset), labels.tolist()):
            h.update(f"{rel}\t{label}\n".encode())
    return h.hexdigest()


def sidecar_path(beton: str | Path) -> Path:
    return Path(str(beton) + ".json")


def describe(dataset: LTDataset, options: ConvertOptions) -> dict:
    """The sidecar content for `dataset` converted with `options` (without the file facts)."""
    return {"format": FORMAT, "dataset": dataset.name, "kind": "arrays" if dataset.images is not None else "files",
            "num_samples": len(dataset), "num_classes": int(dataset.num_classes),
            "class_counts": [int(c) for c in dataset.counts], "list_hash": list_hash(dataset),
            "source": dataset.source, "options": asdict(options.resolved(dataset)), "fields": list(FIELDS)}


def read_sidecar(beton: str | Path) -> dict:
    path = sidecar_path(beton)
    if not Path(beton).is_file():
        raise DatasetError(f"{beton}: no such .beton file")
    try:
        side = json.loads(path.read_text())
    except FileNotFoundError:
        raise DatasetError(f"{beton}: its sidecar {path.name} is missing, so the file cannot be checked against "
                           "the split it should hold; write it with `fasttrain data convert-ffcv`") from None
    except (OSError, ValueError) as exc:
        raise DatasetError(f"{path}: unreadable sidecar ({exc})") from None
    if side.get("format") != FORMAT:
        raise DatasetError(f"{path}: not a fasttrain FFCV sidecar (format {side.get('format')!r}, expected {FORMAT!r})")
    size = Path(beton).stat().st_size
    if side.get("beton_bytes") != size:
        raise DatasetError(f"{beton}: {size} bytes, but its sidecar {path.name} describes a file of "
                           f"{side.get('beton_bytes')} bytes (a .beton replaced or truncated after conversion)")
    return side


def check_sidecar(beton: str | Path, side: dict, dataset: LTDataset) -> None:
    """A .beton must hold exactly this split: same size, class counts and list hash."""
    want = describe(dataset, ConvertOptions())

    def split(d: dict) -> str:
        return f"{d['dataset']!r} ({d['num_samples']} images, {d['num_classes']} classes, list {d['list_hash'][:12]})"

    same = (side.get("num_samples") == want["num_samples"] and side.get("class_counts") == want["class_counts"]
            and side.get("list_hash") == want["list_hash"])
    if not same:
        raise DatasetError(f"{beton}: written from split {split(side)}, but the loader was given split {split(want)}; "
                           "convert this split with `fasttrain data convert-ffcv` or point loader.ffcv_path / "
                           "loader.ffcv_eval_path at its .beton")


def default_cache_dir(dataset: LTDataset) -> Path:
    """Beside the data (`<root>/.fasttrain-ffcv`) when that is writable, else the user cache."""
    candidates = []
    if dataset.source:
        candidates.append(Path(dataset.source) / ".fasttrain-ffcv")
    if dataset.paths:
        candidates.append(Path(os.path.commonpath([os.path.dirname(os.path.abspath(p)) for p in dataset.paths]))
                          / ".fasttrain-ffcv")
    for c in candidates:
        parent = c.parent
        if (c.is_dir() and os.access(c, os.W_OK)) or (parent.is_dir() and os.access(parent, os.W_OK)):
            return c
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(cache) / "fasttrain" / "ffcv"


def cache_name(dataset: LTDataset, options: ConvertOptions) -> str:
    """`<dataset>-<list hash>-<options hash>.beton`: a cached file is found by content."""
    opts = json.dumps(asdict(options.resolved(dataset)), sort_keys=True)
    safe = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in dataset.name) or "dataset"
    return f"{safe}-{list_hash(dataset)[:16]}-{hashlib.sha256(opts.encode()).hexdigest()[:8]}.beton"


def cached_beton(dataset: LTDataset, options: ConvertOptions, cache_dir: str | Path | None = None, *,
                 workers: int | None = None, convert_missing: bool = True, progress: bool = True) -> Path:
    """The cached .beton of `dataset` (converted now if missing or stale)."""
    folder = Path(cache_dir) if cache_dir else default_cache_dir(dataset)
    path = folder / cache_name(dataset, options)
    if path.is_file():
        try:
            check_sidecar(path, read_sidecar(path), dataset)
            return path
        except DatasetError as exc:  # a stale cache entry is rebuilt, not an error
            log.warning("rebuilding cached .beton: %s", exc)
    if not convert_missing:
        raise DatasetError(f"no .beton for split {dataset.name!r} in {folder} (expected {path.name}); run "
                           "`fasttrain data convert-ffcv` or set loader.ffcv_convert=true")
    log.info("converting %s (%d images) to %s", dataset.name, len(dataset), path)
    convert(dataset, path, options, workers=workers, progress=progress)
    return path


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------


@dataclass
class _Encoded:
    """One image as it goes into the .beton: JPEG bytes (stored as they are) or raw pixels."""

    height: int
    width: int
    jpeg: bytes | None = None
    pixels: np.ndarray | None = None


def _keep_fraction(index: int, p: float) -> bool:
    """Deterministic Bernoulli(p) per sample index (proportion mode)."""
    digest = hashlib.blake2b(index.to_bytes(8, "little"), digest_size=8).digest()
    return int.from_bytes(digest, "little") / 2.0**64 < p


def _limit(img, max_resolution: int | None):
    """PIL image bounded to max_resolution on its longer side (antialiased bilinear)."""
    from PIL import Image

    if max_resolution is None or max(img.size) <= max_resolution:
        return img, False
    scale = max_resolution / max(img.size)
    size = (max(1, int(img.size[0] * scale)), max(1, int(img.size[1] * scale)))
    return img.resize(size, Image.BILINEAR), True


class _Samples:
    """The indexable dataset FFCV's writer reads in its worker processes.

    It never raises: a failing sample is reported through `failures` (a multiprocessing queue)
    and replaced by a 1x1 placeholder, and `abort` makes the remaining samples placeholders,
    because FFCV's writer waits forever for a worker that died. The caller deletes the file."""

    def __init__(self, dataset: LTDataset, options: ConvertOptions, page_size: int, failures, abort):
        self.ds = dataset
        self.opt = options
        self.page_size = page_size
        self.failures = failures
        self.abort = abort

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i: int):
        label = int(self.ds.labels[i])
        if self.abort.value:
            return _Encoded(1, 1, pixels=np.zeros((1, 1, 3), np.uint8)), label
        try:
            item = self._encode(int(i))
            nbytes = len(item.jpeg) if item.jpeg is not None else item.pixels.nbytes
            if nbytes > self.page_size:  # FFCV's writer would kill the worker on this one
                raise ValueError(f"{nbytes} bytes do not fit the page size {self.page_size}")
            return item, label
        except Exception as exc:  # reported by the parent, naming the file
            with self.abort.get_lock():
                self.abort.value = 1
            where = self.ds.paths[i] if self.ds.paths is not None else f"{self.ds.name}[{i}]"
            self.failures.put((int(i), f"{where}: {type(exc).__name__}: {exc}"))
            return _Encoded(1, 1, pixels=np.zeros((1, 1, 3), np.uint8)), label

    def _mode(self, i: int) -> str:
        mode = self.opt.write_mode
        if mode == "proportion":
            return "jpg" if _keep_fraction(i, self.opt.compress_probability) else "raw"
        return mode

    def _encode(self, i: int) -> _Encoded:
        import io

        from PIL import Image

        mode = self._mode(i)
        if self.ds.images is not None:
            img = Image.fromarray(np.ascontiguousarray(self.ds.images[i]))
            data = None
        else:
            with open(self.ds.paths[i], "rb") as f:
                data = f.read()
            img = Image.open(io.BytesIO(data))
            img.load()  # a full decode: truncated or corrupt files fail here, not in training
        keep_bytes = data is not None and img.format == "JPEG" and img.mode in ("RGB", "L") and mode == "jpg"
        img, resized = _limit(img, self.opt.max_resolution)
        if keep_bytes and not resized:
            return _Encoded(img.size[1], img.size[0], jpeg=data)
        rgb = img.convert("RGB")
        if mode == "jpg":
            out = io.BytesIO()
            rgb.save(out, format="JPEG", quality=self.opt.jpeg_quality)
            return _Encoded(rgb.size[1], rgb.size[0], jpeg=out.getvalue())
        return _Encoded(rgb.size[1], rgb.size[0], pixels=np.asarray(rgb, dtype=np.uint8))


def _image_field():
    """FFCV's RGBImageField with our per-sample encoder.

    The writer records a field's type by its exact class, so a subclass would make the file
    unreadable for FFCV's own readers; the encoder is therefore set on the instance. It writes
    FFCV's metadata layout (mode, width, height, data pointer) exactly as RGBImageField does."""
    from ffcv.fields import RGBImageField
    from ffcv.fields.rgb_image import IMAGE_MODES

    field = RGBImageField()

    def encode(destination, item: _Encoded, malloc):
        destination["height"], destination["width"] = item.height, item.width
        if item.jpeg is not None:
            destination["mode"] = IMAGE_MODES["jpg"]
            payload = np.frombuffer(item.jpeg, dtype=np.uint8)
        else:
            destination["mode"] = IMAGE_MODES["raw"]
            payload = np.ascontiguousarray(item.pixels, dtype=np.uint8).reshape(-1)
        destination["data_ptr"], storage = malloc(payload.nbytes)
        storage[:] = payload

    field.encode = encode
    return field


def _page_size(dataset: LTDataset, options: ConvertOptions) -> int:
    """FFCV's page size (8 MiB, its default), doubled until the largest sample fits in a page:
    a stored file (jpg mode), or the raw pixels (raw / proportion mode; sizes from the headers)."""
    from PIL import Image

    largest = 0
    if dataset.images is not None:
        largest = int(np.prod(dataset.images.shape[1:]))
    else:
        largest = max(os.path.getsize(p) for p in dataset.paths)
        if options.write_mode in ("raw", "proportion"):
            for p in dataset.paths:
                with Image.open(p) as img:  # header only
                    w, h = img.size
                if options.max_resolution and max(w, h) > options.max_resolution:
                    s = options.max_resolution / max(w, h)
                    w, h = max(1, int(w * s)), max(1, int(h * s))
                largest = max(largest, 3 * w * h)
    size = 1 << 23
    while size < largest + 4096:
        size <<= 1
    return size


def convert(dataset: LTDataset, out: str | Path, options: ConvertOptions = ConvertOptions(), *,
            workers: int | None = None, progress: bool = True) -> dict:
    """Write `dataset` to `out` (.beton) and its sidecar; returns the sidecar content."""
    import multiprocessing as mp

    try:
        from ffcv.fields import IntField
        from ffcv.writer import DatasetWriter
    except ImportError as exc:
        raise ImportError(f"convert-ffcv: {INSTALL_HINT}") from exc
    if len(dataset) == 0:
        raise DatasetError(f"{dataset.name}: nothing to convert (empty split)")
    options = options.resolved(dataset)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    workers = max(1, int(workers or os.cpu_count() or 1))
    tag = f"{os.getpid()}-{time.monotonic_ns() % 10**9}"
    tmp = out.parent / f".{out.name}.{tag}.partial"
    tmp_side = out.parent / f".{out.name}.json.{tag}.partial"
    failures, abort = mp.Queue(), mp.Value("i", 0)
    progress = progress and os.environ.get("FASTTRAIN_NO_TQDM") != "1"
    children_before = set(mp.active_children())
    writer = None
    try:
        page_size = _page_size(dataset, options)
        writer = DatasetWriter(str(tmp), {"image": _image_field(), "label": IntField()},
                               page_size=page_size, num_workers=min(workers, len(dataset)))
        with _writer_progress(progress):
            writer.from_indexed_dataset(_Samples(dataset, options, page_size, failures, abort), chunksize=64)
        errors = _collect(failures, bool(abort.value))
        if errors:
            raise DatasetError(f"cannot convert {dataset.name} to {out}: " + "; ".join(errors[:5]))
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        side = {**describe(dataset, options), "beton_bytes": tmp.stat().st_size,
                "ffcv_version": _ffcv_version(), "written": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        tmp_side.write_text(json.dumps(side, indent=1) + "\n")
        with open(tmp_side, "rb+") as f:
            os.fsync(f.fileno())
        # Sidecar first: a .beton under its final name is always complete and described.
        os.replace(tmp_side, sidecar_path(out))
        os.replace(tmp, out)
        return side
    except BaseException:
        # Interrupted or failed: FFCV's writer processes (ours: started by this call) stop
        # writing, and the shared metadata block FFCV frees only on success is released.
        for child in set(mp.active_children()) - children_before:
            child.terminate()
            child.join(timeout=5)
        block = getattr(writer, "metadata_sm", None)
        if hasattr(block, "unlink"):
            try:
                block.close()
                block.unlink()
            except (FileNotFoundError, OSError):
                pass
        raise
    finally:
        for p in (tmp, tmp_side):
            p.unlink(missing_ok=True)
        failures.close()


def _collect(failures, aborted: bool) -> list[str]:
    """The workers' failure messages (sorted by sample); waits briefly for one if a worker
    flagged a failure whose message is still in the queue's pipe."""
    import queue

    found = []
    while True:
        try:
            found.append(failures.get(timeout=5 if aborted and not found else 0.05))
        except queue.Empty:
            break
    if aborted and not found:
        return ["a worker failed without a message"]
    return [m for _, m in sorted(found)]


@contextmanager
def _writer_progress(enabled: bool):
    """FFCV's writer always draws a tqdm bar; without progress (or with FASTTRAIN_NO_TQDM=1) the
    bar it creates is a disabled one for the duration of the call."""
    import ffcv.writer

    if enabled:
        yield
        return
    original = ffcv.writer.tqdm
    ffcv.writer.tqdm = partial(original, disable=True)
    try:
        yield
    finally:
        ffcv.writer.tqdm = original


def _ffcv_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("ffcv")
    except PackageNotFoundError:  # pragma: no cover - importable but not installed as a distribution
        return "unknown"


# --------------------------------------------------------------------------------------------
# `fasttrain data convert-ffcv`
# --------------------------------------------------------------------------------------------


def add_cli(sub) -> None:
    """Register `convert-ffcv` on the `fasttrain data` subparsers."""
    p = sub.add_parser("convert-ffcv", help="write a dataset split as an FFCV .beton (+ .json sidecar)")
    p.add_argument("source", metavar="CONFIG_OR_DATASET",
                   help="a run config (YAML) or a data.dataset name (then --root and overrides set the data keys)")
    p.add_argument("overrides", nargs="*", metavar="section.key=value",
                   help="config overrides, e.g. data.train_list=...")
    p.add_argument("--split", choices=["train", "eval"], default="train")
    p.add_argument("--out", help="the .beton to write (default: the loader's cache, where loader.backend=ffcv "
                                 "finds it without further configuration)")
    p.add_argument("--root", help="data.root")
    p.add_argument("--mode", choices=list(WRITE_MODES), help="default: loader.ffcv_write_mode (auto)")
    p.add_argument("--max-resolution", type=int, help="bound the longer side (default: loader.ffcv_max_resolution)")
    p.add_argument("--quality", type=int, help="JPEG quality (default: loader.ffcv_jpeg_quality)")
    p.add_argument("--compress-probability", type=float,
                   help="proportion mode (default: loader.ffcv_compress_probability)")
    p.add_argument("--workers", type=int, help="writer processes (default: loader.ffcv_workers, else all cores)")
    p.add_argument("--no-progress", action="store_true")
