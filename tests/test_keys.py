"""The generated key reference (`fasttrain config keys`) and the README's config and method-key
tables agree; every method's own keys are listed with their allowed values."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from fasttrain.cli import main
from fasttrain.keys import _method_choices, key_reference, method_markdown
from fasttrain.methods import METHODS

ROOT = Path(__file__).resolve().parent.parent


def readme_keys() -> set[str]:
    """Keys named in the first column of README's "Config reference" table (a row may list several:
    `optim.lr`, `momentum` — the later ones share the first one's section)."""
    text = (ROOT / "README.md").read_text()
    table = text.split("## Config reference", 1)[1].split("\n## ", 1)[0]
    keys = set()
    for line in table.splitlines():
        if not line.startswith("| `"):
            continue
        section = ""
        for name in re.findall(r"`([\w.]+)`", line.split("|")[1]):
            if "." in name:
                section, _, leaf = name.rpartition(".")
                keys.add(name)
            else:
                keys.add(f"{section}.{name}" if section else name)
    return keys


def test_every_key_is_documented_and_every_documented_key_exists():
    generated = {row["key"] for row in key_reference()}
    documented = readme_keys()  # method keys included: README's "Method keys" table
    assert sorted(generated - documented) == [], "keys missing from README's config reference"
    assert sorted(documented - generated) == [], "README documents keys that do not exist"


def test_every_key_has_a_meaning_and_the_command_prints_them():
    rows = key_reference()
    assert [r["key"] for r in rows if not r["meaning"]] == []
    out = subprocess.run([sys.executable, "-m", "fasttrain.cli", "config", "keys", "optim"], capture_output=True,
                         text=True)
    assert out.returncode == 0 and "optim.weight_decay" in out.stdout and "L2 weight decay" in out.stdout


def test_config_keys_method_lists_every_methods_own_keys_with_their_values(capsys):
    """`config keys method`: method.name, then per registered method its own keys (type, default,
    meaning, allowed values); `config keys method.glmc` one method; plain `config keys` has them too."""
    assert main(["config", "keys", "method"]) == 0
    out = capsys.readouterr().out
    glmc = out.split("# method.name: glmc", 1)[1].split("# method.name:", 1)[0]
    assert "method.mix_beta" in glmc and "method.weighted_loss_norm" in glmc and "one of: batch, expected" in glmc
    assert all(f"# method.name: {name}" in out for name in METHODS)
    assert main(["config", "keys", "method.glmc"]) == 0
    one = capsys.readouterr().out
    assert "method.mix_beta" in one and "method.name " in one and "method.reweight" not in one
    assert main(["config", "keys"]) == 0
    assert "method.weighted_loss_norm" in capsys.readouterr().out
    assert main(["config", "keys", "method.glmx"]) == 2
    assert "unknown method 'glmx'; did you mean 'glmc'?" in capsys.readouterr().err


def test_readme_method_keys_table_is_the_generated_one():
    """README's "Method keys" table is `fasttrain config keys method --markdown` exactly."""
    lines = (ROOT / "README.md").read_text().split("### Method keys", 1)[1].splitlines()
    start = lines.index("| key | methods | type | default | meaning |")
    end = next(i for i in range(start, len(lines)) if not lines[i].startswith("|"))
    assert "\n".join(lines[start:end]) == method_markdown(), \
        "README's Method keys table is stale: regenerate it with `fasttrain config keys method --markdown`"


@pytest.mark.parametrize("name", sorted(METHODS))
def test_listed_method_values_are_the_ones_validate_accepts(name):
    """Each method key listed with allowed values: its default is one of them, and a value outside
    them is refused by the method's validate, naming the key."""
    cls = METHODS[name].config_class
    for key, values in _method_choices(cls).items():
        assert getattr(cls(), key) in values, (name, key)
        with pytest.raises(ValueError, match=f"method.{key}"):
            cls(**{key: "not-a-value"}).validate()
