"""The house has one direction: every import in ``autocompress/`` (those inside functions too) goes to a
module on its own floor or a floor below, and no chain of imports between our own modules comes back to
where it started. The floors are ARCHITECTURE.md's layout, read bottom-up; a module's floor is its
top-level name under ``autocompress/`` (a package counts as one floor: ``hardware.latency`` sits with
``hardware.obtain``)."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "autocompress"

# bottom first: a module may import from its own floor and the floors before it
FLOORS = [
    {"paths", "locks", "fileio", "features", "lengths", "finalize", "arch", "tasks", "store"},
    {"export", "pipeline"},
    {"evaluate"},
    {"hardware"},
    {"methods"},
    {"checkpoint", "recipe"},
    {"teacher"},
    {"search"},
    {"report", "plots", "ship"},
    {"cli"},
]
LIMIT_LINES = 420


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts}


def _resolve(importer: str, is_package: bool, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = importer.split(".") if is_package else importer.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imports(modules: dict[str, Path]) -> dict[str, set[str]]:
    """Our modules each of our modules imports, wherever the import statement is (functions included)."""
    out: dict[str, set[str]] = {}
    for name, path in modules.items():
        found = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                target = _resolve(name, path.name == "__init__.py", node)
                # ``from package import module`` imports the module; ``from module import name`` the module
                targets = [f"{target}.{a.name}" if f"{target}.{a.name}" in modules else target for a in node.names]
            else:
                continue
            for t in targets:
                while t and t not in modules:      # ``import a.b.c`` where c is a name: the module a.b
                    t = t.rpartition(".")[0]
                if t and t.startswith("autocompress") and t != name:
                    found.add(t)
        out[name] = found
    return out


def floor(module: str) -> int | None:
    parts = module.split(".")
    if len(parts) < 2:
        return None                  # the package itself (empty)
    top = parts[1]
    for i, names in enumerate(FLOORS):
        if top in names:
            return i
    return None


def upward(graph: dict[str, set[str]]) -> list[str]:
    bad = []
    for a, targets in sorted(graph.items()):
        for b in sorted(targets):
            fa, fb = floor(a), floor(b)
            if fa is not None and fb is not None and fb > fa:
                bad.append(f"{a} (floor {fa}) imports {b} (floor {fb})")
    return bad


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
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


def test_every_module_has_a_floor():
    modules = _modules()
    homeless = sorted(m for m in modules if m != "autocompress" and floor(m) is None)
    assert not homeless, f"modules on no floor of ARCHITECTURE.md's layout: {homeless}"


def test_no_import_goes_up_a_floor():
    bad = upward(imports(_modules()))
    assert not bad, "imports from a higher floor:\n" + "\n".join(bad)


def test_no_import_cycle():
    found = cycles(imports(_modules()))
    assert not found, "import cycles (function-level imports counted):\n" + "\n".join(" <-> ".join(c) for c in found)


def test_modules_stay_readable():
    long = sorted(f"{m}: {n} lines" for m, p in _modules().items()
                  if (n := len(p.read_text().splitlines())) > LIMIT_LINES)
    assert not long, f"modules over {LIMIT_LINES} lines: {long}"


# ---------------------------------------------------------------- the checker itself
def _graph_of(tmp_path: Path, files: dict[str, str]) -> dict[str, set[str]]:
    for rel, text in files.items():
        p = tmp_path / "autocompress" / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    mods = {_module_name_in(tmp_path, p): p for p in (tmp_path / "autocompress").rglob("*.py")}
    global PACKAGE
    saved, PACKAGE = PACKAGE, tmp_path / "autocompress"
    try:
        return imports(mods)
    finally:
        PACKAGE = saved


def _module_name_in(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def test_checker_sees_function_level_imports_and_cycles(tmp_path):
    graph = _graph_of(tmp_path, {
        "__init__.py": "",
        "export.py": "def f():\n    from .methods.base import check_final\n",
        "methods/__init__.py": "from . import base\n",
        "methods/base.py": "def g():\n    from autocompress import export\n",
    })
    assert "autocompress.methods.base" in graph["autocompress.export"]
    assert upward(graph) == ["autocompress.export (floor 1) imports autocompress.methods.base (floor 4)"]
    assert cycles(graph) == [["autocompress.export", "autocompress.methods.base"]]


@pytest.mark.parametrize("module, expected", [("autocompress.hardware.latency", 3), ("autocompress.cli", 9),
                                              ("autocompress.tasks.glue", 0), ("autocompress", None)])
def test_floor_of_a_module(module, expected):
    assert floor(module) == expected
