"""The package layout of issue 10, checked on the source (``ast``, every import statement, also inside functions).

* no import cycle between medad modules (``if TYPE_CHECKING:`` blocks excepted: they never run);
* ``medad.model`` imports nothing from other medad packages (not even lazily, not even for type checking);
* no module over 450 lines; no package folder with more than 8 modules (``__init__``/``__main__`` not counted);
* ``medad/engine`` is gone.
"""

from __future__ import annotations

import ast
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "medad"
MAX_LINES = 450
MAX_MODULES = 8


@dataclass(frozen=True)
class Import:
    target: str  # a medad module name (resolved: the module file that runs)
    line: int
    type_checking: bool


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PKG.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PKG.rglob("*.py")) if "__pycache__" not in p.parts}


MODULES = _modules()


def _resolve(name: str) -> str | None:
    """The medad module that ``import name`` runs last: the module itself, else its closest package."""
    while name:
        if name in MODULES:
            return name
        name = name.rpartition(".")[0]
    return None


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(module: str) -> list[Import]:
    """Every medad module imported anywhere in ``module`` (incl. ``importlib.import_module("medad...")``)."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    tree = ast.parse(path.read_text(), filename=str(path))
    found: list[Import] = []

    def add(name: str, node: ast.AST, tc: bool) -> None:
        target = _resolve(name)
        if target is not None and target != module:
            found.append(Import(target, node.lineno, tc))

    def visit(node: ast.AST, tc: bool) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.body:
                visit(child, True)
            for child in node.orelse:
                visit(child, tc)
            return
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == "medad" or alias.name.startswith("medad."):
                    add(alias.name, node, tc)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            if name == "medad" or name.startswith("medad."):
                for alias in node.names:  # ``from pkg import submodule`` imports the submodule
                    sub = f"{name}.{alias.name}"
                    add(sub if sub in MODULES else name, node, tc)
        elif (isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant)
              and isinstance(node.args[0].value, str) and node.args[0].value.startswith("medad")
              and ((isinstance(node.func, ast.Attribute) and node.func.attr == "import_module")
                   or (isinstance(node.func, ast.Name) and node.func.id in ("import_module", "__import__")))):
            add(node.args[0].value, node, tc)
        for child in ast.iter_child_nodes(node):
            visit(child, tc)

    visit(tree, False)
    return found


GRAPH = {m: _imports(m) for m in MODULES}


def _cycles() -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), runtime imports only."""
    edges = {m: sorted({i.target for i in imps if not i.type_checking}) for m, imps in GRAPH.items()}
    index, low, on_stack, stack, out = {}, {}, set(), [], []
    counter = [0]

    def strong(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in edges[v]:
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for m in sorted(edges):
        if m not in index:
            strong(m)
    return out


def test_the_import_scanner_sees_relative_lazy_and_dynamic_imports():
    assert "medad.factory" in {i.target for i in GRAPH["medad"]}  # ``from .factory import load_detector``
    assert len(MODULES) > 40 and all(m == "medad" or m.startswith("medad.") for m in MODULES)
    tree = ast.parse("def f():\n    import importlib\n    importlib.import_module('medad.factory')\n")
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call)]
    assert calls and calls[0].args[0].value == "medad.factory"


def test_no_import_cycle_inside_medad():
    cycles = _cycles()
    detail = []
    for comp in cycles:
        members = set(comp)
        edges = sorted({f"{m}:{i.line} -> {i.target}" for m in comp for i in GRAPH[m]
                        if i.target in members and not i.type_checking})
        detail.append(" <-> ".join(comp) + ": " + "; ".join(edges))
    assert not cycles, "import cycles:\n" + "\n".join(detail)


def test_model_layer_imports_nothing_of_medad_outside_itself():
    bad = [f"{m}:{i.line} imports {i.target}" for m, imps in GRAPH.items()
           if m == "medad.model" or m.startswith("medad.model.")
           for i in imps if not (i.target == "medad.model" or i.target.startswith("medad.model."))]
    assert not bad, "medad.model must be pure torch:\n" + "\n".join(bad)


def test_no_module_over_450_lines():
    long = {m: n for m, p in MODULES.items() if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines: {long}"


def test_no_package_folder_with_more_than_8_modules():
    crowded = {}
    for folder in sorted({p.parent for p in MODULES.values()}):
        mods = [p.name for p in folder.glob("*.py") if p.name not in ("__init__.py", "__main__.py")]
        if len(mods) > MAX_MODULES:
            crowded[str(folder.relative_to(PKG.parent))] = sorted(mods)
    assert not crowded, f"package folders with more than {MAX_MODULES} modules: {crowded}"


def test_engine_package_is_gone():
    left = sorted(str(p.relative_to(PKG.parent)) for p in (PKG / "engine").rglob("*.py")) if (PKG / "engine").exists() \
        else []
    assert not (PKG / "engine").exists(), f"medad/engine still exists: {left}"


@pytest.mark.parametrize("source, expect_cycle", [
    ("a: from . import b\nb: from .a import X", True),
    ("a: import medad.b\nb: \n", False),
    ("a: \nb: \ndef f():\n    from medad import a", False),
])
def test_cycle_finder_on_a_toy_graph(source, expect_cycle, monkeypatch, tmp_path):
    """The checker itself can fail: a two-module cycle is found, a one-way import is not."""
    pkg = tmp_path / "medad"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    current, bodies = None, {}
    for line in source.splitlines():
        if line[:2] in ("a:", "b:"):
            current = line[0]
            bodies[current] = [line[2:].strip()]
        else:
            bodies[current].append(line)
    for name, body in bodies.items():
        (pkg / f"{name}.py").write_text("\n".join(body) + "\n")
    this = sys.modules[__name__]
    monkeypatch.setattr(this, "PKG", pkg)
    mods = {_module_name(p): p for p in sorted(pkg.rglob("*.py"))}
    monkeypatch.setattr(this, "MODULES", mods)
    monkeypatch.setattr(this, "GRAPH", {m: _imports(m) for m in mods})
    assert bool(_cycles()) == expect_cycle
