"""The architecture rules that keep plugins apart and the core free of import loops.

Every ``import`` statement counts (module level, inside functions, under ``TYPE_CHECKING``), read
from the source with :mod:`ast`, so the rules hold however a module is reached:

* no plugin imports another plugin's modules except that plugin's public ``api`` module;
* the core (``quantfw``) imports no plugin and no deep-learning framework at module level;
* the core's import graph has no cycle (a submodule importing its own package's ``__init__``
  counts as an edge into it).

Run ``python tests/test_architecture.py`` to print the import graph.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: package name → the folder holding it
PACKAGES = {"quantfw": ROOT / "quantfw"} | {
    p.name: p for p in sorted((ROOT / "plugins").glob("*/quantfw_*")) if p.is_dir()
}
FRAMEWORKS = ("torch", "tensorflow", "keras", "onnx", "onnxruntime", "onnxscript", "onnx_ir")


def module_files() -> dict[str, Path]:
    """Dotted module name → source file, for every module of the core and the plugins."""
    out = {}
    for pkg, folder in PACKAGES.items():
        for path in sorted(folder.rglob("*.py")):
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join([pkg, *parts])] = path
    return out


def _imports(path: Path, module: str, is_package: bool) -> Iterator[tuple[list[str], int, bool]]:
    """``(candidate names, line, at module level)`` for every imported name in ``path``: for
    ``from a.b import c`` the candidates are ``a.b.c`` (if that is a module) then ``a.b``."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    top = {id(n) for n in tree.body}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield [alias.name], node.lineno, id(node) in top
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")
                base = base[: len(base) - node.level + (1 if is_package else 0)]
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module or ""
            for alias in node.names:
                yield [f"{prefix}.{alias.name}", prefix], node.lineno, id(node) in top


def import_graph() -> dict[str, dict[str, int]]:
    """Module → {imported project module → first line}, resolved to the most specific module."""
    files = module_files()
    graph: dict[str, dict[str, int]] = {}
    for mod, path in files.items():
        edges: dict[str, int] = {}
        for candidates, line, _ in _imports(path, mod, path.name == "__init__.py"):
            target = next((c for c in candidates if c in files), None)
            if target is not None and target != mod:
                edges.setdefault(target, line)
        graph[mod] = edges
    return graph


def package_of(module: str) -> str:
    return module.split(".")[0]


def cross_plugin_imports(graph: dict[str, dict[str, int]]) -> list[str]:
    bad = []
    for mod, edges in graph.items():
        own = package_of(mod)
        if own == "quantfw":
            continue
        for target, line in edges.items():
            other = package_of(target)
            if other not in (own, "quantfw") and target != f"{other}.api":
                bad.append(f"{mod}:{line} imports {target}")
    return bad


def core_imports_plugins(graph: dict[str, dict[str, int]]) -> list[str]:
    return [
        f"{mod}:{line} imports {target}"
        for mod, edges in graph.items()
        if package_of(mod) == "quantfw"
        for target, line in edges.items()
        if package_of(target) != "quantfw"
    ]


def cycles(graph: dict[str, dict[str, int]], package: str = "quantfw") -> list[list[str]]:
    """Strongly connected components (size > 1, or a self-loop) among ``package``'s modules."""
    nodes = [m for m in graph if package_of(m) == package]
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = [0]
    sys.setrecursionlimit(max(10_000, sys.getrecursionlimit()))

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if package_of(w) != package or w not in graph:
                continue
            if w not in index:
                visit(w)
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
            if len(comp) > 1 or v in graph[v]:
                found.append(sorted(comp))

    for v in nodes:
        if v not in index:
            visit(v)
    return found


def framework_imports_at_module_level() -> list[str]:
    bad = []
    for mod, path in module_files().items():
        if package_of(mod) != "quantfw":
            continue
        for candidates, line, top in _imports(path, mod, path.name == "__init__.py"):
            if top and candidates[-1].split(".")[0] in FRAMEWORKS:
                bad.append(f"{mod}:{line} imports {candidates[-1]}")
    return sorted(set(bad))


# ------------------------------------------------------------------------------------------------


def test_no_plugin_imports_another_plugins_private_modules():
    assert cross_plugin_imports(import_graph()) == []


def test_the_core_imports_no_plugin():
    assert core_imports_plugins(import_graph()) == []


def test_the_core_has_no_import_cycle():
    assert cycles(import_graph()) == []


def test_the_core_imports_no_framework_at_module_level():
    assert framework_imports_at_module_level() == []


def test_every_plugin_has_a_public_api_module():
    """Each plugin exposes ``<package>.api`` (the one module other plugins may import), whose
    ``__all__`` names only what it imports or defines."""
    files = module_files()
    for pkg in PACKAGES:
        if pkg == "quantfw":
            continue
        path = files.get(f"{pkg}.api")
        assert path is not None, f"{pkg} has no api module"
        tree = ast.parse(path.read_text(encoding="utf-8"))
        bound = {
            a.asname or a.name for n in tree.body if isinstance(n, ast.ImportFrom) for a in n.names
        }
        bound |= {n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
        exported = next(
            ast.literal_eval(n.value)
            for n in tree.body
            if isinstance(n, ast.Assign)
            and any(getattr(t, "id", "") == "__all__" for t in n.targets)
        )
        assert exported and set(exported) <= bound, (pkg, set(exported) - bound)


def test_the_checks_can_fail(tmp_path, monkeypatch):
    """The rules above are not vacuous: a planted loop and a planted private import are found."""
    core = tmp_path / "quantfw"
    core.mkdir()
    (core / "__init__.py").write_text("from .a import x\n")
    (core / "a.py").write_text("def f():\n    from .b import y\n")
    (core / "b.py").write_text("from quantfw import a\nimport quantfw_two.secret\n")
    one = tmp_path / "plugins" / "one_backend" / "quantfw_one"
    one.mkdir(parents=True)
    (one / "__init__.py").write_text("")
    (one / "mod.py").write_text("from quantfw_two.secret import s\nfrom quantfw_two.api import t\n")
    two = tmp_path / "plugins" / "two_backend" / "quantfw_two"
    two.mkdir(parents=True)
    for name in ("__init__", "secret", "api"):
        (two / f"{name}.py").write_text("")
    monkeypatch.setattr(
        sys.modules[__name__],
        "PACKAGES",
        {"quantfw": core, "quantfw_one": one, "quantfw_two": two},
    )
    graph = import_graph()
    assert cross_plugin_imports(graph) == ["quantfw_one.mod:1 imports quantfw_two.secret"]
    assert core_imports_plugins(graph) == ["quantfw.b:2 imports quantfw_two.secret"]
    assert cycles(graph) == [["quantfw.a", "quantfw.b"]]


def describe(graph: dict[str, dict[str, int]]) -> str:
    lines = []
    for mod in sorted(graph):
        targets = sorted(graph[mod])
        lines.append(f"{mod} -> {', '.join(targets) if targets else '(nothing)'}")
    lines.append("")
    lines.append(f"cross-plugin private imports: {cross_plugin_imports(graph) or 'none'}")
    lines.append(f"core cycles: {cycles(graph) or 'none'}")
    return "\n".join(lines)


if __name__ == "__main__":
    print(describe(import_graph()))
