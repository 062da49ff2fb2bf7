"""`fasttrain data imagenet_lt|inat2018|places_lt`: on a generated fake ImageNet-LT tree (4 classes,
tiny JPEGs) the check reports exactly the files planted missing, the lists' blob ids, the class
counts and groups, and writes its JSON report; `--resize` writes a resized copy that resumes."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from PIL import Image

from fasttrain.data import lists
from fasttrain.data.cli import main as data_main
from fasttrain.data.lists import UPSTREAM_BLOB_IDS, git_blob_id
from fasttrain.data.prepare import prepare_dataset, resize_copy, target_size

TRAIN_COUNTS = (130, 40, 20, 3)  # many, medium, medium ("<20") or few ("<=20", GLMC's rule), few
VAL_PER_CLASS, TEST_PER_CLASS = 2, 3
SIZES = ((48, 36), (30, 52))  # landscape / portrait, alternating


def _jpeg(path: Path, size: tuple[int, int], colour: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (colour, 255 - colour, 90)).save(path, "JPEG", quality=90)


def _write_list(path: Path, entries: list[tuple[str, int]]) -> Path:
    path.write_text("".join(f"{rel} {label}\n" for rel, label in entries))
    return path


@pytest.fixture
def fake_imagenet_lt(tmp_path, monkeypatch):
    """An ImageNet-LT-shaped tree: root/train/<wnid>/*.JPEG, root/val/<wnid>/*.JPEG and the three
    lists (val drawn from train images as in ImageNet-LT); 4 classes instead of 1000."""
    monkeypatch.setitem(lists.SPECS, "imagenet_lt", dataclasses.replace(lists.SPECS["imagenet_lt"], num_classes=4))
    root = tmp_path / "imagenet"
    wnids = [f"n0000000{c}" for c in range(len(TRAIN_COUNTS))]
    train, val, test = [], [], []
    for c, n in enumerate(TRAIN_COUNTS):
        for i in range(n + VAL_PER_CLASS):
            rel = f"train/{wnids[c]}/{wnids[c]}_{i}.JPEG"
            _jpeg(root / rel, SIZES[i % 2], 40 * c)
            (train if i < n else val).append((rel, c))
        for i in range(TEST_PER_CLASS):
            rel = f"val/{wnids[c]}/ILSVRC2012_val_{c:04d}{i:04d}.JPEG"
            _jpeg(root / rel, SIZES[i % 2], 40 * c + 5)
            test.append((rel, c))
    files = {"train": _write_list(tmp_path / "ImageNet_LT_train.txt", train),
             "val": _write_list(tmp_path / "ImageNet_LT_val.txt", val),
             "test": _write_list(tmp_path / "ImageNet_LT_test.txt", test)}
    return root, files, {"train": train, "val": val, "test": test}


def _args(root: Path, files: dict) -> list[str]:
    return ["--root", str(root), "--train-list", str(files["train"]), "--val-list", str(files["val"]),
            "--test-list", str(files["test"])]


def test_reports_exactly_the_planted_missing_files(fake_imagenet_lt, capsys):
    root, files, entries = fake_imagenet_lt
    planted = {"train": [entries["train"][5][0], entries["train"][170][0]], "test": [entries["test"][7][0]]}
    for rels in planted.values():
        for rel in rels:
            (root / rel).unlink()
    assert data_main(["imagenet_lt", *_args(root, files)]) == 1
    out = capsys.readouterr().out
    report = json.loads((root / "fasttrain_imagenet_lt.json").read_text())
    by_split = {c["split"]: c for c in report["lists"]}
    assert {s: c["missing"] for s, c in by_split.items()} == {"train": 2, "val": 0, "test": 1}
    assert by_split["train"]["first_missing"] == [f"{planted['train'][0]} (line 6)", f"{planted['train'][1]} (line 171)"]
    assert by_split["test"]["first_missing"] == [f"{planted['test'][0]} (line 8)"]
    assert {s: c["entries"] for s, c in by_split.items()} == {"train": sum(TRAIN_COUNTS), "val": 8, "test": 12}
    # The missing files are the only problems; the custom lists are warnings naming both blob ids.
    assert len(report["problems"]) == 2 and all("files missing" in p for p in report["problems"])
    assert by_split["train"]["blob_id"] == git_blob_id(files["train"].read_bytes())
    assert by_split["train"]["upstream_blob_id"] == UPSTREAM_BLOB_IDS["ImageNet_LT_train.txt"]
    assert not by_split["train"]["matches_upstream"]
    assert any(UPSTREAM_BLOB_IDS["ImageNet_LT_test.txt"] in w for w in report["warnings"])
    assert report["classes"] == {
        "num_classes": 4, "train_images": 193, "empty_classes": 0, "first_empty": [], "min": 3, "max": 130,
        "median": 30.0, "imbalance": 43.33, "groups<20": {"many": 1, "medium": 2, "few": 1},
        "groups<=20": {"many": 1, "medium": 1, "few": 2}}
    assert "NOT READY" in out and f"missing: {planted['test'][0]} (line 8)" in out
    # The planted files back in place: complete, exit code 0.
    for rels in planted.values():
        for rel in rels:
            _jpeg(root / rel, SIZES[0], 0)
    assert data_main(["imagenet_lt", *_args(root, files)]) == 0
    assert json.loads((root / "fasttrain_imagenet_lt.json").read_text())["ok"] is True


def test_layout_hints_for_a_wrong_root_and_a_flat_val_folder(fake_imagenet_lt):
    root, files, _ = fake_imagenet_lt
    report = prepare_dataset("imagenet_lt", root / "train", train_list=files["train"], val_list=files["val"],
                             test_list=files["test"])
    assert not report.ok and any("train/: folder not found" in p for p in report.problems)
    assert any("data.root should be the ImageNet-2012 root holding train/ and val/" in w for w in report.warnings)
    flat = root / "val" / "ILSVRC2012_val_00000001.JPEG"  # ImageNet's val as shipped: flat files
    _jpeg(flat, SIZES[0], 0)
    (root / "val" / "n00000000" / Path(files["test"].read_text().split()[0]).name).unlink()
    report = prepare_dataset("imagenet_lt", root, train_list=files["train"], val_list=files["val"],
                             test_list=files["test"])
    assert any("holds the validation images flat" in w for w in report.warnings)


def test_shipped_lists_and_a_missing_train_list(tmp_path):
    report = prepare_dataset("inat2018", tmp_path)
    assert [c.split for c in report.lists] == ["val/test"]  # iNat: the official val set is the test set
    assert report.lists[0].matches_upstream and report.lists[0].missing == 24426
    assert any("train list not given" in p and UPSTREAM_BLOB_IDS["iNaturalist18_train.txt"] in p
               for p in report.problems)
    places = prepare_dataset("places_lt", tmp_path, show=2)
    assert [(c.split, c.entries, c.missing, c.matches_upstream) for c in places.lists] == [
        ("train", 62500, 62500, True), ("val", 7300, 7300, True), ("test", 36500, 36500, True)]
    assert places.lists[0].first_missing == ["train/airfield/00004851.jpg (line 1)", "train/airfield/00004596.jpg (line 2)"]
    assert places.classes["groups<20"] == {"many": 131, "medium": 163, "few": 71}  # as the dataset builder counts


def test_resized_copy_short_side_aspect_resume_and_failures(tmp_path):
    src, dst = tmp_path / "src", tmp_path / "dst"
    _jpeg(src / "a" / "big.JPEG", (400, 300), 10)
    _jpeg(src / "a" / "tall.JPEG", (120, 500), 20)
    _jpeg(src / "b" / "small.JPEG", (50, 40), 30)  # short side already <= 64: copied as is
    Image.new("RGB", (300, 200)).save(src / "b" / "png_named.JPEG", "PNG")  # a PNG under a .JPEG name
    (src / "b" / "broken.JPEG").write_bytes(b"\xff\xd8 not a jpeg")
    rels = ["a/big.JPEG", "a/tall.JPEG", "b/small.JPEG", "b/png_named.JPEG", "b/broken.JPEG", "b/absent.JPEG"]
    result = resize_copy(src, dst, rels, 64, quality=85, workers=2, chunk=2)
    assert {k: result[k] for k in ("resized", "copied", "kept", "missing", "failed")} == \
           {"resized": 3, "copied": 1, "kept": 0, "missing": 1, "failed": 1}
    assert result["first_failed"][0].startswith("b/broken.JPEG: ")
    for rel, size in (("a/big.JPEG", (85, 64)), ("a/tall.JPEG", (64, 267)), ("b/png_named.JPEG", (96, 64))):
        with Image.open(dst / rel) as img:
            assert (img.format, img.size) == ("JPEG", size), rel
    assert (dst / "b/small.JPEG").read_bytes() == (src / "b/small.JPEG").read_bytes()
    assert not list(dst.rglob("*.tmp-*"))  # nothing half-written left behind
    again = resize_copy(src, dst, rels, 64)
    assert (again["kept"], again["resized"]) == (4, 0)
    assert target_size(500, 375, 256) == (341, 256) and target_size(375, 500, 256) == (256, 341)


def test_cli_resize_writes_the_copy_and_the_report(fake_imagenet_lt, capsys):
    root, files, entries = fake_imagenet_lt
    out = root.parent / "imagenet_24"
    assert data_main(["imagenet_lt", *_args(root, files), "--resize", "24", "--out", str(out), "--workers", "1"]) == 0
    resized = json.loads((root / "fasttrain_imagenet_lt.json").read_text())["resized"]
    total = len({rel for split in entries.values() for rel, _ in split})
    assert resized["images"] == total and resized["resized"] == total and resized["failed"] == 0
    with Image.open(out / entries["test"][0][0]) as img:
        assert min(img.size) == 24
    # The copy is a complete tree for the same lists (data.root: imagenet_24).
    assert prepare_dataset("imagenet_lt", out, train_list=files["train"], val_list=files["val"],
                           test_list=files["test"]).ok
    assert data_main(["imagenet_lt", "--root", str(root), "--resize", "24"]) == 1
    assert "--resize SHORT_SIDE and --out DIR go together" in capsys.readouterr().err
