"""No import cycles in `src/piseduce`, read statically: a module imports what its module-level
`import` and `from ... import` statements name (the packages on the way included: importing
`a.b.c` runs `a/__init__` and `a/b/__init__` first). Imports under `if TYPE_CHECKING:` and inside
functions do not count: they run late, once everything is loaded."""

from __future__ import annotations

import ast
from collections.abc import Iterable
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"

# Known exceptions (module prefixes whose cycles are tolerated): none.
KNOWN_CYCLE_PREFIXES: tuple[str, ...] = ()


def modules(root: Path) -> dict[str, tuple[Path, bool]]:
    """Dotted name → (file, is a package) for every module below `root`."""
    out = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        package = parts[-1] == "__init__"
        if package:
            parts = parts[:-1]
        out[".".join(parts)] = (path, package)
    return out


def _type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(body: Iterable[ast.stmt]) -> Iterable[ast.Import | ast.ImportFrom]:
    """The import statements that run when the module is loaded (not in functions or classes'
    methods, not under TYPE_CHECKING)."""
    for node in body:
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
        elif isinstance(node, ast.If):
            if not _type_checking(node.test):
                yield from _imports(node.body)
            yield from _imports(node.orelse)
        elif isinstance(node, ast.Try):
            yield from _imports(node.body)
            for handler in node.handlers:
                yield from _imports(handler.body)
            yield from _imports(node.orelse)
            yield from _imports(node.finalbody)
        elif isinstance(node, ast.With):
            yield from _imports(node.body)


def _targets(name: str, package: bool, node: ast.Import | ast.ImportFrom, known: set[str]) -> set[str]:
    if isinstance(node, ast.Import):
        named = [a.name for a in node.names]
    else:
        base = node.module or ""
        if node.level:
            here = name.split(".") if package else name.split(".")[:-1]
            here = here[: len(here) - (node.level - 1)]
            base = ".".join([*here, base] if base else here)
        # `from pkg import sub` imports the submodule `pkg.sub` when there is one.
        named = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
    out = set()
    for target in named:
        parts = target.split(".")
        # Every package on the way is imported too.
        out.update(".".join(parts[:i]) for i in range(1, len(parts) + 1) if ".".join(parts[:i]) in known)
    return out


def import_graph(root: Path) -> dict[str, set[str]]:
    mods = modules(root)
    known = set(mods)
    graph: dict[str, set[str]] = {}
    for name, (path, package) in mods.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        deps: set[str] = set()
        for node in _imports(tree.body):
            deps |= _targets(name, package, node, known)
        deps.discard(name)
        graph[name] = deps
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's, iteratively)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def _known(component: list[str]) -> bool:
    return all(m.startswith(KNOWN_CYCLE_PREFIXES) for m in component)


def test_src_has_no_import_cycle() -> None:
    graph = import_graph(SRC)
    assert "piseduce.agent.engine" in graph or "piseduce.agent.engine.executor" in graph  # read it all
    found = [c for c in cycles(graph) if not _known(c)]
    assert found == [], "import cycles (module-level imports): " + "; ".join(" ↔ ".join(c) for c in found)


def test_the_check_sees_cycles_through_packages_and_ignores_late_imports(tmp_path: Path) -> None:
    pkg = tmp_path / "app"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("from app.sub.b import B\n")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "b.py").write_text("from .c import C\nB = 1\n")
    (pkg / "sub" / "c.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from app.sub.b import B\n"
        "def late():\n    from app import sub\nC = 2\n"
    )
    (pkg / "d.py").write_text("import app.e\n")
    (pkg / "e.py").write_text("from . import d\n")
    graph = import_graph(tmp_path)
    # app/__init__ → app.sub.b → app (its package) is a cycle; b ↔ c is not (c's are late);
    # d ↔ e is one too.
    assert sorted(cycles(graph)) == [["app", "app.sub.b"], ["app.d", "app.e"]]
    (pkg / "__init__.py").write_text("")
    (pkg / "e.py").write_text("X = 1\n")
    assert cycles(import_graph(tmp_path)) == []
