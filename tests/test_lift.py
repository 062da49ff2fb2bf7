"""LIFT-style fine-tuning (configs/lift): the model.head choices (cosine, text-initialised), class
names for prompts, five-crop test-time ensembling, trainable-only checkpoints, and the CPU twin
`lift/synthetic_clip_tiny` trained end to end (loss falls; last.pt / best.pt hold only the trainable
weights and evaluate to the run's own numbers after reload; a missing pretrained file is one line).
open_clip tests are skipped where the `clip` extra is not installed; nothing is downloaded."""
from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from helpers import refuse_downloads

from fasttrain.config import config_from_dict, load_config
from fasttrain.schema import ConfigError

try:
    import open_clip  # noqa: F401

    HAVE_OPEN_CLIP = True
except ImportError:
    HAVE_OPEN_CLIP = False

needs_open_clip = pytest.mark.skipif(not HAVE_OPEN_CLIP, reason="open_clip is not installed (pip install -e '.[clip]')")
TWIN = "lift/synthetic_clip_tiny"
RECIPES = ["lift/imagenet_lt_clip_vit_b16", "lift/imagenet_lt_clip_vit_b16_tte", "lift/places_lt_clip_vit_b16",
           "lift/inat2018_clip_vit_b16", "lift/cifar100_lt_r100_clip_vit_b16"]


@pytest.fixture(autouse=True)
def no_network(tmp_path, monkeypatch):
    refuse_downloads(tmp_path, monkeypatch)


def _tiny_clip_file(cfg, path) -> dict:
    """A whole open_clip checkpoint of the twin's shape with random weights at `path`."""
    import open_clip
    from safetensors.torch import save_file

    kwargs = {k: v for k, v in cfg.model.arch_kwargs.items() if k != "image_projection"}
    model = open_clip.create_model("ViT-B-16", pretrained=None, **kwargs)
    g = torch.Generator().manual_seed(5)
    state = {k: (torch.randn(v.shape, generator=g) * 0.05 if v.is_floating_point() else v.clone())
             for k, v in model.state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path))
    return state


# --- the recipes ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", RECIPES)
def test_the_lift_configs_are_the_official_recipe(name):
    cfg = load_config(name)
    assert (cfg.model.arch, cfg.model.pretrained, cfg.model.peft) == ("open_clip/ViT-B-16", "library:openai", "adaptformer")
    assert cfg.model.arch_kwargs == {"image_projection": False}
    assert (cfg.model.head, cfg.model.head_scale, cfg.model.head_init) == ("cosine", 25.0, "text")
    assert (cfg.method.name, cfg.method.tau, cfg.method.posthoc) == ("logit_adjust", 1.0, False)
    assert (cfg.optim.name, cfg.optim.lr, cfg.optim.momentum, cfg.optim.weight_decay) == ("sgd", 0.01, 0.9, 5e-4)
    assert (cfg.schedule.name, cfg.schedule.per_step, cfg.loader.batch_size) == ("cosine", False, 128)
    assert cfg.train.epochs == (20 if "inat" in name else 10)
    assert cfg.augment.eval_tte == ("fivecrop" if name.endswith("_tte") else "none")
    twin = load_config(TWIN)  # the twin differs in size only
    for get in (lambda c: c.model.peft, lambda c: c.model.head, lambda c: c.model.head_init, lambda c: c.method.name,
                lambda c: c.optim.name, lambda c: c.schedule.name):
        assert get(twin) == get(cfg)


def test_model_head_is_refused_by_methods_with_heads_of_their_own_and_the_prompt_needs_a_slot():
    with pytest.raises(ConfigError, match="method glmc builds heads of its own"):
        config_from_dict({"method": {"name": "glmc"}, "model": {"head": "cosine"}})
    with pytest.raises(ConfigError, match="method crt \\(method.base_method glmc\\) builds heads of its own"):
        config_from_dict({"method": {"name": "crt", "base_method": "glmc"}, "model": {"head": "cosine"}})
    cfg = config_from_dict({"method": {"name": "crt", "base_method": "ce"}, "model": {"head": "cosine"}})
    assert cfg.model.head == "cosine"  # a stage continuing a CE-family model keeps its head
    with pytest.raises(ConfigError, match="head_prompt: needs a {}"):
        config_from_dict({"model": {"head_init": "text", "head_prompt": "a photo"}})
    with pytest.raises(ConfigError, match="model.head"):
        config_from_dict({"model": {"head": "cosin"}})
    with pytest.raises(ConfigError, match="tensor backend"):
        config_from_dict({"loader": {"backend": "tensor"}, "augment": {"eval_tte": "fivecrop"}})


def test_a_cosine_head_replaces_the_linear_one_and_a_text_head_needs_a_clip_backbone():
    from helpers import lt_arrays

    from fasttrain.build import build_run
    from fasttrain.models import CosineClassifier

    ds = lt_arrays()
    raw = {"device": "cpu", "loader": {"backend": "tensor", "batch_size": 8}, "method": {"name": "logit_adjust"},
           "model": {"head": "cosine", "head_scale": 16.0, "head_learn_scale": True}}
    run = build_run(config_from_dict(raw), training=True, datasets=(ds, ds))
    assert isinstance(run.model.fc, CosineClassifier) and float(run.model.fc.scale.detach()) == 16.0
    assert "fc.scale" in dict(run.model.named_parameters())
    raw["model"] = {"head_init": "text"}
    with pytest.raises(ConfigError, match="needs a CLIP backbone"):
        build_run(config_from_dict(raw), training=True, datasets=(ds, ds))


@needs_open_clip
def test_a_text_initialised_head_holds_the_prompt_features_of_the_datasets_class_names(tmp_path):
    import open_clip

    from fasttrain.build import build_run
    from fasttrain.data import LTDataset

    cfg = load_config(TWIN, ["device=cpu", f"model.pretrained={tmp_path}/clip.safetensors", "model.head=linear"])
    state = _tiny_clip_file(cfg, tmp_path / "clip.safetensors")
    names = ["golden_retriever", "tabby cat", "airliner"]
    imgs = np.zeros((6, 32, 32, 3), np.uint8)
    ds = LTDataset("named", 3, np.array([0, 0, 0, 1, 1, 2]), np.array([3, 2, 1]), images=imgs,
                   mean=(0.5,) * 3, std=(0.5,) * 3, extra={"classes": names})
    run = build_run(cfg, training=True, datasets=(ds, ds))
    reference = open_clip.create_model("ViT-B-16", pretrained=None,
                                       **{k: v for k, v in cfg.model.arch_kwargs.items() if k != "image_projection"})
    reference.load_state_dict(state)
    tokens = open_clip.get_tokenizer("ViT-B-16")([f"a photo of a {n.replace('_', ' ')}." for n in names])
    with torch.no_grad():
        text = F.normalize(reference.encode_text(tokens), dim=-1)
        expected = F.normalize(text @ state["visual.proj"].t(), dim=-1)  # back to the tower's width (LIFT)
    torch.testing.assert_close(run.model.fc.weight.detach(), expected, rtol=1e-5, atol=1e-6)
    assert torch.count_nonzero(run.model.fc.bias) == 0  # a linear text head starts with zero bias


# --- class names for prompts ----------------------------------------------------------------------


def test_imagenet_names_come_from_a_shipped_table_and_inat_names_from_its_categories_json(tmp_path):
    from types import SimpleNamespace

    from fasttrain.data.classnames import imagenet_class_names, inat_class_names, prompt_class_names
    from fasttrain.data.index import DatasetError

    names = imagenet_class_names()
    assert len(names) == 1000 and names[0] == "tench" and names[1] == "goldfish"
    (tmp_path / "categories.json").write_text(json.dumps([{"id": 1, "name": "Aus bus"}, {"id": 0, "name": "Xus yus"}]))
    assert inat_class_names(tmp_path, 2) == ["Xus yus", "Aus bus"]
    with pytest.raises(DatasetError, match="no category for ids \\[2\\]"):
        inat_class_names(tmp_path, 3)
    with pytest.raises(DatasetError, match="no categories.json"):
        inat_class_names(tmp_path / "elsewhere", 2)
    from fasttrain.data import LTDataset

    places = LTDataset("places_lt", 2, np.array([0, 1]), np.array([1, 1]),
                       paths=["/d/train/airplane_cabin/1.jpg", "/d/train/bakery-shop/2.jpg"])
    assert prompt_class_names(places, SimpleNamespace(dataset="places_lt", root="/d")) == ["airplane_cabin",
                                                                                           "bakery-shop"]


# --- test-time ensembling -------------------------------------------------------------------------


def test_five_crops_are_torchvisions_and_their_logits_are_averaged():
    from torchvision.transforms import v2

    from fasttrain.evaluation import ensemble_logits, five_crops

    x = torch.randn(2, 3, 40, 37)
    ours = five_crops(x, 32)
    for a, b in zip(ours, v2.FiveCrop(32)(x)):
        torch.testing.assert_close(a, b, rtol=0, atol=0)

    class Method:
        def head_logits(self, model, v):
            return model(v), {"other": 2 * model(v)}

    def model(v):
        return v.mean(dim=(2, 3))

    logits, heads = ensemble_logits(Method(), model, x, 32)
    expected = torch.stack([c.mean(dim=(2, 3)) for c in ours]).mean(dim=0)
    torch.testing.assert_close(logits, expected)
    torch.testing.assert_close(heads["other"], 2 * expected)
    with pytest.raises(ValueError, match="smaller than the 48x48 crops"):
        five_crops(x, 48)


# --- the CPU twin, end to end ---------------------------------------------------------------------


@needs_open_clip
def test_the_tiny_lift_run_learns_stores_only_trainable_weights_and_reloads_to_its_numbers(tmp_path):
    from fasttrain.build import build_run, build_split_loader
    from fasttrain.checkpoint import CheckpointError, load_checkpoint
    from fasttrain.evaluation import checkpoint_evaluation
    from fasttrain.inference import predict
    from fasttrain.model_state import checkpoint_weights
    from fasttrain.trainer import Trainer

    weights = tmp_path / "clip.safetensors"
    cfg = load_config(TWIN, [f"data.root={tmp_path}/corpus", f"out_dir={tmp_path}/runs", "device=cpu",
                             f"model.pretrained={weights}"])
    _tiny_clip_file(cfg, weights)
    run_dir = tmp_path / "runs" / "twin"
    trainer = Trainer(cfg, run_dir)
    trainer.fit()
    history = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    losses = [h["train_loss"] for h in history]
    assert len(history) == cfg.train.epochs and min(losses[-2:]) < 0.85 * losses[0], losses
    # The eval images are 40x40 (32 + 8) and the model saw their five 32x32 crops.
    assert tuple(next(iter(trainer.run.eval_loader)).views[0].shape[-2:]) == (40, 40)
    for name in ("last.pt", "best.pt"):
        state = load_checkpoint(run_dir / name)
        ref = state["weights_ref"]
        assert ref["pretrained"] == str(weights) and ref["peft"] == "adaptformer"
        trainable = {n for n, p in trainer.run.model.named_parameters() if p.requires_grad}
        params = set(dict(trainer.run.model.named_parameters()))
        assert {k for k in state["model"] if k in params} == trainable
        assert all("adaptformer" in k or k.startswith("fc.") for k in trainable)
        assert ref["frozen_tensors"] > 0 and len(state["model"]) == ref["stored_tensors"]
    report, _ = checkpoint_evaluation(run_dir / "last.pt")
    assert report["top1"] == pytest.approx(history[-1]["top1"], abs=1e-9)
    with pytest.raises(CheckpointError, match="stores only the trainable weights.*model.pretrained"):
        checkpoint_evaluation(run_dir / "last.pt", ["model.pretrained=null"])
    # What is left out is fixed at build: a stage that freezes the adapters, or an EMA copy (every
    # parameter frozen), still stores them.
    model = trainer.run.model
    stored = set(checkpoint_weights(model, cfg.model)["model"])
    ema = copy.deepcopy(model).requires_grad_(False)
    assert set(checkpoint_weights(ema, cfg.model)["model"]) == stored
    assert any("adaptformer" in k for k in stored)
    # Calibration reads single centre crops, evaluation the (crop + expand) images it crops five times.
    assert tuple(next(iter(build_split_loader(trainer.run, "test", tte=False))).views[0].shape[-2:]) == (32, 32)
    # --resume, model.init_from and predict rebuild the frozen rest from model.pretrained too.
    resumed = Trainer(cfg, run_dir, resume=True)
    assert torch.equal(resumed.run.model.fc.weight, trainer.run.model.fc.weight)
    init = build_run(load_config(TWIN, [f"data.root={tmp_path}/corpus", "device=cpu", f"model.pretrained={weights}",
                                        f"model.init_from={run_dir / 'last.pt'}"]), training=True)
    for (name, a), b in zip(init.model.state_dict().items(), trainer.run.model.state_dict().values()):
        assert torch.equal(a, b), name
    images = sorted((tmp_path / "corpus" / "test").rglob("*.jpg"))[:3]
    rows = predict(run_dir / "last.pt", images, topk=2)
    assert len(rows) == 3 and all(len(r["classes"]) == 2 for r in rows)
    weights.rename(tmp_path / "moved.safetensors")
    with pytest.raises(ConfigError, match="store only the trainable weights.*model.pretrained=.*clip.safetensors"):
        checkpoint_evaluation(run_dir / "last.pt")


def test_evaluation_builds_no_autograd_graph_with_or_without_tte():
    """collect_predictions runs under no_grad (an eval set's graph once held 13 GB on CIFAR)."""
    from types import SimpleNamespace

    from fasttrain.evaluation import collect_predictions

    seen = []

    class Method:
        def head_logits(self, model, v):
            seen.append(torch.is_grad_enabled())
            return model(v), {}

    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.ones(3, 2))

        def forward(self, v):
            return v.mean(dim=(2, 3)) @ self.weight

    model = Model()

    batch = SimpleNamespace(labels=torch.tensor([0, 1]), index=torch.tensor([0, 1]))
    augmenter = SimpleNamespace(dtype=torch.float32, views=lambda b: [torch.randn(2, 3, 10, 10)])
    for crop in (None, 8):
        probs, _ = collect_predictions(Method(), model, [batch], augmenter, tte_crop=crop)
        assert not probs.requires_grad
    assert seen == [False] * 6  # one forward, then five crops


def test_in_memory_images_trained_with_imagenet_crops_are_evaluated_at_the_crop_size():
    """CIFAR upscaled for a pretrained ViT (lift/cifar100_lt_r100_clip_vit_b16): the eval loader resizes
    and centre-crops the 32-px arrays too, and predict / export take the crop size, not the arrays'."""
    from helpers import lt_arrays

    from fasttrain.build import build_run
    from fasttrain.recovery import run_meta

    ds = lt_arrays()
    raw = {"device": "cpu", "loader": {"backend": "torch", "batch_size": 8, "eval_batch_size": 8, "num_workers": 0},
           "augment": {"train": "imagenet", "crop_size": 40, "eval_resize": 48}, "method": {"name": "ce"}}
    run = build_run(config_from_dict(raw), training=True, datasets=(ds, ds))
    assert tuple(next(iter(run.eval_loader)).views[0].shape[-2:]) == (40, 40)
    assert tuple(next(iter(run.train_loader)).views[0].shape[-2:]) == (40, 40)
    assert "image_size" not in run_meta(run)
    raw["augment"] = {"train": "cifar"}  # a CIFAR recipe keeps its arrays as they are
    run = build_run(config_from_dict(raw), training=True, datasets=(ds, ds))
    assert tuple(next(iter(run.eval_loader)).views[0].shape[-2:]) == (32, 32) and run_meta(run)["image_size"] == [32, 32]


@needs_open_clip
def test_a_stage_started_alone_from_a_trainable_only_checkpoint_gets_every_weight(tmp_path):
    """cRT with model.init_from = a LIFT run's last.pt (linear head): the method's own mapping sees the
    stored adapters and head completed with the pretrained weights the model was built on."""
    from fasttrain.build import build_run
    from fasttrain.checkpoint import load_checkpoint
    from fasttrain.config import to_dict
    from fasttrain.trainer import Trainer

    weights = tmp_path / "clip.safetensors"
    common = [f"data.root={tmp_path}/corpus", "device=cpu", f"model.pretrained={weights}", "model.head=linear"]
    cfg = load_config(TWIN, [*common, f"out_dir={tmp_path}/runs", "train.epochs=1"])
    pretrained = _tiny_clip_file(cfg, weights)
    Trainer(cfg, tmp_path / "runs" / "lift").fit()
    state = load_checkpoint(tmp_path / "runs" / "lift" / "last.pt")
    raw = to_dict(cfg)
    raw["method"] = {"name": "crt", "base_method": "logit_adjust"}
    raw["model"]["init_from"] = str(tmp_path / "runs" / "lift" / "last.pt")
    crt = config_from_dict(raw)
    run = build_run(crt, training=True)
    own = run.model.state_dict()
    for k, v in state["model"].items():  # adapters, head, buffers: the checkpoint's (cRT re-initialises fc)
        if not k.startswith("fc."):
            assert torch.equal(own[k], v), k
    frozen = [k for k in state["weights_ref"]["frozen_keys"] if "visual." + k.split("visual.", 1)[-1] in pretrained]
    assert len(frozen) > 10 and not any(k in state["model"] for k in frozen)  # left to model.pretrained
    for k in frozen:
        assert torch.equal(own[k], pretrained["visual." + k.split("visual.", 1)[1]]), k
