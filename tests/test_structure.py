"""The package graph of docs/design.md: imports go one way, no module cycle, one idea per unit (sizes).

Every import statement of saeforge/ counts, at module level or inside a function (not under TYPE_CHECKING),
and so do a package's lazy exports (`saeforge.lazy.lazy_exports`).
"""

from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import REPO

ROOT = REPO / "saeforge"
SHARED = {
    "atomic",
    "errors",
    "dtypes",
    "device",
    "lazy",
    "distributed",
    "sparsity",
    "lock",
    "hook_names",
    "version",
}
# report/ draws pages and figures from plain values: it imports no stage, so any package may use it.
LEAVES = SHARED | {"report"}
EVERYTHING = {"*"}
# package (or top-level module) -> the packages it may import besides the shared utilities (docs/design.md)
ALLOWED: dict[str, set[str]] = {
    **{name: set() for name in SHARED},
    "text": set(),
    "models": {"text"},
    "activations": {"text", "models"},
    "sae": set(),
    "train": {"activations", "sae"},
    "eval": {"text", "models", "activations", "sae"},
    "interpret": {"text", "models", "activations", "sae"},
    "steer": {"models", "sae"},
    "report": set(),
    "synthetic": {"sae"},
    "diff": {"text", "activations", "models", "sae", "train", "eval", "interpret"},
    "serve": {"text", "models", "sae", "steer", "interpret"},
    "export": {"sae", "interpret", "activations"},
    "plan": {"text", "models", "activations", "sae", "train"},
    "examples": set(),
    "cli": EVERYTHING,
    "run_config": {"activations", "train", "eval"},
    "pipeline": EVERYTHING,
    "__main__": EVERYTHING,
    "saeforge": EVERYTHING,  # the package's own __init__ (lazy load_sae / save_sae)
}
MAX_FUNCTION, MAX_CLASS, MAX_MODULE = 100, 300, 500


def _modules() -> dict[str, Path]:
    out = {}
    for f in ROOT.rglob("*.py"):
        parts = list(f.relative_to(REPO).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = f
    return out


def _walk(node: ast.AST):
    """Every node, skipping `if TYPE_CHECKING:` bodies (they never run)."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
            for other in child.orelse:
                yield other
                yield from _walk(other)
            continue
        yield child
        yield from _walk(child)


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found: set[str] = set()
    for node in _walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([node.module] if node.module else []))
            for a in node.names:
                sub = f"{base}.{a.name}"
                found.add(sub if sub in modules else base)
        elif isinstance(node, ast.Call) and getattr(node.func, "id", None) == "lazy_exports":
            found |= {v.value for v in node.args[1].values}
    return {m for m in found if m in modules and m != name}


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def _package(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "saeforge"


def test_every_package_is_in_the_table():
    assert {_package(m) for m in _graph()} <= set(ALLOWED), "add new packages to ALLOWED and docs/design.md"


def test_no_stage_imports_a_later_stage():
    wrong = []
    for module, targets in _graph().items():
        allowed = ALLOWED[_package(module)]
        if allowed == EVERYTHING:
            continue
        for target in targets:
            pkg = _package(target)
            if pkg != _package(module) and pkg not in LEAVES and pkg not in allowed:
                wrong.append(f"{module} imports {target}")
    assert not wrong, wrong


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for start in graph:
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            v, children = work[-1]
            w = next(children, None)
            if w is None:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[v])
                if low[v] == index[v]:
                    comp = []
                    while True:
                        u = stack.pop()
                        on_stack.discard(u)
                        comp.append(u)
                        if u == v:
                            break
                    if len(comp) > 1:
                        found.append(sorted(comp))
            elif w not in index:
                index[w] = low[w] = len(index)
                stack.append(w)
                on_stack.add(w)
                work.append((w, iter(sorted(graph[w]))))
            elif w in on_stack:
                low[v] = min(low[v], index[w])
    return found


def test_the_cycle_finder_finds_a_planted_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle_between_saeforge_modules():
    assert _cycles(_graph()) == []


def test_sizes_say_one_idea_per_unit():
    big = []
    for path in ROOT.rglob("*.py"):
        text = path.read_text()
        rel = path.relative_to(REPO)
        if len(text.splitlines()) > MAX_MODULE:
            big.append(f"{rel}: {len(text.splitlines())} lines")
        for node in ast.walk(ast.parse(text)):
            limit = {
                ast.FunctionDef: MAX_FUNCTION,
                ast.AsyncFunctionDef: MAX_FUNCTION,
                ast.ClassDef: MAX_CLASS,
            }
            n = limit.get(type(node))
            if n is not None and node.end_lineno - node.lineno + 1 > n:
                big.append(f"{rel}:{node.lineno} {node.name}: {node.end_lineno - node.lineno + 1} lines")
    assert not big, big
