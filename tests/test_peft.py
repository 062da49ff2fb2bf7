"""CLIP image towers through open_clip (`open_clip/<arch>`) as fasttrain backbones, and the
parameter-efficient fine-tuning modules on ViT blocks (`model.peft`). Tiny models with random
weights; never a download (every cache points at tmp_path, downloads raise). The open_clip tests
are skipped where open_clip (the optional extra `clip`) is not installed."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from helpers import refuse_downloads

from fasttrain.backbones.weights import WeightsError
from fasttrain.config import ModelConfig
from fasttrain.models import build_backbone, create_backbone, to_channels_last

try:
    import open_clip  # noqa: F401

    HAVE_OPEN_CLIP = True
except ImportError:
    HAVE_OPEN_CLIP = False
needs_open_clip = pytest.mark.skipif(not HAVE_OPEN_CLIP, reason="open_clip is not installed "
                                     "(pip install 'fasttrain[clip]' runs these tests)")

TINY = 32
# The smallest useful open_clip CLIP: ViT-B-16's config shrunk (2 blocks of width 32, 2 heads of 16).
CLIP_ARCH = "open_clip/ViT-B-16"
CLIP_KWARGS = {"embed_dim": 16,
               "vision_cfg": {"image_size": TINY, "patch_size": 8, "layers": 2, "width": 32, "head_width": 16},
               "text_cfg": {"layers": 1, "width": 32, "heads": 2}}


@pytest.fixture(autouse=True)
def no_network(tmp_path, monkeypatch):
    refuse_downloads(tmp_path, monkeypatch)


def _random_state(module: nn.Module, seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {k: (torch.randn(v.shape, generator=g) if v.is_floating_point() else v.clone())
            for k, v in module.state_dict().items()}


def _full_clip(**kwargs):
    import open_clip

    return open_clip.create_model("ViT-B-16", pretrained=None, **{**CLIP_KWARGS, **kwargs})


# --- open_clip image towers ---------------------------------------------------------------------


@needs_open_clip
def test_open_clip_tower_is_a_backbone_with_the_towers_output_dim():
    torch.manual_seed(0)
    b = to_channels_last(create_backbone(CLIP_ARCH, kwargs=CLIP_KWARGS))
    assert b.feature_dim == 16 and b.arch == CLIP_ARCH
    x = torch.randn(2, 3, TINY, TINY).contiguous(memory_format=torch.channels_last)
    assert b(x).shape == (2, 16)
    assert all(k.startswith("visual.") for k in b.trunk.state_dict())  # no text tower in the model
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert b(x).dtype == torch.bfloat16
    # Without the projection: the tower's width (LIFT's 768-d ln_post feature for ViT-B/16).
    wide = create_backbone(CLIP_ARCH, kwargs={**CLIP_KWARGS, "image_projection": False})
    assert wide.feature_dim == 32 and wide(x).shape == (2, 32) and "visual.proj" not in wide.trunk.state_dict()


@needs_open_clip
def test_a_whole_open_clip_checkpoint_loads_into_the_tower_and_drops_the_text_tower(tmp_path):
    from safetensors.torch import save_file

    state = _random_state(_full_clip(), seed=1)
    f = tmp_path / "open_clip_model.safetensors"
    save_file(state, str(f))
    b = build_backbone(ModelConfig(arch=CLIP_ARCH, arch_kwargs=CLIP_KWARGS, pretrained=str(f)))
    for k, v in b.trunk.state_dict().items():
        assert torch.equal(v, state[k]), k
    assert any(not k.startswith("visual.") for k in state)  # the text tower's keys were there, and dropped


@needs_open_clip
def test_open_clip_library_weights_come_from_the_hugging_face_cache_or_say_what_to_place_where(tmp_path):
    from safetensors.torch import save_file

    m = ModelConfig(arch=CLIP_ARCH, arch_kwargs=CLIP_KWARGS, pretrained="library:laion2b_s34b_b88k")
    with pytest.raises(WeightsError) as exc:
        build_backbone(m)
    msg = str(exc.value)
    assert "\n" not in msg and "ViT-B-16 / laion2b_s34b_b88k" in msg
    assert "model.pretrained=/path/to/open_clip_model.safetensors" in msg
    assert str(tmp_path / "hf_cache") in msg and "models--laion--CLIP-ViT-B-16-laion2B-s34B-b88K" in msg
    # The same file in the Hugging Face cache layout loads without network.
    state = _random_state(_full_clip(), seed=2)
    folder = tmp_path / "hf_cache" / "models--laion--CLIP-ViT-B-16-laion2B-s34B-b88K"
    revision = "0" * 40
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text(revision)
    (folder / "snapshots" / revision).mkdir(parents=True)
    save_file(state, str(folder / "snapshots" / revision / "open_clip_model.safetensors"))
    b = build_backbone(m)
    for k, v in b.trunk.state_dict().items():
        assert torch.equal(v, state[k]), k
    # Runs from a checkpoint and evaluation neither load nor need the weights.
    other = build_backbone(m, load_pretrained=False)
    assert not torch.equal(other.trunk.state_dict()["visual.conv1.weight"], state["visual.conv1.weight"])


@needs_open_clip
def test_openai_tags_build_with_quick_gelu_and_a_wrong_tag_names_the_tags(tmp_path):
    from fasttrain.config import config_from_dict
    from fasttrain.schema import ConfigError

    with pytest.raises(ConfigError, match=r"open_clip has no weights 'nope' for ViT-B-16; tags: openai, "):
        config_from_dict({"model": {"arch": CLIP_ARCH, "pretrained": "library:nope"}})
    with pytest.raises(WeightsError) as exc:  # URL and Hub: the Hub file is named
        build_backbone(ModelConfig(arch=CLIP_ARCH, arch_kwargs=CLIP_KWARGS, pretrained="library:openai"))
    assert "models--timm--vit_base_patch16_clip_224.openai" in str(exc.value)


def test_a_missing_open_clip_is_one_line_naming_the_extra(monkeypatch):
    from fasttrain.config import config_from_dict
    from fasttrain.schema import ConfigError

    monkeypatch.setitem(sys.modules, "open_clip", None)  # import open_clip -> ImportError
    with pytest.raises(ConfigError) as exc:
        config_from_dict({"model": {"arch": CLIP_ARCH}})
    msg = str(exc.value)
    assert "\n" not in msg and "pip install 'fasttrain[clip]'" in msg and "open_clip" in msg


# --- parameter-efficient fine-tuning -----------------------------------------------------------

TIMM_ARCH = "timm/vit_tiny_patch16_224"
TIMM_KWARGS = {"img_size": TINY, "patch_size": 8, "depth": 2, "embed_dim": 32, "num_heads": 2}
D, BLOCKS, RANK, BOTTLENECK, PROMPTS, CLASSES = 32, 2, 4, 4, 10, 10
TOWERS = [pytest.param(TIMM_ARCH, TIMM_KWARGS, id="timm_vit"),
          pytest.param(CLIP_ARCH, CLIP_KWARGS, id="open_clip_vit", marks=needs_open_clip)]
# Hand counts of the trainable backbone scalars per module type, for D = 32, 2 blocks, MLP 4 D.
HAND = {
    "lora": {"lora": BLOCKS * 2 * (RANK * D + D * RANK)},  # A (r x d) and B (d x r) for q and v
    "adaptformer": {"adaptformer": BLOCKS * ((D * BOTTLENECK + BOTTLENECK) + (BOTTLENECK * D + D) + 1)},  # + s
    "vpt_shallow": {"vpt": PROMPTS * D},
    "vpt_deep": {"vpt": BLOCKS * PROMPTS * D},
}
# bitfit: per block LN1, qkv (3 D), attention out, LN2, MLP in (4 D), MLP out; plus the stem / final norms
BIASES = {TIMM_ARCH: BLOCKS * (D + 3 * D + D + D + 4 * D + D) + D + D,  # patch_embed.proj, norm
          CLIP_ARCH: BLOCKS * (D + 3 * D + D + D + 4 * D + D) + D + D}  # ln_pre, ln_post (conv1 has no bias)


def _model(arch, kwargs, mode, **keys):
    from fasttrain.backbones import peft
    from fasttrain.models import Classifier

    torch.manual_seed(0)
    m = ModelConfig(arch=arch, arch_kwargs=kwargs, peft=mode, peft_rank=RANK, adaptformer_dim=BOTTLENECK,
                    vpt_length=PROMPTS, **keys)
    backbone = build_backbone(m, num_classes=CLASSES)
    model = Classifier(backbone, CLASSES)
    return model, backbone, peft.parameter_counts(model, backbone)


@pytest.mark.parametrize("mode", ["lora", "adaptformer", "vpt_shallow", "vpt_deep", "bitfit", "linear_probe", "full"])
@pytest.mark.parametrize("arch,kwargs", TOWERS)
def test_only_the_chosen_modules_and_the_head_receive_gradients_in_hand_counted_numbers(arch, kwargs, mode):
    from fasttrain.backbones.peft import _kind

    model, backbone, counts = _model(arch, kwargs, mode)
    model.train()
    model(torch.randn(2, 3, TINY, TINY)).square().sum().backward()
    head = {id(p) for p in model.fc.parameters()}
    for name, p in model.named_parameters():
        chosen = (id(p) in head or mode == "full" or (mode == "bitfit" and name.endswith("bias"))
                  or (mode in HAND and _kind(name) is not None))
        assert p.requires_grad == chosen, name
        if chosen:
            assert p.grad is not None, f"{name} trains but got no gradient"
        else:
            assert p.grad is None, f"{name} is frozen but got a gradient"
    head_count = CLASSES * model.fc.in_features + CLASSES
    assert counts["heads"] == (head_count, head_count)
    trainable = {k: t for k, (t, _) in counts.items() if k != "heads" and t}
    total_backbone = sum(n for k, (_, n) in counts.items() if k in ("backbone", "backbone bias"))
    expected = {"full": {"backbone": total_backbone - BIASES[arch], "backbone bias": BIASES[arch]},
                "bitfit": {"backbone bias": BIASES[arch]}, "linear_probe": {}, **HAND}[mode]
    assert trainable == expected


@pytest.mark.parametrize("mode", ["lora", "adaptformer", "bitfit", "linear_probe", "full"])
@pytest.mark.parametrize("arch,kwargs", TOWERS)
def test_at_initialisation_the_modules_leave_the_backbones_output_unchanged(arch, kwargs, mode):
    x = torch.randn(3, 3, TINY, TINY)
    plain = _model(arch, kwargs, "none")[1].eval()
    tuned = _model(arch, kwargs, mode)[1].eval()
    with torch.no_grad():
        torch.testing.assert_close(tuned(x), plain(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("arch,kwargs", TOWERS)
def test_lora_adds_its_low_rank_update_to_q_and_v_only(arch, kwargs):
    """With B non-zero, the LoRA model equals the plain model whose fused q/v input projection has
    W + (alpha / r) B A in its q and v rows (and the k rows untouched)."""
    alpha = 2.0
    _, tuned, _ = _model(arch, kwargs, "lora", lora_alpha=alpha)
    _, plain, _ = _model(arch, kwargs, "none")
    plain_sd = plain.state_dict()
    with torch.no_grad():
        for name, module in tuned.named_modules():
            if not hasattr(module, "lora_q"):
                continue
            module.lora_q.b.normal_()
            module.lora_v.b.normal_()
            key = name + (".weight" if hasattr(module, "weight") else ".in_proj_weight")
            w = plain_sd[key].clone()
            q = (alpha / RANK) * module.lora_q.b @ module.lora_q.a
            v = (alpha / RANK) * module.lora_v.b @ module.lora_v.a
            w[:D] += q
            w[2 * D:] += v
            plain_sd[key] = w
        plain.load_state_dict(plain_sd)
        x = torch.randn(2, 3, TINY, TINY)
        torch.testing.assert_close(tuned.eval()(x), plain.eval()(x), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("arch,kwargs", TOWERS)
def test_vpt_prompts_join_the_attention_and_leave_before_pooling(arch, kwargs):
    import copy

    _, shallow, _ = _model(arch, kwargs, "vpt_shallow")
    x = torch.randn(2, 3, TINY, TINY)
    with torch.no_grad():
        y = shallow.eval()(x)
        assert y.shape == (2, shallow.feature_dim)
        prompts = [m for n, m in shallow.named_modules() if n.endswith(".vpt")]
        prompts[0].tokens.zero_()  # other prompts, other output: they take part in the attention
        assert not torch.allclose(shallow(x), y)
        # A deep copy (the EMA's) carries its own prompts and hooks.
        twin = copy.deepcopy(shallow)
        [m for n, m in twin.named_modules() if n.endswith(".vpt")][0].tokens.fill_(0.5)
        assert not torch.allclose(twin(x), shallow(x))


@pytest.mark.parametrize("mode,module", [("adaptformer", "adaptformer.up.bias"), ("lora", "lora_q.b")])
def test_a_deep_copy_carries_its_own_modules(mode, module):
    """The EMA deep-copies the model: the copy's adapters (called through hooks bound to them) are its own."""
    import copy

    _, b, _ = _model(TIMM_ARCH, TIMM_KWARGS, mode)
    twin = copy.deepcopy(b).eval()
    x = torch.randn(2, 3, TINY, TINY)
    with torch.no_grad():
        before = b.eval()(x)
        for name, p in twin.named_parameters():
            if name.endswith(module):
                p.normal_()
        assert not torch.allclose(twin(x), before)
        torch.testing.assert_close(b(x), before)


def test_peft_and_freeze_together_and_vit_modules_on_a_cnn_are_config_errors():
    from fasttrain.config import config_from_dict
    from fasttrain.schema import ConfigError

    with pytest.raises(ConfigError, match=r"model\.freeze and model\.peft=lora both choose"):
        config_from_dict({"model": {"arch": TIMM_ARCH, "peft": "lora", "freeze": "trunk"}})
    with pytest.raises(ConfigError, match=r"model\.peft: expected one of .*did you mean 'lora'"):
        config_from_dict({"model": {"arch": TIMM_ARCH, "peft": "loraa"}})
    with pytest.raises(ConfigError, match=r"model\.peft: adaptformer needs ViT blocks .* resnet32 has none"):
        build_backbone(ModelConfig(arch="resnet32", peft="adaptformer", adaptformer_dim=4))
    b = build_backbone(ModelConfig(arch="resnet32", peft="bitfit"))  # bias-free convs: only BN biases train
    assert {n for n, p in b.named_parameters() if p.requires_grad} == {n for n, _ in b.named_parameters()
                                                                       if n.endswith("bias")}


def test_lifts_rule_sizes_the_bottleneck_from_the_class_count():
    from fasttrain.backbones.peft import lift_dim

    assert lift_dim(1000, 12, "peft_rank") == 32  # ImageNet-LT on ViT-B/16: 2^floor(log2(1000 / 24))
    assert lift_dim(100, 12, "peft_rank") == 4  # CIFAR-100-LT
    assert lift_dim(10, 12, "peft_rank") == 1
    m = ModelConfig(arch=TIMM_ARCH, arch_kwargs=TIMM_KWARGS, peft="adaptformer")
    b = build_backbone(m, num_classes=1000)  # 1000 / (2 x 2 blocks) = 250 -> 128
    assert b.trunk.blocks[0].adaptformer.down.out_features == 128


def test_a_peft_run_trains_and_logs_its_trainable_parameters(tmp_path, caplog):
    import logging

    from helpers import lt_arrays

    from fasttrain.build import build_run
    from fasttrain.config import config_from_dict
    from fasttrain.methods import Progress
    from fasttrain.step import train_step

    raw = {"device": "cpu", "out_dir": str(tmp_path), "model": {"arch": TIMM_ARCH, "arch_kwargs": TIMM_KWARGS,
                                                                "peft": "lora", "peft_rank": RANK},
           "loader": {"backend": "tensor", "batch_size": 8, "num_workers": 0},
           "optim": {"name": "adamw", "lr": 1e-2, "weight_decay": 0.05}, "method": {"name": "ce"}}
    ds = lt_arrays()
    with caplog.at_level(logging.INFO, logger="fasttrain"):
        run = build_run(config_from_dict(raw), training=True, datasets=(ds, ds))
    line = [r.getMessage() for r in caplog.records if r.getMessage().startswith("model.peft=lora")]
    assert len(line) == 1 and "lora 1,024 / 1,024" in line[0] and "backbone 0 / " in line[0], line
    frozen = {k: v.clone() for k, v in run.model.state_dict().items() if "lora" not in k and not k.startswith("fc.")}
    run.model.train()
    run.train_loader.set_epoch(0)
    for i, batch in zip(range(2), run.train_loader):
        train_step(run.learner, batch, Progress(0, 1, i, len(run.train_loader)))
    after = run.model.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in frozen.items())


# --- the text-initialised cosine classifier --------------------------------------------------------


@needs_open_clip
@pytest.mark.parametrize("projection", [True, False], ids=["joint_embedding", "tower_width"])
def test_the_text_initialised_classifier_starts_at_the_normalised_text_features_of_the_prompts(tmp_path, projection):
    import open_clip
    import torch.nn.functional as F
    from safetensors.torch import save_file

    from fasttrain.models import CosineClassifier

    reference = _full_clip()
    state = _random_state(reference, seed=3)
    reference.load_state_dict(state)
    f = tmp_path / "open_clip_model.safetensors"
    save_file(state, str(f))
    names = ["golden_retriever", "tabby cat", "airliner"]
    backbone = build_backbone(ModelConfig(arch=CLIP_ARCH, arch_kwargs={**CLIP_KWARGS, "image_projection": projection},
                                          pretrained=str(f)))
    head = CosineClassifier.from_text(backbone, names)
    tokens = open_clip.get_tokenizer("ViT-B-16")(["a photo of a golden retriever.", "a photo of a tabby cat.",
                                                  "a photo of a airliner."])
    with torch.no_grad():
        expected = F.normalize(reference.encode_text(tokens), dim=-1)
        if not projection:  # back into the tower's width through the image projection (LIFT)
            expected = F.normalize(expected @ state["visual.proj"].t(), dim=-1)
    torch.testing.assert_close(head.weight.detach(), expected, rtol=1e-5, atol=1e-6)
    assert head.weight.shape == (3, backbone.feature_dim)
    # Logits: scale x cosine similarity, LIFT's fixed scale 25 by default (not a parameter).
    x = torch.randn(2, 3, TINY, TINY)
    with torch.no_grad():
        feats = backbone.eval()(x)
        torch.testing.assert_close(head(feats), 25.0 * F.normalize(feats, dim=-1) @ expected.t(), rtol=1e-4, atol=1e-4)
    assert [n for n, _ in head.named_parameters()] == ["weight"]
    assert "scale" in dict(CosineClassifier(4, 2, scale=16.0, learn_scale=True).named_parameters())
    # The text tower is no part of the model: not in its parameters, its state or a deep copy's.
    assert not any("token_embedding" in k for k in backbone.state_dict())
    backbone.release_text_tower()
    with pytest.raises(ValueError, match="text tower was released"):
        CosineClassifier.from_text(backbone, names)


def test_a_text_initialised_classifier_needs_a_clip_backbone():
    from fasttrain.models import CosineClassifier
    from fasttrain.schema import ConfigError

    with pytest.raises(ConfigError, match="needs a CLIP backbone"):
        CosineClassifier.from_text(create_backbone("resnet32"), ["a", "b"])
