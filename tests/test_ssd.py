"""SSD (ICCV 2021, docs: user-guide/methods/ssd.md): label-aware contrastive loss, the labelled
queue, the EMA key encoder, shuffled BN, the queue-size rules, the KD term, the stage hand-offs,
four stages on CIFAR-10-LT end to end, and a bit-exact resume in the middle of stage I."""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from helpers import TinyBackbone, after_step_at, method_context

from fasttrain.batch import Batch
from fasttrain.config import ConfigError, config_from_dict, load_config, stage_config, to_dict
from fasttrain.methods import Progress
from fasttrain.methods.label_queue import LabeledQueue, label_aware_contrastive_loss
from fasttrain.methods.lws import LWS, LWSConfig
from fasttrain.methods.momentum import ema_update_, shuffled_forward
from fasttrain.methods.retrain import ScaledLinear
from fasttrain.methods.ssd_distill import SSDDistill, SSDDistillConfig, kd_terms
from fasttrain.methods.ssd_stage1 import SSDStage1, SSDStage1Config

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "configs" / "ssd" / "cifar10_lt_r100.yaml"
COUNTS = (100, 10, 1)


def ctx(batch: int | None = 8):
    return dataclasses.replace(method_context(COUNTS), stream_batch_size=batch)


def views_batch(n: int = 8, views: int = 2, seed: int = 0) -> Batch:
    g = torch.Generator().manual_seed(seed)
    v = [torch.randint(0, 256, (n, 3, 8, 8), dtype=torch.uint8, generator=g).contiguous(memory_format=torch.channels_last)
         for _ in range(views)]
    return Batch(views=v, labels=torch.randint(0, 3, (n,), generator=g), stream=torch.zeros(n, dtype=torch.long))


def stage1(queue=16, splits=1, seed=0):
    torch.manual_seed(seed)
    method = SSDStage1(SSDStage1Config(queue_size=queue, shuffle_bn_splits=splits), ctx())
    return method, method.build_model(TinyBackbone(bn=True))


def sgd_steps(method, model, steps=2, views=2):
    method.prepare(model)
    opt = torch.optim.SGD(method.trainable_parameters(model), lr=0.5, momentum=0.9)
    model.train()
    for i in range(steps):
        loss, logs = method.loss(model, views_batch(views=views, seed=i), Progress(0, 1))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return logs


def snapshot(module: nn.Module) -> dict:
    return {k: v.clone() for k, v in module.state_dict().items()}


# --- stage I pieces ------------------------------------------------------------------------------


def test_label_aware_contrastive_loss_against_a_hand_computed_example():
    q = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    k = torch.tensor([[0.6, 0.8], [0.8, 0.6]])
    queue = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    queue_labels = torch.tensor([0, 1, 1])
    y = torch.tensor([0, 1])
    tau = 0.5
    # row 0 (class 0): queue entry 0 is its class -> out of the denominator; entries 1, 2 negatives
    row0 = -math.log(math.exp(0.6 / tau) / (math.exp(0.6 / tau) + math.exp(0.0) + math.exp(-1.0 / tau)))
    # row 1 (class 1): entries 1, 2 are its class -> only entry 0 (q·u = 0) stays a negative
    row1 = -math.log(math.exp(0.6 / tau) / (math.exp(0.6 / tau) + math.exp(0.0)))
    got = label_aware_contrastive_loss(q, k, queue, queue_labels, y, tau)
    assert got.item() == pytest.approx((row0 + row1) / 2, rel=1e-6)
    # Same-class entries are never positives: plain MoCo keeps them as negatives (larger loss), and a
    # same-class entry identical to the query does not lower the loss.
    plain = label_aware_contrastive_loss(q, k, queue, queue_labels, y, tau, label_aware=False)
    all_neg = (-math.log(math.exp(1.2) / (math.exp(1.2) + math.exp(2.0) + 1 + math.exp(-2.0)))
               - math.log(math.exp(1.2) / (math.exp(1.2) + 1 + math.exp(2.0) + 1))) / 2
    assert plain.item() == pytest.approx(all_neg, rel=1e-6) and plain > got
    # bf16 inputs under autocast: computed in fp32 all the same
    with torch.autocast("cpu", dtype=torch.bfloat16):
        again = label_aware_contrastive_loss(q, k, queue, queue_labels, y, tau)
    assert again.dtype == torch.float32 and again.item() == pytest.approx(got.item(), rel=1e-6)


def test_queue_is_fifo_with_labels_and_wraps_around():
    queue = LabeledQueue(5, 2, init_label=0, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(queue.keys.norm(dim=1), torch.ones(5))  # random unit vectors
    assert queue.labels.tolist() == [0] * 5 and int(queue.ptr) == 0
    keys = torch.arange(12.0).view(6, 2)
    queue.enqueue(keys[:3], torch.tensor([1, 2, 3]))
    assert torch.equal(queue.keys[:3], keys[:3]) and queue.labels.tolist() == [1, 2, 3, 0, 0] and int(queue.ptr) == 3
    queue.enqueue(keys[3:], torch.tensor([4, 5, 6]))  # rows 3, 4, then 0 again (the oldest)
    assert torch.equal(queue.keys[[3, 4, 0]], keys[3:]) and torch.equal(queue.keys[1:3], keys[1:3])
    assert queue.labels.tolist() == [6, 2, 3, 4, 5] and int(queue.ptr) == 1
    assert set(queue.state_dict()) == {"keys", "labels", "ptr"}  # buffers: checkpoints carry them
    with pytest.raises(ValueError, match="cannot enqueue 6 keys into a queue of 5"):
        queue.enqueue(torch.zeros(6, 2), torch.zeros(6, dtype=torch.long))
    assert LabeledQueue(3, 2, init_label=-1).labels.tolist() == [-1] * 3


def test_ema_update_and_keys_come_from_the_updated_key_encoder():
    a, b = nn.Linear(3, 2), nn.Linear(3, 2)
    want = [0.9 * pa.detach() + 0.1 * pb.detach() for pa, pb in zip(a.parameters(), b.parameters())]
    ema_update_(a, b, 0.9)
    for p, w in zip(a.parameters(), want):
        torch.testing.assert_close(p, w)
    method, model = stage1()
    for k, v in model.state_dict().items():  # the key encoder starts as an exact copy of the query encoder
        if k.startswith(("key_backbone.", "key_projector.")):
            assert torch.equal(v, model.state_dict()[k.removeprefix("key_")]), k
    assert not any(p.requires_grad for p in model.key_encoder().parameters())
    with torch.no_grad():  # make query and key encoders differ, as after training steps
        for p in model.query_encoder().parameters():
            p.add_(torch.randn_like(p))
    key_before = [p.clone() for p in model.key_encoder().parameters()]
    model.train()
    batch = views_batch()
    method.loss(model, batch, Progress(0, 1))
    for p, old, qp in zip(model.key_encoder().parameters(), key_before, model.query_encoder().parameters()):
        torch.testing.assert_close(p, 0.999 * old + 0.001 * qp)
    x_k = method.ctx.augmenter.views(batch)[1]
    with torch.no_grad():  # the enqueued keys are those of the already-updated key encoder
        k = F.normalize(model.key_projector(model.key_backbone(x_k)).float(), dim=1)
    torch.testing.assert_close(model.queue.keys[:8], k)
    assert model.queue.labels[:8].tolist() == batch.labels.tolist() and int(model.queue.ptr) == 8


def test_shuffled_bn_forward_normalises_random_sub_batches():
    bn = nn.BatchNorm1d(4)
    x = torch.randn(8, 4)
    perm = torch.randperm(8, generator=torch.Generator().manual_seed(0))
    got = shuffled_forward(bn, x, 2, perm)
    want = torch.empty_like(x)
    for rows in perm.tensor_split(2):
        want[rows] = F.batch_norm(x[rows], None, None, bn.weight, bn.bias, training=True)
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(shuffled_forward(bn, x, 1, perm), F.batch_norm(x, None, None, training=True))
    method, model = stage1(splits=2)  # through the method: the permutation comes from its own generator
    logs = sgd_steps(method, model)
    assert set(logs) == {"loss", "loss_ce", "loss_con"} and all(torch.isfinite(v) for v in logs.values())


def test_queue_size_must_fit_the_batch_and_the_train_set():
    SSDStage1(SSDStage1Config(queue_size=96), ctx(32))  # 111 images, batch 32
    with pytest.raises(ConfigError, match="method.queue_size: 100 is not divisible by the global batch 32"):
        SSDStage1(SSDStage1Config(queue_size=100), ctx(32))
    with pytest.raises(ConfigError, match="method.queue_size: 128 is more than the 111 training images"):
        SSDStage1(SSDStage1Config(queue_size=128), ctx(32))
    SSDStage1(SSDStage1Config(queue_size=100), ctx(None))  # structure only (a later stage's base): no check


def test_stage1_trains_the_query_side_only():
    method, model = stage1()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith(("backbone.", "fc.", "projector.")) for n in trainable)
    before = snapshot(model)
    sgd_steps(method, model)
    after = snapshot(model)
    assert not torch.equal(after["fc.weight"], before["fc.weight"])
    assert not torch.equal(after["key_projector.0.weight"], before["key_projector.0.weight"])  # moved by EMA
    assert int(model.queue.ptr) == 0 and model.queue.labels.tolist() != [0] * 16  # 2 batches of 8 filled it


# --- stages II-IV ------------------------------------------------------------------------------------


def test_kd_term_is_t2_kl_and_the_logged_value_is_the_kl():
    g = torch.Generator().manual_seed(0)
    soft = torch.randn(6, 5, generator=g, requires_grad=True)
    teacher = 3 * torch.randn(6, 5, generator=g)
    T = 2.0
    ce, kl = kd_terms(soft, teacher, T, impl="torch")
    p_t = torch.softmax(teacher / T, dim=1)
    want_kl = T * T * F.kl_div(F.log_softmax(soft / T, dim=1), p_t, reduction="batchmean")  # the code's term
    want_ce = T * T * (-(p_t * F.log_softmax(soft / T, dim=1)).sum(1)).mean()
    torch.testing.assert_close(ce, want_ce)
    torch.testing.assert_close(kl, want_kl.detach())
    g_ce, = torch.autograd.grad(ce, soft)
    g_kl, = torch.autograd.grad(want_kl, soft)
    torch.testing.assert_close(g_ce, g_kl)  # same gradient: they differ by the teacher's entropy
    # Through the method: loss = CE(hard) + T²·KL, the logs hold the KL form.
    _, teacher_model = stage2_model()
    method = SSDDistill(SSDDistillConfig(), ctx())
    model = method.build_model(TinyBackbone(bn=True), teacher_model)
    method.prepare(model)
    model.train()
    batch = views_batch(views=1)
    torch.manual_seed(1)
    loss, logs = method.loss(model, batch, Progress(0, 1))
    x = method.ctx.augmenter.views(batch)[0]
    hard, soft_logits, t = model(x, with_teacher=True)  # BN batch statistics: the same logits again
    ce_hard = F.cross_entropy(hard, batch.labels)
    kd = T * T * F.kl_div(F.log_softmax(soft_logits / T, 1), torch.softmax(t / T, 1), reduction="batchmean")
    torch.testing.assert_close(logs["loss_kd"], kd.detach())
    torch.testing.assert_close(logs["loss"], (ce_hard + kd).detach())
    assert loss.item() == pytest.approx((ce_hard + want_ce_of(soft_logits, t, T)).item(), rel=1e-5)


def want_ce_of(soft, t, T):
    p_t = torch.softmax(t / T, dim=1)
    return T * T * (-(p_t * F.log_softmax(soft / T, dim=1)).sum(1)).mean()


def stage2_model():
    """A trained stage-I model and the stage-II (LWS) model continued from it."""
    method, model = stage1()
    sgd_steps(method, model)
    lws = LWS(LWSConfig(base_method="ssd_stage1", class_aware_k=2), ctx())
    teacher = lws.build_model(None, model)
    sgd_steps(lws, teacher, views=1)
    return model, teacher


def test_stage2_is_lws_on_the_query_encoder_and_classifier():
    stage1_model, teacher = stage2_model()
    assert type(teacher).__name__ == "EncoderClassifier" and isinstance(teacher.fc, ScaledLinear)
    assert teacher.backbone is stage1_model.backbone and teacher.fc.linear is stage1_model.fc  # the query side
    assert [n for n, p in teacher.named_parameters() if p.requires_grad] == ["fc.scales"]
    assert not torch.equal(teacher.fc.scales.detach(), torch.ones(3))
    f = torch.randn(4, 16)
    torch.testing.assert_close(teacher.fc(f), (f @ teacher.fc.linear.weight.t() + teacher.fc.linear.bias) * teacher.fc.scales)
    assert not any(k.startswith(("key_", "projector", "queue")) for k in teacher.state_dict())


def test_standalone_hand_offs_load_the_right_tensors_and_name_what_is_missing():
    stage1_model, teacher = stage2_model()
    s1 = snapshot(stage1_model)
    # II alone from a stage-I checkpoint: the query encoder + fc, not the key encoder
    lws = LWS(LWSConfig(base_method="ssd_stage1", class_aware_k=2), ctx())
    alone = lws.build_model(TinyBackbone(bn=True))
    lws.load_init_state(alone, s1)
    assert torch.equal(alone.backbone.lin.weight, s1["backbone.lin.weight"])
    assert not torch.equal(s1["backbone.lin.weight"], s1["key_backbone.lin.weight"])
    assert torch.equal(alone.fc.weight, s1["fc.weight"])
    # III alone: model.init_from (stage II) goes into the teacher; a stage-I checkpoint names what it lacks
    s2 = snapshot(teacher)
    distill = SSDDistill(SSDDistillConfig(), ctx())
    student = distill.build_model(TinyBackbone(bn=True))
    distill.load_init_state(student, s2)
    for k, v in s2.items():
        assert torch.equal(student.state_dict()[f"teacher.{k}"], v), k
    with pytest.raises(RuntimeError, match=r"missing 3 weights of the teacher.*fc.scales"):
        distill.load_init_state(student, s1)
    # IV alone from a stage-III checkpoint: the student encoder + its hard head only
    distill.prepare(student)
    sgd_steps(distill, student, views=1)
    s3 = snapshot(student)
    lws4 = LWS(LWSConfig(base_method="ssd_distill", class_aware_k=2), ctx())
    four = lws4.build_model(TinyBackbone(bn=True))
    lws4.load_init_state(four, s3)
    assert torch.equal(four.fc.weight, s3["fc.weight"]) and not torch.equal(four.fc.weight, s3["fc_kd.weight"])
    assert torch.equal(four.backbone.lin.weight, s3["backbone.lin.weight"])
    with pytest.raises(RuntimeError, match=r"weights the model does not have: projector"):
        lws4.load_init_state(four, s1)  # a stage-I checkpoint is not a stage-III one


# --- configs ---------------------------------------------------------------------------------------


def test_imagenet_stage_alone_configs_repeat_the_chain_recipe():
    """imagenet_lt_rx50_stage{2,3,4}.yaml run one stage alone with exactly the chain's recipe."""
    chain = load_config(ROOT / "configs" / "ssd" / "imagenet_lt_rx50.yaml")
    assert chain.method.queue_size == 115712 and chain.augment.views[1]["color_jitter_hue"] == 0.1
    for i, n in enumerate((2, 3, 4)):
        staged = to_dict(stage_config(chain, i))
        alone = to_dict(load_config(ROOT / "configs" / "ssd" / f"imagenet_lt_rx50_stage{n}.yaml"))
        for section in ("data", "augment", "loader", "model", "optim", "schedule", "train"):
            assert staged[section] == alone[section], (n, section)
        drop = ("base_config",)
        assert {k: v for k, v in staged["method"].items() if k not in drop} == \
               {k: v for k, v in alone["method"].items() if k not in drop}, n
    assert [stage_config(chain, i).method.base_method for i in range(3)] == ["ssd_stage1", "ssd_stage1", "ssd_distill"]


# --- end to end on CIFAR-10-LT ---------------------------------------------------------------------


def _small_eval(monkeypatch, keep=250):
    """Evaluate on every (10000/keep)-th test image; read the dataset once for all stages of a test."""
    import fasttrain.build as build_mod

    real = build_mod.build_datasets
    cache: dict = {}

    def build(cfg):
        key = repr(cfg.data)
        if key not in cache:
            train, test = real(cfg)
            step = max(1, len(test) // keep)
            cache[key] = train, dataclasses.replace(test, labels=test.labels[::step], images=test.images[::step])
        return cache[key]

    monkeypatch.setattr(build_mod, "build_datasets", build)


def short(root, out, extra=()):
    return [f"data.root={root}", f"out_dir={out}", "device=cpu", "loader.batch_size=32", "loader.eval_batch_size=250",
            "method.queue_size=64", "method.shuffle_bn_splits=2", *extra]


def test_four_stages_on_cifar10_lt_lower_each_loss_and_report_both_heads(cifar10_root, tmp_path, monkeypatch):
    from fasttrain.checkpoint import load_checkpoint
    from fasttrain.evaluation import evaluate_checkpoint
    from fasttrain.trainer import run_training

    _small_eval(monkeypatch)
    cfg = load_config(CONFIG, short(cifar10_root, tmp_path, ["train.epochs=3", "train.max_steps_per_epoch=3",
                                                             "optim.lr=0.05"]))
    for stage, lr in zip(cfg.stages, (0.02, 0.05, 0.02)):
        stage.overrides.update(train={"epochs": 2, "max_steps_per_epoch": 3}, loader={"batch_size": 32},
                               optim={"lr": lr})
    torch.set_flush_denormal(True)
    try:
        out = run_training(cfg)
        assert [s["method"] for s in out["stages"]] == ["ssd_stage1", "lws", "ssd_distill", "lws"]
        losses = [[e["loss"] for e in s["epochs"]] for s in out["stages"]]
        assert losses[0][2] < losses[0][1], losses  # stage I once the queue holds real keys (after epoch 0)
        assert all(s[-1] < s[0] for s in losses[1:]), losses
        assert {"loss_ce", "loss_con"} <= set(out["stages"][0]["epochs"][0])
        assert {"loss_ce", "loss_kd"} <= set(out["stages"][2]["epochs"][0])
        s3 = out["stages"][2]
        assert set(s3["final"]["heads"]) == {"hard", "soft", "sum"}
        assert s3["final"]["top1"] == s3["final"]["heads"]["soft"]["top1"]  # predict_head: soft
        assert {"top1_hard", "top1_soft", "top1_sum"} <= set(s3["epochs"][-1])
        assert "heads" not in out["stages"][1]["final"] and "top1_hard" not in out["stages"][1]["epochs"][0]

        root = tmp_path / cfg.name
        ck = [load_checkpoint(p)["model"] for p in (root / "last.pt", root / "stage2" / "last.pt",
                                                     root / "stage3" / "last.pt", root / "stage4" / "last.pt")]
        fixed = [k for k in ck[0] if k.startswith("backbone.") and "running" not in k and "num_batches" not in k]
        assert all(torch.equal(ck[1][k], ck[0][k]) for k in fixed)  # II: stage I's query encoder …
        assert torch.equal(ck[1]["fc.linear.weight"], ck[0]["fc.weight"])  # … and classifier, frozen
        assert not any(k.startswith(("key_", "queue", "projector")) for k in ck[1])
        assert all(torch.equal(ck[2][f"teacher.{k}"], v) for k, v in ck[1].items()
                   if "running" not in k and "num_batches" not in k)  # III: the teacher is stage II
        assert not torch.equal(ck[2]["backbone.conv1.weight"], ck[1]["backbone.conv1.weight"])  # a new student
        assert all(torch.equal(ck[3][k], ck[2][k]) for k in fixed)  # IV: the student …
        assert torch.equal(ck[3]["fc.linear.weight"], ck[2]["fc.weight"])  # … and its hard head
        assert not any(k.startswith(("teacher.", "fc_kd")) for k in ck[3])

        report = evaluate_checkpoint(root / "stage3" / "last.pt")
        assert report["top1"] == pytest.approx(s3["final"]["top1"]) and set(report["heads"]) == {"hard", "soft", "sum"}
        assert evaluate_checkpoint(root / "stage4" / "last.pt")["top1"] == pytest.approx(out["final"]["top1"])

        # A stage alone from an earlier checkpoint: its resolved config + model.init_from (stage III from II)
        raw = to_dict(stage_config(cfg, 1))
        raw.update(name="alone", stages=[], model={**raw["model"], "init_from": str(root / "stage2" / "last.pt")},
                   train={**raw["train"], "epochs": 1, "max_steps_per_epoch": 2})
        alone = run_training(config_from_dict(raw))
        teacher = load_checkpoint(tmp_path / "alone" / "last.pt")["model"]
        assert all(torch.equal(teacher[f"teacher.{k}"], v) for k, v in ck[1].items()
                   if "running" not in k and "num_batches" not in k)
        assert set(alone["final"]["heads"]) == {"hard", "soft", "sum"}
        raw["model"]["init_from"] = str(root / "last.pt")  # a stage-I checkpoint is no teacher
        raw["name"] = "wrong"
        with pytest.raises(RuntimeError, match=r"model.init_from=.*missing 3 weights of the teacher.*fc.scales"):
            run_training(config_from_dict(raw))
    finally:
        torch.set_flush_denormal(False)


def test_queue_size_errors_name_the_key_at_build_time(cifar10_root, tmp_path):
    from fasttrain.trainer import Trainer

    cfg = load_config(CONFIG, short(cifar10_root, tmp_path, ["method.queue_size=80", "stages=[]"]))
    with pytest.raises(ConfigError, match="method.queue_size: 80 is not divisible by the global batch 32"):
        Trainer(cfg, tmp_path / "q")


def test_sigterm_mid_stage1_then_resume_is_bit_exact(cifar10_root, tmp_path, monkeypatch):
    """Stopped in the middle of epoch 1 of stage I, resumed: the same weights, key encoder, queue and
    write position as an uninterrupted run."""
    from fasttrain.trainer import Trainer

    _small_eval(monkeypatch)
    cfg = load_config(CONFIG, short(cifar10_root, tmp_path, ["train.epochs=2", "train.max_steps_per_epoch=3",
                                                             "train.eval_every=5", "stages=[]"]))
    torch.set_flush_denormal(True)
    try:
        ref = Trainer(cfg, tmp_path / "ref")
        ref.fit()
        cut = Trainer(cfg, tmp_path / "cut")
        after_step_at(cut, 1, 1, lambda: setattr(cut, "_stop_requested", True))  # stop after step 2 of epoch 1
        with pytest.raises(SystemExit):
            cut.fit()
        state = torch.load(tmp_path / "cut" / "last.pt", weights_only=True)
        # 5 batches of 32 went through a 64-key queue: its write position is 160 mod 64
        assert state["epoch"] == 1 and state["loader"]["position"] == 2 and int(state["model"]["queue.ptr"]) == 32
        resumed = Trainer(cfg, tmp_path / "cut", resume=True)
        resumed.fit()
        final = resumed.model.state_dict()
        for k, v in ref.model.state_dict().items():
            assert torch.equal(v, final[k]), k
        assert any(k.startswith("key_backbone.") for k in final) and "queue.keys" in final
    finally:
        torch.set_flush_denormal(False)


@pytest.mark.gpu(first=True)  # the GPU one-shot runs these before the kernel matrix
@pytest.mark.parametrize("stage", ["ssd_stage1", "ssd_distill"])
def test_ssd_steps_do_not_sync_the_host_on_cuda(stage):
    """The stage-I step (EMA, shuffled keys, queue product, enqueue) and the stage-III step run
    without a host<->device sync once the batch is on the device."""
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    from fasttrain.build import build_run
    from fasttrain.data.cifar import synthetic_cifar_lt
    from fasttrain.step import train_step

    method = {"name": stage, **({"queue_size": 256, "shuffle_bn_splits": 4} if stage == "ssd_stage1" else {})}
    cfg = config_from_dict({"device": "cuda", "method": method, "loader": {"backend": "tensor", "batch_size": 64}})
    ds = synthetic_cifar_lt(10, 100.0)[0]
    run = build_run(cfg, training=True, datasets=(ds, ds))
    run.model.train()
    batches = iter(run.train_loader)
    train_step(run.learner, next(batches), Progress(0, 1))  # warm-up (allocations, autotuning)
    batch = next(batches)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        train_step(run.learner, batch, Progress(0, 1))
    finally:
        torch.cuda.set_sync_debug_mode("default")
