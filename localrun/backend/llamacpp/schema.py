r"""JSON schema to GBNF, by the converter llama-cpp-python ships (llama.cpp's, in Python).

Importing it imports llama-cpp-python's whole package, which installs its own log callback:
llama.cpp's lines are taken back into localrun's log right after (see :mod:`.logs`).

One of its steps is mended here: it writes a constant (an enum's value, a property's name)
into a GBNF string literal as JSON text, escaping only quotes and line breaks. JSON's own
backslashes then reached the grammar unescaped, which read them again: the value a\z came
out as "a\z" (not JSON), a property q"x as a broken grammar, an emoji as six replacement
characters (its JSON escapes \ud83d\ude42 read as two lone surrogates). Every backslash is
escaped too, so the model writes the JSON text. The schema itself is made ready for the
converter first (:mod:`localrun.prompt.schema`).
"""

from __future__ import annotations

import re
from typing import Any

from localrun.backend.llamacpp import logs

_ESCAPES = {"\r": "\\r", "\n": "\\n", '"': '\\"', "\\": "\\\\"}


def json_schema_to_gbnf(schema: dict[str, Any]) -> str:
    """The GBNF of ``schema`` (root rule ``root``); the converter's own exceptions pass."""
    from llama_cpp import llama_grammar

    base: Any = llama_grammar.SchemaConverter  # untyped

    class Converter(base):  # type: ignore[misc]
        depth = 0

        def _format_literal(self, literal: str) -> str:
            return '"' + re.sub(r'[\r\n"\\]', lambda m: _ESCAPES[m.group(0)], literal) + '"'

        def visit(self, schema: dict[str, Any], name: str) -> str:
            # A part's rule is named after its property or definition; one named "" or
            # "root" took the name of the whole grammar's rule, which then was that part's.
            if self.depth and re.sub(r"[^a-zA-Z0-9-]+", "-", name) in ("", "root"):
                name = f"part-{name}"
            self.depth += 1
            try:
                return str(super().visit(schema, name))
            finally:
                self.depth -= 1

    logs.reclaim()
    converter: Any = Converter(prop_order={}, allow_fetch=False, dotall=False, raw_pattern=False)
    converter.visit(converter.resolve_refs(schema, "schema"), "")
    return str(converter.format_grammar())
