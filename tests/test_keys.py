"""The generated key reference (`fasttrain config keys`) and the documentation site's config-key page
(fasttrain/docs/reference/config-keys.md, written by `python -m fasttrain.docgen generate`) agree; every
method's own keys are listed with their allowed values."""
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


PAGE = ROOT / "fasttrain" / "docs" / "reference" / "config-keys.md"


def page_keys() -> set[str]:
    """Keys named in the first column of the config-key page's tables."""
    return {m.group(1) for m in re.finditer(r"^\| `([\w.]+)` \|", PAGE.read_text(), re.M)}


def test_every_key_is_documented_and_every_documented_key_exists():
    generated = {row["key"] for row in key_reference()}
    documented = page_keys()  # method keys included: the page's `method` table
    assert sorted(generated - documented) == [], "keys missing from the config-key page: run `python -m fasttrain.docgen generate`"
    assert sorted(documented - generated) == [], "the config-key page documents keys that do not exist"


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


def test_the_config_key_page_is_the_generated_one():
    """The page is `python -m fasttrain.docgen generate`'s output; its method table has one row per row of
    `fasttrain config keys method --markdown`."""
    from fasttrain.docgen import config_keys_page

    text = PAGE.read_text()
    assert text == config_keys_page(), "the config-key page is stale: regenerate it with `python -m fasttrain.docgen generate`"
    method_rows = [line for line in method_markdown().splitlines() if line.startswith("| `")]
    table = text.split("## `method`", 1)[1]
    assert len([line for line in table.splitlines() if line.startswith("| `")]) == len(method_rows)


@pytest.mark.parametrize("name", sorted(METHODS))
def test_listed_method_values_are_the_ones_validate_accepts(name):
    """Each method key listed with allowed values: its default is one of them, and a value outside
    them is refused by the method's validate, naming the key."""
    cls = METHODS[name].config_class
    for key, values in _method_choices(cls).items():
        assert getattr(cls(), key) in values, (name, key)
        with pytest.raises(ValueError, match=f"method.{key}"):
            cls(**{key: "not-a-value"}).validate()
