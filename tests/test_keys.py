"""The generated key reference (`fasttrain config keys`) and the README's config table agree."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from fasttrain.keys import key_reference

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
    documented = readme_keys() - {"method.name"}  # the method section has its own tables
    assert sorted(generated - documented) == [], "keys missing from README's config reference"
    assert sorted(documented - generated) == [], "README documents keys that do not exist"


def test_every_key_has_a_meaning_and_the_command_prints_them():
    rows = key_reference()
    assert [r["key"] for r in rows if not r["meaning"]] == []
    out = subprocess.run([sys.executable, "-m", "fasttrain.cli", "config", "keys", "optim"], capture_output=True,
                         text=True)
    assert out.returncode == 0 and "optim.weight_decay" in out.stdout and "L2 weight decay" in out.stdout
