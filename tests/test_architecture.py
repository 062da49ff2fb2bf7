"""Structure the codebase promises: no import cycles, kernels are leaves, registries are the only
lists of names (a registered backend is a config choice and shows in `fasttrain info` at once)."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# Installed package name -> source folder (setup.py's package_dir).
PACKAGES = {"fasttrain": ROOT / "fasttrain", "fasttrain.loaders": ROOT / "loaders", "fasttrain.kernels": ROOT / "kernels"}


def _modules() -> dict[str, Path]:
    mods = {}
    for pkg, folder in PACKAGES.items():
        for path in folder.rglob("*.py"):
            rel = path.relative_to(folder).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            name = ".".join([pkg, *parts])
            if name.startswith("fasttrain.loaders.") and pkg == "fasttrain":  # not under fasttrain/
                continue
            mods[name] = path
    return mods


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """Every fasttrain module `name` imports, at module level or inside functions."""
    is_pkg = path.name == "__init__.py"
    package = name if is_pkg else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
        else:
            continue
        for t in targets:
            while t and t not in modules:  # `import a.b.c` of a module: the longest known prefix
                t = t.rpartition(".")[0]
            if t and t != name:
                out.add(t)
    return out


def import_graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_graph_sees_imports_inside_functions():
    graph = import_graph()
    assert "fasttrain.kernels.mix" in graph["fasttrain.augment"]
    assert "fasttrain.kernels.mix.function" in graph["fasttrain.kernels.mix"]  # relative import
    assert "fasttrain.build" in graph["fasttrain.evaluation"]  # a function-level import
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycles():
    """Run `python -m pytest tests/test_architecture.py` to check; the failure lists each cycle."""
    assert find_cycles(import_graph()) == []


def test_kernels_are_leaves():
    """Kernels take tensors and ints: they import nothing of fasttrain outside fasttrain.kernels,
    and their messages name no config key."""
    graph = import_graph()
    for name, deps in graph.items():
        if name.startswith("fasttrain.kernels"):
            assert all(d.startswith("fasttrain.kernels") for d in deps), (name, deps)
    for path in (ROOT / "kernels").rglob("*.py"):
        text = path.read_text()
        for word in ("loader.", "augment.", "train.loss_impl", "Batch", "Geometry"):
            assert word not in text, (path, word)


class DummyLoader:
    """A backend registered by this test only: one file + one registry line, nothing else."""

    reads = ("arrays",)

    @classmethod
    def available(cls):
        return True, "test backend"

    def __init__(self, dataset, samplers, **kwargs):
        self.kwargs = kwargs


def test_a_registered_backend_is_a_config_choice_and_in_info(monkeypatch):
    from fasttrain import loaders
    from fasttrain.config import choices, load_config
    from fasttrain.info import collect_info
    from fasttrain.schema import ConfigError

    with pytest.raises(ConfigError, match="loader.backend"):
        load_config(ROOT / "configs" / "ce" / "cifar10_lt_r100.yaml", ["loader.backend=dummy"])
    monkeypatch.setitem(loaders.BACKENDS, "dummy", (__name__, "DummyLoader"))
    assert "dummy" in choices()["loader.backend"]
    cfg = load_config(ROOT / "configs" / "ce" / "cifar10_lt_r100.yaml", ["loader.backend=dummy"])
    assert cfg.loader.backend == "dummy"
    info = collect_info()
    assert info["loaders"]["dummy"] == {"usable": True, "detail": "test backend", "reads": ["arrays"]}
    built = loaders.build_loader("dummy", None, None, batch_size=4, num_views=1, device="cpu", augment=None,
                                 loader=None, train=True)
    assert isinstance(built, DummyLoader) and built.kwargs["batch_size"] == 4


def test_every_choice_list_comes_from_its_registry():
    from fasttrain.config import choices
    from fasttrain.data import DATASETS
    from fasttrain.loaders import BACKENDS
    from fasttrain.methods import METHODS
    from fasttrain.models import BACKBONES
    from fasttrain.samplers import SAMPLERS
    from fasttrain.schedules import SCHEDULES

    c = choices()
    for key, registry in [("data.dataset", DATASETS), ("loader.backend", BACKENDS), ("method.name", METHODS),
                          ("loader.sampler", SAMPLERS), ("schedule.name", SCHEDULES), ("model.arch", BACKBONES)]:
        assert c[key] == list(registry), key
    for name, cls in METHODS.items():  # a method's name is written once: its class attribute
        assert cls.name == name
