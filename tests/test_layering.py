"""The package layering holds: no import cycle inside registrar_core, and no import from
registrar_core up to the packages above it (console, the sipconsole command).

Every import counts, at module level or inside a function, except those under
``if TYPE_CHECKING:`` (annotations only, never executed)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "registrar_core"
ABOVE = ("console", "sipconsole")


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _resolve(name: str) -> str:
    """The module ``name`` is, or the package holding the attribute ``name`` names."""
    while name and not _exists(name):
        name = name.rpartition(".")[0]
    return name


def _exists(name: str) -> bool:
    base = ROOT.joinpath(*name.split("."))
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


def _runtime_imports(tree: ast.Module) -> list[ast.Import | ast.ImportFrom]:
    """Import statements that run, leaving out ``if TYPE_CHECKING:`` blocks."""
    found: list[ast.Import | ast.ImportFrom] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found.append(node)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def imports_of(path: Path) -> set[str]:
    """Every module the file at ``path`` imports when it runs (absolute names)."""
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    targets: set[str] = set()
    for node in _runtime_imports(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
            continue
        base = node.module or ""
        if node.level:
            anchor = package.split(".")
            anchor = anchor[:len(anchor) - node.level + 1]
            base = ".".join([*anchor, base] if base else anchor)
        for alias in node.names:
            targets.add(_resolve(f"{base}.{alias.name}") if _exists(f"{base}.{alias.name}") else base)
    return targets


def import_graph() -> dict[str, set[str]]:
    graph = {}
    for path in sorted((ROOT / PACKAGE).rglob("*.py")):
        graph[_module_name(path)] = imports_of(path)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), plus self-imports."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph.get(node, ()):
            if target not in graph:
                continue
            if target not in index:
                connect(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1 or node in graph.get(node, ()):
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            connect(node)
    return found


def test_the_core_has_no_import_cycle():
    assert cycles(import_graph()) == []


def test_the_core_never_imports_the_packages_above_it():
    upward = {(module, target) for module, targets in import_graph().items() for target in targets
              if target.split(".")[0] in ABOVE}
    assert upward == set()


def test_the_checker_sees_a_cycle_and_an_upward_import(tmp_path):
    """The two checks above can fail: a made-up cycle and a console import are caught."""
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    source = tmp_path / "m.py"
    source.write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import typeonly\n"
                      "def f():\n    from console.app import run_embedded\n")
    tree = ast.parse(source.read_text())
    names = {alias.name if isinstance(node, ast.Import) else node.module
             for node in _runtime_imports(tree) for alias in node.names}
    assert names == {"typing", "console.app"}
