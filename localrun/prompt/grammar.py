"""Constraints on an answer: a JSON schema, any JSON, or a GBNF grammar, as llama.cpp's grammar.

The answer is sampled through llama.cpp's grammar sampler (see
:mod:`localrun.backend.llamacpp.sampler`): a token that would break the grammar is never
chosen, so the text parses whatever the model would have liked to write. A JSON schema is
turned into a grammar by the converter that llama-cpp-python ships (the one llama.cpp's own
server uses, in Python); localrun only checks first that the schema asks for nothing the
converter would leave out. A grammar cannot count or compare numbers, so a schema with
``minimum`` would get answers that break it: such a schema is refused, naming the keyword.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from localrun.backend import SamplingParams
from localrun.errors import UsageError

ANY_JSON = "json"  # --schema json: any JSON value

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
    return Constraint(_convert(schema), "a JSON schema", schema=json.dumps(schema))


def gbnf(text: str, source: str) -> Constraint:
    """A grammar given as GBNF (llama.cpp's form); the model checks that it parses."""
    if not text.strip():
        raise UsageError(f"the grammar in {source} is empty", "write its rules, from root ::=")
    return Constraint(text, f"the grammar in {source}", json=False)


def schema_argument(value: str) -> Constraint:
    """``--schema``: ``json``, a file holding a schema, or the schema's JSON itself."""
    if value == ANY_JSON:
        return json_value()
    text = value
    if not value.lstrip().startswith("{"):
        path = Path(value).expanduser()
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            reason = getattr(e, "strerror", None) or "not UTF-8 text"
            raise UsageError(
                f"cannot read the schema file {value}: {reason}",
                "give --schema json, a JSON schema file, or the schema's JSON itself",
            ) from None
    try:
        schema = json.loads(text)
    except ValueError as e:
        raise UsageError(
            f"the schema is not JSON: {e}", "give --schema a JSON schema (an object)"
        ) from None
    return json_schema(schema)


def grammar_argument(value: str) -> Constraint:
    """``--grammar FILE``: a GBNF grammar file."""
    path = Path(value).expanduser()
    try:
        return gbnf(path.read_text(encoding="utf-8"), value)
    except (OSError, UnicodeDecodeError) as e:
        reason = getattr(e, "strerror", None) or "not UTF-8 text"
        raise UsageError(
            f"cannot read the grammar file {value}: {reason}", "give a GBNF file"
        ) from None


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
        return converted.replace(_LAX_CHAR, _STRICT_CHAR).replace(_ONE_SPACE, _LINES_SPACE)
    except (AssertionError, KeyError, TypeError, ValueError, re.error) as e:
        raise UsageError(
            f"the schema cannot be turned into a grammar: {e}",
            "simplify that part of the schema",
        ) from None
    except RecursionError:
        raise UsageError(
            "the schema cannot be turned into a grammar: it refers to itself too deeply",
            "simplify the schema",
        ) from None
