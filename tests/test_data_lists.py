"""List-file datasets: shipped lists, generated lists, every error names file and line."""
from __future__ import annotations

import gzip
import subprocess
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest

from fasttrain.config import RunConfig
from fasttrain.data import build_datasets
from fasttrain.data.cli import main as data_main
from fasttrain.data.folder import build_folder_dataset
from fasttrain.data.index import DatasetError
from fasttrain.data.lists import (SPECS, UPSTREAM_BLOB_IDS, ListChecksumWarning, build_benchmark,
                                  build_list_dataset, check_blob_id, git_blob_id, parse_list, shipped_list)

# /work/shared/data/README.md: file -> (lines, classes, per-class min, max)
SHIPPED = {
    "ImageNet_LT_val.txt": (20000, 1000, 20, 20),
    "ImageNet_LT_test.txt": (50000, 1000, 50, 50),
    "Places_LT_train.txt": (62500, 365, 5, 4980),
    "Places_LT_val.txt": (7300, 365, 20, 20),
    "Places_LT_test.txt": (36500, 365, 100, 100),
    "iNaturalist18_val.txt": (24426, 8142, 3, 3),
}


def _spec_of(name: str):
    return next(s for s in SPECS.values() if name in s.shipped)


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_shipped_lists_parse_and_match_upstream(name):
    lines, classes, lo, hi = SHIPPED[name]
    spec = _spec_of(name)
    path = shipped_list(spec, name)
    assert path.is_file(), path
    lst = parse_list(path, spec.num_classes)
    counts = np.bincount(lst.labels, minlength=classes)
    assert len(lst.labels) == lines and spec.num_classes == classes
    assert counts.min() == lo and counts.max() == hi
    assert len(set(lst.relpaths)) == lines
    assert check_blob_id(path, UPSTREAM_BLOB_IDS[name]) == (True, UPSTREAM_BLOB_IDS[name])


def test_places_lt_groups_from_shipped_train_list():
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # shipped lists are the upstream ones: no warning
        train, test = build_benchmark("places_lt", "/nonexistent", check_files=False)
    assert (len(train), len(test)) == (62500, 36500)
    assert np.bincount(train.shot_groups("<20"), minlength=3).tolist() == [131, 163, 71]
    assert test.train_counts.tolist() == train.counts.tolist()
    assert train.paths[0].startswith("/nonexistent/train/")
    _, val = build_benchmark("places_lt", "/nonexistent", eval_split="val", check_files=False)
    assert len(val) == 7300


def test_git_blob_id_matches_git(tmp_path):
    content = b"train/a/1.jpg 0\ntrain/b/2.jpg 1\n"
    f = tmp_path / "x.txt"
    f.write_bytes(content)
    if shutil.which("git"):
        out = subprocess.run(["git", "hash-object", str(f)], capture_output=True, text=True, check=True)
        assert git_blob_id(content) == out.stdout.strip()
    assert git_blob_id(b"") == "e69de29bb2d1d6434b8b29ae775ad8c2e48c5391"  # git's empty blob


def _make_tree(root: Path, entries: list[tuple[str, int]]) -> None:
    for rel, _ in entries:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(b"\xff\xd8")


def _write_list(path: Path, entries: list[tuple[str, int]], gz: bool = False) -> Path:
    text = "".join(f"{p} {c}\n" for p, c in entries).encode()
    path.write_bytes(gzip.compress(text) if gz else text)
    return path


def test_generated_imagenet_lt_lists(tmp_path):
    """ImageNet-LT with a user train list: checked against the upstream blob id (warning)."""
    counts = [130 if c < 5 else (21 if c < 900 else 3) for c in range(1000)]
    train = [(f"train/n{c:05d}/{i}.JPEG", c) for c in range(1000) for i in range(counts[c])]
    test = [(f"val/n{c:05d}/{i}.JPEG", c) for c in range(1000) for i in range(2)]
    _make_tree(tmp_path, train + test)
    tl = _write_list(tmp_path / "ImageNet_LT_train.txt", train)
    el = _write_list(tmp_path / "my_test.txt.gz", test, gz=True)
    with pytest.warns(ListChecksumWarning) as rec:
        tr, ev = build_benchmark("imagenet_lt", tmp_path, tl, el)
    text = " ".join(str(w.message) for w in rec)
    assert UPSTREAM_BLOB_IDS["ImageNet_LT_train.txt"] in text and git_blob_id(tl.read_bytes()) in text
    assert tr.counts.tolist() == counts and ev.counts.tolist() == [2] * 1000
    assert np.bincount(ev.shot_groups("<20"), minlength=3).tolist() == [5, 895, 100]
    assert tr.paths[0] == str(tmp_path / "train/n00000/0.JPEG")
    assert tr.extra["upstream_lists"] is False
    # Through the config: data.train_list / data.test_list.
    cfg = RunConfig()
    cfg.data.dataset, cfg.data.root = "imagenet_lt", str(tmp_path)
    cfg.data.train_list, cfg.data.test_list = str(tl), str(el)
    with pytest.warns(ListChecksumWarning):
        tr2, _ = build_datasets(cfg)
    assert tr2.counts.tolist() == counts and tr2.mean == (0.485, 0.456, 0.406)


def test_missing_train_list_explains_where_to_get_it():
    with pytest.raises(DatasetError, match=r"classifier-balancing.*data/iNaturalist18/iNaturalist18_train\.txt"
                                           r".*4accdb7584d2f0a5106c40a33ed6afa392189bcc"):
        build_benchmark("inat2018", "/x")


def _small(tmp_path: Path) -> tuple[Path, Path, list, list]:
    train = [("a/1.jpg", 0), ("a/2.jpg", 0), ("b/1.jpg", 1), ("c/1.jpg", 2)]
    test = [("t/1.jpg", 0), ("t/2.jpg", 2)]
    _make_tree(tmp_path, train + test)
    return (_write_list(tmp_path / "train.txt", train), _write_list(tmp_path / "test.txt", test), train, test)


def test_generic_list_dataset_infers_classes(tmp_path):
    tl, el, _, _ = _small(tmp_path)
    tr, ev = build_list_dataset("x", tmp_path, tl, el)
    assert tr.num_classes == 3 and tr.counts.tolist() == [2, 1, 1] and ev.labels.tolist() == [0, 2]


@pytest.mark.parametrize("line,pattern", [
    ("a/3.jpg", r"train\.txt:3: bad line 'a/3\.jpg'"),
    ("a/3.jpg x", r"train\.txt:3: bad line"),
    ("a/3.jpg 1 2", r"train\.txt:3: bad line"),
    ("a/3.jpg 7", r"train\.txt:3: label 7 out of range 0\.\.2"),
    ("a/3.jpg -1", r"train\.txt:3: label -1 out of range"),
])
def test_bad_lines_name_file_and_line(tmp_path, line, pattern):
    tl, el, _, _ = _small(tmp_path)
    (tmp_path / "a/3.jpg").write_bytes(b"")
    lines = tl.read_text().splitlines()
    lines.insert(2, line)
    tl.write_text("\n".join(lines) + "\n")
    with pytest.raises(DatasetError, match=pattern):
        build_list_dataset("x", tmp_path, tl, el, num_classes=3)


def test_gzipped_list_errors_too(tmp_path):
    _, el, train, _ = _small(tmp_path)
    tl = _write_list(tmp_path / "train.txt.gz", train + [("b/9.jpg", 5)], gz=True)
    with pytest.raises(DatasetError, match=r"train\.txt\.gz:5: label 5 out of range 0\.\.2"):
        build_list_dataset("x", tmp_path, tl, el, num_classes=3)


def test_missing_image_names_file_and_line(tmp_path):
    tl, el, _, _ = _small(tmp_path)
    (tmp_path / "b/1.jpg").unlink()
    (tmp_path / "t/2.jpg").unlink()
    with pytest.raises(DatasetError, match=r"train\.txt:3: image not found: .*b/1\.jpg"):
        build_list_dataset("x", tmp_path, tl, el)
    (tmp_path / "b/1.jpg").write_bytes(b"")
    with pytest.raises(DatasetError, match=r"test\.txt:2: image not found"):
        build_list_dataset("x", tmp_path, tl, el)
    tr, _ = build_list_dataset("x", tmp_path, tl, el, check_files=False)
    assert len(tr) == 4


def test_empty_class_is_an_error(tmp_path):
    tl, el, _, _ = _small(tmp_path)
    with pytest.raises(DatasetError, match=r"train\.txt: 2 of 5 classes have no training samples \(classes 3, 4;"):
        build_list_dataset("x", tmp_path, tl, el, num_classes=5)


def test_empty_and_missing_list_files(tmp_path):
    (tmp_path / "e.txt").write_text("\n\n")
    with pytest.raises(DatasetError, match=r"e\.txt: list file has no entries"):
        parse_list(tmp_path / "e.txt")
    with pytest.raises(DatasetError, match=r"nope\.txt: list file not found"):
        parse_list(tmp_path / "nope.txt")


def test_verify_list_cli(tmp_path, capsys):
    spec = SPECS["places_lt"]
    assert data_main(["verify-list", str(shipped_list(spec, "Places_LT_val.txt"))]) == 0
    assert "b93a2ca58ccb7f3b671c176f395a70bf52c95533 (matches)" in capsys.readouterr().out
    bad = tmp_path / "ImageNet_LT_train.txt"
    bad.write_text("x 0\n")
    assert data_main(["verify-list", str(bad)]) == 1
    assert "expected a063f095fcd475db4cf8b0658c4b73955535bbf9" in capsys.readouterr().out


def test_folder_dataset(tmp_path):
    for split, per in (("train", {"cat": 3, "ant": 1, "dog": 2}), ("test", {"cat": 1, "dog": 1})):
        for cls, n in per.items():
            d = tmp_path / split / cls
            d.mkdir(parents=True)
            for i in range(n):
                (d / f"{i}.JPG").write_bytes(b"")
            (d / "notes.txt").write_text("ignored")
    tr, ev = build_folder_dataset(tmp_path)
    assert tr.extra["classes"] == ["ant", "cat", "dog"]
    assert tr.counts.tolist() == [1, 3, 2] and ev.labels.tolist() == [1, 2]
    assert ev.train_counts.tolist() == [1, 3, 2]
    (tmp_path / "test" / "emu").mkdir()
    with pytest.raises(DatasetError, match=r"test: class folder\(s\) not in .*train: emu"):
        build_folder_dataset(tmp_path)
    (tmp_path / "train" / "emu").mkdir()
    with pytest.raises(DatasetError, match=r"train: class folder\(s\) without images \(emu\)"):
        build_folder_dataset(tmp_path)
    (tmp_path / "train" / "emu" / "0.png").write_bytes(b"")
    with pytest.raises(DatasetError, match=r"val: folder not found"):
        build_folder_dataset(tmp_path, eval_split="val")
