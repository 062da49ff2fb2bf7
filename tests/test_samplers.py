"""Sampler class frequencies (statistical tests, fixed seeds) and sharding/resume contracts."""
import math

import numpy as np
import pytest
import torch

from fasttrain.data.cifar import lt_counts
from fasttrain.samplers import build_sampler

COUNTS = lt_counts(500, 10, 100)  # 500 ... 5
LABELS = torch.repeat_interleave(torch.arange(10), torch.tensor(COUNTS))


def chi2_pvalue(observed, expected):
    stat = float(((observed - expected) ** 2 / expected).sum())
    dof = len(observed) - 1
    # Wilson-Hilferty approximation of the chi-square upper tail (no scipy dependency).
    z = ((stat / dof) ** (1 / 3) - (1 - 2 / (9 * dof))) / (2 / (9 * dof)) ** 0.5
    return 0.5 * (1 - math.erf(z / 2**0.5))


@pytest.mark.parametrize("kind,q,expected_fn", [
    ("class_balanced", 1.0, lambda n: np.ones_like(n)),
    ("sqrt", 0.5, lambda n: np.sqrt(n)),
    ("power", 0.2, lambda n: n ** 0.8),
    ("power", 0.0, lambda n: n.astype(float)),
    ("class_aware", 1.0, lambda n: np.ones_like(n)),
])
def test_class_frequencies_match_theory(kind, q, expected_fn):
    n = np.array(COUNTS, dtype=float)
    s = build_sampler(kind, LABELS, 10, seed=3, q=q, k=2, num_samples=40_000)
    draws = torch.cat([s.order(e) for e in range(3)])
    observed = np.bincount(LABELS[draws].numpy(), minlength=10).astype(float)
    p = expected_fn(n) / expected_fn(n).sum()
    assert np.allclose(s.class_probabilities().numpy(), p)
    # Fixed seed: the chi-square test must not reject at the 0.1% level.
    assert chi2_pvalue(observed, p * observed.sum()) > 1e-3
    # and every class is within 4 binomial standard deviations of its expectation
    expected = p * observed.sum()
    assert np.all(np.abs(observed - expected) < 4 * np.sqrt(expected * (1 - p)))


def test_instance_sampler_is_a_permutation_and_deterministic():
    s = build_sampler("instance", LABELS, 10, seed=1)
    o0, o1 = s.order(0), s.order(1)
    assert sorted(o0.tolist()) == list(range(len(LABELS)))
    assert not torch.equal(o0, o1)
    assert torch.equal(o0, build_sampler("instance", LABELS, 10, seed=1).order(0))
    assert not torch.equal(o0, build_sampler("instance", LABELS, 10, seed=2).order(0))


@pytest.mark.parametrize("kind", ["instance", "power", "class_aware"])
@pytest.mark.parametrize("world", [2, 3])
def test_ranks_partition_an_epoch(kind, world):
    full = build_sampler(kind, LABELS, 10, seed=5, q=0.5, k=2).order(4)
    parts = [build_sampler(kind, LABELS, 10, seed=5, q=0.5, k=2, rank=r, world_size=world).order(4)
             for r in range(world)]
    assert len({len(p) for p in parts}) == 1  # same length on every rank
    merged = torch.stack(parts, 1).flatten()[: len(full)]
    assert torch.equal(merged, full)  # together the ranks cover the epoch exactly once (plus wrap pad)


def test_class_aware_takes_k_consecutive_from_one_class():
    s = build_sampler("class_aware", LABELS, 10, seed=0, k=4)
    o = s.order(0)
    groups = LABELS[o][: len(o) // 4 * 4].view(-1, 4)
    assert (groups == groups[:, :1]).all()
    # within a class the queue cycles through all members before repeating
    tail = o[LABELS[o] == 9][:5]
    assert len(set(tail.tolist())) == 5


def test_state_dict_roundtrip():
    s = build_sampler("power", LABELS, 10, seed=7, q=0.2)
    s.set_epoch(3)
    s.position = 11
    t = build_sampler("power", LABELS, 10, seed=0, q=0.2)
    t.load_state_dict(s.state_dict())
    assert (t.epoch, t.position, t.seed) == (3, 11, 7)
    assert torch.equal(t.order(3), s.order(3))
