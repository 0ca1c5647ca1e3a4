"""The package's shape, checked: no import cycles inside crew7/, and the cache a leaf."""

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "crew7"
CACHE = "crew7.services.cache"


def _modules():
    out = {}
    for path in PACKAGE.rglob("*.py"):
        if "migrations" in path.parts:
            continue
        name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
        out[name.removesuffix(".__init__")] = path
    return out


def _imports(modules):
    """Every crew7 module each module imports, at module level or inside a function."""
    edges = {}
    for name, path in modules.items():
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("crew7"):
                for alias in node.names:
                    target = f"{node.module}.{alias.name}"
                    found.add(target if target in modules else node.module)
            elif isinstance(node, ast.Import):
                found.update(a.name for a in node.names if a.name.startswith("crew7"))
        edges[name] = {t for t in found if t in modules and t != name}
    return edges


def _cycles(edges):
    """Strongly connected groups of more than one module (Tarjan)."""
    index, low, stack, on_stack, groups = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for v in edges:
        if v not in index:
            visit(v)
    return groups


def test_no_import_cycles_inside_the_package():
    assert _cycles(_imports(_modules())) == []


def test_the_cache_imports_nothing_else_of_crew7_nor_flask_itself():
    modules = _modules()
    edges = _imports(modules)
    cache = [m for m in modules if m == CACHE or m.startswith(CACHE + ".")]
    outside = {t for m in cache for t in edges[m] if not t.startswith(CACHE)}
    assert outside == set()
    # Flask-Caching's backend classes are fine; Flask's request machinery is not.
    flask = re.compile(r"^\s*(from flask[ .]|import flask\b)", re.MULTILINE)
    for name in cache:
        assert not flask.search(modules[name].read_text()), name


def test_no_module_is_longer_than_400_lines():
    lengths = {n: len(p.read_text().splitlines()) for n, p in _modules().items()}
    assert max(lengths.values()) <= 400, max(lengths.items(), key=lambda kv: kv[1])
