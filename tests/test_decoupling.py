"""Decoupled classifier stages (cRT, LWS, τ-norm) and CE's class-balanced / focal options."""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from helpers import TinyBackbone, method_context

from fasttrain.augment import Augmenter
from fasttrain.batch import Batch
from fasttrain.config import ConfigError, load_config
from fasttrain.methods import Progress
from fasttrain.methods.ce import CEConfig, CrossEntropy, focal_loss, sigmoid_focal_loss
from fasttrain.methods.crt import CRT, CRTConfig
from fasttrain.methods.lws import LWS, LWSConfig
from fasttrain.methods.priors import effective_number_weights
from fasttrain.methods.retrain import ScaledLinear
from fasttrain.methods.tau_norm import TauNorm, TauNormConfig, tau_normalized_logits
from fasttrain.models import Classifier

ROOT = Path(__file__).resolve().parent.parent
COUNTS = (100, 10, 1)


def ce_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return Classifier(TinyBackbone(bn=True), len(COUNTS))


def image_batch(n: int = 12, seed: int = 0) -> Batch:
    g = torch.Generator().manual_seed(seed)
    views = [torch.randint(0, 256, (n, 3, 8, 8), dtype=torch.uint8, generator=g).contiguous(memory_format=torch.channels_last)]
    return Batch(views=views, labels=torch.randint(0, 3, (n,), generator=g), stream=torch.zeros(n, dtype=torch.long))


def train_steps(method, model, steps: int = 3) -> None:
    method.prepare(model)
    opt = torch.optim.SGD(method.trainable_parameters(model), lr=0.5, momentum=0.9)
    model.train()
    for i in range(steps):
        loss, _ = method.loss(model, image_batch(seed=i), Progress(0, 1))
        opt.zero_grad()
        loss.backward()
        opt.step()


def snapshot(module: nn.Module) -> dict:
    return {k: v.clone() for k, v in module.state_dict().items()}


# --- class-balanced and focal options of CE ----------------------------------------------------------


def test_cb_weights_and_weighted_ce_against_hand_values():
    w = effective_number_weights(torch.tensor([5000, 500, 50]), 0.9999)
    raw = [(1 - 0.9999) / (1 - 0.9999 ** n) for n in (5000, 500, 50)]
    torch.testing.assert_close(w, torch.tensor([3 * r / sum(raw) for r in raw], dtype=torch.float32))
    method = CrossEntropy(CEConfig(reweight="cb"), method_context((5000, 500, 50)))
    logits = torch.randn(9, 3, generator=torch.Generator().manual_seed(0))
    y = torch.tensor([0, 0, 0, 0, 1, 1, 2, 0, 1])

    class Fixed(nn.Module):
        def forward(self, x):
            return logits

    loss, _ = method.loss(Fixed(), dataclasses.replace(image_batch(9), labels=y), Progress(0, 1))
    torch.testing.assert_close(loss, F.cross_entropy(logits, y, weight=w))  # weighted mean, as the code


def test_focal_loss_hand_values_and_code_form():
    z, y = torch.zeros(1, 2), torch.tensor([0])  # p = 1/2, CE = ln 2
    assert math.isclose(focal_loss(z, y, 2.0).item(), 0.25 * math.log(2), rel_tol=1e-6)
    w = torch.tensor([2.0, 1.0])  # the code's p = exp(-w·CE) = 1/4
    assert math.isclose(focal_loss(z, y, 2.0, w).item(), 0.75 ** 2 * 2 * math.log(2), rel_tol=1e-6)
    assert math.isclose(focal_loss(z, y, 2.0, w, pt_from_softmax=True).item(), 0.25 * 2 * math.log(2), rel_tol=1e-6)
    logits = torch.randn(16, 5, generator=torch.Generator().manual_seed(1), requires_grad=True)
    y = torch.randint(0, 5, (16,), generator=torch.Generator().manual_seed(2))
    ce = F.cross_entropy(logits, y, reduction="none")
    want = ((1 - torch.exp(-ce)) * ce).mean()  # LDAM-DRW code's FocalLoss, gamma 1
    got = focal_loss(logits, y, 1.0)
    torch.testing.assert_close(got, want)
    g_got, = torch.autograd.grad(got, logits)
    g_want, = torch.autograd.grad(want, logits)
    torch.testing.assert_close(g_got, g_want)
    assert focal_loss(logits, y, 0.0).item() == pytest.approx(ce.mean().item(), rel=1e-6)  # gamma 0 = CE


def cui_sigmoid_focal(z: torch.Tensor, y: torch.Tensor, gamma: float, w: torch.Tensor | None) -> torch.Tensor:
    """Cui et al.'s `focal_loss` / sigmoid loss written out plainly: p_t = σ(z) for the label, 1 − σ(z)
    for the other classes; −w_{y_i} (1 − p_t)^γ log p_t summed over (i, c), divided by the positives (B)."""
    t = F.one_hot(y, z.shape[1]).double()
    p = torch.sigmoid(z.double())
    pt = t * p + (1 - t) * (1 - p)
    per = -(1 - pt) ** gamma * torch.log(pt)
    if w is not None:
        per = per * w.double()[y][:, None]
    return (per.sum() / t.sum()).float()


def test_sigmoid_focal_loss_hand_values():
    z, y = torch.zeros(1, 2), torch.tensor([0])  # every sigmoid at 1/2: BCE ln 2, (1 − p_t) = 1/2
    assert math.isclose(sigmoid_focal_loss(z, y, 0.0).item(), 2 * math.log(2), rel_tol=1e-6)
    assert math.isclose(sigmoid_focal_loss(z, y, 1.0).item(), math.log(2), rel_tol=1e-6)
    w = torch.tensor([3.0, 1.0])  # the label's weight scales every class term of its sample
    assert math.isclose(sigmoid_focal_loss(z, y, 1.0, w).item(), 3 * math.log(2), rel_tol=1e-6)


@pytest.mark.parametrize("gamma", [0.0, 1.0, 2.0])
def test_sigmoid_focal_loss_matches_cui_et_al_values_and_gradients(gamma):
    g = torch.Generator().manual_seed(3)
    logits = (torch.randn(16, 5, generator=g) * 3).requires_grad_(True)
    y = torch.randint(0, 5, (16,), generator=g)
    w = effective_number_weights(torch.tensor([5000, 1200, 300, 80, 50]), 0.9999)
    for weights in (None, w):
        got = sigmoid_focal_loss(logits, y, gamma, weights)
        want = cui_sigmoid_focal(logits, y, gamma, weights)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
        g_got, = torch.autograd.grad(got, logits)
        g_want, = torch.autograd.grad(want, logits)
        torch.testing.assert_close(g_got, g_want, rtol=1e-5, atol=1e-6)
    big = torch.tensor([[60.0, -60.0, 0.0]])  # saturated logits: the stable form stays finite
    assert math.isfinite(sigmoid_focal_loss(big, torch.tensor([1]), 1.0).item())


def test_sigmoid_form_head_bias_prior_and_no_decay_on_the_bias():
    from fasttrain.optimizers import build_optimizer

    counts = (100, 10, 1, 1)
    method = CrossEntropy(CEConfig(reweight="cb", focal_gamma=1.0, sigmoid=True), method_context(counts))
    model = method.new_model(TinyBackbone())
    torch.testing.assert_close(model.fc.bias.detach(), torch.full((4,), -math.log(3)))
    assert torch.sigmoid(model.fc.bias).tolist() == pytest.approx([0.25] * 4)  # prior 1/C
    assert method.no_decay_parameters(model) == {"fc.bias"}
    cfg = load_config(ROOT / "configs" / "baselines" / "ce_cb_focal_sigmoid_cifar10_lt_r100.yaml")
    assert cfg.optim.weight_decay == 2e-4 and cfg.optim.no_decay == "auto" and cfg.optim.name == "sgd"
    opt = build_optimizer(cfg, method.trainable_parameters(model), torch.device("cpu"), model,
                          method.no_decay_parameters(model))
    decay = {id(p): g["weight_decay"] for g in opt.param_groups for p in g["params"]}
    assert decay.pop(id(model.fc.bias)) == 0.0 and set(decay.values()) == {2e-4}
    assert len(decay) == len(list(model.parameters())) - 1
    # the softmax forms keep the plain parameter list (bit-identical to before the option)
    plain = CrossEntropy(CEConfig(reweight="cb", focal_gamma=1.0), method_context(counts))
    model = plain.new_model(TinyBackbone())
    assert plain.no_decay_parameters(model) == set()
    opt = build_optimizer(cfg, plain.trainable_parameters(model), torch.device("cpu"), model,
                          plain.no_decay_parameters(model))
    assert len(opt.param_groups) == 1 and opt.param_groups[0]["weight_decay"] == 2e-4
    # the loss the method trains is the sigmoid one
    z = torch.randn(6, 4, generator=torch.Generator().manual_seed(0))
    y = torch.tensor([0, 0, 1, 2, 3, 0])

    class Fixed(nn.Module):
        def forward(self, x):
            return z

    loss, _ = method.loss(Fixed(), dataclasses.replace(image_batch(6), labels=y), Progress(0, 1))
    torch.testing.assert_close(loss, cui_sigmoid_focal(z, y, 1.0, method.class_weights))


def test_sigmoid_form_refusals():
    cfg = ROOT / "configs" / "baselines" / "ce_cb_focal_sigmoid_cifar10_lt_r100.yaml"
    for other in ("balanced_softmax", "logit_adjust"):
        with pytest.raises(ConfigError, match="method.sigmoid: .* adjusts the softmax logits"):
            load_config(ROOT / "configs" / "baselines" / f"{other}_cifar10_lt_r100.yaml", ["method.sigmoid=true"])
    with pytest.raises(ConfigError, match="method.focal_pt: true picks p of the softmax focal loss"):
        load_config(cfg, ["method.focal_pt=true"])
    with pytest.raises(ConfigError, match="method.sigmoid: true trains the sigmoid loss"):
        load_config(cfg, ["loss.label_smoothing=0.1"])
    with pytest.raises(ConfigError, match="model.head: cosine, but method.sigmoid: true .* use model.head: linear"):
        load_config(cfg, ["model.head=cosine"])
    method = CrossEntropy(CEConfig(sigmoid=True), method_context(COUNTS))  # the method's own guard
    method.ctx.head = dataclasses.replace(method.ctx.head, kind="cosine")
    with pytest.raises(ValueError, match="has no bias; use model.head: linear"):
        method.new_model(TinyBackbone())


def test_cb_and_focal_configs_load():
    cb = load_config(ROOT / "configs" / "baselines" / "ce_cb_cifar10_lt_r100.yaml")
    assert (cb.method.name, cb.method.reweight, cb.method.cb_beta) == ("ce", "cb", 0.9999)
    focal = load_config(ROOT / "configs" / "baselines" / "ce_focal_cifar100_lt_r100.yaml")
    assert focal.method.focal_gamma == 1.0 and focal.data.dataset == "cifar100_lt"
    for name, sigmoid in (("ce_cb_focal", False), ("ce_cb_focal_sigmoid", True)):
        m = load_config(ROOT / "configs" / "baselines" / f"{name}_cifar10_lt_r100.yaml").method
        assert (m.reweight, m.cb_beta, m.focal_gamma, m.sigmoid) == ("cb", 0.9999, 1.0, sigmoid)
    with pytest.raises(ConfigError, match="method.reweight"):
        load_config(ROOT / "configs" / "baselines" / "ce_cb_cifar10_lt_r100.yaml", ["method.reweight=drw"])


# --- cRT and LWS -----------------------------------------------------------------------------------


@pytest.mark.parametrize("bn_mode", ["train", "eval"])
def test_crt_reinitialises_and_trains_only_the_classifier(bn_mode):
    model = ce_model()
    before = snapshot(model)
    method = CRT(CRTConfig(base_method="ce", bn_mode=bn_mode), method_context(COUNTS))
    assert [(s.sampler, s.k) for s in method.streams()] == [("class_aware", 4)]  # the decoupling code's
    train_steps(method, model)
    after = snapshot(model)
    for k, v in before.items():
        if k.startswith("backbone.") and ("running" not in k and "num_batches" not in k or bn_mode == "eval"):
            assert torch.equal(after[k], v), k  # frozen backbone: bit-identical (BN stats too in eval mode)
    assert not torch.equal(after["fc.weight"], before["fc.weight"])
    assert [n for n, p in model.named_parameters() if p.requires_grad] == ["fc.weight", "fc.bias"]


def test_crt_reinit_is_a_fresh_head_and_switchable():
    model = ce_model()
    w0 = model.fc.weight.clone()
    CRT(CRTConfig(base_method="ce"), method_context(COUNTS)).prepare(model)
    assert not torch.equal(model.fc.weight, w0)
    model = ce_model()
    CRT(CRTConfig(base_method="ce", reinit=False), method_context(COUNTS)).prepare(model)
    assert torch.equal(model.fc.weight, w0)


def test_lws_trains_only_the_scales_including_the_bias():
    model = ce_model()
    before = snapshot(model)
    method = LWS(LWSConfig(base_method="ce", bn_mode="eval"), method_context(COUNTS))
    train_steps(method, model)
    assert isinstance(model.fc, ScaledLinear)
    assert [n for n, p in model.named_parameters() if p.requires_grad] == ["fc.scales"]
    after = snapshot(model)
    for k, v in before.items():
        new = k.replace("fc.", "fc.linear.")
        assert torch.equal(after[new], v), k  # backbone, W and b bit-identical
    assert not torch.equal(after["fc.scales"], torch.ones(3))
    f = torch.randn(4, 16)
    torch.testing.assert_close(model.fc(f), (f @ model.fc.linear.weight.t() + model.fc.linear.bias) * model.fc.scales)


def test_lws_checkpoint_evaluates_through_the_same_structure():
    """Started alone, LWS builds the base structure, wraps the head in prepare; a saved LWS state loads."""
    ctx = method_context(COUNTS)
    trained = ce_model()
    method = LWS(LWSConfig(base_method="ce"), ctx)
    method.prepare(trained)
    fresh = method.build_model(TinyBackbone(bn=True))
    method.prepare(fresh)
    fresh.load_state_dict(trained.state_dict())  # strict


def test_stage_methods_refuse_a_wrong_head():
    with pytest.raises(ValueError, match="no Linear head 'fc_cb'"):
        CRT(CRTConfig(base_method="ce", head="fc_cb"), method_context(COUNTS)).build_model(TinyBackbone(), ce_model())


# --- τ-normalisation -------------------------------------------------------------------------------


def test_tau_normalised_weights():
    head = nn.Linear(3, 2)
    f = torch.randn(5, 3)
    w = head.weight.detach()
    torch.testing.assert_close(tau_normalized_logits(f, head, 0.0, keep_bias=True), head(f).detach())
    torch.testing.assert_close(tau_normalized_logits(f, head, 1.0, keep_bias=False), f @ (w / w.norm(dim=1, keepdim=True)).t())
    half = w / w.norm(dim=1, keepdim=True).sqrt()
    torch.testing.assert_close(tau_normalized_logits(f, head, 0.5, keep_bias=False), f @ half.t())


class ChannelMeans(nn.Module):
    """Backbone whose feature is the per-channel mean of the (normalised) image."""

    feature_dim = 3

    def forward(self, x):
        return x.float().mean(dim=(2, 3))


def test_tau_search_picks_the_best_tau_on_a_tiny_val_split():
    # Class norms 10 and 1: tau = 0 favours class 0 for every sample, tau = 1 classifies both
    # classes, tau = 2 over-corrects; the search must find 1 (the only 100 % value of the grid).
    ctx = dataclasses.replace(method_context((100, 10)), augmenter=Augmenter((0.0, 0.0, 0.0), (1.0, 1.0, 1.0)))
    model = Classifier(ChannelMeans(), 2)
    with torch.no_grad():
        model.fc.weight.copy_(torch.tensor([[10.0, 0, 0], [0, 1.0, 0]]))
        model.fc.bias.zero_()
    pixels = {0: (255, 128, 0), 1: (128, 255, 0)}

    def batch(c, n=4):
        img = torch.tensor(pixels[c], dtype=torch.uint8).view(1, 3, 1, 1).expand(n, 3, 4, 4)
        return Batch(views=[img.contiguous(memory_format=torch.channels_last)], labels=torch.full((n,), c),
                     stream=torch.zeros(n, dtype=torch.long))

    method = TauNorm(TauNormConfig(base_method="ce", tau_grid=[0.0, 0.5, 1.0, 2.0]), ctx)
    assert method.calibration_split() == "val"
    found = method.calibrate(model, [batch(0), batch(1)], ctx.augmenter)
    assert found["tau"] == 1.0 and method.cfg.tau == 1.0 and found["top1"] == [50.0, 50.0, 100.0, 50.0]
    assert method.calibration_split() is None  # chosen: nothing left to calibrate
    pred = method.predict(model, ctx.augmenter.views(batch(1))[0]).argmax(1)
    assert (pred == 1).all()
    restored = TauNorm(TauNormConfig(base_method="ce"), ctx)
    restored.load_state_dict(method.state_dict())
    assert restored.cfg.tau == 1.0


def test_tau_norm_config_rules(tmp_path):
    path = ROOT / "configs" / "decoupling" / "tau_norm_cifar10_lt_r100.yaml"
    cfg = load_config(path)
    assert cfg.stages[0].overrides["train"]["epochs"] == 0
    with pytest.raises(ConfigError, match="has nothing to train"):
        load_config(path, ["method.name=tau_norm", "method.base_method=ce"])  # epochs 200 on a post-hoc method
    with pytest.raises(ConfigError, match="train.epochs: expected a value > 0"):
        load_config(path, ["train.epochs=0"])


# --- the stages end to end -------------------------------------------------------------------------


def _small_eval(monkeypatch, keep=250):
    import fasttrain.build as build_mod

    real = build_mod.build_datasets

    def build(cfg):
        train, test = real(cfg)
        step = max(1, len(test) // keep)
        return train, dataclasses.replace(test, labels=test.labels[::step], images=test.images[::step])

    monkeypatch.setattr(build_mod, "build_datasets", build)


def test_ce_then_crt_lws_tau_norm_stages_run(cifar10_root, tmp_path, monkeypatch):
    """CE (a few steps) → cRT → LWS on CIFAR-10-LT, and CE → τ-norm searched on the (small) test split."""
    from fasttrain.checkpoint import load_checkpoint
    from fasttrain.evaluation import evaluate_checkpoint
    from fasttrain.trainer import run_training

    _small_eval(monkeypatch)
    short = [f"data.root={cifar10_root}", f"out_dir={tmp_path}", "device=cpu", "train.epochs=1",
             "train.max_steps_per_epoch=3", "loader.num_workers=0", "loader.batch_size=32",
             "loader.eval_batch_size=250",
             "train.amp=bf16"]  # under bf16 autocast τ-norm's calibration top-1 must still equal the
    # evaluation's exactly (its head runs with autocast off)
    cfg = load_config(ROOT / "configs" / "decoupling" / "crt_cifar10_lt_r100.yaml", short)
    lws = load_config(ROOT / "configs" / "decoupling" / "lws_cifar10_lt_r100.yaml").stages[0]
    cfg.stages.append(lws)
    for stage in cfg.stages:
        stage.overrides["train"] = {"epochs": 1, "max_steps_per_epoch": 2}
    torch.set_flush_denormal(True)
    try:
        out = run_training(cfg)
        first = load_checkpoint(tmp_path / cfg.name / "last.pt")["model"]
        crt = load_checkpoint(tmp_path / cfg.name / "crt" / "last.pt")["model"]
        lws_state = load_checkpoint(tmp_path / cfg.name / "lws" / "last.pt")["model"]
        assert [s["method"] for s in out["stages"]] == ["ce", "crt", "lws"]
        for k, v in first.items():
            if k.startswith("backbone.") and "running" not in k and "num_batches" not in k:
                assert torch.equal(crt[k], v) and torch.equal(lws_state[k], v), k
        assert not torch.equal(crt["fc.weight"], first["fc.weight"])
        assert torch.equal(lws_state["fc.linear.weight"], crt["fc.weight"]) and "fc.scales" in lws_state
        report = evaluate_checkpoint(tmp_path / cfg.name / "lws" / "last.pt")
        assert report["top1"] == pytest.approx(out["final"]["top1"])

        tau_cfg = load_config(ROOT / "configs" / "decoupling" / "tau_norm_cifar10_lt_r100.yaml",
                              short + [f"model.init_from={tmp_path / cfg.name / 'last.pt'}", "name=tau"])
        tau_cfg.model.init_from = str(tmp_path / cfg.name / "last.pt")
        tau_out = run_training(tau_cfg)
        chosen = tau_out["stages"][1]["calibration"]
        assert chosen["split"] == "test" and chosen["tau"] in chosen["grid"]
        assert max(chosen["top1"]) == pytest.approx(tau_out["final"]["top1"])  # the same (small) split
        assert load_config(tmp_path / "tau" / "tau_norm" / "config.yaml").method.tau == chosen["tau"]
        again = evaluate_checkpoint(tmp_path / "tau" / "tau_norm" / "last.pt")
        assert again["top1"] == pytest.approx(tau_out["final"]["top1"])
        given = evaluate_checkpoint(tmp_path / "tau" / "last.pt", tau=chosen["tau"])  # `fasttrain eval --tau`
        assert given["top1"] == pytest.approx(tau_out["final"]["top1"])
    finally:
        torch.set_flush_denormal(False)
