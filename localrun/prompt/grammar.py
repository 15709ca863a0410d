"""Constraints on an answer: a JSON schema, any JSON, or a GBNF grammar, as llama.cpp's grammar.

The answer is sampled through llama.cpp's grammar sampler (see
:mod:`localrun.backend.llamacpp.sampler`): a token that would break the grammar is never
chosen, so the text parses whatever the model would have liked to write. A JSON schema is
turned into a grammar by the converter that llama-cpp-python ships (the one llama.cpp's own
server uses, in Python); localrun only checks first that the schema asks for nothing the
converter would leave out. An integer's ``minimum`` and ``maximum`` become a grammar of its
digits (:mod:`localrun.prompt.ranges`, as llama.cpp's own converter does now); what a grammar
cannot hold (a fraction's bounds, ``multipleOf``...) is refused, naming the keyword.

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
from localrun.prompt import ranges
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


def json_schema(schema: Any, *, inside: bool = False) -> Constraint:
    """The grammar of a JSON schema; a UsageError names what it cannot enforce.

    The answer ends where the value does. With ``inside`` (a tool call's arguments, which more
    text follows), the value may be followed by the spaces the converter allows.
    """
    prepared = prepare(schema)
    text = json.dumps(schema)
    if len(text) > MAX_SCHEMA_BYTES:
        raise UsageError(
            f"the JSON schema is {len(text):,} characters, more than {MAX_SCHEMA_BYTES:,}",
            "simplify the schema",
        )
    return Constraint(_convert(prepared, end=not inside), "a JSON schema", schema=text)


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
# - its dot (a pattern's ".") lets through the same, and quotes and backslashes, which end
#   the string or start an escape the pattern never meant;
# - its space is one space at most, where models write JSON across lines with indents: every
#   line break they would write was refused (and sampled again over the whole vocabulary).
_LAX_CHAR = 'char ::= [^"\\\\] |'
_STRICT_CHAR = 'char ::= [^"\\\\\\x7F\\x00-\\x1F] |'
_LAX_DOT = "dot ::= [^\\x0A\\x0D]"
_STRICT_DOT = 'dot ::= [^"\\\\\\x7F\\x00-\\x1F]'
_ONE_SPACE = 'space ::= " "?'
_LINES_SPACE = 'space ::= | " " | "\\n"{1,2} [ \\t]{0,20}'


def _convert(schema: dict[str, Any], *, end: bool = True) -> str:
    from localrun.backend.llamacpp.schema import json_schema_to_gbnf

    try:
        converted = ranges.expand(json_schema_to_gbnf(schema))
        grammar = (
            converted.replace(_LAX_CHAR, _STRICT_CHAR)
            .replace(_LAX_DOT, _STRICT_DOT)
            .replace(_ONE_SPACE, _LINES_SPACE)
        )
        if end:
            grammar = ending_at_value(grammar)
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


# -- the answer ends with its value ------------------------------------------------------------
#
# The converter ends every value's rule with ``space`` (so that values inside an object may be
# followed by a line break and an indent), the top-level value's too: a small model then wrote
# its answer's closing brace and up to two line breaks and twenty tabs after it, before the
# grammar let it stop. The top-level value's tail is rewritten without that ``space``: after
# the value only the end of the answer can come. llama.cpp's own converter (json-schema-to-
# grammar.cpp) ends its root the same way as this one; no library strips it.

_ATOM = re.compile(r'"(?:[^"\\]|\\.)*"|\[(?:[^\]\\]|\\.)*\]|[a-zA-Z0-9-]+|\.')
_TIMES = re.compile(r"\s*([?*+]|\{[0-9, ]*\})")

# A sequence's items: (text, repetition, whether the text is a group's inside, unparsed)
_Seq = list[tuple[str, str, bool]]


def ending_at_value(grammar: str) -> str:
    """``grammar`` (the converter's: one ``name ::= body`` a line) with its root's trailing
    ``space`` rules left out, through copies of the rules at its tail (``object-end``...)."""
    rules: dict[str, str] = {}
    for line in grammar.splitlines():
        name, sep, body = line.partition(" ::= ")
        if not sep:
            return grammar  # not the converter's layout: left as it is
        rules[name] = body
    if "root" not in rules or any(
        m.group(0) == "root" for body in rules.values() for m in _ATOM.finditer(body)
    ):
        return grammar  # a root referred to inside itself: the converter never writes one
    made: dict[str, str] = {}
    new: dict[str, str] = {}

    def ending(name: str) -> str:
        if name not in made:
            made[name] = copy = _free_name(f"{name}-end", rules)
            new[copy] = _show(strip(_split(rules[name])))
        return made[name]

    def strip(alternatives: list[_Seq], depth: int = 0) -> list[_Seq]:
        out = []
        for seq in alternatives:
            seq = list(seq)
            if seq and not seq[-1][1]:  # an item repeated may be followed by itself: kept
                item, _, group = seq[-1]
                if group and depth < _MAX_GROUPS:
                    seq[-1] = (_show(strip(_split(item), depth + 1)), "", True)
                elif item == "space":
                    seq.pop()
                elif not group and item in rules:
                    seq[-1] = (ending(item), "", False)
            out.append(seq)
        return out

    try:
        root = _show(strip(_split(rules["root"])))
    except ValueError:
        return grammar
    rules["root"] = root
    rules.update(new)
    return "\n".join(f"{name} ::= {body}" for name, body in sorted(rules.items())) + "\n"


def _free_name(name: str, rules: dict[str, str]) -> str:
    while name in rules:
        name += "-"
    return name


_MAX_GROUPS = 32  # groups within groups at a value's tail followed (the converter writes 1-2)


def _split(body: str) -> list[_Seq]:
    """A rule's body as its alternatives, each a sequence of items; a group's inside is kept
    as text (it may nest a thousand levels deep: a maxLength), split only when needed. A
    ValueError where the body holds what the converter does not write."""
    alternatives: list[_Seq] = [[]]
    at, n = 0, len(body)
    while True:
        while at < n and body[at] in " \t":
            at += 1
        if at >= n:
            return alternatives
        if body[at] == "|":
            alternatives.append([])
            at += 1
            continue
        group = body[at] == "("
        if group:
            start, at = at + 1, _closing(body, at)
            text = body[start:at]
            at += 1
        elif found := _ATOM.match(body, at):
            text, at = found.group(0), found.end()
        else:
            raise ValueError(body[at:])
        times = _TIMES.match(body, at)
        if times:
            at = times.end()
        alternatives[-1].append((text, times.group(1) if times else "", group))


def _closing(body: str, at: int) -> int:
    """Where the group opened at ``at`` closes (literals and classes skipped)."""
    depth = 0
    while at < len(body):
        c = body[at]
        if c in '"[':
            found = _ATOM.match(body, at)
            if not found:
                raise ValueError(body[at:])
            at = found.end()
            continue
        depth += {"(": 1, ")": -1}.get(c, 0)
        if depth == 0:
            return at
        at += 1
    raise ValueError(body)


def _show(alternatives: list[_Seq]) -> str:
    def shown(text: str, times: str, group: bool) -> str:
        return f"({text}){times}" if group else text + times

    return " | ".join(" ".join(shown(*item) for item in seq) for seq in alternatives)
