"""The package's shape, checked from its source: the import graph has no loop, library code never
imports the CLI, no private name crosses a module boundary, and no function body is written twice.

Imports inside functions count too (a lazy import hides a loop, it does not remove it). Importing
a submodule runs its ancestors' ``__init__``; that arrow is not counted as a dependency, and
``from . import sub`` depends on ``sub`` only. Taking any other name from a package counts as
depending on its ``__init__``, also from inside the package: a submodule that takes a name its
package's ``__init__`` re-exports from it is a loop.
"""

from __future__ import annotations

import ast
import hashlib
from collections import defaultdict
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = "selma3d"


def _modules() -> dict[str, Path]:
    mods = {}
    for path in sorted((SRC / PACKAGE).rglob("*.py")):
        parts = path.relative_to(SRC).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        mods[name] = path
    return mods


MODULES = _modules()
TREES = {name: ast.parse(path.read_text(), str(path)) for name, path in MODULES.items()}


def _imports(name: str) -> list[tuple[str, list[str], int]]:
    """(module imported, names taken from it, line) for every import statement in ``name``."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(TREES[name]):
        if isinstance(node, ast.Import):
            found += [(alias.name, [], node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            found.append((module, [alias.name for alias in node.names], node.lineno))
    return found


def _graph() -> dict[str, set[str]]:
    graph = defaultdict(set)
    for name in MODULES:
        for module, names, _ in _imports(name):
            submodules = [f"{module}.{n}" for n in names if f"{module}.{n}" in MODULES]
            takes_names = not names or len(submodules) < len(names)  # not only ``from pkg import sub``
            for target in submodules + ([module] if takes_names else []):
                if target in MODULES and target != name:
                    graph[name].add(target)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index, low, on_stack, stack, found, counter = {}, {}, set(), [], [], 0
    for root in MODULES:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
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


def test_the_cycle_finder_finds_a_planted_loop():
    graph = defaultdict(set, {"selma3d.a": {"selma3d.b"}, "selma3d.b": {"selma3d.c"}, "selma3d.c": {"selma3d.a"}})
    for name in ("selma3d.a", "selma3d.b", "selma3d.c"):
        MODULES.setdefault(name, Path(name))
    try:
        assert _cycles(graph) == [["selma3d.a", "selma3d.b", "selma3d.c"]]
    finally:
        for name in ("selma3d.a", "selma3d.b", "selma3d.c"):
            MODULES.pop(name)


def test_a_name_taken_from_the_own_package_counts_a_submodule_does_not():
    planted = {"selma3d.pkg": ("selma3d/pkg/__init__.py", "from .sub import f\n"),
               "selma3d.pkg.sub": ("selma3d/pkg/sub.py", "def f():\n    from . import g\n"),
               "selma3d.pkg.leaf": ("selma3d/pkg/leaf.py", "from . import sub\n")}
    for name, (path, source) in planted.items():
        MODULES[name], TREES[name] = Path(path), ast.parse(source)
    try:
        graph = _graph()
        assert graph["selma3d.pkg.leaf"] == {"selma3d.pkg.sub"}  # the package's __init__ runs, but is no arrow
        assert graph["selma3d.pkg.sub"] == {"selma3d.pkg"}  # g comes from the __init__, which imports sub
        assert ["selma3d.pkg", "selma3d.pkg.sub"] in _cycles(graph)
    finally:
        for name in planted:
            MODULES.pop(name), TREES.pop(name)


def test_the_import_graph_has_no_loop():
    assert _cycles(_graph()) == []


def test_library_code_never_imports_the_cli():
    library = [n for n in MODULES if not n.startswith(f"{PACKAGE}.commands") and n not in (f"{PACKAGE}.cli", f"{PACKAGE}.__main__")]
    graph = _graph()
    arrows = [(n, t) for n in library for t in graph[n] if t.startswith(f"{PACKAGE}.commands")]
    assert arrows == []


def test_no_private_name_is_imported_from_another_module():
    crossings = [f"{name}:{line} imports {module}.{n}"
                 for name in MODULES for module, names, line in _imports(name)
                 if module.startswith(PACKAGE) and module != name
                 for n in names if n.startswith("_") and not n.startswith("__")]
    assert crossings == []


def _body_fingerprint(function: ast.FunctionDef | ast.AsyncFunctionDef) -> str | None:
    """A hash of the body without its docstring (None for bodies too short to be a duplicate)."""
    body = function.body
    if body and isinstance(body[0], ast.Expr) and isinstance(getattr(body[0], "value", None), ast.Constant):
        body = body[1:]
    if sum(1 for node in body for _ in ast.walk(node)) < 40:  # one-liners and tiny adapters repeat legitimately
        return None
    return hashlib.sha1("".join(ast.dump(node) for node in body).encode()).hexdigest()


def test_no_function_body_is_written_twice():
    seen = defaultdict(list)
    for name, tree in TREES.items():
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                fingerprint = _body_fingerprint(node)
                if fingerprint:
                    seen[fingerprint].append(f"{name}.{node.name}:{node.lineno}")
    assert [places for places in seen.values() if len(places) > 1] == []
