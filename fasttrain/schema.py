"""Generic schema machinery: typed dataclasses built from plain mappings, with errors that name
the key, what was expected and the closest valid key. Knows nothing of fasttrain's sections, so
both the run config (`fasttrain.config`) and the methods (their own config dataclasses) use it.
"""
from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing
from typing import Any


class ConfigError(ValueError):
    """A user-facing configuration error (printed without a traceback by the CLI)."""


# A decimal number as people write one: 1e-3, 5E-4, 1e6, .5, 2., -3.0e+2. YAML 1.1 (PyYAML) reads
# the exponent forms without a dot or without an exponent sign as strings, so a float key takes
# such a string too.
FLOAT_SPELLING = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


def _is_subsequence(short: str, long: str) -> bool:
    it = iter(long)
    return all(ch in it for ch in short)


def suggest(key: str, valid: list[str]) -> str:
    """'; did you mean X?' for the closest valid key (typo, or an abbreviation like lr)."""
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.6)
    if not close:  # abbreviations: `lr` for `learning_rate`, `bs` for `batch_size`
        close = [v for v in valid if len(v) >= 2 and v[0] == key[:1] and _is_subsequence(v, key)]
    if not close:
        close = difflib.get_close_matches(key, valid, n=1, cutoff=0.4)
    return f"; did you mean {close[0]!r}?" if close else f"; valid keys: {', '.join(sorted(valid))}"


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Convert a YAML value to the annotated type or raise a ConfigError naming the key."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except ConfigError as exc:
                errors.append(exc)
        raise ConfigError(f"{where}: expected {_type_name(tp)}, got {value!r}")
    if tp is Any:
        return value
    if origin is list:
        (item,) = typing.get_args(tp) or (Any,)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return [_coerce(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return build_dataclass(tp, value, where)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected bool (true/false), got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected int, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str) and FLOAT_SPELLING.fullmatch(value.strip()):
            return float(value)
        raise ConfigError(f"{where}: expected float, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{where}: expected str, got {value!r}")
    return value


def build_dataclass(cls: type, values: dict, where: str = "") -> Any:
    """Build `cls` from a mapping; unknown keys and wrong types raise ConfigError."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in values.items():
        path = f"{where}.{key}" if where else str(key)
        if key not in names:
            raise ConfigError(f"unknown key {path!r}{suggest(str(key), names)}")
        kwargs[key] = _coerce(value, hints[key], path)
    return cls(**kwargs)
