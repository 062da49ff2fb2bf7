"""GLMC (docs: user-guide/methods/glmc.md): mixing draws, soft-label weights, α(e), SimSiam, heads,
loss formula, configs, and a short two-stage CPU run (GLMC then MaxNorm)."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn as nn

import fasttrain.methods.glmc as G
from fasttrain import augment as A
from fasttrain.config import load_config, stage_config
from fasttrain.kernels.mix import reference as R
from fasttrain.batch import Batch
from fasttrain.methods import Progress
from fasttrain.models import create_backbone
from helpers import TinyBackbone, method_context

MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs" / "glmc").glob("*.yaml"))


def context(counts=(100, 10, 1), seed: int = 0):
    return method_context(counts, seed, MEAN, STD)


def make_method(**cfg) -> G.GLMC:
    return G.GLMC(G.GLMCConfig(**cfg), context())


def two_stream_batch(b: int = 4, hw: int = 8, seed: int = 0) -> Batch:
    g = torch.Generator().manual_seed(seed)
    views = [torch.randint(0, 256, (2 * b, 3, hw, hw), dtype=torch.uint8, generator=g)
             .contiguous(memory_format=torch.channels_last) for _ in range(2)]
    labels = torch.randint(0, 3, (2 * b,), generator=g)
    return Batch(views=views, labels=labels, stream=torch.arange(2).repeat_interleave(b), num_streams=2,
                 geometry=[None, None])


def model_for(method: G.GLMC, seed: int = 0) -> G.GLMCNet:
    torch.manual_seed(seed)
    return method.build_model(TinyBackbone())


# --- sampling and mixing ----------------------------------------------------------------------


def test_streams_are_instance_plus_power_with_q():
    m = make_method(resample_q=0.2)
    kinds = [(s.sampler, s.q) for s in m.streams()]
    assert kinds[0][0] == "instance" and kinds[1] == ("power", 0.2)
    assert m.num_views == 2


def test_loss_draws_mix_from_its_host_generator_with_config_switches(monkeypatch):
    calls = []
    real = G.sample_mix

    def spy(h, w, **kw):
        calls.append((h, w, kw))
        return real(h, w, **kw)

    monkeypatch.setattr(G, "sample_mix", spy)
    m = make_method(mix_beta=0.5, cutmix_area_correct=True)
    m.loss(model_for(m), two_stream_batch(), Progress(0, 10))
    (h, w, kw), = calls
    assert (h, w) == (8, 8)
    assert kw["beta"] == 0.5 and kw["area_correct"] is True and kw["generator"] is m.generator


def test_lambda_is_uniform_by_default_and_beta_when_switched():
    g = make_method().generator
    lam = torch.tensor([A.sample_mix(32, 32, beta=1.0, generator=g).lam for _ in range(20000)])
    assert abs(lam.mean().item() - 0.5) < 0.01
    assert abs(lam.var().item() - 1 / 12) < 0.004  # U(0,1): variance 1/12
    hist = torch.histc(lam, bins=10, min=0, max=1) / len(lam)
    assert (hist - 0.1).abs().max() < 0.015  # flat
    lam_b = torch.tensor([A.sample_mix(32, 32, beta=0.5, generator=g).lam for _ in range(20000)])
    assert abs(lam_b.var().item() - 0.125) < 0.006  # Beta(.5,.5): 1/(4(2β+1)) = 1/8


@pytest.mark.parametrize("lam,cy,cx,box", [
    (0.75, 16, 16, (8, 24, 8, 24)),   # s = ceil(32·0.5) = 16, half 8: area 256 = (1−λ)·1024
    (0.5, 16, 16, (5, 27, 5, 27)),    # s = ceil(22.63) = 23, half 11 -> side 22 (one less than s)
    (0.5, 0, 31, (0, 11, 20, 32)),    # clipped at the borders
    (1.0, 3, 3, (3, 3, 3, 3)),        # λ = 1: empty box
])
def test_cutmix_box_hand_values(lam, cy, cx, box):
    assert A.cutmix_box(32, 32, lam, cy, cx) == box


def test_cutmix_label_weight_is_lambda_unless_area_correct():
    for seed in range(20):
        g = torch.Generator().manual_seed(seed)
        s = A.sample_mix(32, 32, generator=g)
        assert s.lam_cut == s.lam
        g = torch.Generator().manual_seed(seed)
        c = A.sample_mix(32, 32, area_correct=True, generator=g)
        y0, y1, x0, x1 = c.box
        assert c.lam == s.lam and math.isclose(c.lam_cut, 1 - (y1 - y0) * (x1 - x0) / 1024)


def test_views_mixed_pairwise_across_streams_with_one_lambda(monkeypatch):
    """x_g = λ a1 + (1−λ) b1 (view 0), x_l = a2 with the box from b2 (view 1); pairs row i of
    stream 0 with row i of stream 1."""
    seen = []

    class Recorder(TinyBackbone):
        def forward(self, x):
            seen.append(x.detach().clone())
            return super().forward(x)

    m = make_method()
    torch.manual_seed(0)
    model = m.build_model(Recorder())
    batch = two_stream_batch(b=4)
    state = m.generator.get_state()
    m.loss(model, batch, Progress(0, 10))
    spec = A.sample_mix(8, 8, generator=torch.Generator().set_state(state))
    scale, shift = R.norm_coefficients(MEAN, STD)
    norm = lambda x: R.normalize(x, scale, shift)  # noqa: E731
    v0, v1 = batch.views
    x_g = spec.lam * norm(v0[:4]) + (1 - spec.lam) * norm(v0[4:])
    x_l = norm(v1[:4]).clone()
    y0, y1, x0, x1 = spec.box
    x_l[:, :, y0:y1, x0:x1] = norm(v1[4:])[:, :, y0:y1, x0:x1]
    assert len(seen) == 2
    torch.testing.assert_close(seen[0], x_g)
    torch.testing.assert_close(seen[1], x_l)


# --- weights, α, SimSiam ------------------------------------------------------------------------


def test_class_weights_hand_values():
    w = G.class_weights(torch.tensor([100, 10, 1]), 1.0)
    # n^-1 = [0.01, 0.1, 1], sum 1.11; times C/sum = 3/1.11
    torch.testing.assert_close(w, torch.tensor([0.01, 0.1, 1.0]) * 3 / 1.11)
    torch.testing.assert_close(G.class_weights(torch.tensor([5000, 50]), 0.0), torch.ones(2))
    w12 = G.class_weights(torch.tensor([5000, 2997, 50]), 1.2)
    assert math.isclose(w12.mean().item(), 1.0, rel_tol=1e-6)
    raw = torch.tensor([5000.0, 2997.0, 50.0]) ** -1.2
    torch.testing.assert_close(w12, raw / raw.sum() * 3)


def test_alpha_schedule_hand_values():
    assert G.cumulative_alpha(0, 200) == 1.0
    assert G.cumulative_alpha(100, 200) == 0.75
    assert math.isclose(G.cumulative_alpha(199, 200), 1 - (199 / 200) ** 2)
    assert math.isclose(G.cumulative_alpha(199, 200), 0.009975)
    alphas = [G.cumulative_alpha(e, 10) for e in range(10)]
    assert all(a > b for a, b in zip(alphas, alphas[1:]))  # decays monotonically
    # The exponent switch: p = 1 is a linear hand-over, the default p = 2 is the code's parabola.
    assert G.cumulative_alpha(4, 8, 1.0) == 0.5
    assert G.cumulative_alpha(4, 8) == G.cumulative_alpha(4, 8, 2.0) == 0.75


def test_negative_cosine_values_symmetry_and_stop_gradient():
    p = torch.tensor([[1.0, 1.0], [1.0, 0.0]], requires_grad=True)
    z = torch.tensor([[1.0, 0.0], [0.0, 1.0]], requires_grad=True)
    d = G.negative_cosine(p, z)
    assert math.isclose(d.item(), -(1 / math.sqrt(2) + 0.0) / 2, rel_tol=1e-6)
    gp, gz = torch.autograd.grad(d, [p, z], allow_unused=True)
    assert gz is None and gp.abs().sum() > 0  # no gradient through the target branch
    # L_sim is symmetric in the two branches
    pg, zg, pl, zl = (torch.randn(5, 4) for _ in range(4))
    torch.testing.assert_close(G.consistency_loss(pg, zg, pl, zl), G.consistency_loss(pl, zl, pg, zg))
    assert -2.0 <= G.consistency_loss(pg, zg, pl, zl).item() <= 2.0


def test_consistency_term_sends_no_gradient_into_projections_targets():
    """With only L_sim, the projector gets gradient solely via p = predictor(z) of each branch:
    zeroing the predictor makes p constant-free of z, so the projector must get exactly 0."""
    m = make_method(consistency_weight=1.0)
    model = model_for(m)
    nn.init.zeros_(model.predictor.weight)  # p = bias: depends on no z, so only sg(z) paths remain
    with torch.no_grad():
        model.predictor.bias.copy_(torch.randn(model.predictor.bias.shape))
    x = torch.randn(4, 3, 8, 8)
    (_, _, z_g, p_g), (_, _, z_l, p_l) = model(x), model(x.flip(0))
    loss = G.consistency_loss(p_g, z_g, p_l, z_l)
    g = torch.autograd.grad(loss, [model.projector.weight], allow_unused=True)[0]
    assert g is None or g.abs().max() == 0


# --- model and heads ----------------------------------------------------------------------------


def test_model_structure_and_projection_width():
    m = make_method()
    net = m.build_model(create_backbone("resnet32_w4"))
    assert net.fc.out_features == 3 and net.fc_cb.out_features == 3
    assert (net.projector.in_features, net.projector.out_features) == (256, 128)
    assert (net.predictor.in_features, net.predictor.out_features) == (128, 128)
    assert G.default_proj_dim(2048) == 256 and G.default_proj_dim(512) == 256
    # Kaiming fan-in on the CIFAR ResNet's heads: std ≈ sqrt(2/256)
    assert abs(net.fc_cb.weight.std().item() / math.sqrt(2 / 256) - 1) < 0.35
    assert abs(net.projector.weight.std().item() / math.sqrt(2 / 256) - 1) < 0.1
    # ≈7.44 M parameters for C=10 incl. all four heads (hand-computed, official ResNet_cifar.resnet32)
    m10 = G.GLMC(G.GLMCConfig(), context(counts=tuple(range(10, 0, -1))))
    n = sum(p.numel() for p in m10.build_model(create_backbone("resnet32_w4")).parameters())
    assert 7.42e6 < n < 7.46e6


def test_each_head_gets_gradient_only_from_its_own_terms(monkeypatch):
    terms = []
    real = G.soft_target_cross_entropy

    def spy(logits, **kw):
        out = real(logits, **kw)
        terms.append((out, kw.get("class_weights") is not None))
        return out

    monkeypatch.setattr(G, "soft_target_cross_entropy", spy)
    m = make_method()
    model = model_for(m)
    m.loss(model, two_stream_batch(), Progress(3, 10))
    assert [w for _, w in terms] == [False, False, True, True]  # mix, cut, mix_w, cut_w
    for out, weighted in terms:
        g_fc, g_cb = torch.autograd.grad(out, [model.fc.weight, model.fc_cb.weight], allow_unused=True,
                                         retain_graph=True)
        own, other = (g_cb, g_fc) if weighted else (g_fc, g_cb)
        assert own is not None and own.abs().sum() > 0
        assert other is None


def test_fc_cb_gets_no_gradient_at_epoch_zero_and_loss_formula_holds():
    m = make_method(consistency_weight=2.5)
    model = model_for(m)
    batch = two_stream_batch()
    loss, logs = m.loss(model, batch, Progress(0, 10))
    loss.backward()
    assert model.fc_cb.weight.grad.abs().max() == 0  # α(0) = 1: only the plain terms
    assert model.fc.weight.grad.abs().sum() > 0
    for epoch, step in [(0, 0), (4, 0), (4, 7), (9, 3)]:
        loss, logs = m.loss(model, batch, Progress(epoch, 10, step, 8))
        a = 1 - (epoch / 10) ** 2  # constant within the epoch
        expect = (a * (logs["loss_mix"] + logs["loss_cut"]) + (1 - a) * (logs["loss_mix_w"] + logs["loss_cut_w"])
                  + 2.5 * logs["loss_sim"])
        torch.testing.assert_close(loss.detach(), expect)


def test_soft_label_terms_match_hand_formula(monkeypatch):
    """L^w_mix = −mean_i [λ w_{y_a} log p_{y_a} + (1−λ) w_{y_b} log p_{y_b}] on fc_cb, not renormalised."""
    m = make_method(label_weight_gamma=1.0)
    model = model_for(m)
    batch = two_stream_batch()
    state = m.generator.get_state()
    _, logs = m.loss(model, batch, Progress(5, 10))
    spec = A.sample_mix(8, 8, generator=torch.Generator().set_state(state))
    x_g, _, y_a, y_b = A.Augmenter(MEAN, STD, torch.float32, "torch").mix_streams(batch, spec)
    _, logits_cb, _, _ = model(x_g)
    logp = torch.log_softmax(logits_cb.detach(), 1)
    w = torch.tensor([0.01, 0.1, 1.0]) * 3 / 1.11
    ar = torch.arange(4)
    expect = -(spec.lam * w[y_a] * logp[ar, y_a] + (1 - spec.lam) * w[y_b] * logp[ar, y_b]).mean()
    torch.testing.assert_close(logs["loss_mix_w"], expect)


def test_expected_label_weight_hand_values_and_the_switch_scales_only_the_weighted_terms():
    counts, w = torch.tensor([100, 10, 1]), torch.tensor([0.01, 0.1, 1.0]) * 3 / 1.11
    # q = 0: both streams draw ∝ n, so E = Σ n_c w_c / N = 3 · 3 / (1.11 · 111).
    assert math.isclose(G.expected_label_weight(counts, w, 0.0), 9 / (1.11 * 111), rel_tol=1e-6)
    # q = 1: the re-sampled stream is class-balanced, its mean label weight is mean(w) = 1.
    assert math.isclose(G.expected_label_weight(counts, w, 1.0), 0.5 * (9 / (1.11 * 111) + 1.0), rel_tol=1e-6)
    batch = two_stream_batch()
    logs = {}
    for norm in ("batch", "expected"):
        m = make_method(label_weight_gamma=1.0, weighted_loss_norm=norm)
        _, logs[norm] = m.loss(model_for(m), batch, Progress(5, 10))
    scale = 1 / G.expected_label_weight(counts, w, 0.0)
    assert make_method(label_weight_gamma=1.0).weighted_scale == 1.0  # the code's reduction: untouched
    for key in ("loss_mix_w", "loss_cut_w"):
        torch.testing.assert_close(logs["expected"][key], logs["batch"][key] * scale)
    for key in ("loss_mix", "loss_cut", "loss_sim"):
        torch.testing.assert_close(logs["expected"][key], logs["batch"][key])


def test_predict_uses_fc_cb_by_default_and_switch():
    m = make_method()
    model = model_for(m).eval()
    x = torch.randn(5, 3, 8, 8)
    h = model.backbone(x)
    torch.testing.assert_close(m.predict(model, x), model.fc_cb(h))
    torch.testing.assert_close(make_method(predict_head="fc").predict(model, x), model.fc(h))
    torch.testing.assert_close(make_method(predict_head="sum").predict(model, x), model.fc(h) + model.fc_cb(h))


def test_shared_head_switch_trains_fc_with_both_terms():
    m = make_method(separate_cb_head=False)
    model = model_for(m)
    assert model.fc_cb is None
    loss, _ = m.loss(model, two_stream_batch(), Progress(5, 10))
    loss.backward()
    assert model.fc.weight.grad.abs().sum() > 0


def test_fused_forward_equals_two_forwards_without_bn():
    batch = two_stream_batch()
    out = []
    for fuse in (False, True):
        m = make_method(fuse_two_forwards=fuse)
        loss, _ = m.loss(model_for(m, seed=1), batch, Progress(2, 10))
        out.append(loss)
    torch.testing.assert_close(out[0], out[1])


def test_config_validation_errors_name_the_key():
    for kw, key in [({"predict_head": "both"}, "predict_head"), ({"mix_beta": 0.0}, "mix_beta"),
                    ({"resample_q": -1.0}, "resample_q"), ({"head_init": "xavier"}, "head_init"),
                    ({"cumulative_power": 0.0}, "cumulative_power"),
                    ({"weighted_loss_norm": "weights"}, "weighted_loss_norm")]:
        with pytest.raises(ValueError, match=key):
            G.GLMCConfig(**kw).validate()


def test_generator_state_round_trips():
    m = make_method()
    state = m.state_dict()
    a = A.sample_mix(32, 32, generator=m.generator)
    m.load_state_dict(state)
    assert A.sample_mix(32, 32, generator=m.generator) == a


# --- configs ------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_glmc_config_loads_and_names_its_targets(path):
    cfg = load_config(path)
    for i in range(len(cfg.stages)):
        assert stage_config(cfg, i).method.name == "maxnorm"
    if not path.name.startswith("_"):
        assert "official" in path.read_text().lower() or "readme" in path.read_text().lower()


def test_config_rows_match_the_official_commands():
    rows = {  # file: (q, gamma, lambda_c, rho)
        "cifar10_lt_r100": (0.0, 1.2, 1.0, 100), "cifar10_lt_r50": (0.0, 1.2, 1.0, 50),
        "cifar10_lt_r10": (0.2, 1.0, 2.0, 10), "cifar100_lt_r100": (0.0, 1.2, 4.0, 100),
        "cifar100_lt_r50": (0.2, 1.2, 6.0, 50), "cifar100_lt_r10": (0.2, 1.2, 4.0, 10),
    }
    root = CONFIGS[0].parent
    for name, (q, gamma, lc, rho) in rows.items():
        for suffix in ("", "_maxnorm"):
            cfg = load_config(root / f"{name}{suffix}.yaml")
            mc = cfg.method
            assert (mc.resample_q, mc.label_weight_gamma, mc.consistency_weight) == (q, gamma, lc), name
            assert cfg.data.imbalance_ratio == rho and cfg.data.cifar_split == "glmc" and cfg.seed == 3407
            assert (cfg.optim.lr, cfg.optim.weight_decay, cfg.loader.batch_size, cfg.train.epochs) == (0.01, 5e-3, 64, 200)
            assert cfg.model.arch == "resnet32_w4" and cfg.schedule.name == "cosine"
        stage = stage_config(load_config(root / f"{name}_maxnorm.yaml"), 0)
        assert (stage.optim.lr, stage.optim.weight_decay, stage.train.epochs, stage.loader.batch_size) == (0.01, 0.1, 10, 64)
        assert stage.method.thresh == 0.1 and stage.method.pgd_every == "epoch"
    inet = load_config(root / "imagenet_lt_rx50.yaml")
    assert (inet.model.arch, inet.train.epochs, inet.loader.batch_size, inet.optim.lr, inet.optim.weight_decay) == \
        ("resnext50_32x4d", 135, 120, 0.1, 2e-4)
    assert inet.schedule.name == "code_offbyone" and inet.loader.backend == "dali"
    assert (inet.augment.color_jitter, inet.augment.grayscale_p, inet.augment.blur_p) == (0.4, 0.2, 0.5)
    assert (inet.method.resample_q, inet.method.label_weight_gamma, inet.method.consistency_weight) == (0.2, 1.0, 10.0)


# --- end to end ---------------------------------------------------------------------------------

CIFAR_ROOT = Path("/work/data")


def _short_run_config(tmp_path: Path):
    """The CIFAR-10-LT ρ=100 +MaxNorm config shrunk to seconds: standard ResNet-32, 32 rows per
    stream (GLMC), 5 steps x 3 (GLMC) and 2 (MaxNorm) epochs. Real CIFAR-10 when present, else the synthetic corpus."""
    cfg_path = CONFIGS[0].parent / "cifar10_lt_r100_maxnorm.yaml"
    real = (CIFAR_ROOT / "cifar-10-batches-py" / "data_batch_1").is_file()
    data = ([f"data.root={CIFAR_ROOT}"] if real else
            ["data.dataset=synthetic", "data.num_classes=10", "data.synthetic_size=[32,32]",
             f"data.root={tmp_path / 'synthetic'}"])
    over = data + [
        f"out_dir={tmp_path}", "device=cpu", "model.arch=resnet32", "loader.backend=torch",
        "loader.num_workers=0", "loader.batch_size=32", "loader.eval_batch_size=250", "train.epochs=3",
        "train.max_steps_per_epoch=5", "train.log_every=5", "train.eval_every=100", "optim.lr=0.01",
    ]
    cfg = load_config(cfg_path, over)
    cfg.stages[0].overrides.update(train={"epochs": 2, "max_steps_per_epoch": 5},
                                   loader={"batch_size": 16, "backend": "torch"})
    return cfg


def _small_eval_set(monkeypatch, keep: int = 500) -> None:
    """Evaluate on every 20th test image (500 of 10k, all classes): the run stays short."""
    import fasttrain.build as build_mod

    real_build = build_mod.build_datasets

    def build(cfg):
        train, test = real_build(cfg)
        step = max(1, len(test) // keep)
        if test.images is not None:
            test.images, test.labels = test.images[::step], test.labels[::step]
        else:
            test.paths, test.labels = test.paths[::step], test.labels[::step]
        return train, test

    monkeypatch.setattr(build_mod, "build_datasets", build)


def test_short_cpu_run_glmc_then_maxnorm(tmp_path, monkeypatch):
    from fasttrain.checkpoint import load_checkpoint
    from fasttrain.trainer import run_training

    _small_eval_set(monkeypatch)
    cfg = _short_run_config(tmp_path)
    out = run_training(cfg)
    glmc, maxnorm = out["stages"]
    assert glmc["method"] == "glmc" and maxnorm["method"] == "maxnorm"
    assert glmc["switches"]["fuse_two_forwards"] is False  # the switches are logged with the result
    e0, e1 = glmc["epochs"][0], glmc["epochs"][-1]
    assert e1["loss_mix"] + e1["loss_cut"] < e0["loss_mix"] + e0["loss_cut"]  # the plain CE terms fall
    assert e1["loss"] < e0["loss"]
    assert len(maxnorm["epochs"]) == 2 and all(math.isfinite(e["train_loss"]) for e in maxnorm["epochs"])
    assert math.isfinite(maxnorm["final"]["top1"])
    # MaxNorm's end state: fc_cb rows within the threshold of the starting head, backbone as
    # GLMC left it (BN running stats aside: the reference keeps train-mode BN).
    first = load_checkpoint(tmp_path / cfg.name / "last.pt")["model"]
    state = load_checkpoint(tmp_path / cfg.name / "maxnorm" / "last.pt")
    delta = state["method"]["delta"]
    assert (state["model"]["fc_cb.weight"].norm(dim=1) <= delta + 1e-5).all()
    for k, v in first.items():
        if k.startswith("backbone.") and v.is_floating_point() and "running" not in k:
            torch.testing.assert_close(state["model"][k], v)
        if k.startswith(("fc.", "projector.", "predictor.")):
            torch.testing.assert_close(state["model"][k], v)


def test_evaluation_reports_both_heads_and_predicts_with_fc_cb():
    m = make_method()
    model = model_for(m).eval()
    x = torch.randn(5, 3, 8, 8)
    chosen, heads = m.head_logits(model, x)
    o, ocb, _, _ = model(x)
    assert set(heads) == {"fc", "fc_cb", "sum"}
    torch.testing.assert_close(heads["fc"], o)
    torch.testing.assert_close(heads["sum"], o + ocb)
    torch.testing.assert_close(chosen, m.predict(model, x))  # the report's top-1 stays fc_cb's
    assert make_method(separate_cb_head=False).head_logits(model_for(make_method(separate_cb_head=False)), x)[1] == {}


def test_the_glmc_net_compiles_whole_forward_and_backward(tmp_path):
    """torch.compile(fullgraph=True) of the real GLMC net (the recipe's 4x-wide ResNet-32, both heads
    and the projector), forward + backward, channels-last: a graph break fails here, on the CPU, not
    in a GPU session's minutes. aot_eager checks tracing and autograd without a C++ toolchain."""
    from fasttrain.build import build_run

    cfg = load_config(CONFIGS[0].parent / "cifar10_lt_r100.yaml", [
        "data.dataset=synthetic", "data.num_classes=3", "data.synthetic_size=[32,32]", "data.synthetic_max_per_class=8",
        f"data.root={tmp_path / 'syn'}", "device=cpu", "loader.num_workers=0", "loader.batch_size=4",
        "loader.backend=torch", "train.amp=fp32"])
    assert cfg.model.arch == "resnet32_w4"
    model = build_run(cfg, training=True).model.train()
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    x = torch.randn(4, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    outputs = compiled(x)
    sum(o.float().sum() for o in outputs).backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    model.eval()
    for got, want in zip(compiled(x), model(x)):
        torch.testing.assert_close(got, want)
