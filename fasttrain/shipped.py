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


# Words whose period ends no sentence ("Kang et al. 2020", "e.g. a folder").
_ABBREVIATION = re.compile(r"\b(?:et al|e\.g|i\.e|vs|cf|approx|Fig|Eq|resp)$")
_TARGET = re.compile(r"(?:[Tt]argets?|[Nn]umbers?)[^.:]{0,40}:\s*(.+)")


def sentences(lines: list[str]) -> list[str]:
    """The sentences of header `lines`: each ends at `.`, `!` or `?` before a space (not after an
    abbreviation), or at a `:` that ends a line (what follows is a command or a list)."""
    text = "\n".join(lines)
    out, start = [], 0
    for m in re.finditer(r"[.!?](?=\s)|:(?=\n)", text):
        if m.group() == "." and _ABBREVIATION.search(text[start:m.start()]):
            continue
        out.append(" ".join(text[start:m.end()].split()))
        start = m.end()
    rest = " ".join(text[start:].split())
    return out + ([rest] if rest else [])


def list_configs() -> list[dict]:
    """Every shipped config: name, the header's first sentence, and its target sentence(s) (after
    "Target(s):" / "... number(s) ...:"), whole sentences, never cut."""
    root = configs_dir()
    out = []
    for path in sorted(root.rglob("*.yaml")):
        if path.name.startswith("_"):  # shared bases, not runnable on their own
            continue
        said = sentences(_header(path))
        targets = [m.group(1).rstrip(".") for s in said if (m := _TARGET.search(s))]
        out.append({"name": str(path.relative_to(root).with_suffix("")), "about": said[0] if said else "",
                    "target": "; ".join(targets)})
    return out
