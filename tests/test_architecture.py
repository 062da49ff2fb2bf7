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
    monkeypatch.setitem(loaders.BACKENDS, "dummy", DummyLoader)  # what @register_backend("dummy") does
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


# --- one shape per job (issue 30) ---------------------------------------------------------------


def _class_lines(path: Path, name: str) -> int:
    node = next(n for n in ast.parse(path.read_text()).body if isinstance(n, ast.ClassDef) and n.name == name)
    return node.end_lineno - node.lineno + 1


def test_the_trainer_trains_and_other_objects_keep_checkpoints():
    """The Trainer stays short: best.pt is the keeper's (fasttrain.selection), last.pt the
    checkpoint object's (fasttrain.recovery), the run directory's claim fasttrain.rundir's."""
    trainer = ROOT / "fasttrain" / "trainer.py"
    assert _class_lines(trainer, "Trainer") < 250
    text = trainer.read_text()
    for gone in ("save_checkpoint(", "load_checkpoint(", "best.pt\"", "_selected", "_stored_best"):
        assert gone not in text, gone
    assert "self.keeper.update(" in text and "self.keeper.selected(" in text


def test_nothing_probes_a_loader_with_hasattr():
    """Loaders are used through the LoaderBackend interface (e.g. `epoch_counters`), never probed."""
    for folder in (ROOT / "fasttrain", ROOT / "loaders"):
        for path in folder.rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                probe = isinstance(node, ast.Call) and (getattr(node.func, "id", None) == "hasattr" or (
                    getattr(node.func, "id", None) == "getattr" and len(node.args) == 3))  # with a default
                if probe:
                    target = ast.unparse(node.args[0]) if node.args else ""
                    assert "loader" not in target.lower(), (path, ast.unparse(node))


def test_every_backend_registers_itself_and_shares_one_epoch_layout():
    """Backends are classes registered by decorator; none lays an epoch out on its own
    (`LoaderBackend.set_epoch` does, for all)."""
    from fasttrain.loaders import BACKENDS
    from fasttrain.loaders.base import LoaderBackend

    for name, cls in BACKENDS.items():
        assert isinstance(cls, type) and issubclass(cls, LoaderBackend) and cls.name == name
        assert "set_epoch" not in vars(cls), name
    for path in (ROOT / "loaders").glob("*.py"):
        if path.name != "base.py":
            assert "layout_epoch(" not in path.read_text(), path


def test_one_kernel_dispatch_helper():
    """Only kernels/dispatch.py decides "Triton or torch": no other kernel file reads
    TRITON_INTERPRET or defines its own dispatch."""
    for path in (ROOT / "kernels").rglob("*.py"):
        if path.name == "dispatch.py":
            continue
        text = path.read_text()
        assert "TRITON_INTERPRET" not in text.replace("TRITON_INTERPRET=1", ""), path
        tree = ast.parse(text)
        defined = {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)}
        assert not defined & {"use_triton", "_use_triton", "triton_available", "_interpreting"}, path
    for kernel in ("mix", "soft_ce"):
        assert "from ..dispatch import" in (ROOT / "kernels" / kernel / "function.py").read_text(), kernel


def test_stages_are_declared_once_per_method():
    """A method says what it does as a stage with one `stage = Stage.X`; the flags the rest of the
    code may read (continues_stage, trains, fixed_streams) are derived, never declared."""
    from fasttrain.methods import METHODS, Stage

    derived = {"continues_stage", "trains", "fixed_streams", "trains_new_model"}
    for path in (ROOT / "fasttrain" / "methods").glob("*.py"):
        if path.name == "base.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef):
                for stmt in node.body:
                    targets = stmt.targets if isinstance(stmt, ast.Assign) else \
                        [stmt.target] if isinstance(stmt, ast.AnnAssign) else []
                    assert not {getattr(t, "id", None) for t in targets} & derived, (path, node.name)
    for name, cls in METHODS.items():
        assert isinstance(cls.stage, Stage), name
        assert (cls.continues_stage, cls.trains) == (cls.stage.continues, cls.stage.trains), name


def test_method_configs_declare_allowed_values_on_their_fields():
    """Choices and ranges are field metadata (fasttrain.schema.option) that the schema checks:
    no method config keeps a CHOICES table."""
    from fasttrain.methods import METHODS

    for name, cls in METHODS.items():
        for klass in cls.config_class.__mro__:
            assert "CHOICES" not in vars(klass), (name, klass.__name__)
