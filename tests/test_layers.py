"""The layers of docs/architecture.md, enforced: no module imports a layer above its own.

Every ``import`` in every module counts, those inside functions too (a lazy import is still a
dependency).
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "localrun"

# Each layer and the layers it may import (its own included). Lowest first.
BASE = "base"  # errors, paths, system, files, config: what every layer uses
ALLOWED: dict[str, set[str]] = {
    BASE: {BASE},
    # Tensor sizes come from ggml's own type table, through the bindings alone.
    "gguf": {BASE, "gguf", "backend.llamacpp.bindings"},
    "backend": {BASE, "gguf", "backend"},
    "hub": {BASE, "gguf", "hub"},
    "prompt": {BASE, "backend", "prompt"},  # the backend's Model interface, to tokenize
    "models": {BASE, "gguf", "backend", "hub", "prompt", "models"},
    "engine": {BASE, "gguf", "backend", "hub", "prompt", "models", "engine"},
    # The HTTP layer translates between the APIs and the engine, as the CLI does.
    "server": {BASE, "gguf", "backend", "hub", "prompt", "models", "engine", "server"},
    # Other engines, asked over HTTP: beside the server, above the engine (its events, chat).
    "remote": {BASE, "backend", "prompt", "models", "engine", "remote"},
    "cli": {
        BASE,
        "gguf",
        "backend",
        "hub",
        "prompt",
        "models",
        "engine",
        "server",
        "remote",
        "cli",
    },
}
# Libraries only the command line (and its terminal view) may use.
CLI_ONLY = {"typer", "rich", "click"}


def layer_of(module: str) -> str:
    """The layer of a dotted module name inside localrun."""
    parts = module.split(".")
    if len(parts) == 1 or parts[1] in ("errors", "paths", "system", "files", "config", "images"):
        return BASE
    if parts[1] == "__main__":
        return "cli"  # the entry point runs the command line
    return parts[1]


def _allowed(importer: str, imported: str) -> bool:
    allowed = ALLOWED[layer_of(importer)]
    target = layer_of(imported)
    if target in allowed:
        return True
    # A single module allowed by name: it, and the packages above it (their __init__ runs).
    modules = [f"localrun.{a}" for a in allowed if "." in a]
    return any(m == imported or m.startswith(imported + ".") for m in modules)


def _imports(source: str, module: str) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            base = node.module
            if node.level:  # relative: resolve against this module's package
                package = module.split(".")[: -node.level]
                base = ".".join([*package, node.module])
            found.append(base)
            # `from localrun import engine` imports the module localrun.engine
            found += [
                f"{base}.{a.name}"
                for a in node.names
                if base.startswith("localrun") and _is_module(f"{base}.{a.name}")
            ]
    return found


def _is_module(name: str) -> bool:
    path = PACKAGE.parent.joinpath(*name.split("."))
    return path.with_suffix(".py").exists() or (path / "__init__.py").exists()


def violations(module: str, source: str) -> list[str]:
    """What ``module`` (with this source) imports against the layer rules."""
    wrong = []
    for name in _imports(source, module):
        top = name.split(".")[0]
        if top in CLI_ONLY and layer_of(module) != "cli":
            wrong.append(f"{module} imports {name}: only the CLI may")
        elif top == "localrun" and name != "localrun" and not _allowed(module, name):
            wrong.append(f"{module} ({layer_of(module)}) imports {name} ({layer_of(name)})")
    return wrong


def _modules() -> list[tuple[str, Path]]:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found.append((name, path))
    return found


def test_no_module_imports_a_higher_layer() -> None:
    modules = _modules()
    assert len(modules) > 40
    for name, _ in modules:
        assert layer_of(name) in ALLOWED, f"{name} is in no layer: add it to ALLOWED"
    wrong = [v for name, path in modules for v in violations(name, path.read_text())]
    assert wrong == []


def test_the_check_catches_an_upward_import() -> None:
    """The rule table bites: each of these would be reported."""
    assert violations("localrun.engine.load", "import typer")
    assert violations("localrun.backend.llamacpp.model", "from localrun.engine import types")
    assert violations("localrun.hub.pull", "def f():\n    from localrun.models import recipes")
    assert violations("localrun.hub.pull", "from localrun import engine")
    assert violations("localrun.gguf.reader", "from localrun.backend.llamacpp import model")
    assert violations("localrun.prompt.build", "from . import x") == []
    assert violations("localrun.errors", "from localrun.hub import store")
    assert violations("localrun.cli.run", "import rich\nfrom localrun import engine") == []


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected groups of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_engine_has_no_import_cycle() -> None:
    """Lazy imports included: a cycle (batch -> stream -> load -> batch once) means a module
    that cannot be understood, or tested, without the others."""
    engine = {name: path for name, path in _modules() if layer_of(name) == "engine"}
    graph = {
        name: {m for m in _imports(path.read_text(), name) if m in engine and m != name}
        for name, path in engine.items()
        if name != "localrun.engine"  # the package's exports import its modules, not a cycle
    }
    assert _cycles(graph) == []
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [["a", "b", "c"]]


def test_the_slow_modules_exist() -> None:
    from tests.conftest import SLOW_MODULES

    tests = {p.stem for p in (PACKAGE.parent / "tests").glob("test_*.py")}
    assert tests >= SLOW_MODULES, f"not test modules any more: {sorted(SLOW_MODULES - tests)}"
