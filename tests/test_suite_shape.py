"""The test suite's own shape: what tests share lives in library modules, never in a test module.

A test module that imports from another ``test_*`` module ties two files that should move
apart freely (and a fixture imported so is defined in both); the shared helpers live in
``tests/terminal.py``, ``tests/hub.py``, ``tests/proc.py``, ``tests/pulling.py``,
``tests/served.py``, ``tests/speculation.py``, ``tests/templates.py`` and so on.
"""

from __future__ import annotations

import ast
from pathlib import Path

TESTS = Path(__file__).resolve().parent


def imported_test_modules(source: str) -> set[str]:
    """The ``test_*`` modules of this folder that ``source`` imports, lazy imports included."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            # Relative imports (level 1) are from this folder, the package ``tests``.
            base = ".".join(filter(None, ["tests" if node.level else "", node.module or ""]))
            names = [base, *(f"{base}.{alias.name}" for alias in node.names)]
        else:
            continue
        for name in names:
            parts = name.split(".")
            if len(parts) >= 2 and parts[0] == "tests" and parts[1].startswith("test_"):
                found.add(parts[1])
    return found


def test_no_test_module_imports_another() -> None:
    imports = {
        (path.stem, imported)
        for path in sorted(TESTS.glob("*.py"))
        for imported in imported_test_modules(path.read_text())
        if imported != path.stem
    }
    assert sorted(imports) == [], "move these helpers into a library module of tests/"


def test_the_check_sees_every_form_of_import() -> None:
    forms = {
        "from tests.test_a import x": {"test_a"},
        "from tests import test_b": {"test_b"},
        "import tests.test_c": {"test_c"},
        "from .test_d import y": {"test_d"},
        "from . import test_e": {"test_e"},
        "def f():\n    from tests.test_f import z\n": {"test_f"},
        "from tests.proc import run\nfrom tests import hub": set(),
    }
    for source, expected in forms.items():
        assert imported_test_modules(source) == expected, source
