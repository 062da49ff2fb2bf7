"""CIFAR-10-LT / CIFAR-100-LT: exact counts of n_i = int(n_max·ρ^(−i/(C−1)))
(docs: getting-started/data.md), both subset conventions, both few-shot rules, the pickle reading
path (generated files; real CIFAR-10 only if present)."""
from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest

from fasttrain.config import RunConfig
from fasttrain.data import build_datasets, cifar_split_seed
from fasttrain.data.cifar import build_cifar_lt, lt_counts, read_cifar_split, select_lt_indices
from fasttrain.data.index import FEW, MANY, MEDIUM, DatasetError, shot_groups

# (classes, rho) -> total, head counts, tail counts, many/medium/few (<20), few (<=20): the
# exponential profile of docs: getting-started/data.md, Datasets
TABLE = {
    (10, 100): (12406, [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50], [50], (8, 2, 0), 0),
    (10, 50): (13996, [5000], [100], (9, 1, 0), 0),
    (10, 10): (20431, [5000], [500], (10, 0, 0), 0),
    (100, 100): (10847, [500, 477, 455], [5, 5, 5], (35, 35, 30), 31),
    (100, 50): (12608, [500], [10], (41, 41, 18), 19),
    (100, 10): (19573, [500], [50], (69, 31, 0), 0),
}
CASES = sorted(TABLE)


def _group_sizes(counts, rule):
    g = shot_groups(np.asarray(counts), rule)
    return tuple(int((g == k).sum()) for k in (MANY, MEDIUM, FEW))


@pytest.mark.parametrize("classes,rho", CASES)
def test_lt_counts_match_methods_table(classes, rho):
    total, head, tail, groups, glmc_few = TABLE[(classes, rho)]
    counts = lt_counts(50000 // classes, classes, rho)
    assert sum(counts) == total
    assert counts[:len(head)] == head
    assert counts[-len(tail):] == tail
    assert all(a >= b for a, b in zip(counts, counts[1:]))  # class 0 is the head
    assert _group_sizes(counts, "<20") == groups
    many, medium, few = _group_sizes(counts, "<=20")
    assert (many, few) == (groups[0], glmc_few)


def _write_fake_cifar(root: Path, classes: int, per_class_train: int, per_class_test: int) -> None:
    """Same pickle layout as the official files. Every image stores its own index in its first
    three bytes, so a test can check that kept images and kept labels belong together."""
    rng = np.random.default_rng(classes)

    def batch(n_per_class: int, offset: int) -> tuple[np.ndarray, list[int]]:
        labels = rng.permutation(np.repeat(np.arange(classes), n_per_class))
        data = np.zeros((len(labels), 3072), dtype=np.uint8)
        idx = np.arange(len(labels)) + offset
        data[:, 0], data[:, 1], data[:, 2] = idx % 256, (idx // 256) % 256, idx // 65536
        return data, labels.tolist()

    if classes == 10:
        folder = root / "cifar-10-batches-py"
        folder.mkdir(parents=True)
        n_batch = per_class_train // 5
        for i in range(5):
            data, labels = batch(n_batch, i * n_batch * classes)
            with open(folder / f"data_batch_{i + 1}", "wb") as f:
                pickle.dump({b"batch_label": b"x", b"labels": labels, b"data": data}, f, protocol=2)
        data, labels = batch(per_class_test, 0)
        with open(folder / "test_batch", "wb") as f:
            pickle.dump({b"labels": labels, b"data": data}, f, protocol=2)
    else:
        folder = root / "cifar-100-python"
        folder.mkdir(parents=True)
        for name, n in (("train", per_class_train), ("test", per_class_test)):
            data, labels = batch(n, 0)
            entry = {b"filenames": [b"f"] * len(labels), b"fine_labels": labels,
                     b"coarse_labels": [c // 5 for c in labels], b"data": data}
            with open(folder / name, "wb") as f:
                pickle.dump(entry, f, protocol=2)


@pytest.fixture(scope="module")
def fake_root(tmp_path_factory) -> Path:
    """Full-size fake CIFAR-10 and CIFAR-100 train sets (5000 / 500 per class) so the counts
    are the real ones; small test sets."""
    root = tmp_path_factory.mktemp("cifar")
    _write_fake_cifar(root, 10, 5000, 20)
    _write_fake_cifar(root, 100, 500, 2)
    return root


def _index_of(images: np.ndarray) -> np.ndarray:
    # Row bytes 0, 1, 2 are the R plane's first three pixels: (y=0, x=0..2, channel R) in HWC.
    r = images[:, 0, 0:3, 0].astype(np.int64)
    return r[:, 0] + 256 * r[:, 1] + 65536 * r[:, 2]


@pytest.fixture(scope="module")
def fake_labels(fake_root) -> dict[int, np.ndarray]:
    return {c: read_cifar_split(fake_root, c, train=True)[1] for c in (10, 100)}


@pytest.mark.parametrize("classes,rho", CASES)
def test_build_cifar_lt_exact_counts(fake_root, fake_labels, classes, rho):
    total, head, tail, groups, _ = TABLE[(classes, rho)]
    train, test = build_cifar_lt(fake_root, classes, rho, "ldam", seed=0)
    assert len(train) == total
    assert train.counts.tolist() == lt_counts(50000 // classes, classes, rho)
    assert train.train_counts.tolist() == train.counts.tolist()
    assert test.train_counts.tolist() == train.counts.tolist()  # groups come from train counts
    assert _group_sizes(test.train_counts, "<20") == groups
    assert train.images.shape == (total, 32, 32, 3) and train.images.dtype == np.uint8
    idx = _index_of(train.images)
    assert len(np.unique(idx)) == total
    assert (fake_labels[classes][idx] == train.labels).all()  # images and labels stay paired


@pytest.mark.parametrize("classes,rho", CASES)
def test_both_conventions_same_counts_different_subsets(fake_labels, classes, rho):
    labels = fake_labels[classes]
    counts = lt_counts(50000 // classes, classes, rho)
    kept = {}
    for key, convention, seed in (("ldam", "ldam", 0), ("glmc", "glmc", 3407), ("glmc_seed0", "glmc", 0)):
        idx = select_lt_indices(labels, counts, convention, seed)
        assert np.bincount(labels[idx], minlength=classes).tolist() == counts
        assert len(np.unique(idx)) == len(idx)  # no duplicates (GLMC's post-fix sampler)
        kept[key] = set(idx.tolist())
    # Same counts, different images (GLMC issue #14) with each code's default seed. With equal
    # seeds the two draw the same subset: legacy RandomState.choice(replace=False) is
    # permutation(n)[:k], the same draws as shuffle-then-take-first.
    assert kept["ldam"] != kept["glmc"]
    assert kept["ldam"] == kept["glmc_seed0"]


def test_conventions_are_deterministic_and_seeded(fake_labels):
    labels, counts = fake_labels[10], lt_counts(5000, 10, 100)
    a = select_lt_indices(labels, counts, "ldam", 0)
    assert (a == select_lt_indices(labels, counts, "ldam", 0)).all()
    assert set(select_lt_indices(labels, counts, "glmc", 1)) != set(select_lt_indices(labels, counts, "glmc", 2))
    state = np.random.get_state()[1].copy()
    select_lt_indices(labels, counts, "glmc", 5)
    assert (np.random.get_state()[1] == state).all()  # global NumPy RNG left alone
    with pytest.raises(ValueError, match="cifar_split"):
        select_lt_indices(labels, counts, "other", 0)


def test_ldam_keeps_first_n_of_seed0_shuffle(fake_root, fake_labels):
    """The LDAM-DRW construction, written out: seed once, per class shuffle, keep the first n_i."""
    labels = fake_labels[10]
    rng = np.random.RandomState(0)
    expected = []
    for c, n in enumerate(lt_counts(5000, 10, 100)):
        idx = np.where(labels == c)[0]
        rng.shuffle(idx)
        expected.append(idx[:n])
    train, _ = build_cifar_lt(fake_root, 10, 100, "ldam", seed=0)
    assert (_index_of(train.images) == np.concatenate(expected)).all()


def test_build_datasets_split_seed_rules(fake_root):
    cfg = RunConfig()
    cfg.data.root, cfg.data.dataset, cfg.seed = str(fake_root), "cifar100_lt", 3407
    cfg.data.cifar_split = "ldam"
    assert cifar_split_seed(cfg) == 0
    ldam, test = build_datasets(cfg)
    assert len(ldam) == 10847 and len(test) == 200
    assert ldam.mean == (0.4914, 0.4822, 0.4465)
    cfg.data.cifar_split = "glmc"
    assert cifar_split_seed(cfg) == 3407
    glmc, _ = build_datasets(cfg)
    ref, _ = build_cifar_lt(fake_root, 100, 100, "glmc", seed=3407)
    assert (glmc.images == ref.images).all()
    cfg.data.split_seed = 7
    assert cifar_split_seed(cfg) == 7
    cfg.data.dataset = "cifar10_lt"
    c10, _ = build_datasets(cfg)
    assert c10.mean[0] == pytest.approx(0.49139968) and c10.num_classes == 10


def test_cifar100_reading_path(fake_root):
    images, labels = read_cifar_split(fake_root, 100, train=False)
    assert images.shape == (200, 32, 32, 3)
    assert np.bincount(labels).tolist() == [2] * 100


def test_missing_and_bad_cifar_files(tmp_path):
    with pytest.raises(DatasetError, match=r"cifar-100-python.*fasttrain data cifar100"):
        read_cifar_split(tmp_path, 100, train=True)
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    with open(folder / "train", "wb") as f:
        pickle.dump({b"data": np.zeros((2, 3072), np.uint8), b"fine_labels": [0, 100]}, f, protocol=2)
    with pytest.raises(DatasetError, match=r"train: label out of range"):
        read_cifar_split(tmp_path, 100, train=True)
    (folder / "test").write_bytes(b"not a pickle")
    with pytest.raises(DatasetError, match=r"test: not a CIFAR python pickle"):
        read_cifar_split(tmp_path, 100, train=False)


REAL = Path(os.environ.get("FASTTRAIN_DATA", "data")) / "cifar-10-batches-py"


@pytest.mark.skipif(not REAL.is_dir(), reason=f"real CIFAR-10 not at {REAL} (set FASTTRAIN_DATA)")
def test_real_cifar10_lt():
    train, test = build_cifar_lt(REAL.parent, 10, 100, "ldam", seed=0)
    assert train.counts.tolist() == TABLE[(10, 100)][1]
    _, labels = read_cifar_split(REAL.parent, 10, train=True)
    assert labels[:5].tolist() == [6, 9, 9, 4, 1]  # the official order
    assert test.labels[:5].tolist() == [3, 8, 8, 0, 6]
    assert np.bincount(test.labels).tolist() == [1000] * 10
