"""The key reference of the run config, generated from the dataclasses of fasttrain.config and of
every registered method: each key with its type, default, the one-line meaning written beside it
in the source and, for a key with a closed set of values or a range declared as field metadata
(`fasttrain.schema.option`), those values (`fasttrain config keys [SECTION]`). Generated, so it cannot drift from the code; the documentation site's config-key page
is written from it (`python -m fasttrain.docgen generate`, fasttrain/docgen.py) and checked by the tests
(tests/test_keys.py, tests/test_docs.py)."""
from __future__ import annotations

import dataclasses
import inspect
import re
import typing

from fasttrain import config as C
from fasttrain.methods import METHODS, MethodConfig
from fasttrain.schema import field_checks, suggest

SECTIONS = {"data": C.DataConfig, "augment": C.AugmentConfig, "loader": C.LoaderConfig, "model": C.ModelConfig,
            "optim": C.OptimConfig, "schedule": C.ScheduleConfig, "train": C.TrainConfig, "loss": C.LossConfig,
            "log": C.LogConfig}
TOP_LEVEL = ("name", "seed", "device", "out_dir", "stages")  # RunConfig's own keys (method: its own rows)
COMMON_METHOD_KEYS = tuple(f.name for f in dataclasses.fields(MethodConfig))  # keys every method has


def _comments(cls: type) -> dict[str, str]:
    """field name -> its comment: the trailing `# ...` of its line, else the comment block above it
    up to an empty `#` line (what follows that line is the why, for readers of the source)."""
    out, block, closed = {}, [], False
    for line in inspect.getsource(cls).splitlines()[1:]:
        stripped = line.strip()
        if stripped == "#":
            closed = True
            continue
        if stripped.startswith("#"):
            if not closed:
                block.append(stripped.lstrip("# "))
            continue
        m = re.match(r"(\w+)\s*:\s*[^=]+(?:=.*?)?(?:#\s*(.*))?$", stripped)
        if m and not stripped.startswith(('"""', "def ", "@")):
            out[m.group(1)] = (m.group(2) or " ".join(block)).strip()
        block, closed = [], False
    return out


def _inherited_comments(cls: type) -> dict[str, str]:
    """`_comments` over the class and its dataclass bases: a subclass that only changes a default
    (cRT's `sampler`) keeps the base class's meaning."""
    out: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if dataclasses.is_dataclass(klass):
            out.update({k: v for k, v in _comments(klass).items() if v})
    return out


def _method_choices(cls: type) -> dict[str, list]:
    """key -> allowed values declared by the fields of a method config class and its bases."""
    return {key: check.values() for key, check in field_checks(cls).items() if check.choices is not None}


def _ranges(cls: type) -> dict[str, str]:
    """key -> its range in words (`>= 0`, `in [0, 1)`), for the fields that declare one."""
    out = {}
    for key, check in field_checks(cls).items():
        words = check.range_text()
        if words:
            out[key] = ("finite, " if check.finite else "") + words + (" or null" if check.optional else "")
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


def _rows(cls: type, prefix: str, names=None, choices=None, method=None) -> list[dict]:
    """One row per field of dataclass `cls` (only `names` when given), keys `<prefix>.<field>`;
    `choices`: key -> allowed values."""
    hints, notes, ranges = typing.get_type_hints(cls), _inherited_comments(cls), _ranges(cls)
    choices = choices or {}
    rows = []
    for f in dataclasses.fields(cls):
        if names is not None and f.name not in names:
            continue
        key = f"{prefix}.{f.name}" if prefix else f.name
        if _default(f) == "(section)":  # a nested section (train.ema): its own keys, `<key>.<field>`
            rows += _rows(type(f.default_factory()), key, choices=choices, method=method)
            continue
        rows.append({"key": key, "type": _type(hints[f.name]), "default": _default(f), "meaning": notes.get(f.name, ""),
                     "choices": choices.get(key), "range": ranges.get(f.name), "method": method})
    return rows


def method_reference(method: str | None = None) -> list[dict]:
    """The keys common to every method (`method.name`), then each registered method's own keys
    (only `method`'s when given), each row naming its method."""
    if method is not None and method not in METHODS:
        raise C.ConfigError(f"config keys: unknown method {method!r}{suggest(method, list(METHODS))}")
    rows = _rows(MethodConfig, "method", COMMON_METHOD_KEYS, {"method.name": C.choices()["method.name"]})
    for row in rows:  # the config's default method (the field itself is filled in from the method class)
        if row["key"] == "method.name":
            row["default"] = C.DEFAULT_METHOD
    for name, cls in METHODS.items():
        if method in (None, name):
            own = [f.name for f in dataclasses.fields(cls.config_class) if f.name not in COMMON_METHOD_KEYS]
            choices = {f"method.{key}": values for key, values in _method_choices(cls.config_class).items()}
            rows += _rows(cls.config_class, "method", own, choices, method=name)
    return rows


def key_reference(section: str | None = None) -> list[dict]:
    """[{key, type, default, meaning, choices, method}] of one section (`run`, a section name,
    `method` or `method.<name>`), or of all: top-level keys first, the method keys last."""
    valid = ["run", *SECTIONS, "method", "method.<name>"]
    if section is not None and section.startswith("method."):
        return method_reference(section.split(".", 1)[1])
    if section not in (None, *valid):
        raise C.ConfigError(f"config keys: unknown section {section!r}; choose from {', '.join(valid)}")
    choices = {k: v for k, v in C.choices().items() if not k.startswith("method.")}
    rows = []
    if section in (None, "run"):
        rows += _rows(C.RunConfig, "", TOP_LEVEL, choices)
    for name, cls in SECTIONS.items():
        if section in (None, name):
            rows += _rows(cls, name, choices=choices)
    if section in (None, "method"):
        rows += method_reference()
    return rows


# --- rendering: the terminal (`fasttrain config keys`) and the method-key table of the docs -----------


def _value(value) -> str:
    """A default or allowed value as it is written in YAML (null, true, [0.08, 1.0])."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_value(v)}" for k, v in value.items()) + "}"
    return str(value)


def _meaning(row: dict, code: str = "") -> str:
    """The meaning, followed by the allowed values when the key has a closed set or a range."""
    if row.get("choices"):
        allowed = "one of: " + ", ".join(f"{code}{_value(v)}{code}" for v in row["choices"])
    elif row.get("range"):
        allowed = row["range"]
    else:
        return row["meaning"]
    return f"{row['meaning']} [{allowed}]" if row["meaning"] else allowed


def format_text(rows: list[dict]) -> list[str]:
    """Aligned lines, one per key; each method's own keys under a `# method.name: <method>` line."""
    lines, current = [], None
    for row in rows:
        if row["method"] != current:
            current = row["method"]
            lines += ["", f"# method.name: {current} (its own keys)"]
        lines.append(f"{row['key']:<34} {row['type']:<18} {_value(row['default']):<14} {_meaning(row)}")
    return lines


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def method_markdown() -> str:
    """The method-key table (Markdown): one row per method key; methods whose key has the same
    type, default, meaning and values share a row (ce, balanced_softmax and logit_adjust share CE's
    options)."""
    shared: dict[tuple, list[str]] = {}
    for row in method_reference():
        cells = (f"`{row['key']}`", row["type"], _value(row["default"]), _meaning(row, "`"))
        shared.setdefault(cells, []).append(row["method"] or "every method")
    lines = ["| key | methods | type | default | meaning |", "|---|---|---|---|---|"]
    for (key, tp, default, meaning), methods in shared.items():
        lines.append(f"| {key} | {', '.join(methods)} | {_cell(tp)} | {_cell(default)} | {_cell(meaning)} |")
    return "\n".join(lines)
