"""Pretrained weight files for a backbone's trunk (`model.pretrained: FILE`).

Formats: a torch state dict (`.pth`, `.pt`, `.bin`, `.pth.tar`, `.ckpt`; read with
`weights_only=True`, so a file cannot run code) or `.safetensors`. A state dict wrapped in a
training checkpoint (`{"state_dict": ...}`, `{"model": ...}`) is unwrapped; a DataParallel
`module.` prefix is removed. Keys are matched strictly against the trunk, with a report:

- keys of modules removed from the trunk by design (`Backbone.removed_keys`: the library's
  classifier, `model.drop_modules`) are dropped: a library checkpoint's `fc.*` / `head.*` are
  expected, not errors;
- `model.pretrained_ignore` patterns (fnmatch, e.g. `layer4.*`) drop more file keys;
- `model.pretrained_prefix` takes only keys under a prefix and strips it (e.g. `backbone.net.`
  for the trunk of a fasttrain checkpoint, `module.encoder_q.` for a MoCo checkpoint);
- then every remaining file key must exist in the trunk with the same shape and every trunk
  weight must come from the file (BatchNorm's `num_batches_tracked` counters excepted: old
  torchvision files have none, and BatchNorm fills them in). Anything else is a `WeightsError`
  listing the missing, unexpected and mis-shaped keys, unless `model.pretrained_strict: false`,
  which loads what fits and logs the same report.
"""
from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn

from fasttrain.schema import ConfigError

SAFETENSORS_SUFFIXES = (".safetensors",)
WRAPPER_KEYS = ("state_dict", "model", "model_state_dict", "module")  # training checkpoints' usual keys
COUNTER_SUFFIX = "num_batches_tracked"
SHOWN = 8  # keys named per category in a report


class WeightsError(ConfigError):
    """Pretrained weights that cannot be found, read or matched (names the model.* key)."""


@dataclass
class WeightsReport:
    source: str
    target: str
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # trunk keys the file does not provide
    unexpected: list[str] = field(default_factory=list)  # file keys the trunk does not have
    mismatched: list[tuple[str, tuple, tuple]] = field(default_factory=list)  # key, file shape, trunk shape
    removed: list[str] = field(default_factory=list)  # keys of modules removed from the trunk, dropped
    ignored: list[str] = field(default_factory=list)  # dropped by model.pretrained_ignore
    outside_prefix: int = 0  # file keys without model.pretrained_prefix

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    def describe(self) -> str:
        def some(keys: list) -> str:
            shown = ", ".join(map(str, keys[:SHOWN]))
            return shown + (f", ... ({len(keys) - SHOWN} more)" if len(keys) > SHOWN else "")

        parts = [f"{self.source} -> {self.target}: {len(self.loaded)} tensors loaded"]
        if self.removed:
            parts.append(f"{len(self.removed)} keys of removed modules dropped ({some(self.removed)})")
        if self.ignored:
            parts.append(f"{len(self.ignored)} ignored by model.pretrained_ignore ({some(self.ignored)})")
        if self.outside_prefix:
            parts.append(f"{self.outside_prefix} keys outside model.pretrained_prefix skipped")
        if self.missing:
            parts.append(f"{len(self.missing)} missing from the file ({some(self.missing)})")
        if self.unexpected:
            parts.append(f"{len(self.unexpected)} unexpected in the file ({some(self.unexpected)})")
        if self.mismatched:
            shapes = [f"{k}: file {list(a)} vs model {list(b)}" for k, a, b in self.mismatched]
            parts.append(f"{len(self.mismatched)} with another shape ({some(shapes)})")
        return "; ".join(parts)


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a weights file (see the module docstring for the formats)."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"model.pretrained: weights file not found: {path} (give a .pth / .pt / .safetensors "
                           "file, or `library` for the library's own weights)")
    if path.name.endswith(SAFETENSORS_SUFFIXES):
        try:
            from safetensors.torch import load_file
        except ImportError:
            raise WeightsError(f"model.pretrained: {path} is a safetensors file: pip install safetensors") from None
        try:
            return dict(load_file(str(path), device="cpu"))
        except Exception as exc:  # safetensors raises its own SafetensorError for bad headers
            raise WeightsError(f"model.pretrained: {path}: not a readable safetensors file ({exc})") from None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # UnpicklingError for objects outside the weights-only allowlist, bad files
        raise WeightsError(
            f"model.pretrained: {path} does not load as tensors only ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''}). A fasttrain checkpoint starts a run with "
            "model.init_from; another trusted checkpoint can be re-saved as a plain state dict "
            "(torch.save(torch.load(f, weights_only=False)['state_dict'], 'weights.pth'))") from None
    return _unwrap(obj, path)


def _unwrap(obj, path: Path) -> dict[str, torch.Tensor]:
    for _ in range(2):  # e.g. {"model": {"state_dict": ...}}
        if isinstance(obj, dict) and not all(isinstance(v, torch.Tensor) for v in obj.values()):
            inner = next((obj[k] for k in WRAPPER_KEYS if isinstance(obj.get(k), dict)), None)
            if inner is None:
                break
            obj = inner
    if not isinstance(obj, dict) or not obj:
        raise WeightsError(f"model.pretrained: {path}: expected a state dict (name -> tensor), got {type(obj).__name__}")
    bad = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise WeightsError(f"model.pretrained: {path}: entries that are not tensors: {', '.join(map(str, bad[:SHOWN]))}; "
                           f"top-level keys: {', '.join(map(str, list(obj)[:SHOWN]))}")
    if all(k.startswith("module.") for k in obj):  # saved from nn.DataParallel / DDP
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return obj


def _under(key: str, prefixes: tuple[str, ...]) -> bool:
    return any(key == p or key.startswith(p + ".") for p in prefixes)


def match_state_dict(trunk: nn.Module, state: dict[str, torch.Tensor], *, removed_keys: tuple[str, ...] = (),
                     ignore: list[str] | tuple[str, ...] = (), prefix: str = "", source: str = "",
                     target: str = "") -> tuple[dict[str, torch.Tensor], WeightsReport]:
    """(tensors to load, report) for `state` against `trunk`; loads nothing."""
    report = WeightsReport(source=source, target=target)
    if prefix:
        inside = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        if not inside:
            heads = sorted({k.split(".")[0] + "." for k in state})
            raise WeightsError(f"model.pretrained_prefix: no key of {source} starts with {prefix!r}; its keys start "
                               f"with {', '.join(heads[:SHOWN])}")
        report.outside_prefix = len(state) - len(inside)
        state = inside
    own = trunk.state_dict()
    to_load: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key not in own and _under(key, removed_keys):
            report.removed.append(key)
        elif any(fnmatch.fnmatchcase(key, pat) for pat in ignore):
            report.ignored.append(key)
        elif key not in own:
            report.unexpected.append(key)
        elif tuple(value.shape) != tuple(own[key].shape):
            report.mismatched.append((key, tuple(value.shape), tuple(own[key].shape)))
        else:
            to_load[key] = value
    report.loaded = list(to_load)
    ignored = set(report.ignored)
    report.missing = [k for k in own if k not in state and k not in ignored and not k.endswith(COUNTER_SUFFIX)
                      and not any(fnmatch.fnmatchcase(k, pat) for pat in ignore)]
    return to_load, report


def load_weights_file(backbone, path: str | Path, *, ignore: list[str] | tuple[str, ...] = (), prefix: str = "",
                      strict: bool = True) -> WeightsReport:
    """Load a weights file into `backbone.trunk` (a fasttrain.backbones.base.Backbone)."""
    state = read_state_dict(path)
    trunk = backbone.trunk
    to_load, report = match_state_dict(trunk, state, removed_keys=backbone.removed_keys, ignore=ignore,
                                       prefix=prefix, source=str(path), target=backbone.arch or type(backbone).__name__)
    if strict and not report.ok:
        raise WeightsError(f"model.pretrained: weights do not fit: {report.describe()}. Drop file keys with "
                           "model.pretrained_ignore patterns, select a sub-tree with model.pretrained_prefix, or "
                           "load what fits with model.pretrained_strict: false")
    if not to_load:
        raise WeightsError(f"model.pretrained: nothing to load: {report.describe()}")
    # strict=False: missing keys were checked above; copy_ keeps the trunk's dtype and device.
    trunk.load_state_dict(to_load, strict=False)
    return report
