"""The shape of the house, read from the source: dependencies point one way, with no circles and
no borrowed private names. Imports inside functions count: they are how a circle hides."""

from __future__ import annotations

import ast
import functools
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# lower may never import higher: the order a frame travels, with the leaf first
LAYERS = ["common", "streamer", "synth", "learner", "exporter", "motionmask"]


def _modules() -> dict[str, Path]:
    mods = {}
    for pkg in LAYERS:
        for path in (REPO / pkg).rglob("*.py"):
            name = ".".join(path.relative_to(REPO).with_suffix("").parts)
            mods[name.removesuffix(".__init__")] = path
    return mods


MODULES = _modules()


def _imports(name: str, path: Path) -> list[tuple[str, list[str], int]]:
    """(imported module, names taken from it, line) for every import in the file, at any depth."""
    out = []
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(a.name, [], node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            out.append((module, [a.name for a in node.names], node.lineno))
    return out


def _project(module: str) -> str | None:
    """The project module an import resolves to (a submodule import names its package)."""
    while module and module not in MODULES:
        module = module.rpartition(".")[0]
    return module or None


@functools.cache  # read once for the tests that share it; they only read it
def _edges() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {m: set() for m in MODULES}
    for name, path in MODULES.items():
        for module, names, _ in _imports(name, path):
            for target in [_project(f"{module}.{n}") for n in names] or [_project(module)]:
                if target and target != name:
                    graph[name].add(target)
    return graph


def test_layers_point_one_way() -> None:
    wrong = []
    for name, targets in _edges().items():
        mine = LAYERS.index(name.split(".")[0])
        wrong += [f"{name} -> {t}" for t in targets if LAYERS.index(t.split(".")[0]) > mine]
    assert not wrong, "imports against the layer order common < streamer < synth < learner < exporter < motionmask"


def _circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every group of modules that import each other, directly or round a loop (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    circles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return circles


def test_no_import_circles() -> None:
    assert _circles(_edges()) == []


def _where(path: Path) -> str:
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def _borrowed(name: str, path: Path) -> list[str]:
    """`from m import _x`, and `m._x` where m names another project module: its private names."""
    found, aliases = [], {}
    for module, names, line in _imports(name, path):
        target = _project(module)
        if not target or target == name:
            continue
        found += [f"{_where(path)}:{line} {n} from {module}" for n in names if _private(n)]
        for n in names or [module]:  # `from pkg import mod`, `import pkg.mod as mod`
            full = f"{module}.{n}" if names else n
            if full in MODULES:
                aliases[n.rpartition(".")[2]] = full
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and _private(node.attr):
            if node.value.id in aliases:
                found.append(f"{_where(path)}:{node.lineno} {node.value.id}.{node.attr}")
    return found


def test_no_private_names_borrowed() -> None:
    everyone = {
        **MODULES,
        **{
            ".".join(p.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__"): p
            for folder in ("bench", "tests")
            for p in (REPO / folder).rglob("*.py")
        },
    }
    assert [b for name, path in everyone.items() for b in _borrowed(name, path)] == []


@pytest.mark.parametrize("package", ["common"])
def test_the_leaf_imports_nothing_of_the_project(package: str) -> None:
    leaks = [
        f"{n} -> {t}"
        for n, ts in _edges().items()
        if n.split(".")[0] == package
        for t in ts
        if t.split(".")[0] != package
    ]
    assert not leaks


def test_the_checks_see_a_circle_held_open_inside_a_function(tmp_path: Path) -> None:
    (tmp_path / "a.py").write_text("def f():\n    from b import g\n")
    (tmp_path / "b.py").write_text("from a import f\n")
    graph = {m: {t for t, _, _ in _imports(m, tmp_path / f"{m}.py")} for m in "ab"}
    assert graph == {"a": {"b"}, "b": {"a"}}
    assert _circles({**graph, "c": {"a"}}) == [["a", "b"]]


def test_the_checks_see_a_borrowed_private_name(tmp_path: Path) -> None:
    probe = tmp_path / "probe.py"
    probe.write_text("from synth import things\nfrom synth.rig import _x\n\nthings._secret()\nthings.public()\n")
    assert [b.split(" ", 1)[1] for b in _borrowed("synth.probe", probe)] == ["_x from synth.rig", "things._secret"]
