"""Single-stage logit-adjusting baselines: Balanced Softmax, Logit Adjustment (loss and post-hoc),
LDAM-DRW. Each loss is checked against a hand-written F.cross_entropy / log_softmax formula
(values and gradients), plus predict, DRW switching, margins, the cosine head, configs and a
short CPU training run on real CIFAR-10-LT."""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from fasttrain.config import ConfigError, load_config
from fasttrain.batch import Batch
from fasttrain.methods import METHODS, Progress
from fasttrain.methods.balanced_softmax import BalancedSoftmax, BalancedSoftmaxConfig
from fasttrain.methods.ldam_drw import LDAMDRW, LDAMDRWConfig, NormedLinear, ldam_margins
from fasttrain.methods.logit_adjust import LogitAdjust, LogitAdjustConfig
from helpers import method_context

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = sorted((ROOT / "configs" / "baselines").glob("*.yaml"))
COUNTS = (5000, 500, 50)
MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)


def context(counts=COUNTS):
    return method_context(counts, 0, MEAN, STD)


class FixedLogits(nn.Module):
    """A 'model' whose output is a trainable (B, C) tensor, so d loss / d logits is its .grad."""

    def __init__(self, logits: torch.Tensor):
        super().__init__()
        self.z = nn.Parameter(logits.clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert x.shape[0] == self.z.shape[0]
        return self.z


def make_batch(labels: torch.Tensor) -> Batch:
    g = torch.Generator().manual_seed(1)
    view = torch.randint(0, 256, (labels.shape[0], 3, 4, 4), dtype=torch.uint8, generator=g)
    return Batch(views=[view.contiguous(memory_format=torch.channels_last)], labels=labels,
                 stream=torch.zeros_like(labels), geometry=[None])


def logits_and_labels(b: int = 12, c: int = 3, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(b, c, generator=g) * 2.0
    # Every class present, head class dominant: Σ_i w_{y_i} ≠ B for weights summing to C (with
    # balanced labels the weighted mean and the batch mean would coincide).
    y = torch.cat([torch.arange(c), torch.zeros(b - c, dtype=torch.long)])
    return z, y


def method_loss_and_grad(method, z: torch.Tensor, y: torch.Tensor, epoch: int = 0):
    model = FixedLogits(z)
    loss, logs = method.loss(model, make_batch(y), Progress(epoch, 200))
    loss.backward()
    assert torch.equal(logs["loss"], loss.detach())
    return loss.detach(), model.z.grad


def reference_loss_and_grad(fn, z: torch.Tensor):
    zz = z.clone().requires_grad_(True)
    loss = fn(zz)
    loss.backward()
    return loss.detach(), zz.grad


def assert_same(a, b):
    torch.testing.assert_close(a[0], b[0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(a[1], b[1], rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------------------------
# Losses against hand-written formulas
# --------------------------------------------------------------------------------------------


def test_balanced_softmax_loss_is_ce_of_logits_plus_log_counts():
    z, y = logits_and_labels()
    log_n = torch.log(torch.tensor(COUNTS, dtype=torch.float64)).float()
    got = method_loss_and_grad(BalancedSoftmax(BalancedSoftmaxConfig(), context()), z, y)
    want = reference_loss_and_grad(lambda t: F.cross_entropy(t + log_n, y), z)
    assert_same(got, want)
    # The offset matters: it is not plain CE.
    assert not torch.allclose(got[0], F.cross_entropy(z, y))


@pytest.mark.parametrize("tau", [1.0, 0.5])
def test_logit_adjusted_loss_is_ce_of_logits_plus_tau_log_prior(tau):
    z, y = logits_and_labels(seed=1)
    n = torch.tensor(COUNTS, dtype=torch.float64)
    log_prior = torch.log(n / n.sum()).float()
    got = method_loss_and_grad(LogitAdjust(LogitAdjustConfig(tau=tau), context()), z, y)
    want = reference_loss_and_grad(lambda t: F.cross_entropy(t + tau * log_prior, y), z)
    assert_same(got, want)


def test_logit_adjust_posthoc_trains_plain_ce():
    z, y = logits_and_labels(seed=2)
    got = method_loss_and_grad(LogitAdjust(LogitAdjustConfig(posthoc=True), context()), z, y)
    want = reference_loss_and_grad(lambda t: F.cross_entropy(t, y), z)
    assert_same(got, want)


def official_ldam(z: torch.Tensor, y: torch.Tensor, m: torch.Tensor, s: float, weight=None) -> torch.Tensor:
    """The LDAM code's formula: CE(s * where(onehot, z - m_y, z), y, weight=w) (weighted mean)."""
    index = F.one_hot(y, z.shape[1]).bool()
    out = torch.where(index, z - m[y][:, None], z)
    return F.cross_entropy(s * out, y, weight=weight)


@pytest.mark.parametrize("reweight", ["none", "cb"])
def test_ldam_loss_matches_the_official_formula(reweight):
    z, y = logits_and_labels(seed=3)
    z = torch.tanh(z)  # cosine-like logits
    method = LDAMDRW(LDAMDRWConfig(reweight=reweight), context())
    m = ldam_margins(torch.tensor(COUNTS), 0.5)
    w = method.cb_weights if reweight == "cb" else None
    got = method_loss_and_grad(method, z, y)
    want = reference_loss_and_grad(lambda t: official_ldam(t, y, m, 30.0, w), z)
    assert_same(got, want)


def test_ldam_weighted_mean_off_divides_by_batch_size():
    z, y = logits_and_labels(seed=4)
    z = torch.tanh(z)
    method = LDAMDRW(LDAMDRWConfig(reweight="cb", weighted_mean=False, max_margin=0.3, scale=10.0), context())
    m = ldam_margins(torch.tensor(COUNTS), 0.3)
    w = method.cb_weights

    def formula(t):
        out = torch.where(F.one_hot(y, 3).bool(), t - m[y][:, None], t)
        return (w[y] * -torch.log_softmax(10.0 * out, dim=1).gather(1, y[:, None]).squeeze(1)).mean()

    assert_same(method_loss_and_grad(method, z, y), reference_loss_and_grad(formula, z))


def test_ldam_with_no_margin_unit_scale_is_plain_ce():
    z, y = logits_and_labels(seed=5)
    method = LDAMDRW(LDAMDRWConfig(max_margin=0.0, scale=1.0, reweight="none", normed_classifier=False), context())
    assert_same(method_loss_and_grad(method, z, y), reference_loss_and_grad(lambda t: F.cross_entropy(t, y), z))


# --------------------------------------------------------------------------------------------
# DRW, margins, cosine head
# --------------------------------------------------------------------------------------------


def test_drw_weights_switch_exactly_at_drw_start():
    method = LDAMDRW(LDAMDRWConfig(reweight="drw", drw_start=160), context())
    assert method.class_weights_at(0) is None and method.class_weights_at(159) is None
    assert torch.equal(method.class_weights_at(160), method.cb_weights)
    assert torch.equal(method.class_weights_at(199), method.cb_weights)
    # Effective-number weights, β = 0.9999, summing to C, rarest class heaviest.
    n = torch.tensor(COUNTS, dtype=torch.float64)
    w = (1 - 0.9999) / (1 - 0.9999 ** n)
    torch.testing.assert_close(method.cb_weights, (w / w.sum() * 3).float())
    assert method.cb_weights[2] > method.cb_weights[1] > method.cb_weights[0]

    # The loss itself changes at the boundary: unweighted at 159, weighted mean at 160.
    z, y = logits_and_labels(seed=6)
    z = torch.tanh(z)
    m = ldam_margins(torch.tensor(COUNTS), 0.5)
    before = method_loss_and_grad(method, z, y, epoch=159)
    after = method_loss_and_grad(method, z, y, epoch=160)
    assert_same(before, reference_loss_and_grad(lambda t: official_ldam(t, y, m, 30.0), z))
    assert_same(after, reference_loss_and_grad(lambda t: official_ldam(t, y, m, 30.0, method.cb_weights), z))
    assert not torch.allclose(before[1], after[1])

    assert LDAMDRW(LDAMDRWConfig(reweight="none"), context()).class_weights_at(199) is None
    assert torch.equal(LDAMDRW(LDAMDRWConfig(reweight="cb"), context()).class_weights_at(0), method.cb_weights)


def test_ldam_margins_for_known_counts():
    m = ldam_margins(torch.tensor([5000, 500, 50]), 0.5)
    # m_c = 0.5 * (n_min / n_c)^(1/4)
    want = torch.tensor([0.5 * 0.01 ** 0.25, 0.5 * 0.1 ** 0.25, 0.5])
    torch.testing.assert_close(m, want)
    torch.testing.assert_close(m, torch.tensor([0.158114, 0.281171, 0.5]), rtol=0, atol=1e-6)
    assert m.dtype == torch.float32


def test_normed_linear_outputs_cosine_similarity_in_fp32():
    torch.manual_seed(0)
    head = NormedLinear(8, 5)
    torch.testing.assert_close(head.weight.norm(dim=1), torch.ones(5))  # unit-norm init
    assert head.weight.abs().max() <= 1.0
    x = torch.randn(6, 8) * 3
    want = F.cosine_similarity(x[:, None, :], head.weight[None, :, :].detach(), dim=-1)
    torch.testing.assert_close(head(x), want, rtol=1e-5, atol=1e-6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = head(x.bfloat16())
    assert out.dtype == torch.float32


def test_ldam_model_head_follows_normed_classifier_switch():
    backbone = nn.Sequential(nn.Flatten(), nn.Linear(48, 4))
    backbone.feature_dim = 4
    assert isinstance(LDAMDRW(LDAMDRWConfig(), context()).build_model(backbone).fc, NormedLinear)
    plain = LDAMDRW(LDAMDRWConfig(normed_classifier=False), context()).build_model(backbone)
    assert isinstance(plain.fc, nn.Linear)
    with pytest.raises(ValueError, match="single-stage"):
        LDAMDRW(LDAMDRWConfig(), context()).build_model(backbone, previous=plain)


# --------------------------------------------------------------------------------------------
# Prediction
# --------------------------------------------------------------------------------------------


def test_predict_uses_plain_or_posthoc_adjusted_logits():
    z, _ = logits_and_labels(seed=7)
    x = torch.zeros(z.shape[0], 3, 4, 4)
    model = FixedLogits(z)
    torch.testing.assert_close(BalancedSoftmax(BalancedSoftmaxConfig(), context()).predict(model, x), z)
    torch.testing.assert_close(LogitAdjust(LogitAdjustConfig(), context()).predict(model, x), z)
    n = torch.tensor(COUNTS, dtype=torch.float64)
    adjusted = z - 0.7 * torch.log(n / n.sum()).float()
    torch.testing.assert_close(LogitAdjust(LogitAdjustConfig(tau=0.7, posthoc=True), context()).predict(model, x),
                               adjusted)
    # LDAM: no margin at test, cosine logits scaled by s (same argmax as the cosines).
    torch.testing.assert_close(LDAMDRW(LDAMDRWConfig(), context()).predict(model, x), 30.0 * z)


# --------------------------------------------------------------------------------------------
# Configs
# --------------------------------------------------------------------------------------------


def test_baseline_configs_load_with_their_methods():
    names = {p.stem for p in CONFIGS}
    for method in ("balanced_softmax", "logit_adjust", "ldam_drw"):
        for ds in ("cifar10", "cifar100"):
            assert f"{method}_{ds}_lt_r100" in names
    for path in CONFIGS:
        cfg = load_config(path)
        assert cfg.method.name in METHODS and path.stem.startswith(cfg.method.name)
        assert cfg.data.imbalance_ratio == 100 and cfg.model.arch == "resnet32"
        assert cfg.loader.batch_size == 128 and cfg.optim.lr == 0.1 and cfg.optim.weight_decay == 2e-4
        assert cfg.data.dataset == ("cifar100_lt" if "cifar100" in path.stem else "cifar10_lt")
        assert "arget" in path.read_text().split("base:")[0]  # names the literature number it targets


def test_bad_method_values_are_config_errors(tmp_path):
    path = ROOT / "configs" / "baselines" / "ldam_drw_cifar10_lt_r100.yaml"
    with pytest.raises(ConfigError, match="method.reweight"):
        load_config(path, ["method.reweight=drw2"])
    with pytest.raises(ConfigError, match="method.scale"):
        load_config(path, ["method.scale=0"])
    with pytest.raises(ConfigError, match="did you mean 'max_margin'"):
        load_config(path, ["method.max_margn=0.5"])
    with pytest.raises(ConfigError, match="method.tau"):
        load_config(ROOT / "configs" / "baselines" / "logit_adjust_cifar10_lt_r100.yaml", ["method.tau=-1"])


# --------------------------------------------------------------------------------------------
# Short CPU training runs on real CIFAR-10-LT
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("config, extra", [
    ("balanced_softmax_cifar10_lt_r100", []),
    ("logit_adjust_cifar10_lt_r100", ["method.posthoc=true"]),
    # Two epochs with DRW from epoch 1, so the weighted-mean branch trains too.
    ("ldam_drw_cifar10_lt_r100", ["train.epochs=2", "method.drw_start=1", "train.eval_every=2"]),
    ("ce_cb_focal_sigmoid_cifar10_lt_r100", []),  # Cui et al.'s sigmoid form: its optimizer groups
])
def test_short_cpu_training_run(cifar10_root, tmp_path, monkeypatch, config, extra):
    import fasttrain.build as build_mod
    import fasttrain.trainer as trainer_mod

    # Real data end to end, but evaluate on every 40th test image (250, 25 per class): the full
    # 10k-image ResNet-32 evaluation alone takes ~45 s on a 2-core CPU.
    build = build_mod.build_datasets

    def build_with_small_eval(cfg):
        train_set, eval_set = build(cfg)
        keep = slice(None, None, 40)
        return train_set, dataclasses.replace(eval_set, labels=eval_set.labels[keep], images=eval_set.images[keep])

    monkeypatch.setattr(build_mod, "build_datasets", build_with_small_eval)

    overrides = [f"data.root={cifar10_root}", f"out_dir={tmp_path}", "device=cpu", "train.epochs=1",
                 "train.max_steps_per_epoch=2", "loader.num_workers=0", "loader.batch_size=16",
                 "loader.eval_batch_size=250", "train.eval_every=1", *extra]
    # Subnormal intermediates appear after the first SGD steps and make the CPU kernels ~20x
    # slower (4 s instead of 0.2 s per step here). Flushing them to zero does not change what is
    # tested; the flag is per thread, so the run uses this (the main) thread only.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.set_flush_denormal(True)
    try:
        summary = trainer_mod.run_training(load_config(ROOT / "configs" / "baselines" / f"{config}.yaml", overrides))
    finally:
        torch.set_flush_denormal(False)
        torch.set_num_threads(threads)
    losses = [e["train_loss"] for e in summary["epochs"]]
    assert losses and all(math.isfinite(v) and v > 0 for v in losses), losses
    assert 0.0 <= summary["final"]["top1"] <= 100.0 and summary["final"]["many_classes"] == 8
    assert (tmp_path / config / "last.pt").is_file()


# --------------------------------------------------------------------------------------------
# loss.label_smoothing
# --------------------------------------------------------------------------------------------


def test_label_smoothing_turns_each_ce_loss_into_torch_smoothed_cross_entropy():
    """ctx.label_smoothing (loss.label_smoothing) gives F.cross_entropy(label_smoothing=eps), values and
    gradients: CE with class-balanced weights and the weighted mean (torch's weighted mean, weights on
    the smoothed target), Balanced Softmax (its offset unchanged), LDAM-DRW (margin and scale unchanged)."""
    from fasttrain.methods.ce import CEConfig, CrossEntropy

    eps = 0.1
    ctx = dataclasses.replace(context(), label_smoothing=eps)
    z, y = logits_and_labels(seed=6)
    ce = CrossEntropy(CEConfig(reweight="cb"), ctx)
    w = ce.class_weights
    assert_same(method_loss_and_grad(ce, z, y),
                reference_loss_and_grad(lambda t: F.cross_entropy(t, y, weight=w, label_smoothing=eps), z))
    log_n = torch.log(torch.tensor(COUNTS, dtype=torch.float64)).float()
    assert_same(method_loss_and_grad(BalancedSoftmax(BalancedSoftmaxConfig(), ctx), z, y),
                reference_loss_and_grad(lambda t: F.cross_entropy(t + log_n, y, label_smoothing=eps), z))
    ldam = LDAMDRW(LDAMDRWConfig(reweight="cb"), ctx)
    m, zc = ldam_margins(torch.tensor(COUNTS), 0.5), torch.tanh(z)

    def smoothed_ldam(t):
        out = torch.where(F.one_hot(y, 3).bool(), t - m[y][:, None], t)
        return F.cross_entropy(30.0 * out, y, weight=ldam.cb_weights, label_smoothing=eps)

    assert_same(method_loss_and_grad(ldam, zc, y), reference_loss_and_grad(smoothed_ldam, zc))
    # The smoothing is really on: eps = 0 is the plain weighted CE.
    assert not torch.allclose(method_loss_and_grad(ce, z, y)[0], F.cross_entropy(z, y, weight=w))


def test_a_run_with_loss_label_smoothing_trains_the_smoothed_cross_entropy(tmp_path):
    """The config key reaches the method through the run builder: one training batch of a tiny CE run
    gives the loss F.cross_entropy(label_smoothing=eps) gives on the model's logits."""
    from helpers import lt_arrays

    from fasttrain.build import build_run
    from fasttrain.config import config_from_dict

    ds = lt_arrays()
    cfg = config_from_dict({"device": "cpu", "out_dir": str(tmp_path), "method": {"name": "ce"},
                            "loss": {"label_smoothing": 0.2}, "model": {"arch": "resnet32"},
                            "loader": {"backend": "tensor", "batch_size": 8},
                            "train": {"amp": "fp32", "loss_impl": "torch"}}, "test")
    run = build_run(cfg, training=True, datasets=(ds, ds))
    assert run.method.ctx.label_smoothing == 0.2
    run.model.train()
    run.train_loader.set_epoch(0)
    batch = next(iter(run.train_loader))
    loss, logs = run.method.loss(run.model, batch, Progress(0, 1))
    (x,) = run.augmenter.views(batch)
    logits = run.model(x).float()
    torch.testing.assert_close(loss, F.cross_entropy(logits, batch.labels, label_smoothing=0.2))
    assert not torch.allclose(loss, F.cross_entropy(logits, batch.labels))


def test_label_smoothing_is_applied_or_refused_by_name_per_method():
    """Every built-in method that trains applies it; the losses that are not the soft-label CE refuse a
    non-zero value naming why; a post-hoc stage (nothing trained) accepts the run's value; a value
    outside [0, 1] is a config error."""
    from fasttrain.config import config_from_dict

    def config(method: str, eps: float = 0.1, **keys):
        epochs = 0 if not METHODS[method].stage.trains else 1
        return config_from_dict({"method": {"name": method, **keys}, "loss": {"label_smoothing": eps},
                                 "train": {"epochs": epochs}}, "test")

    assert all(cls.applies_label_smoothing or not cls.stage.trains for cls in METHODS.values())
    assert config("ce").loss.label_smoothing == 0.1 and config("tau_norm").loss.label_smoothing == 0.1
    assert config("maxnorm", loss="cb_ce").loss.label_smoothing == 0.1
    with pytest.raises(ConfigError, match=r"loss.label_smoothing: got 0.1, but method ce with method.focal_gamma"):
        config("ce", focal_gamma=2.0)
    with pytest.raises(ConfigError, match=r"loss.label_smoothing: got 0.1, but method maxnorm .*cb_softmax_bce"):
        config("maxnorm")
    assert config("ce", eps=0.0, focal_gamma=2.0).loss.label_smoothing == 0.0
    with pytest.raises(ConfigError, match=r"loss.label_smoothing: expected a value in \[0, 1\], got 1.5"):
        config("ce", eps=1.5)
