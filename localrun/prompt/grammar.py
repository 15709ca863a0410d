"""Constraints on an answer: a JSON schema, any JSON, or a GBNF grammar, as llama.cpp's grammar.

The answer is sampled through llama.cpp's grammar sampler (see
:mod:`localrun.backend.llamacpp.sampler`): a token that would break the grammar is never
chosen, so the text parses whatever the model would have liked to write. A JSON schema is
turned into a grammar by the converter that llama-cpp-python ships (the one llama.cpp's own
server uses, in Python); localrun only checks first that the schema asks for nothing the
converter would leave out. A grammar cannot count or compare numbers, so a schema with
``minimum`` would get answers that break it: such a schema is refused, naming the keyword.

Every grammar, whatever its source, is held to what llama.cpp's grammar code can hold before
llama.cpp sees it (:mod:`localrun.prompt.gbnf`, with the measurements), and every schema is
made ready for the converter first (:mod:`localrun.prompt.schema`).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from localrun.backend import SamplingParams
from localrun.errors import UsageError
from localrun.files import read_capped
from localrun.prompt import gbnf as limits
from localrun.prompt.schema import TYPES, prepare

ANY_JSON = "json"  # --schema json: any JSON value

MAX_SCHEMA_BYTES = 256 * 1024  # a JSON schema's text, from a file or a request


@dataclass(frozen=True)
class Constraint:
    """A grammar for the answer, and what it came from (for messages)."""

    grammar: str  # GBNF, root rule "root"
    what: str  # "a JSON schema", "any JSON value", "the grammar in FILE"
    json: bool = True  # whether a complete answer is JSON
    schema: str | None = None  # the JSON schema, as JSON: what remote engines take instead

    def apply(self, sampling: SamplingParams) -> SamplingParams:
        """``sampling`` held to this constraint."""
        return replace(sampling, grammar=self.grammar, schema=self.schema)


def json_value(*, object_only: bool = False) -> Constraint:
    """Any JSON value (``--schema json``), or any JSON object (Ollama's ``format: "json"``,
    OpenAI's ``json_object``)."""
    kinds: Any = "object" if object_only else sorted(TYPES - {"integer"})
    what = "a JSON object" if object_only else "any JSON value"
    schema = '{"type": "object"}' if object_only else "{}"
    return Constraint(_convert({"type": kinds}), what, schema=schema)


def json_schema(schema: Any) -> Constraint:
    """The grammar of a JSON schema; a UsageError names what it cannot enforce."""
    prepared = prepare(schema)
    text = json.dumps(schema)
    if len(text) > MAX_SCHEMA_BYTES:
        raise UsageError(
            f"the JSON schema is {len(text):,} characters, more than {MAX_SCHEMA_BYTES:,}",
            "simplify the schema",
        )
    return Constraint(_convert(prepared), "a JSON schema", schema=text)


def gbnf(text: str, source: str) -> Constraint:
    """A grammar given as GBNF (llama.cpp's form), held to the limits; the model checks that
    it parses."""
    what = f"the grammar in {source}"
    if not text.strip():
        raise UsageError(f"{what} is empty", "write its rules, from root ::=")
    limits.check(text, what)
    return Constraint(text, what, json=False)


def schema_argument(value: str) -> Constraint:
    """``--schema``: ``json``, a file holding a schema, or the schema's JSON itself."""
    if value == ANY_JSON:
        return json_value()
    text = value
    if not value.lstrip().startswith("{"):
        text = _read(
            value,
            MAX_SCHEMA_BYTES,
            "the schema file",
            "give --schema json, a JSON schema file, or the schema's JSON itself",
        )
    try:
        schema = json.loads(text)
    except ValueError as e:
        raise UsageError(
            f"the schema is not JSON: {e}", "give --schema a JSON schema (an object)"
        ) from None
    except RecursionError:
        raise UsageError(
            "the schema nests deeper than JSON can be read here", "give a flatter schema"
        ) from None
    return json_schema(schema)


def grammar_argument(value: str) -> Constraint:
    """``--grammar FILE``: a GBNF grammar file."""
    text = _read(value, limits.MAX_GRAMMAR_BYTES, "the grammar file", "give a GBNF file")
    return gbnf(text, value)


def _read(value: str, cap: int, what: str, hint: str) -> str:
    """A file's text: a regular file of at most ``cap`` bytes, in UTF-8."""
    data = read_capped(Path(value).expanduser(), cap, what, hint)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise UsageError(f"{what} {value} is not UTF-8 text", hint) from None


# Two rules of the converter's that llama.cpp's own converter has since changed, made as
# llama.cpp's are now:
# - its string character lets control characters through, which JSON forbids raw (a parser
#   refuses '"a<0x14>b"');
# - its space is one space at most, where models write JSON across lines with indents: every
#   line break they would write was refused (and sampled again over the whole vocabulary).
_LAX_CHAR = 'char ::= [^"\\\\] |'
_STRICT_CHAR = 'char ::= [^"\\\\\\x7F\\x00-\\x1F] |'
_ONE_SPACE = 'space ::= " "?'
_LINES_SPACE = 'space ::= | " " | "\\n"{1,2} [ \\t]{0,20}'


def _convert(schema: dict[str, Any]) -> str:
    from localrun.backend.llamacpp.schema import json_schema_to_gbnf

    try:
        converted = json_schema_to_gbnf(schema)
        grammar = converted.replace(_LAX_CHAR, _STRICT_CHAR).replace(_ONE_SPACE, _LINES_SPACE)
    except (AssertionError, KeyError, TypeError, ValueError, re.error) as e:
        raise UsageError(
            f"the schema cannot be turned into a grammar: {e}",
            "simplify that part of the schema",
        ) from None
    except RecursionError:
        raise UsageError(
            "the schema cannot be turned into a grammar: it nests too deeply (a pattern's "
            "parentheses, or $refs that lead back to themselves)",
            "simplify the schema",
        ) from None
    limits.check(grammar, "the schema's grammar")
    return grammar
