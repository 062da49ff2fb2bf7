"""The modern-recipe config (issue 32, item 5): `ce/imagenet_lt_vit_b16_in21k` uses every recipe
block, and its CPU-sized twin `ce/synthetic_vit_tiny_recipe` trains with all of them and learns."""
from __future__ import annotations

import json

from fasttrain.config import load_config

RECIPE = "ce/imagenet_lt_vit_b16_in21k"
TWIN = "ce/synthetic_vit_tiny_recipe"


def test_the_vit_recipe_uses_every_modern_block():
    cfg = load_config(RECIPE)
    assert cfg.model.arch == "timm/vit_base_patch16_224.augreg_in21k" and cfg.model.pretrained == "library"
    assert (cfg.optim.name, cfg.optim.no_decay, cfg.optim.layer_decay) == ("adamw", "auto", 0.75)
    assert (cfg.augment.policy, cfg.augment.random_erasing) == ("randaugment", 0.25)
    assert cfg.loss.label_smoothing == 0.1 and cfg.train.ema.decay > 0
    assert cfg.method.name == "logit_adjust" and cfg.schedule.per_step
    twin = load_config(TWIN)  # the twin differs in size only, not in the blocks it uses
    for get in (lambda c: c.optim.name, lambda c: c.optim.layer_decay, lambda c: c.augment.policy,
                lambda c: c.augment.random_erasing_mode, lambda c: c.loss.label_smoothing, lambda c: c.method.name,
                lambda c: c.schedule.name):
        assert get(twin) == get(cfg)


def test_the_tiny_twin_trains_with_every_block_and_its_loss_falls(tmp_path):
    from fasttrain.trainer import Trainer

    cfg = load_config(TWIN, [f"data.root={tmp_path}/corpus", f"out_dir={tmp_path}/runs", "device=cpu"])
    result = Trainer(cfg, tmp_path / "runs" / "twin").fit()
    history = [json.loads(line) for line in (tmp_path / "runs" / "twin" / "metrics.jsonl").read_text().splitlines()]
    assert len(history) == cfg.train.epochs
    losses = [h["train_loss"] for h in history]
    assert min(losses[-2:]) < 0.85 * losses[0], losses
    assert all("top1_ema" in h for h in history) and "final_ema" in result.summary
