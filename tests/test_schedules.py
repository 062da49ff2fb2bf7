import math

import pytest

from fasttrain.schedules import lr_factor


def test_cosine_per_epoch():
    assert lr_factor("cosine", 0, 200) == 1.0
    assert lr_factor("cosine", 100, 200) == pytest.approx(0.5)


def test_glmc_code_offbyone_sequence():
    E = 135
    f = [lr_factor("code_offbyone", e, E) for e in range(E)]
    assert f[0] == 1.0  # epoch 0 at the optimiser's initial lr (no warm-up)
    assert f[1] == pytest.approx(0.1) and f[10] == pytest.approx(1.0)
    assert f[11] == pytest.approx(1.1)  # the off-by-one overshoot
    assert f[12] == pytest.approx(0.5 * (1 + math.cos(math.pi * 2 / (E - 9))))
    assert f[-1] == pytest.approx(0.5 * (1 + math.cos(math.pi * (E - 11) / (E - 9))))
    assert 0 < f[-1] < 1e-3


def test_warmup_cosine_and_multistep():
    assert lr_factor("warmup_cosine", 0, 135, warmup=10) == pytest.approx(0.1)
    assert lr_factor("warmup_cosine", 10, 135, warmup=10) == pytest.approx(1.0)
    # FBL: eps <= 5 -> eps/5 ; eps > 160 -> 0.01 ; eps > 180 -> 1e-4  (eps = e + 1)
    f = lambda e: lr_factor("warmup_multistep", e, 200, warmup=5, milestones=[160, 180], gamma=0.01)
    assert f(0) == pytest.approx(0.2) and f(4) == pytest.approx(1.0) and f(159) == 1.0
    assert f(160) == pytest.approx(0.01) and f(180) == pytest.approx(1e-4)
