"""The configs shipped with fasttrain: found by name (`glmc/cifar10_lt_r100`), listed with the
target numbers their headers name. In a wheel they live in `fasttrain/configs/`; in a checkout
(editable install) in the repository's top-level `configs/`."""
from __future__ import annotations

import re
from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent


def configs_dir() -> Path:
    for candidate in (_PACKAGE / "configs", _PACKAGE.parent / "configs"):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError("the shipped configs are missing from this installation (fasttrain/configs/)")


def resolve_config(name_or_path: str | Path) -> Path:
    """A YAML file path as given, or a shipped config by name (with or without `.yaml`)."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    name = str(name_or_path).removesuffix(".yaml")
    shipped = configs_dir() / f"{name}.yaml"
    if shipped.is_file():
        return shipped
    raise FileNotFoundError(f"config {str(name_or_path)!r}: no such file, and no shipped config of that name "
                            f"(`fasttrain configs` lists them)")


def _header(path: Path) -> list[str]:
    lines = []
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        lines.append(line.lstrip("# ").rstrip())
    return lines


def list_configs() -> list[dict]:
    """Every shipped config: name, first header line, and the header's target sentence(s)."""
    root = configs_dir()
    out = []
    for path in sorted(root.rglob("*.yaml")):
        if path.name.startswith("_"):  # shared bases, not runnable on their own
            continue
        header = _header(path)
        text = " ".join(header)
        # "Target: 82.46 ...", "Targets: paper ...", "Literature CE number this targets: 70.4 ..."
        targets = re.findall(r"(?:[Tt]argets?|[Nn]umbers?)[^.:]{0,40}:\s*([^#]*?)(?:\.\s|\.$|$)", text)
        out.append({"name": str(path.relative_to(root).with_suffix("")), "about": header[0] if header else "",
                    "target": "; ".join(t.strip() for t in targets if t.strip())})
    return out
