"""The shape of raysel's imports: no module imports another's private names, and no import cycles among its
modules (imports inside functions count: a lazy import is still a dependency).

Two exceptions, both by design: the package facade raysel/__init__.py (every module is imported through it,
and it imports the driver lazily for raysel.select), and the backend factories of raysel.backends.base, which
import the engine modules that implement the protocols they define (the engines load only when asked for)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "raysel"
FACADE = "raysel"
BACKENDS = "raysel.backends"


def _modules() -> dict[str, Path]:
    out = {}
    for path in ROOT.rglob("*.py"):
        parts = path.relative_to(ROOT.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


MODULES = _modules()


def _owner(name: str) -> str:
    """The raysel module that `name` (a module or a name in one) lives in."""
    while name not in MODULES:
        name = name.rpartition(".")[0]
    return name


def _runtime_nodes(tree: ast.AST):
    """Every node of `tree` but those under `if TYPE_CHECKING:` (annotations only, never imported at run time)."""
    todo = [tree]
    while todo:
        node = todo.pop()
        yield node
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and isinstance(child.test, ast.Name) and child.test.id == "TYPE_CHECKING":
                todo += child.orelse
            else:
                todo.append(child)


def _imports(module: str) -> list[tuple[str, str, int]]:
    """(imported module, imported name or "", line) for every raysel import in `module`, anywhere in it."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out = []
    for node in _runtime_nodes(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parts, base] if base else parts)
            if base == FACADE or base.startswith(FACADE + "."):
                for alias in node.names:
                    full = f"{base}.{alias.name}"
                    out.append((full, "", node.lineno) if full in MODULES else (base, alias.name, node.lineno))
        elif isinstance(node, ast.Import):
            out += [(a.name, "", node.lineno) for a in node.names if a.name.split(".")[0] == FACADE]
    return out


def test_the_scan_sees_raysel() -> None:
    assert {"raysel.driver", "raysel.config", "raysel.methods", "raysel.run.context"} <= set(MODULES)
    assert ("raysel.config", "identity", 23) in [(m, n, 23) for m, n, _ in _imports("raysel.methods.ifd")]


def test_no_private_name_is_imported_from_another_module() -> None:
    bad = [
        f"{MODULES[m].relative_to(ROOT.parent)}:{line}: from {target} import {name}"
        for m in MODULES
        for target, name, line in _imports(m)
        if name.startswith("_") and not name.startswith("__") and _owner(target) != m
    ]
    assert not bad, "private names imported across modules (make them public or move them):\n" + "\n".join(bad)


def _graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {m: set() for m in MODULES if m != FACADE}
    for m in graph:
        for target, _, _ in _imports(m):
            owner = _owner(target)
            if owner == FACADE or owner == m:
                continue
            if m == f"{BACKENDS}.base" and owner.startswith(BACKENDS + "."):
                continue  # the lazy backend factories
            graph[m].add(owner)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []

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
                found.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_no_import_cycles() -> None:
    graph = _graph()
    cycles = _cycles(graph)
    shown = ["; ".join(f"{m} -> {sorted(graph[m] & set(c))}" for m in c) for c in cycles]
    assert not cycles, "import cycles among raysel's modules:\n" + "\n".join(shown)


def test_the_cycle_check_finds_a_cycle() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


@pytest.mark.parametrize("name", ["ifd", "iterit", "iterselecttune"])
def test_every_method_is_one_module_with_its_registry_entry(name: str) -> None:
    from raysel.methods import METHODS

    spec = METHODS[name]
    assert spec.module == f"raysel.methods.{name}" and spec.module in MODULES
    method = spec.load()
    assert method.spec is spec
    for attr in ("check", "resources", "run"):
        assert callable(getattr(method, attr))
