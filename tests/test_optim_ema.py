"""Modern recipe building blocks (issue 32, items 1 and 4): AdamW with weight-decay exclusion and
layer-wise lr decay on a tiny timm ViT (against hand counts and against timm's own grouping),
gradient clipping, every shipped SGD config's optimizer and first step unchanged, and weight EMA:
its decay / update formula (against timm's ModelEmaV3), its evaluation beside the raw model, best.pt
on either, and a bit-identical EMA after SIGKILL + --resume."""
from __future__ import annotations

import json
import logging
import random
import signal
import subprocess
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from fasttrain.checkpoint import load_checkpoint
from fasttrain.config import load_config, stage_config
from fasttrain.ema import ModelEma
from fasttrain.methods import METHODS
from fasttrain.models import create_backbone
from fasttrain.optimizers import build_optimizer, layer_ids, parameter_groups
from fasttrain.schema import ConfigError
from fasttrain.shipped import list_configs
from helpers import method_context
from test_recovery import CONFIG, args, env, kill_after_saves, train_cmd

VIT = "timm/vit_tiny_patch16_224"
VIT_KWARGS = {"img_size": 32, "patch_size": 8, "depth": 2, "embed_dim": 32, "num_heads": 2}
VIT_OVERRIDES = [f"model.arch={VIT}", "model.arch_kwargs={img_size: 32, patch_size: 8, depth: 2, embed_dim: 32, "
                 "num_heads: 2}"]
# The optimizer of every shipped config as the code before issue 32 built it (a tiny model's params):
# written from `git archive HEAD` of that commit, whose build_optimizer knew SGD only.
HEAD_REFERENCE = Path(__file__).parent / "data" / "sgd_optimizers_head.json"


def tiny_vit_model(*overrides: str):
    """(config, CE model on a 2-block ViT with 32-d tokens, its trainable parameters)."""
    cfg = load_config(CONFIG, [*VIT_OVERRIDES, *overrides])
    torch.manual_seed(0)
    method = METHODS["ce"](cfg.method, method_context(counts=(50, 5, 2)))
    model = method.build_model(create_backbone(VIT, kwargs=VIT_KWARGS))
    return cfg, model, method.trainable_parameters(model)


def names_by(groups, key):
    out: dict = {}
    for g in groups:
        out.setdefault(g[key], []).extend(g["names"])
    return out


# --- AdamW parameter groups -------------------------------------------------------------------------


def test_adamw_excludes_norms_biases_and_tokens_from_weight_decay():
    """Hand count on the 2-block ViT (+ the CE head): decayed = patch-embedding conv weight, each
    block's qkv / proj / fc1 / fc2 weights (4 x 2), the classifier weight = 10; not decayed = class
    token, position embedding, patch-embedding bias, each block's 2 norms (weight + bias) and 4
    biases (8 x 2), the final norm (2), the classifier bias = 22."""
    cfg, model, params = tiny_vit_model("optim.name=adamw", "optim.weight_decay=0.05")
    groups = parameter_groups(cfg, model, params)
    by_decay = names_by(groups, "weight_decay")
    decayed, plain = sorted(by_decay[0.05]), sorted(by_decay[0.0])
    assert len(decayed) == 10 and len(plain) == 22 and len(decayed) + len(plain) == len(params)
    assert "backbone.net.patch_embed.proj.weight" in decayed and "fc.weight" in decayed
    for name in ("backbone.net.cls_token", "backbone.net.pos_embed", "backbone.net.norm.weight",
                 "backbone.net.blocks.1.norm2.bias", "backbone.net.blocks.0.attn.qkv.bias", "fc.bias"):
        assert name in plain, name
    opt = build_optimizer(cfg, params, torch.device("cpu"), model)
    assert isinstance(opt, torch.optim.AdamW)
    assert sorted(len(g["params"]) for g in opt.param_groups) == [10, 22]
    assert {g["weight_decay"] for g in opt.param_groups} == {0.0, 0.05}
    assert opt.param_groups[0]["betas"] == (0.9, 0.999) and opt.param_groups[0]["eps"] == 1e-8


def test_no_decay_is_on_for_adamw_and_off_for_sgd_unless_asked():
    cfg, model, params = tiny_vit_model("optim.name=sgd")
    assert parameter_groups(cfg, model, params) == [{"params": params}]  # the plain list, as before
    cfg, model, params = tiny_vit_model("optim.name=sgd", "optim.no_decay=true", "optim.weight_decay=0.1")
    assert {g["weight_decay"]: len(g["names"]) for g in parameter_groups(cfg, model, params)} == {0.1: 10, 0.0: 22}
    cfg, model, params = tiny_vit_model("optim.name=adamw", "optim.no_decay=false", "optim.weight_decay=0.1")
    opt = build_optimizer(cfg, params, torch.device("cpu"), model)
    assert len(opt.param_groups) == 1 and opt.param_groups[0]["weight_decay"] == 0.1


def test_layer_decay_factors_per_block_by_hand_and_as_timm_groups_them():
    """layer_decay 0.5 on 2 blocks: stem (tokens, patch embedding) 0.5^3, block 0 0.5^2, block 1 and
    the final norm 0.5 (timm merges the norm into the last block), the classifier 1; each layer split
    into decayed / not decayed. The same factors and decays as timm's param_groups_layer_decay on the
    equivalent timm model with its own classifier."""
    cfg, model, params = tiny_vit_model("optim.name=adamw", "optim.layer_decay=0.5", "optim.weight_decay=0.05")
    groups = parameter_groups(cfg, model, params)
    scale = {n: g["lr_scale"] for g in groups for n in g["names"]}
    per_scale = {s: sorted(n for n, v in scale.items() if v == s) for s in set(scale.values())}
    assert {s: len(n) for s, n in per_scale.items()} == {0.125: 4, 0.25: 12, 0.5: 14, 1.0: 2}
    assert per_scale[0.125] == sorted(f"backbone.net.{n}" for n in ("cls_token", "pos_embed", "patch_embed.proj.weight",
                                                                     "patch_embed.proj.bias"))
    assert per_scale[1.0] == ["fc.bias", "fc.weight"]
    assert "backbone.net.norm.weight" in per_scale[0.5] and "backbone.net.blocks.0.mlp.fc2.weight" in per_scale[0.25]
    assert len(groups) == 8  # 4 layers x (decayed, not decayed)

    import timm
    from timm.optim import param_groups_layer_decay

    torch.manual_seed(0)
    full = timm.create_model(VIT.split("/")[1], pretrained=False, num_classes=3, **VIT_KWARGS)
    theirs = {}
    for g in param_groups_layer_decay(full, weight_decay=0.05, no_weight_decay_list=full.no_weight_decay(),
                                      layer_decay=0.5):
        names = {id(p): n for n, p in full.named_parameters()}
        theirs.update({names[id(p)]: (g["lr_scale"], g["weight_decay"]) for p in g["params"]})
    decay = {n: g["weight_decay"] for g in groups for n in g["names"]}
    ours = {n.replace("backbone.net.", "") if n.startswith("backbone.") else n.replace("fc.", "head."):
            (scale[n], decay[n]) for n in scale}
    assert ours == theirs

    opt = build_optimizer(cfg, params, torch.device("cpu"), model)
    assert sorted({(g["lr"], g["lr_scale"]) for g in opt.param_groups}) == [(0.0125, 0.125), (0.025, 0.25),
                                                                            (0.05, 0.5), (0.1, 1.0)]


def test_layer_decay_names_a_backbone_without_layers():
    with pytest.raises(ConfigError, match=r"optim\.layer_decay: backbone 'resnet32' has no layer grouping"):
        load_config(CONFIG, ["optim.layer_decay=0.75"])
    plain = nn.Sequential(nn.Linear(2, 2))
    with pytest.raises(ConfigError, match="backbone 'timm/some_net' has no layer grouping"):
        layer_ids(plain, "timm/some_net")
    with pytest.raises(ConfigError, match=r"optim\.layer_decay: expected a value in \(0, 1\]"):
        load_config(CONFIG, [*VIT_OVERRIDES, "optim.layer_decay=1.5"])
    with pytest.raises(ConfigError, match=r"optim\.betas"):
        load_config(CONFIG, ["optim.betas=[0.9, 1.0]"])


def test_clip_grad_norm_clips_the_global_norm_before_the_step():
    """A huge loss with clip 0.5: the gradients the optimizer used have global norm 0.5, and plain
    SGD (lr 1) moves the weights by exactly them."""
    from fasttrain.methods import Progress
    from fasttrain.step import Learner, train_step

    class Square:
        def loss(self, model, batch, progress):
            return 1e3 * model(batch).pow(2).sum(), {}

        def after_step(self, model, progress):
            pass

    torch.manual_seed(0)
    model = nn.Linear(4, 3)
    before = [p.detach().clone() for p in model.parameters()]
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    learner = Learner(Square(), model, model, opt, torch.amp.GradScaler(enabled=False), None, torch.device("cpu"),
                      clip_grad_norm=0.5)
    train_step(learner, torch.randn(8, 4), Progress(epoch=0, epochs=1))
    grads = [p.grad for p in model.parameters()]
    assert torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])) == pytest.approx(0.5)
    for p, b, g in zip(model.parameters(), before, grads):
        assert torch.equal(p.detach(), b - g)


def test_per_step_warmup_rises_smoothly_and_per_epoch_warmup_is_unchanged():
    """Per step (width 1/steps) the warm-up is the ramp's value at each step's end: from 1/(steps x W)
    to 1 at the last step of epoch W-1, then the cosine from 1; per epoch it is (e+1)/W as before."""
    from fasttrain.schedules import lr_factor

    steps, w, epochs = 4, 2, 10
    ramp = [lr_factor("warmup_cosine", e + s / steps, epochs, warmup=w, width=1 / steps)
            for e in range(w) for s in range(steps)]
    assert ramp == pytest.approx([(k + 1) / (steps * w) for k in range(steps * w)])
    assert lr_factor("warmup_cosine", w, epochs, warmup=w, width=1 / steps) == 1.0
    assert lr_factor("warmup_cosine", w + 0.25, epochs, warmup=w, width=1 / steps) < 1.0
    assert [lr_factor("warmup_cosine", e, epochs, warmup=w) for e in range(w)] == [(e + 1) / w for e in range(w)]
    assert lr_factor("warmup_multistep", 0.5, 200, warmup=5, milestones=[160], width=0.5) == pytest.approx(0.2)


# --- every shipped SGD recipe unchanged ------------------------------------------------------------


def shipped_sgd_configs():
    for entry in list_configs():
        cfg = load_config(entry["name"])
        for stage, c in [("", cfg)] + [(s.name, stage_config(cfg, i)) for i, s in enumerate(cfg.stages)]:
            if c.optim.name == "sgd":
                yield entry["name"] + (f"#{stage}" if stage else ""), c


def test_every_shipped_sgd_config_builds_the_optimizer_it_built_before_and_steps_identically():
    """Each shipped SGD config (and each later stage): one group holding the parameter list itself,
    the hyperparameters the pre-AdamW code gave (stored reference), and a first step bit-identical to
    torch's SGD built from those hyperparameters."""
    reference = json.loads(HEAD_REFERENCE.read_text())
    seen = 0
    for name, cfg in shipped_sgd_configs():
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3), nn.Linear(3, 2))
        twin = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3), nn.Linear(3, 2))
        twin.load_state_dict(model.state_dict())
        params = list(model.parameters())
        opt = build_optimizer(cfg, params, torch.device("cpu"), model)
        assert type(opt).__name__ == "SGD" and len(opt.param_groups) == 1, name
        assert opt.param_groups[0]["params"] == params, name
        got = {k: v for k, v in opt.param_groups[0].items() if k != "params"} | {"n_params": len(params)}
        if name in reference:  # configs shipped before issue 32
            assert reference[name]["class"] == "SGD" and got == reference[name]["groups"][0], name
            seen += 1
        hyper = {k: v for k, v in got.items() if k not in ("n_params", "initial_lr")}
        ref_opt = torch.optim.SGD(twin.parameters(), **hyper)
        x = torch.randn(8, 4)
        for m, o in ((model, opt), (twin, ref_opt)):
            o.zero_grad()
            m(x).square().mean().backward()
            o.step()
        for a, b in zip(model.parameters(), twin.parameters()):
            assert torch.equal(a, b), name
    assert seen == len(reference)


# --- weight EMA -----------------------------------------------------------------------------------------


def test_ema_decay_follows_timm_model_ema_v3():
    ema = ModelEma(nn.Linear(2, 2), 0.999)
    assert [ema.decay_at(t) for t in (1, 2, 50)] == [0.0, 0.999, 0.999]  # the first update copies
    ema = ModelEma(nn.Linear(2, 2), 0.999, warmup=True, warmup_gamma=1.0, warmup_power=0.75, min_decay=0.5,
                   update_after_step=3)
    assert [ema.decay_at(t) for t in (1, 4)] == [0.0, 0.0]
    assert ema.decay_at(5) == max(0.5, 1 - (1 + 1) ** -0.75)  # s = 5 - 3 - 1 = 1
    assert ema.decay_at(20) == pytest.approx(1 - (1 + 16) ** -0.75)
    assert ema.decay_at(10**7) == 0.999


def test_ema_update_is_timm_model_ema_v3_bit_for_bit():
    """A model with BatchNorm changed at random between updates: our EMA and timm's ModelEmaV3 (same
    decay, warm-up) hold identical state dicts after each update; by hand for the first two."""
    from timm.utils import ModelEmaV3

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
    ours = ModelEma(model, 0.99, warmup=True, warmup_power=0.75)
    theirs = ModelEmaV3(model, decay=0.99, use_warmup=True, warmup_power=0.75)
    first = None
    for step in range(1, 8):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        model.train()(torch.randn(5, 3))  # moves the running statistics and num_batches_tracked
        ours.update(model)
        theirs.update(model, step=step)
        for (k, a), b in zip(ours.module.state_dict().items(), theirs.module.state_dict().values()):
            assert torch.equal(a, b), (step, k)
        if step == 1:
            first = {k: v.clone() for k, v in model.state_dict().items()}
            assert all(torch.equal(a, first[k]) for k, a in ours.module.state_dict().items())
        if step == 2:
            d = 1 - 2 ** -0.75
            w = model[0].weight.detach()
            assert torch.allclose(ours.module[0].weight, d * first["0.weight"] + (1 - d) * w, atol=1e-6)
    assert ours.updates == 7 and not any(p.requires_grad for p in ours.module.parameters())


def tiny_vit_run_args(tmp_path: Path, out: str, *extra: str) -> list[str]:
    return [*args(tmp_path, out), *VIT_OVERRIDES, "augment.crop_size=32", "augment.eval_resize=32",
            "optim.name=adamw", "optim.lr=0.001", "optim.weight_decay=0.05",
            "optim.layer_decay=0.75", "optim.clip_grad_norm=1.0", "schedule.name=warmup_cosine",
            "schedule.warmup_epochs=1", "schedule.per_step=true", "train.ema.decay=0.9", "train.ema.warmup=true",
            *extra]


def test_adamw_vit_recipe_with_ema_trains_evaluates_both_and_keeps_best_on_ema(tmp_path):
    """AdamW + layer decay + clipping + per-step warm-up cosine + EMA, 2 epochs of 4 steps on a tiny
    ViT: every group's lr is the schedule's lr x its layer factor at each step (warm-up rising, then
    cosine falling), each epoch's record has the EMA's metrics, summary.json its final report, and
    with train.select_model=ema (and select_on=last) best.pt holds the last epoch's EMA weights."""
    from fasttrain.trainer import Trainer

    cli = tiny_vit_run_args(tmp_path, "runs", "train.select_model=ema", "train.select_on=last")
    cfg = load_config(cli[0], cli[1:])
    trainer = Trainer(cfg, tmp_path / "runs" / "vit")
    optimizer = trainer.learner.optimizer
    seen = []
    set_lr = trainer._set_lr

    def record(epoch, width=1.0):
        lr = set_lr(epoch, width)
        if width < 1:  # the per-step updates (each epoch also starts with a per-epoch one)
            seen.append((epoch, lr, [(g["lr"], g["lr_scale"]) for g in optimizer.param_groups]))
        return lr

    trainer._set_lr = record
    result = trainer.fit()
    assert [e for e, _, _ in seen] == [0, 0.25, 0.5, 0.75, 1, 1.25, 1.5, 1.75]
    assert all(lr_g == pytest.approx(lr * scale) for _, lr, groups in seen for lr_g, scale in groups)
    lrs = [lr for _, lr, _ in seen]
    assert lrs[:4] == pytest.approx([0.00025, 0.0005, 0.00075, 0.001])  # warm-up: rising to the base lr
    assert lrs[4] == pytest.approx(0.001) and lrs[4:] == sorted(lrs[4:], reverse=True)  # then the cosine
    history = [json.loads(line) for line in (tmp_path / "runs" / "vit" / "metrics.jsonl").read_text().splitlines()]
    assert all({"top1_ema", "many_ema", "few_ema", "ece_ema"} <= set(r) for r in history)
    summary = result.summary
    assert "final_ema" in summary and summary["best"]["model"] == "ema"
    assert summary["best"]["epoch"] == 1 and summary["best"]["top1"] == history[1]["top1_ema"]
    assert summary["selected"]["test"]["top1"] == summary["final_ema"]["top1"]
    last = load_checkpoint(tmp_path / "runs" / "vit" / "last.pt")
    assert last["ema"]["updates"] == 8  # one update per optimizer step
    best = load_checkpoint(tmp_path / "runs" / "vit" / "best.pt")  # the EMA weights, not the raw ones
    assert all(torch.equal(best["model"][k], v) for k, v in last["ema"]["weights"].items())
    assert not all(torch.equal(best["model"][k], v) for k, v in last["model"].items())


def test_select_model_ema_needs_an_ema():
    with pytest.raises(ConfigError, match=r"train\.select_model=ema: the run keeps no EMA"):
        load_config(CONFIG, ["train.select_model=ema"])


def test_ema_is_off_by_default_and_absent_from_the_checkpoint(tmp_path):
    from fasttrain.build import build_run

    cfg = load_config(CONFIG, args(tmp_path, "runs")[1:])
    assert cfg.train.ema.decay is None and cfg.train.select_model == "raw"
    assert build_run(cfg, training=True).learner.ema is None


def test_sigkill_then_resume_gives_bit_identical_ema_weights(tmp_path):
    """The ViT recipe with EMA, checkpoints every step, SIGKILLed after a random number of saves
    (seed printed) and resumed: last.pt's EMA weights and update count equal the uninterrupted run's."""
    seed = random.randrange(10**6)
    k = random.Random(seed).randrange(1, 7)
    ref = subprocess.run(train_cmd(*tiny_vit_run_args(tmp_path, "ref")), env=env(), capture_output=True, text=True,
                         timeout=240)
    assert ref.returncode == 0, ref.stderr[-3000:]
    run = tmp_path / "cut" / "ce_cifar10_lt_r100"
    code = kill_after_saves(train_cmd(*tiny_vit_run_args(tmp_path, "cut")), run / "last.pt", k, timeout=240)
    assert code == -signal.SIGKILL, f"seed {seed}: the run was not killed (exit {code})"
    resumed = subprocess.run(train_cmd(*tiny_vit_run_args(tmp_path, "cut"), "--resume"), env=env(),
                             capture_output=True, text=True, timeout=240)
    assert resumed.returncode == 0, f"seed {seed}: " + resumed.stderr[-3000:]
    a = load_checkpoint(tmp_path / "ref" / "ce_cifar10_lt_r100" / "last.pt")
    b = load_checkpoint(run / "last.pt")
    assert a["ema"]["updates"] == b["ema"]["updates"] == 8
    for key, value in a["ema"]["weights"].items():
        assert torch.equal(value, b["ema"]["weights"][key]), f"seed {seed}: {key}"
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), f"seed {seed}: {key}"


def test_resuming_a_checkpoint_without_ema_starts_the_ema_from_the_resumed_weights(caplog):
    from fasttrain.ema import restore_ema

    torch.manual_seed(0)
    model, other = nn.Linear(3, 2), nn.Linear(3, 2)
    ema = ModelEma(other, 0.9)
    ema.updates = 5
    restore_ema(ema, {"model": model.state_dict()}, model, logging.getLogger("fasttrain"))
    assert ema.updates == 0 and torch.equal(ema.module.weight, model.weight)
    assert "holds no EMA weights" in caplog.text
    saved = {"ema": {"weights": other.state_dict(), "updates": 3}}
    restore_ema(ema, saved, model, None)
    assert ema.updates == 3 and torch.equal(ema.module.weight, other.weight)
