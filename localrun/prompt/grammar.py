"""Constraints on an answer: a JSON schema, any JSON, or a GBNF grammar, as llama.cpp's grammar.

The answer is sampled through llama.cpp's grammar sampler (see
:mod:`localrun.backend.llamacpp.sampler`): a token that would break the grammar is never
chosen, so the text parses whatever the model would have liked to write. A JSON schema is
turned into a grammar by the converter that llama-cpp-python ships (the one llama.cpp's own
server uses, in Python); localrun only checks first that the schema asks for nothing the
converter would leave out. A grammar cannot count or compare numbers, so a schema with
``minimum`` would get answers that break it: such a schema is refused, naming the keyword.

Every grammar, whatever its source, is held to the limits below before llama.cpp sees it
(:func:`check_gbnf`). They are what llama.cpp's grammar code can hold, measured on
llama-cpp-python 0.3.36 with the demo model's vocabulary:

- its parser recurses once per nesting level of parentheses, about 420 bytes of stack a level:
  19,000 levels crash an 8 MiB stack (SIGSEGV), 2,400 a 1 MiB one. The converter writes
  ``maxLength: N`` as N nested optional groups, so a schema of ``maxLength: 100000`` killed the
  process. llama.cpp itself refuses such a chain past about 1,000 levels, in words that do
  not name the schema: a schema's bounds are capped at :data:`MAX_SCHEMA_REPEAT`, by name;
- ``{m,n}`` in GBNF: past 2,000, llama.cpp refuses ``m`` and silently drops ``n``;
- it compares every new parse stack with every earlier one, so the time to build a grammar
  (and to follow it, each token) grows with the square of its alternatives: 5,000 took 29 ms,
  20,000 0.48 s, 100,000 (a ``format`` enum) minutes of a core;
- its left-recursion check is quadratic in a chain of rules, and recursive: 10,000 rules
  took 1 s, 60,000 took 90 s, 100,000 crashed.
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

ANY_JSON = "json"  # --schema json: any JSON value

MAX_GRAMMAR_BYTES = 256 * 1024  # a grammar's text (a 5,000-value enum's grammar is 130 KB)
MAX_SCHEMA_BYTES = 256 * 1024  # a JSON schema's text, from a file or a request
MAX_RULES = 4_000
MAX_ALTERNATIVES = 5_000
MAX_NESTING = 1_024  # parentheses within parentheses
MAX_REPEAT = 2_000  # llama.cpp's own bound on {m,n}, refused here rather than dropped there
MAX_SCHEMA_REPEAT = 1_000  # maxLength, minItems...: past this llama.cpp refuses the grammar
MAX_ENUM = 4_000  # values of one enum (its grammar has a few alternatives more)

# What the converter enforces; the keywords that only describe (title, examples...) pass.
_ENFORCED = {
    "type", "properties", "required", "additionalProperties", "items", "prefixItems",
    "minItems", "maxItems", "enum", "const", "oneOf", "anyOf", "allOf", "$ref", "$defs",
    "definitions", "pattern", "format", "minLength", "maxLength",
}  # fmt: skip
_DESCRIBING = {
    "title", "description", "examples", "default", "$schema", "$id", "$comment", "deprecated",
    "readOnly", "writeOnly", "$anchor", "contentMediaType", "contentEncoding", "strict",
}  # fmt: skip
_FORMATS = {"date", "time", "date-time", "uuid", "uuid1", "uuid2", "uuid3", "uuid4", "uuid5"}
_TYPES = {"object", "array", "string", "number", "integer", "boolean", "null"}
_MAX_DEPTH = 64


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
    kinds: Any = "object" if object_only else sorted(_TYPES - {"integer"})
    what = "a JSON object" if object_only else "any JSON value"
    schema = '{"type": "object"}' if object_only else "{}"
    return Constraint(_convert({"type": kinds}), what, schema=schema)


def json_schema(schema: Any) -> Constraint:
    """The grammar of a JSON schema; a UsageError names what it cannot enforce."""
    if isinstance(schema, bool) or not isinstance(schema, dict):
        raise UsageError(
            "a JSON schema must be an object", 'give one such as {"type": "object", ...}'
        )
    _check(schema, "$", 0)
    text = json.dumps(schema)
    if len(text) > MAX_SCHEMA_BYTES:
        raise UsageError(
            f"the JSON schema is {len(text):,} characters, more than {MAX_SCHEMA_BYTES:,}",
            "simplify the schema",
        )
    return Constraint(_convert(schema), "a JSON schema", schema=text)


def gbnf(text: str, source: str) -> Constraint:
    """A grammar given as GBNF (llama.cpp's form), held to the limits; the model checks that
    it parses."""
    what = f"the grammar in {source}"
    if not text.strip():
        raise UsageError(f"{what} is empty", "write its rules, from root ::=")
    check_gbnf(text, what)
    return Constraint(text, what, json=False)


def check_gbnf(text: str, what: str = "the grammar") -> None:
    """Refuse, naming the limit, a grammar that llama.cpp's grammar code cannot hold: too
    large, too many rules or alternatives, nested too deeply, or repeating past its bound.

    A single pass over the text, as llama.cpp's parser reads it: string literals, character
    classes and ``<token>`` references are skipped over (escapes included), comments too.
    """
    if len(text) > MAX_GRAMMAR_BYTES:
        raise UsageError(
            f"{what} is {len(text):,} characters, more than {MAX_GRAMMAR_BYTES:,}",
            "simplify the grammar",
        )
    rules = alternatives = depth = deepest = 0
    closers = {'"': '"', "[": "]", "<": ">"}
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c in closers:
            end = closers[c]
            i += 1
            while i < n and text[i] != end:
                i += 2 if text[i] == "\\" else 1
        elif c == "#":
            while i < n and text[i] != "\n":
                i += 1
        elif c == "(":
            depth += 1
            deepest = max(deepest, depth)
        elif c == ")":
            depth -= 1
        elif c == "|":
            alternatives += 1
        elif text.startswith("::=", i):
            rules += 1
            i += 2
        elif c == "{":
            close = text.find("}", i)
            bounds = re.findall(r"\d+", text[i : close if close > 0 else n])
            if any(int(b) > MAX_REPEAT for b in bounds):
                raise UsageError(
                    f"{what} repeats an item {text[i : close + 1][:40]} times: "
                    f"llama.cpp can hold at most {{{MAX_REPEAT}}}",
                    "lower the bound, or use * or + for no bound",
                )
        i += 1
    for count, limit, name in (
        (rules, MAX_RULES, "rules"),
        (alternatives, MAX_ALTERNATIVES, "alternatives"),
        (deepest, MAX_NESTING, "levels of parentheses"),
    ):
        if count > limit:
            raise UsageError(
                f"{what} has {count:,} {name}, more than the {limit:,} llama.cpp can hold here",
                "simplify the grammar",
            )
    root = re.search(r"^\s*root\s*::=(?:\s|#[^\n]*)*", text, re.MULTILINE)
    if root and re.match(r"(?:[a-zA-Z0-9-]+\s*::=|$)", text[root.end() :]):
        raise UsageError(
            f"{what} allows only an empty answer: its root rule is empty",
            'give root what the answer must be, such as root ::= "yes" | "no"',
        )


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
    return json_schema(schema)


def grammar_argument(value: str) -> Constraint:
    """``--grammar FILE``: a GBNF grammar file."""
    return gbnf(_read(value, MAX_GRAMMAR_BYTES, "the grammar file", "give a GBNF file"), value)


def _read(value: str, cap: int, what: str, hint: str) -> str:
    """A file's text: a regular file of at most ``cap`` bytes, in UTF-8."""
    data = read_capped(Path(value).expanduser(), cap, what, hint)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise UsageError(f"{what} {value} is not UTF-8 text", hint) from None


def _check(schema: Any, where: str, depth: int) -> None:
    """Refuse what the converter would leave out, naming the keyword and where it is."""
    if depth > _MAX_DEPTH:
        raise UsageError(f"the schema nests deeper than {_MAX_DEPTH} levels at {where}")
    if isinstance(schema, bool):
        return  # true: anything; false: nothing (in additionalProperties, say)
    if not isinstance(schema, dict):
        raise UsageError(f"the schema at {where} is not a schema (an object)")
    for key, value in schema.items():
        if key in _DESCRIBING:
            continue
        if key not in _ENFORCED:
            raise UsageError(
                f"the schema's '{key}' (at {where}) cannot be enforced by a grammar",
                f"remove '{key}' from the schema, and check that part of the answer yourself",
            )
        if key in _BOUNDS:
            _check_bound(key, value, where)
        elif key == "pattern" and isinstance(value, str):
            for found in re.finditer(r"\{\s*(\d+)\s*(?:,\s*(\d*)\s*)?\}", value):
                if any(b and int(b) > MAX_SCHEMA_REPEAT for b in found.groups()):
                    raise UsageError(
                        f"the schema's pattern (at {where}) repeats {found.group(0)} times: a "
                        f"grammar can enforce at most {{{MAX_SCHEMA_REPEAT}}}",
                        "lower the bound, or use * or + and check the length yourself",
                    )
        elif key in ("enum", "const"):
            values = value if key == "enum" and isinstance(value, list) else [value]
            if len(values) > MAX_ENUM:
                raise UsageError(
                    f"the schema's enum (at {where}) has {len(values):,} values, more than "
                    f"the {MAX_ENUM:,} a grammar can hold here",
                    "offer fewer values, or use a pattern",
                )
        if key == "format" and value not in _FORMATS:
            raise UsageError(
                f"the schema's format '{value}' (at {where}) cannot be enforced by a grammar",
                "formats that can: " + ", ".join(sorted(_FORMATS)) + "; or use a pattern",
            )
        if key == "type":
            kinds = value if isinstance(value, list) else [value]
            unknown = [k for k in kinds if k not in _TYPES]
            if unknown:
                raise UsageError(
                    f"the schema's type {unknown[0]!r} (at {where}) is not a JSON schema type",
                    "types: " + ", ".join(sorted(_TYPES)),
                )
        if key in ("properties", "$defs", "definitions"):
            if not isinstance(value, dict):
                raise UsageError(f"the schema's '{key}' (at {where}) must be an object")
            for name, sub in value.items():
                _check(sub, f"{where}.{key}.{name}", depth + 1)
        elif key in ("items", "additionalProperties"):
            _check(value, f"{where}.{key}", depth + 1)
        elif key in ("prefixItems", "oneOf", "anyOf", "allOf"):
            if not isinstance(value, list):
                raise UsageError(f"the schema's '{key}' (at {where}) must be a list of schemas")
            for i, sub in enumerate(value):
                _check(sub, f"{where}.{key}[{i}]", depth + 1)


_BOUNDS = ("minLength", "maxLength", "minItems", "maxItems")


def _check_bound(key: str, value: Any, where: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise UsageError(f"the schema's '{key}' (at {where}) must be a whole number, 0 or more")
    if value > MAX_SCHEMA_REPEAT:
        raise UsageError(
            f"the schema's {key} {value:,} (at {where}) is more than the {MAX_SCHEMA_REPEAT:,} "
            "a grammar can enforce",
            f"lower {key} to at most {MAX_SCHEMA_REPEAT:,}, or drop it and check the length "
            "yourself",
        )


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
    check_gbnf(grammar, "the schema's grammar")
    return grammar
