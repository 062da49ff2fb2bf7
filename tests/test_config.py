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
