"""No module grows past about 400 lines without saying why (issue 31).

A module that does several jobs hides its seams; past 400 lines it must state, in its
docstring, why it stays one module ("Over 400 lines because ...").
"""

from __future__ import annotations

import ast
from pathlib import Path

import localrun

LIMIT = 400
PACKAGE = Path(localrun.__file__).parent


def test_every_long_module_states_why() -> None:
    unexplained = []
    for path in sorted(PACKAGE.rglob("*.py")):
        text = path.read_text(encoding="utf-8")
        if text.count("\n") <= LIMIT:
            continue
        doc = ast.get_docstring(ast.parse(text)) or ""
        if f"Over {LIMIT} lines because" not in " ".join(doc.split()):
            unexplained.append(f"{path.relative_to(PACKAGE.parent)} ({text.count(chr(10))} lines)")
    assert not unexplained, "split these, or say why not in the docstring: " + ", ".join(
        unexplained
    )
