"""The key reference of the run config, generated from the dataclasses of fasttrain.config:
every key with its type, default and the one-line meaning written beside it in the source
(`fasttrain config keys [SECTION]`). Generated, so it cannot drift from the code; the README's
config table is checked against it by the tests."""
from __future__ import annotations

import dataclasses
import inspect
import re
import typing

from fasttrain import config as C

SECTIONS = {"data": C.DataConfig, "augment": C.AugmentConfig, "loader": C.LoaderConfig, "model": C.ModelConfig,
            "optim": C.OptimConfig, "schedule": C.ScheduleConfig, "train": C.TrainConfig, "log": C.LogConfig}
TOP_LEVEL = ("name", "seed", "device", "out_dir", "stages")  # RunConfig's own keys (method: its own table)


def _comments(cls: type) -> dict[str, str]:
    """field name -> its comment: the trailing `# ...` of its line, else the comment block above it."""
    out, block = {}, []
    for line in inspect.getsource(cls).splitlines()[1:]:
        stripped = line.strip()
        if stripped.startswith("#"):
            block.append(stripped.lstrip("# "))
            continue
        m = re.match(r"(\w+)\s*:\s*[^=]+(?:=.*?)?(?:#\s*(.*))?$", stripped)
        if m and not stripped.startswith(('"""', "def ", "@")):
            out[m.group(1)] = (m.group(2) or " ".join(block)).strip()
        block = []
    return out


def _type(tp) -> str:
    return tp.__name__ if isinstance(tp, type) else str(tp).replace("typing.", "").replace("fasttrain.config.", "")


def _default(f: dataclasses.Field):
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        value = f.default_factory()
        return value if not dataclasses.is_dataclass(value) else "(section)"
    return None


def key_reference(section: str | None = None) -> list[dict]:
    """[{key, type, default, meaning}] for one section (or all, top-level keys first)."""
    pairs = [(s, cls) for s, cls in SECTIONS.items() if section in (None, s)]
    if section not in (None, *SECTIONS, "run"):
        raise C.ConfigError(f"config keys: unknown section {section!r}; choose from {['run', *SECTIONS]}")
    rows = []
    if section in (None, "run"):
        hints, notes = typing.get_type_hints(C.RunConfig), _comments(C.RunConfig)
        for f in dataclasses.fields(C.RunConfig):
            if f.name in TOP_LEVEL:
                rows.append({"key": f.name, "type": _type(hints[f.name]), "default": _default(f),
                             "meaning": notes.get(f.name, "")})
    for name, cls in pairs:
        hints, notes = typing.get_type_hints(cls), _comments(cls)
        for f in dataclasses.fields(cls):
            rows.append({"key": f"{name}.{f.name}", "type": _type(hints[f.name]),
                         "default": _default(f), "meaning": notes.get(f.name, "")})
    return rows
