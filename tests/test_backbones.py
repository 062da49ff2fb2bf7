"""Backbones: every registered name / family builds with the right feature_dim, every method's
heads sit on it, compile and channels-last apply; pretrained weights (files written here in each
library's format, and the libraries' own caches) load bit-exactly or give a key report; freezing
keeps frozen weights bit-identical; the Places-LT protocol is a config. Never a download: the
autouse fixture points every cache at tmp_path and makes any download attempt fail."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from helpers import lt_arrays, method_context, refuse_downloads

from fasttrain.backbones.torchvision_family import cache_path
from fasttrain.backbones.weights import WeightsError
from fasttrain.config import ModelConfig, config_from_dict, load_config
from fasttrain.methods import METHODS
from fasttrain.models import BACKBONES, NAME, build_backbone, create_backbone, to_channels_last
from fasttrain.schema import ConfigError

ROOT = Path(__file__).resolve().parent.parent
TINY = 32  # input side for every forward here (small models, small inputs: CI on 2 cores)

# (arch, arch_kwargs, feature_dim): one or more per registry entry (checked below).
CASES = [
    ("resnet32", {}, 64),
    ("resnet32_w4", {}, 256),
    ("resnet10", {}, 512),
    ("resnet50", {}, 2048),
    ("resnext50_32x4d", {}, 2048),
    ("torchvision/resnet18", {}, 512),
    ("torchvision/mobilenet_v3_small", {}, 1024),  # classifier is a Sequential: its last Linear goes
    ("timm/resnet10t", {}, 512),
    ("timm/vit_tiny_patch16_224", {"img_size": TINY}, 192),
    ("timm/mobilenetv3_small_050", {}, 1024),  # pools into a 1024-d hidden layer (head_hidden_size)
]
try:  # the optional extra `clip`: its family is covered where open_clip is installed (tests/test_peft.py too)
    import open_clip  # noqa: F401

    CASES.append(("open_clip/ViT-B-16", {"embed_dim": 16, "vision_cfg": {"image_size": TINY, "patch_size": 8,
                                                                         "layers": 1, "width": 32, "head_width": 16},
                                         "text_cfg": {"layers": 1, "width": 32, "heads": 2}}, 16))
    OPTIONAL_FAMILIES: set[str] = set()
except ImportError:
    OPTIONAL_FAMILIES = {f"open_clip/{NAME}"}


@pytest.fixture(autouse=True)
def no_network(tmp_path, monkeypatch):
    refuse_downloads(tmp_path, monkeypatch)


def _family(arch: str) -> str:
    return arch.split("/")[0] + "/" + NAME if "/" in arch else arch


def test_the_cases_cover_every_registry_entry():
    assert {_family(a) for a, _, _ in CASES} == set(BACKBONES) - OPTIONAL_FAMILIES


@pytest.mark.parametrize("arch,kwargs,dim", CASES, ids=[c[0] for c in CASES])
def test_every_name_family_builds_with_its_feature_dim(arch, kwargs, dim):
    torch.manual_seed(0)
    b = to_channels_last(create_backbone(arch, kwargs=kwargs))
    assert b.feature_dim == dim and b.arch == arch
    x = torch.randn(2, 3, TINY, TINY).contiguous(memory_format=torch.channels_last)
    for mode in (True, False):  # training mode must give plain features too (no aux outputs)
        b.train(mode)
        assert b(x).shape == (2, dim)
    assert not any(k.startswith(b.removed_keys) for k in b.trunk.state_dict()), "classifier left in the trunk"


def test_every_methods_heads_sit_on_a_library_backbone():
    ctx = method_context(counts=(50, 5, 2))
    x = torch.randn(2, 3, TINY, TINY)
    for name, cls in METHODS.items():
        method = cls(cls.config_class(), ctx)
        model = method.build_model(create_backbone("timm/resnet10t")).eval()
        if not cls.continues_stage:  # later stages (tau-norm, ...) predict only once prepared by their stage
            assert method.predict(model, x).shape == (2, 3), name


def test_aliases_keep_the_torchvision_layout_and_keys():
    b = create_backbone("resnet50")
    assert type(b).__name__ == "TorchvisionBackbone" and b.trunk is b.net
    keys = list(b.state_dict())
    assert keys[0] == "net.conv1.weight" and not any(k.startswith("net.fc.") for k in keys)


@pytest.mark.parametrize("arch", ["torchvision/resnet18", "timm/resnet10t"])
def test_compile_traces_the_whole_backbone_with_extra_block(arch):
    """torch.compile (fullgraph: no graph break) over a library trunk + extra block, channels-last;
    the aot_eager backend checks tracing and autograd without a C++ toolchain."""
    m = ModelConfig(arch=arch, extra_block="bottleneck", freeze="trunk")
    b = to_channels_last(build_backbone(m)).train()
    x = torch.randn(2, 3, TINY, TINY).contiguous(memory_format=torch.channels_last)
    compiled = torch.compile(b, backend="aot_eager", fullgraph=True)
    y = compiled(x)
    y.sum().backward()
    assert y.shape == (2, b.feature_dim)
    assert all(p.grad is None for p in b.trunk.parameters()) and all(p.grad is not None for p in b.extra.parameters())
    b.eval()
    torch.testing.assert_close(compiled(x), b(x))


@pytest.mark.parametrize("arch,pattern", [
    ("timm/resnet10x", r"model\.arch: timm has no model 'resnet10x'; closest: timm/resnet10t"),
    ("torchvision/resnet151", r"torchvision has no model 'resnet151'; closest: torchvision/resnet152"),
    ("resnet152", r"unknown architecture 'resnet152'; did you mean 'timm/resnet152', 'torchvision/resnet152'"),
    ("resnet33", r"unknown architecture 'resnet33'; did you mean 'resnet32'"),
    ("timm/resnet10t.nope", r"timm has no pretrained tag 'resnet10t\.nope'; tags: resnet10t\.c3_in1k"),
])
def test_unknown_names_are_config_errors_with_the_closest_names(arch, pattern):
    with pytest.raises(ConfigError, match=pattern):
        load_config(ROOT / "configs" / "ce" / "cifar10_lt_r100.yaml", [f"model.arch={arch}"])


@pytest.mark.parametrize("override,pattern", [
    ("model.pretrained=library", r"model\.pretrained: resnet32 has no library weights"),
    ("model.freeze_bn=evl", r"model\.freeze_bn: .*got 'evl'; did you mean 'eval'"),
    ("model.extra_block=botleneck", r"model\.extra_block: .*did you mean 'bottleneck'"),
])
def test_model_values_are_config_errors(override, pattern):
    with pytest.raises(ConfigError, match=pattern):
        load_config(ROOT / "configs" / "ce" / "cifar10_lt_r100.yaml", [override])


# --- pretrained files -------------------------------------------------------------------------


def _assert_trunk_equals(backbone, state: dict) -> None:
    """Every trunk tensor equals the file's (old torchvision files have no BN counters)."""
    for k, v in backbone.trunk.state_dict().items():
        if k in state:
            assert torch.equal(v, state[k]), k
        else:
            assert k.endswith("num_batches_tracked"), f"{k} not loaded"


def _random_state(module: nn.Module, seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {k: (torch.randn(v.shape, generator=g) if v.is_floating_point() else v.clone())
            for k, v in module.state_dict().items()}


def test_torchvision_pth_file_loads_bit_exactly_and_drops_its_classifier(tmp_path):
    import torchvision

    state = _random_state(torchvision.models.resnet18(), seed=1)  # the library's format, with fc
    state = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}  # as old torchvision files
    f = tmp_path / "resnet18.pth"
    torch.save(state, f)
    b = build_backbone(ModelConfig(arch="torchvision/resnet18", pretrained=str(f)))
    _assert_trunk_equals(b, state)
    # A module removed by model.drop_modules: its weights in the file are expected, and dropped.
    b = build_backbone(ModelConfig(arch="torchvision/resnet18", pretrained=str(f), drop_modules=["layer4.1"]))
    _assert_trunk_equals(b, state)
    assert isinstance(b.net.layer4[1], nn.Identity) and b(torch.randn(2, 3, TINY, TINY)).shape == (2, 512)


def test_timm_safetensors_file_loads_bit_exactly(tmp_path):
    import timm
    from safetensors.torch import save_file

    state = _random_state(timm.create_model("resnet10t"), seed=2)
    f = tmp_path / "model.safetensors"
    save_file(state, str(f))
    b = build_backbone(ModelConfig(arch="timm/resnet10t", pretrained=str(f)))
    _assert_trunk_equals(b, state)


def test_wrapped_checkpoint_with_module_prefix_and_a_fasttrain_prefix(tmp_path):
    from fasttrain.models import Classifier

    src = Classifier(create_backbone("resnet32"), 10)
    state = _random_state(src, seed=3)
    f = tmp_path / "ckpt.pt"
    torch.save({"epoch": 7, "state_dict": {f"module.{k}": v for k, v in state.items()}}, f)
    b = build_backbone(ModelConfig(arch="resnet32", pretrained=str(f), pretrained_prefix="backbone."))
    _assert_trunk_equals(b, {k[len("backbone."):]: v for k, v in state.items() if k.startswith("backbone.")})


def test_mismatched_file_gives_the_key_report(tmp_path, caplog):
    import torchvision

    state = _random_state(torchvision.models.resnet18(), seed=4)
    del state["layer4.1.bn2.weight"]  # missing
    state["layer5.0.conv1.weight"] = torch.zeros(3)  # unexpected
    state["conv1.weight"] = torch.zeros(64, 3, 3, 3)  # wrong shape
    f = tmp_path / "bad.pth"
    torch.save(state, f)
    m = ModelConfig(arch="torchvision/resnet18", pretrained=str(f))
    with pytest.raises(WeightsError) as exc:
        build_backbone(m)
    msg = str(exc.value)
    assert "2 keys of removed modules dropped (fc.weight, fc.bias)" in msg
    assert "1 missing from the file (layer4.1.bn2.weight)" in msg
    assert "1 unexpected in the file (layer5.0.conv1.weight)" in msg
    assert "1 with another shape (conv1.weight: file [64, 3, 3, 3] vs model [64, 3, 7, 7])" in msg
    # Ignore patterns take the broken keys out (a missing key under a pattern is not reported).
    m.pretrained_ignore = ["layer5.*", "conv1.*", "layer4.1.bn2.*"]
    b = build_backbone(m)
    assert torch.equal(b.trunk.state_dict()["layer1.0.conv1.weight"], state["layer1.0.conv1.weight"])
    # Non-strict: what fits loads, the report is logged as a warning.
    m.pretrained_ignore, m.pretrained_strict = [], False
    with caplog.at_level("WARNING", logger="fasttrain"):
        b = build_backbone(m)
    assert "1 missing from the file" in caplog.text
    assert torch.equal(b.trunk.state_dict()["layer2.0.conv1.weight"], state["layer2.0.conv1.weight"])


def test_unreadable_and_absent_files_name_the_key(tmp_path):
    with pytest.raises(WeightsError, match=r"model\.pretrained: weights file not found: .*nope\.pth"):
        build_backbone(ModelConfig(arch="resnet32", pretrained=str(tmp_path / "nope.pth")))
    import numpy as np

    f = tmp_path / "pickled.pth"
    torch.save({"model": {}, "rng": np.random.get_state()}, f)  # not loadable with weights_only
    with pytest.raises(WeightsError, match=r"does not load as tensors only.*model\.init_from"):
        build_backbone(ModelConfig(arch="resnet32", pretrained=str(f)))


# --- the libraries' own weights through their caches ----------------------------------------


def test_torchvision_library_weights_from_the_torch_hub_cache(tmp_path):
    import torchvision

    url = torchvision.models.ResNet18_Weights.IMAGENET1K_V1.url
    m = ModelConfig(arch="torchvision/resnet18", pretrained="library:IMAGENET1K_V1")
    with pytest.raises(WeightsError) as exc:  # not cached, download refused
        build_backbone(m)
    where = cache_path(url)
    assert str(where).startswith(str(tmp_path)) and f"Place the file {where.name} (from {url}) at {where}" in str(exc.value)
    state = _random_state(torchvision.models.resnet18(), seed=5)
    where.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, where)
    _assert_trunk_equals(build_backbone(m), state)
    # Evaluation and runs from a checkpoint do not load (or need) the weights.
    b = build_backbone(ModelConfig(arch="torchvision/resnet18", pretrained="library"), load_pretrained=False)
    assert not torch.equal(b.trunk.state_dict()["conv1.weight"], state["conv1.weight"])


def _fake_hf_cache(cache: Path, repo: str, state: dict) -> None:
    """The Hugging Face cache layout for one file of `repo` (refs/main -> snapshot folder)."""
    from safetensors.torch import save_file

    folder = cache / f"models--{repo.replace('/', '--')}"
    revision = "0" * 40
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text(revision)
    (folder / "snapshots" / revision).mkdir(parents=True)
    save_file(state, str(folder / "snapshots" / revision / "model.safetensors"))


def test_timm_library_weights_from_the_hugging_face_cache(tmp_path):
    import timm

    m = ModelConfig(arch="timm/resnet10t", pretrained="library")
    with pytest.raises(WeightsError) as exc:
        build_backbone(m)
    msg = str(exc.value)
    assert "timm/resnet10t.c3_in1k" in msg and "model.pretrained=/path/to/model.safetensors" in msg
    assert str(tmp_path / "hf_cache") in msg and "models--timm--resnet10t.c3_in1k" in msg
    state = _random_state(timm.create_model("resnet10t"), seed=6)
    _fake_hf_cache(tmp_path / "hf_cache", "timm/resnet10t.c3_in1k", state)
    _assert_trunk_equals(build_backbone(m), state)


# --- freezing --------------------------------------------------------------------------------


def _train_a_few_steps(tmp_path, model: dict, steps: int = 3):
    from fasttrain.build import build_run
    from fasttrain.methods import Progress
    from fasttrain.step import train_step

    raw = {"device": "cpu", "out_dir": str(tmp_path), "model": model,
           "loader": {"backend": "tensor", "batch_size": 16, "num_workers": 0},
           "optim": {"lr": 0.5, "weight_decay": 0.1}, "method": {"name": "ce"}}
    cfg = config_from_dict(raw)
    ds = lt_arrays()
    run = build_run(cfg, training=True, datasets=(ds, ds))
    before = {k: v.clone() for k, v in run.model.state_dict().items()}
    run.model.train()
    run.train_loader.set_epoch(0)
    for i, batch in zip(range(steps), run.train_loader):
        train_step(run.learner, batch, Progress(0, 1, i, steps))
    return run, before, run.model.state_dict()


@pytest.mark.parametrize("bn_mode", ["eval", "train"])
def test_frozen_weights_stay_bit_identical_after_steps(tmp_path, bn_mode):
    run, before, after = _train_a_few_steps(tmp_path, {"arch": "torchvision/resnet18", "freeze": "layer2",
                                                        "freeze_bn": bn_mode})
    frozen = ("backbone.net.conv1.", "backbone.net.bn1.", "backbone.net.layer1.", "backbone.net.layer2.")
    stats = ("running_mean", "running_var", "num_batches_tracked")
    for k, v in after.items():
        if k.startswith(frozen) and not k.endswith(stats):
            assert torch.equal(v, before[k]), k  # weights (also under weight decay 0.1)
        elif k.startswith(frozen) and bn_mode == "eval":
            assert torch.equal(v, before[k]), k  # eval mode: running statistics untouched
    assert not torch.equal(after["backbone.net.layer3.0.conv1.weight"], before["backbone.net.layer3.0.conv1.weight"])
    assert not torch.equal(after["fc.weight"], before["fc.weight"])
    moved = not torch.equal(after["backbone.net.bn1.running_mean"], before["backbone.net.bn1.running_mean"])
    assert moved == (bn_mode == "train")
    net = run.model.backbone.net
    assert net.layer2.training == (bn_mode == "train") and net.layer3.training
    trained = {id(p) for g in run.learner.optimizer.param_groups for p in g["params"]}
    assert id(net.conv1.weight) not in trained and id(net.layer3[0].conv1.weight) in trained


# --- the Places-LT protocol ------------------------------------------------------------------


def test_places_lt_protocol_is_a_config_and_names_the_missing_weights(tmp_path):
    cfg = load_config(ROOT / "configs" / "ce" / "places_lt_r152.yaml")
    m = cfg.model
    assert (m.arch, m.freeze, m.freeze_bn, m.extra_block) == ("torchvision/resnet152", "trunk", "eval", "bottleneck")
    with pytest.raises(WeightsError) as exc:  # the run fails early, saying which file goes where
        build_backbone(m)
    where = cache_path("https://download.pytorch.org/models/resnet152-394f9c45.pth")
    assert f"Place the file resnet152-394f9c45.pth (from https://download.pytorch.org/models/resnet152-394f9c45.pth) " \
           f"at {where}" in str(exc.value)
    b = build_backbone(m, load_pretrained=False)  # the structure: frozen trunk + 2048-512-2048 block
    trainable = {n for n, p in b.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith("extra.") for n in trainable)
    assert b.extra.conv1.weight.shape == (512, 2048, 1, 1) and b.extra.conv3.weight.shape == (2048, 512, 1, 1)
    assert b.kept_in_eval == ("net",) and b.feature_dim == 2048
    assert isinstance(b.net.layer4[2], nn.Identity)  # FBL's trunk ends after layer4's second block
    b.train()
    assert not b.net.training and b.extra.training
    assert b(torch.randn(2, 3, 64, 64)).shape == (2, 2048)


def test_evaluation_does_not_need_the_pretrained_file(tmp_path):
    from fasttrain.build import build_run

    raw = {"device": "cpu", "model": {"arch": "resnet32", "pretrained": str(tmp_path / "absent.pth")},
           "loader": {"backend": "tensor", "num_workers": 0}}
    ds = lt_arrays()
    build_run(config_from_dict(raw), datasets=(ds, ds))  # evaluation: the checkpoint's weights come next
    with pytest.raises(WeightsError, match="absent.pth"):
        build_run(config_from_dict(raw), training=True, datasets=(ds, ds))
    assert os.environ["TORCH_HOME"].startswith(str(tmp_path))
