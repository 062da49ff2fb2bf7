"""Generic schema machinery: typed dataclasses built from plain mappings, with errors that name
the key, what was expected and the closest valid key. Knows nothing of fasttrain's sections, so
both the run config (`fasttrain.config`) and the methods (their own config dataclasses) use it.

A field may carry its allowed values as metadata: `option(default, choices=..., ge=...)` instead
of `= default`. `build_dataclass` checks them (`check_fields`), and `fasttrain config keys` lists
them (`field_check`), so a config dataclass is its fields with comments and no hand-written checks.
"""
from __future__ import annotations

import dataclasses
import difflib
import math
import re
import types
import typing
from collections.abc import Callable, Sequence
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
    """Build `cls` from a mapping; unknown keys, wrong types and values outside a field's `option`
    metadata raise ConfigError."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in values.items():
        path = f"{where}.{key}" if where else str(key)
        if key not in names:
            raise ConfigError(f"unknown key {path!r}{suggest(str(key), names)}")
        kwargs[key] = _coerce(value, hints[key], path)
    obj = cls(**kwargs)
    check_fields(obj, where)
    return obj


# --- allowed values as field metadata ----------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Check:
    """The values a field allows: a closed set (`choices`: a sequence, or a function returning one,
    read when checked so a registry's later entries count), and/or a range. `None` passes when the
    field's default is None (an optional key: null = "not set")."""

    choices: Sequence | Callable[[], Sequence] | None = None
    ge: float | None = None  # value >= ge
    gt: float | None = None  # value > gt
    le: float | None = None  # value <= le
    lt: float | None = None  # value < lt
    finite: bool = False  # also refuse inf (NaN is never inside a range)
    optional: bool = False

    def values(self) -> list | None:
        if self.choices is None:
            return None
        return list(self.choices() if callable(self.choices) else self.choices)

    def range_text(self) -> str:
        """The range in words: `>= 0`, `> 0`, `in [0, 1)`; '' for none."""
        low = (f"[{_num(self.ge)}" if self.ge is not None else f"({_num(self.gt)}") \
            if self.ge is not None or self.gt is not None else None
        high = (f"{_num(self.le)}]" if self.le is not None else f"{_num(self.lt)})") \
            if self.le is not None or self.lt is not None else None
        if low and high:
            return f"in {low}, {high}"
        if low:
            return (">= " if self.ge is not None else "> ") + low[1:]
        if high:
            return ("<= " if self.le is not None else "< ") + high[:-1]
        return ""

    def problem(self, value: Any) -> str | None:
        """What was expected, when `value` is not allowed; None when it is."""
        if value is None and self.optional:
            return None
        valid = self.values()
        if valid is not None and value not in valid:
            return f"expected one of {valid}"
        words = self.range_text()
        if not words:
            return None
        inside = (isinstance(value, (int, float)) and not isinstance(value, bool)
                  and (self.ge is None or value >= self.ge) and (self.gt is None or value > self.gt)
                  and (self.le is None or value <= self.le) and (self.lt is None or value < self.lt)
                  and not (self.finite and not math.isfinite(value)))
        if inside:
            return None
        what = "a finite value" if self.finite else "a value"
        return f"expected {what} {words}{' or null' if self.optional else ''}"


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


def option(default: Any = dataclasses.MISSING, *, default_factory: Any = dataclasses.MISSING, **allowed) -> Any:
    """A dataclass field whose allowed values (`Check`'s keywords: choices, ge, gt, le, lt, finite)
    the schema checks: `cb_beta: float = option(0.9999, ge=0, lt=1)  # meaning`."""
    check = Check(optional=default is None, **allowed)
    return dataclasses.field(default=default, default_factory=default_factory, metadata={"check": check})


def field_checks(cls: type) -> dict[str, Check]:
    """field name -> its Check, for dataclass `cls`. A subclass that only changes a field's default
    (`sampler: str = "class_aware"`) keeps the check its base declared."""
    checks: dict[str, Check] = {}
    for klass in reversed(cls.__mro__):
        if dataclasses.is_dataclass(klass):
            checks.update({f.name: f.metadata["check"] for f in dataclasses.fields(klass) if "check" in f.metadata})
    return checks


def check_fields(obj: Any, where: str = "") -> None:
    """Raise ConfigError naming the first field of dataclass `obj` outside its `option` metadata."""
    for name, check in field_checks(type(obj)).items():
        value = getattr(obj, name)
        problem = check.problem(value)
        if problem:
            path = f"{where}.{name}" if where else name
            hint = suggest(str(value), [str(v) for v in check.values()]) if check.values() is not None else ""
            raise ConfigError(f"{path}: {problem}, got {value!r}{hint if not hint.startswith('; valid') else ''}")
