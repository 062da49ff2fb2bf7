"""MaxNorm second stage (docs: user-guide/methods/glmc.md, MaxNorm second stage): CB weights,
threshold, PGD projection, frozen backbone, loss variants, standalone model structure."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import fasttrain.methods.maxnorm as M
from fasttrain.batch import Batch
from fasttrain.methods import Progress
from fasttrain.methods.glmc import GLMC, GLMCConfig
from helpers import TinyBackbone, method_context

MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)


def context(counts=(100, 10, 1)):
    return method_context(counts, 0, MEAN, STD)


def glmc_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return GLMC(GLMCConfig(), context()).build_model(TinyBackbone(bn=True))


def batch(b: int = 16, seed: int = 0) -> Batch:
    g = torch.Generator().manual_seed(seed)
    views = [torch.randint(0, 256, (b, 3, 8, 8), dtype=torch.uint8, generator=g).contiguous(memory_format=torch.channels_last)]
    return Batch(views=views, labels=torch.randint(0, 3, (b,), generator=g), stream=torch.zeros(b, dtype=torch.long),
                 geometry=[None])


def test_effective_number_weights_hand_values():
    # β = 0.9, n = [1, 2]: (1−β)/(1−β^n) = [1, 0.1/0.19]; normalised to sum C = 2
    w = M.effective_number_weights(torch.tensor([1, 2]), 0.9)
    raw = torch.tensor([1.0, 0.1 / 0.19])
    torch.testing.assert_close(w, raw / raw.sum() * 2)
    torch.testing.assert_close(w, torch.tensor([1.310345, 0.689655]), atol=1e-6, rtol=0)


def test_threshold_and_projection_hand_values():
    W = torch.tensor([[3.0, 0.0], [0.0, 4.0], [1.0, 0.0]])  # row norms 3, 4, 1
    delta = M.maxnorm_threshold(W, 0.1)
    assert math.isclose(delta.item(), 1 + 0.1 * (4 - 1), rel_tol=1e-6)  # 1.3
    M.project_rows(W, delta)
    torch.testing.assert_close(W, torch.tensor([[1.3, 0.0], [0.0, 1.3], [1.0, 0.0]]))  # short row untouched


def test_prepare_freezes_all_but_the_head_and_computes_threshold_once():
    model = glmc_model()
    m = M.MaxNorm(M.MaxNormConfig(), context())
    m.prepare(model)
    trainable = m.trainable_parameters(model)
    assert [id(p) for p in trainable] == [id(model.fc_cb.weight), id(model.fc_cb.bias)]
    frozen = [n for n, p in model.named_parameters() if p.requires_grad]
    assert frozen == ["fc_cb.weight", "fc_cb.bias"]
    norms = model.fc_cb.weight.norm(dim=1)
    torch.testing.assert_close(m.delta, norms.min() + 0.1 * (norms.max() - norms.min()))


@pytest.mark.parametrize("pgd_every", ["epoch", "step"])
def test_training_step_projects_rows_keeps_bias_free_and_backbone_frozen(pgd_every):
    model = glmc_model()
    m = M.MaxNorm(M.MaxNormConfig(pgd_every=pgd_every), context())
    m.prepare(model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt = torch.optim.SGD(m.trainable_parameters(model), lr=0.5, momentum=0.9, weight_decay=0.1)
    model.train()
    prog = Progress(0, 10, 0, 1)
    loss, logs = m.loss(model, batch(), prog)
    opt.zero_grad()
    loss.backward()
    opt.step()
    bias_after_sgd = model.fc_cb.bias.detach().clone()
    m.after_step(model, prog)
    norms_after_step = model.fc_cb.weight.norm(dim=1)
    m.after_epoch(model, prog)
    norms = model.fc_cb.weight.norm(dim=1)
    assert (norms <= m.delta + 1e-6).all()  # every row within the threshold after the projection
    if pgd_every == "step":
        assert (norms_after_step <= m.delta + 1e-6).all()
    else:  # reference code: nothing happens per step
        assert (norms_after_step > m.delta + 1e-6).any()
    torch.testing.assert_close(model.fc_cb.bias, bias_after_sgd)  # bias never projected
    assert not torch.equal(model.fc_cb.bias, before["fc_cb.bias"])  # but it is trained
    for name in ("backbone.lin.weight", "fc.weight", "projector.weight", "predictor.weight"):
        torch.testing.assert_close(model.state_dict()[name], before[name])  # frozen
    assert model.backbone.lin.weight.grad is None
    # train-mode BN (reference): running statistics of the frozen backbone keep updating
    assert not torch.equal(model.state_dict()["backbone.bn.running_mean"], before["backbone.bn.running_mean"])


def test_bn_eval_switch_keeps_running_stats():
    model = glmc_model()
    m = M.MaxNorm(M.MaxNormConfig(bn_mode="eval"), context())
    m.prepare(model)
    model.train()
    rm = model.backbone.bn.running_mean.clone()
    m.loss(model, batch(), Progress(0, 1))
    torch.testing.assert_close(model.backbone.bn.running_mean, rm)


def test_cb_softmax_bce_equals_torch_bce_on_softmax():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(6, 4, generator=g)
    y = torch.tensor([0, 1, 2, 3, 0, 1])
    w = torch.tensor([0.5, 1.0, 1.5, 2.0])
    ref = F.binary_cross_entropy(z.softmax(1), F.one_hot(y, 4).float(), weight=w[y][:, None].expand(6, 4))
    torch.testing.assert_close(M.cb_softmax_bce(z, y, w), ref)
    # saturated softmax: finite loss and gradient (torch's BCE clamps logs at −100)
    zs = torch.tensor([[100.0, -100.0, 0.0]], requires_grad=True)
    loss = M.cb_softmax_bce(zs, torch.tensor([1]), torch.ones(3))
    loss.backward()
    assert math.isfinite(loss.item()) and torch.isfinite(zs.grad).all()


def test_cb_ce_is_weighted_softmax_ce_over_the_batch():
    model = glmc_model()
    m = M.MaxNorm(M.MaxNormConfig(loss="cb_ce"), context())
    m.prepare(model)
    model.eval()
    bt = batch()
    loss, _ = m.loss(model, bt, Progress(0, 1))
    from fasttrain.augment import Augmenter

    (x,) = Augmenter(MEAN, STD, torch.float32, "torch").views(bt)
    logits = model.fc_cb(model.backbone(x))
    expect = -(m.weights[bt.labels] * torch.log_softmax(logits, 1)[torch.arange(16), bt.labels]).mean()
    torch.testing.assert_close(loss, expect)


def test_standalone_builds_glmc_structure_so_a_checkpoint_loads_strictly():
    state = glmc_model(seed=3).state_dict()
    m = M.MaxNorm(M.MaxNormConfig(), context())
    model = m.build_model(TinyBackbone(bn=True), None)
    model.load_state_dict(state)  # strict
    previous = glmc_model()
    assert m.build_model(TinyBackbone(bn=True), previous) is previous
    wide = M.MaxNorm(M.MaxNormConfig(base_config={"proj_dim": 32}), context()).build_model(TinyBackbone(bn=True), None)
    assert wide.projector.out_features == 32


def test_predict_uses_the_head():
    model = glmc_model().eval()
    m = M.MaxNorm(M.MaxNormConfig(), context())
    x = torch.randn(4, 3, 8, 8)
    torch.testing.assert_close(m.predict(model, x), model.fc_cb(model.backbone(x)))


def test_bad_config_and_head_errors():
    for kw, key in [({"pgd_every": "batch"}, "pgd_every"), ({"loss": "focal"}, "loss"),
                    ({"thresh": 2.0}, "thresh"), ({"base_method": "maxnorm"}, "base_method"),
                    ({"bn_mode": "frozen"}, "bn_mode")]:
        with pytest.raises(ValueError, match=key):
            M.MaxNormConfig(**kw).validate()
    with pytest.raises(ValueError, match="no Linear head 'classifier'"):
        M.MaxNorm(M.MaxNormConfig(head="classifier"), context()).build_model(TinyBackbone(bn=True), glmc_model())


def test_threshold_survives_resume():
    model = glmc_model()
    m = M.MaxNorm(M.MaxNormConfig(), context())
    m.prepare(model)
    state = m.state_dict()
    with torch.no_grad():
        model.fc_cb.weight.mul_(0.5)  # a resumed (trained) head gives another threshold ...
    m2 = M.MaxNorm(M.MaxNormConfig(), context())
    m2.prepare(model)
    assert not torch.allclose(m2.delta, m.delta)
    m2.load_state_dict(state)  # ... so the one from the starting head is restored
    torch.testing.assert_close(m2.delta, m.delta)
