import itertools

import pytest
import yaml

from fasttrain.config import ConfigError, load_config


def write(tmp_path, name, data):
    p = tmp_path / name
    p.write_text(yaml.safe_dump(data))
    return p


def test_base_file_and_overrides(tmp_path):
    write(tmp_path, "base.yaml", {"name": "b", "optim": {"lr": 0.5, "weight_decay": 1e-4}, "train": {"epochs": 3}})
    child = write(tmp_path, "child.yaml", {"base": "base.yaml", "optim": {"lr": 0.01}})
    cfg = load_config(child, ["train.epochs=7", "loader.sampler=power", "loader.sampler_q=0.2"])
    assert cfg.optim.lr == 0.01 and cfg.optim.weight_decay == 1e-4
    assert cfg.train.epochs == 7 and cfg.loader.sampler == "power" and cfg.loader.sampler_q == 0.2
    assert cfg.method.name == "ce"


def test_misspelt_key_names_file_key_and_suggestion(tmp_path):
    p = write(tmp_path, "bad.yaml", {"optim": {"weight_decy": 1e-4}})
    with pytest.raises(ConfigError) as exc:
        load_config(p)
    msg = str(exc.value)
    assert "bad.yaml" in msg and "optim.weight_decy" in msg and "weight_decay" in msg


def test_misspelt_section(tmp_path):
    p = write(tmp_path, "bad.yaml", {"optimm": {"lr": 1}})
    with pytest.raises(ConfigError, match="did you mean 'optim'"):
        load_config(p)


@pytest.mark.parametrize("override,key", [
    ("optim.lr=-0.1", "optim.lr"),
    ("loader.batch_size=0", "loader.batch_size"),
    ("data.imbalance_ratio=0.5", "data.imbalance_ratio"),
    ("train.epochs=ten", "train.epochs"),
    ("loader.sampler=uniformm", "loader.sampler"),
])
def test_impossible_values_name_key_expected_got(tmp_path, override, key):
    p = write(tmp_path, "ok.yaml", {})
    with pytest.raises(ConfigError) as exc:
        load_config(p, [override])
    msg = str(exc.value)
    assert key in msg and "expected" in msg and "got" in msg


def test_unknown_method_key(tmp_path):
    p = write(tmp_path, "m.yaml", {"method": {"name": "ce", "gama": 1}})
    with pytest.raises(ConfigError, match="method.gama"):
        load_config(p)


def test_all_shipped_configs_load():
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent / "configs"
    files = [p for p in root.rglob("*.yaml") if not p.name.startswith("_")]
    assert files
    for p in files:
        load_config(p)


def test_moved_key_names_its_new_home(tmp_path):
    p = write(tmp_path, "old.yaml", {"loader": {"mix_impl": "torch"}})
    with pytest.raises(ConfigError, match=r"loader.mix_impl: this key moved to augment.mix_impl"):
        load_config(p)
    assert load_config(write(tmp_path, "new.yaml", {"augment": {"mix_impl": "torch"}})).augment.mix_impl == "torch"


@pytest.mark.parametrize("override", ["loader.sampler=class_balanced", "loader.sampler_q=0.5", "loader.class_aware_k=4"])
def test_methods_with_fixed_streams_reject_a_sampler_they_would_ignore(tmp_path, override):
    p = write(tmp_path, "g.yaml", {"method": {"name": "glmc"}})
    with pytest.raises(ConfigError, match="method glmc draws its own sample streams"):
        load_config(p, [override])
    m = write(tmp_path, "m.yaml", {"method": {"name": "maxnorm"}})
    with pytest.raises(ConfigError, match="method maxnorm draws its own"):
        load_config(m, [override])
    assert load_config(write(tmp_path, "ce.yaml", {}), [override]).method.name == "ce"  # CE uses it


def test_a_first_stage_method_cannot_be_a_later_stage(tmp_path):
    """Whether a method may continue a stage is one class attribute, checked for every method."""
    import torch.nn as nn

    from fasttrain.methods import METHODS

    first = [n for n, m in METHODS.items() if not m.continues_stage]
    assert {"ce", "glmc", "balanced_softmax", "logit_adjust", "ldam_drw"} <= set(first)
    assert METHODS["maxnorm"].continues_stage
    previous = nn.Linear(2, 2)
    for name in first:
        method = METHODS[name].__new__(METHODS[name])  # build_model's check runs before any state is used
        with pytest.raises(ValueError, match="single-stage method, cannot continue"):
            method.build_model(None, previous)


def test_float_keys_take_scientific_notation_in_files_and_overrides(tmp_path):
    """YAML 1.1 (PyYAML) reads `1e-3`, `5E-4` and `1e6` as strings; every float key takes them (and
    `.5`), in a file, in a method section, in a list of floats and on the command line."""
    p = tmp_path / "sci.yaml"
    p.write_text("optim:\n  lr: 1e-3\n  weight_decay: 5E-4\n  momentum: .5\n"
                 "augment:\n  rrc_scale: [8e-2, 1]\n"
                 "train:\n  dist_timeout_s: 1e6\n"
                 "method:\n  name: glmc\n  mix_beta: 2e0\n")
    cfg = load_config(p)
    assert (cfg.optim.lr, cfg.optim.weight_decay, cfg.optim.momentum) == (1e-3, 5e-4, 0.5)
    assert cfg.augment.rrc_scale == [0.08, 1.0] and cfg.train.dist_timeout_s == 1e6 and cfg.method.mix_beta == 2.0
    cfg = load_config(p, ["optim.lr=1e-3", "optim.weight_decay=5E-4", "train.save_every_minutes=1e1",
                          "method.mix_beta=.25", "data.imbalance_ratio=1E2"])
    assert (cfg.optim.lr, cfg.optim.weight_decay, cfg.train.save_every_minutes) == (1e-3, 5e-4, 10.0)
    assert cfg.method.mix_beta == 0.25 and cfg.data.imbalance_ratio == 100.0
    with pytest.raises(ConfigError, match="optim.lr: expected float, got '1e-3x'"):
        load_config(p, ["optim.lr=1e-3x"])
    with pytest.raises(ConfigError, match="train.epochs: expected int"):  # int keys stay ints
        load_config(p, ["train.epochs=1e2"])


def test_configs_lists_whole_sentences_wrapped_to_the_terminal(monkeypatch, capsys):
    """`fasttrain configs` never cuts a description mid-sentence ("Kang et al. 2020" is no sentence
    end; a line ending in ':' is), and wraps long ones under their column to the terminal width."""
    from fasttrain.cli import main
    from fasttrain.shipped import list_configs, sentences

    assert sentences(["A b (Kang et al. 2020) c. Next one", "goes on: e.g. here.", "Runs:", "  cmd x.y"]) == [
        "A b (Kang et al. 2020) c.", "Next one goes on: e.g. here.", "Runs:", "cmd x.y"]
    rows = {r["name"]: r for r in list_configs()}
    assert rows["ce/imagenet_lt_r50"]["target"] == ("41.6 (ResNet-50, 90 ep; Kang et al. 2020) / 44.4 with ResNeXt-50 "
                                                    "(classifier-balancing README; recalled)")
    monkeypatch.setenv("COLUMNS", "100")
    assert main(["configs"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert all(len(line) <= 100 for line in lines)
    start = next(i for i, line in enumerate(lines) if line.startswith("ce/imagenet_lt_r50 "))
    block = [lines[start], *itertools.takewhile(lambda line: line.startswith(" "), lines[start + 1:])]
    assert len(block) > 1  # wrapped, not cut
    assert "Kang et al. 2020) / 44.4 with ResNeXt-50 (classifier-balancing README; recalled)" in " ".join(
        line.strip() for line in block)


# --- augment.policy / augment.random_erasing --------------------------------------------------------


def test_augment_policy_keys_default_to_torchvisions_and_off():
    from fasttrain.config import AugmentConfig

    aug = AugmentConfig()
    assert (aug.policy, aug.policy_num_ops, aug.policy_magnitude, aug.policy_magnitude_bins,
            aug.autoaugment_policy) == ("none", 2, 9, 31, "imagenet")
    assert (aug.random_erasing, aug.random_erasing_mode, aug.random_erasing_scale,
            aug.random_erasing_ratio) == (0.0, "const", [0.02, 0.33], [0.3, 3.3])


@pytest.mark.parametrize("override,key,words", [
    ("augment.policy=randaugmnt", "augment.policy", "did you mean 'randaugment'"),
    ("augment.policy_num_ops=0", "augment.policy_num_ops", ">= 1"),
    ("augment.autoaugment_policy=cifar100", "augment.autoaugment_policy", "cifar10"),
    ("augment.random_erasing=1.5", "augment.random_erasing", "in [0, 1]"),
    ("augment.random_erasing_mode=noise", "augment.random_erasing_mode", "const"),
    ("augment.random_erasing_scale=[0.5,0.1]", "augment.random_erasing_scale", "0 < low <= high <= 1"),
    ("augment.random_erasing_ratio=[0,1]", "augment.random_erasing_ratio", "0 < low <= high"),
])
def test_augment_policy_and_erasing_values_are_checked_naming_the_key(tmp_path, override, key, words):
    p = write(tmp_path, "c.yaml", {"augment": {"policy": "randaugment"}})
    with pytest.raises(ConfigError) as exc:
        load_config(p, [override])
    assert key in str(exc.value) and words in str(exc.value)


def test_randaugment_magnitude_must_be_a_bin(tmp_path):
    p = write(tmp_path, "c.yaml", {"augment": {"policy": "randaugment", "policy_magnitude": 31}})
    with pytest.raises(ConfigError, match="augment.policy_magnitude: expected a bin below "
                                          "augment.policy_magnitude_bins=31"):
        load_config(p)
    assert load_config(p, ["augment.policy_magnitude_bins=32"]).augment.policy_magnitude == 31


@pytest.mark.parametrize("backend", ["tensor", "ffcv"])
def test_a_backend_that_cannot_apply_a_policy_refuses_it_in_the_config(tmp_path, backend):
    p = write(tmp_path, "c.yaml", {"loader": {"backend": backend}, "augment": {"policy": "trivialaugment"}})
    with pytest.raises(ConfigError) as exc:
        load_config(p)
    assert (f"loader.backend={backend} cannot apply augment.policy=trivialaugment; use loader.backend=torch or dali"
            in str(exc.value))
    cfg = load_config(p, ["augment.policy=none", "augment.random_erasing=0.25"])  # erasing works everywhere
    assert cfg.augment.random_erasing == 0.25
