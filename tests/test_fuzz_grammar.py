"""Random and hostile JSON schemas (``--schema``) and GBNF grammars (``--grammar FILE``) on the
CLI, on a real tiny model.

Every case must end in a correct answer or a one-line error with a hint (exit 1, or 2 for a
usage error): never a signal, a hang, a traceback, "this is a bug", a refusal in a Python
exception's words or in the words of a grammar the user never wrote, or more than 1 GB of
memory. A correct answer is JSON valid per its schema (checked with ``jsonschema`` when the
schema is a valid JSON Schema), or text its grammar matches (checked against a regular
expression built beside each random regular grammar). An answer cut off by ``--max-tokens``
is streamed before its error: that output is allowed.

The cases come from the session's seed (``LOCALRUN_FUZZ_SEED`` replays one: pytest's header
and a failure name it) and run in forked children, one per core (``tests/fuzz_harness.py``):
the values around each limit of :mod:`localrun.prompt.grammar`
(rules, alternatives, nesting, ``{m,n}``, schema bounds, enums, depth), wrong and hostile
values in every schema keyword, odd bytes in grammar files, and random schemas and grammars
built from every construct.
"""

from __future__ import annotations

import collections
import json
import os
import random
import re
import select
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
from referencing.exceptions import Unresolvable

from localrun.prompt.gbnf import (
    MAX_ALTERNATIVES,
    MAX_GRAMMAR_BYTES,
    MAX_NESTING,
    MAX_REPEAT,
    MAX_RULES,
)
from localrun.prompt.grammar import MAX_SCHEMA_BYTES
from localrun.prompt.schema import MAX_ENUM, MAX_SCHEMA_REPEAT
from tests.fuzz_harness import JOBS, fuzz_seed, replay

RANDOM_SCHEMAS = 90
RANDOM_GRAMMARS = 80
# One thread and a small context: a case runs on each core, and a case's time is mostly the
# model's first decode.
RUN_FLAGS = ["--max-tokens", "40", "--threads", "1", "--ctx", "256"]
CASE_TIMEOUT = 10  # seconds; the slowest correct case takes about 1 s
MEMORY_MB = 1536  # each child's data cap, so that a runaway case cannot take the machine
PEAK_MB = 1024
PROMPT = "the sky is blue"
NOTHING = "(?!)"  # the regex of a grammar no text can satisfy


@dataclass
class Case:
    """One command line, and how to check its answer when it exits 0."""

    args: list[str]
    note: str
    schema_text: str | None = None  # the --schema value, when the case gives one
    regex: str | None = None  # what a complete --grammar answer must fully match


# -- random JSON values and schemas ---------------------------------------------------------

NAMES = ["a", "b", "name", "id", "日本", "with space", 'q"uote', "back\\slash", "", "\u2028", "é"]
STRINGS = ["", "x", "yes", "no", "日本語", "é", 'q"', "back\\", "tab\t", "nl\n", "🙂"]
PATTERNS = [
    "^[a-z]{1,6}$",
    "^\\d{3}-\\d{2}$",
    "^(yes|no)$",
    "^[A-Z][a-z]*$",
    "^é+$",
    '^[^"\\\\]{0,5}$',
    "^\\w+$",
    "^a?b*c{2}$",
    "^.{0,4}$",
    "^(ab|cd)+$",
    "^[日本]{2}$",
    "^x\\.y$",
]
FORMATS = ["date", "time", "date-time", "uuid"]


def _value(rng: random.Random, depth: int = 0) -> Any:
    kind = rng.randrange(9 if depth < 2 else 7)
    if kind == 0:
        return None
    if kind == 1:
        return rng.random() < 0.5
    if kind == 2:
        return rng.randint(-1000, 1000)
    if kind == 3:
        return rng.choice([0.5, -2.25, 1e10, 3.0])
    if kind in (4, 5, 6):
        return rng.choice(STRINGS)
    if kind == 7:
        return [_value(rng, depth + 1) for _ in range(rng.randint(0, 3))]
    return {rng.choice(NAMES): _value(rng, depth + 1) for _ in range(rng.randint(0, 2))}


class SchemaMaker:
    """Random schemas from every construct the converter takes; ``$defs`` gathered on the way."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.defs: dict[str, Any] = {}

    def top(self) -> dict[str, Any]:
        schema = self.schema(0)
        return {"$defs": self.defs, **schema} if self.defs else schema

    def schema(self, depth: int) -> dict[str, Any]:
        rng = self.rng
        leaves = ["string", "integer", "number", "boolean", "null", "enum", "const", "empty"]
        inner = ["object", "object", "array", "anyOf", "oneOf", "allOf", "ref", "types"]
        kind = rng.choice(leaves + (inner if depth < 4 else []))
        schema: dict[str, Any]
        if kind == "string":
            schema = self.string()
        elif kind in ("integer", "number", "boolean", "null"):
            schema = {"type": kind}
        elif kind == "enum":
            schema = {"enum": [_value(rng) for _ in range(rng.randint(1, 5))]}
        elif kind == "const":
            schema = {"const": _value(rng)}
        elif kind == "empty":
            schema = {}
        elif kind == "object":
            schema = self.object(depth)
        elif kind == "array":
            schema = self.array(depth)
        elif kind in ("anyOf", "oneOf"):
            schema = {kind: [self.schema(depth + 1) for _ in range(rng.randint(1, 3))]}
        elif kind == "allOf":
            schema = {"allOf": [self.object_part(depth + 1) for _ in range(rng.randint(1, 3))]}
        elif kind == "types":
            kinds = ["string", "integer", "number", "boolean", "null", "object", "array"]
            schema = {"type": rng.sample(kinds, rng.randint(1, 3))}
        else:
            schema = {"$ref": "#/$defs/" + self.definition(depth + 1)}
        if rng.random() < 0.2:
            schema["description"] = rng.choice(STRINGS)
        return schema

    def string(self) -> dict[str, Any]:
        rng = self.rng
        schema: dict[str, Any] = {"type": "string"}
        choice = rng.randrange(4)
        if choice == 1:
            low = rng.randint(0, 4)
            schema["minLength"] = low
            if rng.random() < 0.7:
                schema["maxLength"] = low + rng.randint(0, 6)
        elif choice == 2:
            schema["pattern"] = rng.choice(PATTERNS)
        elif choice == 3:
            schema["format"] = rng.choice(FORMATS)
        return schema

    def object(self, depth: int) -> dict[str, Any]:
        rng = self.rng
        names = rng.sample(NAMES, rng.randint(0, 4))
        schema: dict[str, Any] = {
            "type": "object",
            "properties": {n: self.schema(depth + 1) for n in names},
        }
        if names and rng.random() < 0.7:
            schema["required"] = rng.sample(names, rng.randint(1, len(names)))
        extra = rng.randrange(4)
        if extra == 1:
            schema["additionalProperties"] = False
        elif extra == 2:
            schema["additionalProperties"] = True
        elif extra == 3:
            schema["additionalProperties"] = self.schema(depth + 1)
        return schema

    def array(self, depth: int) -> dict[str, Any]:
        rng = self.rng
        schema: dict[str, Any] = {"type": "array"}
        if rng.random() < 0.3:
            schema["prefixItems"] = [self.schema(depth + 1) for _ in range(rng.randint(1, 3))]
        else:
            schema["items"] = self.schema(depth + 1)
            low = rng.randint(0, 3)
            if rng.random() < 0.5:
                schema["minItems"] = low
            if rng.random() < 0.5:
                schema["maxItems"] = low + rng.randint(0, 3)
        return schema

    def object_part(self, depth: int) -> dict[str, Any]:
        names = self.rng.sample(NAMES, self.rng.randint(1, 3))
        part = {"type": "object", "properties": {n: self.schema(depth + 1) for n in names}}
        if self.rng.random() < 0.5:
            part["required"] = names[:1]
        return part

    def definition(self, depth: int) -> str:
        name = f"d{len(self.defs)}"
        self.defs[name] = {}  # taken before it is built: a ref inside may lead back to it
        if self.rng.random() < 0.4:
            # Recursive: a list that may hold itself, ending in null.
            self.defs[name] = {
                "type": "object",
                "properties": {
                    "v": self.schema(depth + 1),
                    "next": {"anyOf": [{"$ref": f"#/$defs/{name}"}, {"type": "null"}]},
                },
                "required": ["v", "next"] if self.rng.random() < 0.5 else ["v"],
            }
        else:
            self.defs[name] = self.schema(depth)
        return name


def _nested_schema(depth: int, rng: random.Random) -> str:
    """A schema ``depth`` subschemas deep, as text (json.dumps recurses once a level)."""
    opens, closes = [], []
    for _ in range(depth):
        form = rng.randrange(3)
        if form == 0:
            opens.append('{"type": "object", "properties": {"a": ')
            closes.append('}, "required": ["a"]}')
        elif form == 1:
            opens.append('{"type": "array", "items": ')
            closes.append(', "maxItems": 1}')
        else:
            opens.append('{"anyOf": [')
            closes.append(', {"type": "null"}]}')
    return "".join(opens) + '{"type": "integer"}' + "".join(reversed(closes))


BAD_PATTERNS = [
    "^(a+)+$",
    "^(a|a)*$",
    "^(a*)*b$",
    "^a{1000000}$",
    f"^a{{{MAX_SCHEMA_REPEAT}}}$",
    f"^a{{{MAX_SCHEMA_REPEAT + 1}}}$",
    f"^a{{0,{MAX_SCHEMA_REPEAT}}}$",
    f"^(a{{{MAX_SCHEMA_REPEAT}}}){{{MAX_SCHEMA_REPEAT}}}$",
    "^((((((((((a{0,9}){0,9}){0,9}){0,9}){0,9}){0,9}){0,9}){0,9}){0,9}){0,9})$",
    "^" + "(" * 2000 + "a" + ")" * 2000 + "$",
    "^" + "a" * 50_000 + "$",
    "^" + "|".join(f"w{i}" for i in range(6000)) + "$",
    "^(a$",
    "^a)$",
    "^[a$",
    "^a{2,1}$",
    "^*$",
    "^a**$",
    "^\\d+$",
    "^[\\w.-]+@[a-z]+\\.[a-z]{2,3}$",
    "^\\$",
    "^(?=a)a$",
    "^(a)\\1$",
    "^[z-a]$",
    "^\\p{L}$",
    "^[日-本]+$",
    "^\ud800$",
    "^\\ud800$",
    "^\\u0000$",
    "^a{,3}$",
    "[a-z]+",
    "",
    "^$",
]
WRONG_KEYWORDS: list[tuple[str, Any]] = [
    ("type", 5),
    ("type", "strin"),
    ("type", ["string", 5]),
    ("type", []),
    ("type", ["string", "string"]),
    ("properties", []),
    ("properties", {"a": 5}),
    ("properties", {"a": True}),
    ("properties", {"a": False}),
    ("items", [{"type": "null"}]),
    ("items", {}),
    ("items", True),
    ("items", False),
    ("prefixItems", []),
    ("prefixItems", {}),
    ("required", 5),
    ("required", ["zz"]),
    ("enum", 5),
    ("enum", []),
    ("enum", [{"a": 1}, [1, "2"]]),
    ("const", None),
    ("const", {"a": [1, {"b": "c"}]}),
    ("additionalProperties", 5),
    ("additionalProperties", {"type": "integer"}),
    ("$ref", 5),
    ("$ref", "#/$defs/none"),
    ("$ref", "#"),
    ("$ref", "http://example.com/s.json"),
    ("$defs", []),
    ("$defs", {"x": 5}),
    ("allOf", {}),
    ("allOf", []),
    ("allOf", [{"type": "string"}]),
    ("anyOf", []),
    ("anyOf", [5]),
    ("oneOf", []),
    ("format", 5),
    ("format", "email"),
    ("pattern", 5),
    ("minimum", 0),
    ("not", {}),
    ("", {}),
    ("description", "only words"),
]


PROPERTY = '{"type": "object", "properties": {"KEY": {"type": "integer"}}, "required": ["KEY"]}'


def _hostile_schemas(rng: random.Random) -> list[tuple[str, str]]:
    """(note, schema text): bounds, enums, depth, patterns, types, surrogates, broken JSON."""
    found: list[tuple[str, str]] = []

    def add(note: str, schema: Any) -> None:
        found.append((note, schema if isinstance(schema, str) else json.dumps(schema)))

    limit = MAX_SCHEMA_REPEAT
    near: list[Any] = [limit - 1, limit, limit + 1, 2000, 2001, 10**5, 10**9, 10**400]
    wrong: list[Any] = [-1, -(10**9), 1.5, 1.0, True, False, "10", None, [], {}]
    for key in ("minLength", "maxLength", "minItems", "maxItems"):
        for bound in near + rng.sample(wrong, 3):
            if key.endswith("Length"):
                schema: dict[str, Any] = {"type": "string", key: bound}
            else:
                schema = {"type": "array", "items": {"type": "null"}, key: bound}
            add(f"{key} {bound!r:.20}", schema)
    for bound in ("NaN", "Infinity", "-0", "1e400"):
        add(f"maxLength {bound}", '{"type": "string", "maxLength": ' + bound + "}")
    add(
        "bounds in bounds",
        {"type": "array", "items": {"type": "string", "maxLength": limit}, "maxItems": limit},
    )
    add("minLength over maxLength", {"type": "string", "minLength": 5, "maxLength": 3})
    add(
        "minItems over maxItems",
        {"type": "array", "items": {"type": "null"}, "minItems": 4, "maxItems": 2},
    )
    for n in (MAX_ENUM - 1, MAX_ENUM, MAX_ENUM + 1, 10**5):
        add(f"enum of {n} strings", {"enum": [f"v{i}" for i in range(n)]})
    add(f"enum of {MAX_ENUM} numbers", {"enum": list(range(MAX_ENUM))})
    add("enum of long strings", {"enum": ["x" * 20_000, "y" * 20_000]})
    add("const of 100,000 characters", {"const": "z" * 100_000})
    add("const over the size cap", {"const": "z" * MAX_SCHEMA_BYTES})
    add("schema over the size cap", {"type": "string", "description": "d" * MAX_SCHEMA_BYTES})
    for depth in (63, 64, 65, 66, 500):
        add(f"nesting {depth}", _nested_schema(depth, rng))
    for depth in (5_000, 100_000):
        add(f"const nested {depth}", '{"const": ' + "[" * depth + "]" * depth + "}")
        add(f"keys nested {depth}", '{"a": ' * depth + "1" + "}" * depth)
    for pattern in BAD_PATTERNS:
        add(f"pattern {pattern[:30]!r}", {"type": "string", "pattern": pattern})
    for key, value in WRONG_KEYWORDS:
        # With "type": "object" beside it or alone: the converter reads them differently.
        schema = {key: value} if rng.random() < 0.5 else {"type": "object", key: value}
        add(f"{key} {json.dumps(value)[:30]}", schema)
    add("recursive ref to itself", {"$defs": {"a": {"$ref": "#/$defs/a"}}, "$ref": "#/$defs/a"})
    add(
        "mutual refs",
        {"$defs": {"a": {"$ref": "#/$defs/b"}, "b": {"$ref": "#/$defs/a"}}, "$ref": "#/$defs/a"},
    )
    add("ref to root", {"type": "object", "properties": {"a": {"$ref": "#"}}})
    tree = {
        "type": "object",
        "properties": {"kids": {"type": "array", "items": {"$ref": "#/$defs/t"}, "maxItems": 2}},
        "required": ["kids"],
    }
    add("recursive tree", {"$defs": {"t": tree}, "$ref": "#/$defs/t"})
    add("nullable string with maxLength", {"type": ["string", "null"], "maxLength": 3})
    add("pattern with maxLength", {"type": "string", "pattern": "^a*$", "maxLength": 2})
    add("const beside type", {"type": "integer", "const": "a"})
    add("required without properties", {"type": "object", "required": ["a"]})
    add("overlapping oneOf", {"oneOf": [{"type": "integer"}, {"type": "number"}]})
    # Escapes in the schema's JSON text: lone and paired surrogates, NUL, separators.
    for text in ["\\ud800", "\\udfff", "a\\ud800b", "\\ud83d\\ude00", "\\u0000", "\\u2028"]:
        add(f"const {text}", '{"const": "' + text + '"}')
        where = rng.choice(["enum", "property"])
        if where == "enum":
            add(f"enum {text}", '{"enum": ["' + text + '", "x"]}')
        else:
            add(f"property {text}", PROPERTY.replace("KEY", text))
    for text in ["{", '{"a":}', '{"type": "string"} x', "{\x00}", '{"type": "null", "type": 5}']:
        add(f"text {text[:12]!r}", text)
    return found


# -- random GBNF, with a regular expression beside it ---------------------------------------

ALPHABET = 'abcxyz019 é日🙂"\\\n\t[]().|*+?{}#:='


def _gbnf_escape(c: str, in_class: bool) -> str:
    escapes = {"\\": "\\\\", "\n": "\\n", "\t": "\\t", "\r": "\\r"}
    escapes.update({"]": "\\]", "[": "\\["} if in_class else {'"': '\\"'})
    return escapes.get(c, c)


class GrammarMaker:
    """A random regular grammar: its rules as GBNF, and one regular expression for the whole."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.rules: list[str] = []
        self.bodies: dict[str, str] = {}
        self.regexes: dict[str, str] = {}

    def literal(self) -> tuple[str, str]:
        text = "".join(self.rng.choice(ALPHABET) for _ in range(self.rng.randint(1, 4)))
        body = ""
        for c in text:
            style = self.rng.randrange(6)
            if style == 0 and ord(c) < 0x100:
                body += f"\\x{ord(c):02X}"
            elif style == 1 and ord(c) < 0x10000:
                body += f"\\u{ord(c):04x}"
            elif style == 2:
                body += f"\\U{ord(c):08X}"
            else:
                body += _gbnf_escape(c, in_class=False)
        return f'"{body}"', re.escape(text)

    def char_class(self) -> tuple[str, str]:
        """A class of chars and ranges; a '-' comes last, a '^' never first: GBNF has no
        escape for either, so each stands for itself only there."""
        rng = self.rng
        parts, regex = [], []
        for _ in range(rng.randint(1, 3)):
            a = rng.choice(ALPHABET)
            b = chr(ord(a) + rng.randint(0, 5))
            if rng.random() < 0.4 and b not in "-^":
                parts.append(_gbnf_escape(a, True) + "-" + _gbnf_escape(b, True))
                regex.append(re.escape(a) + "-" + re.escape(b))
            else:
                parts.append(_gbnf_escape(a, True))
                regex.append(re.escape(a))
        for c in "^-":
            if rng.random() < 0.15:
                parts.append(c)
                regex.append(re.escape(c))
        negated = "^" if rng.random() < 0.3 else ""
        return f"[{negated}{''.join(parts)}]", f"[{negated}{''.join(regex)}]"

    def node(self, depth: int, repeats: int = 0) -> tuple[str, str]:
        """A random item; ``repeats``: repetitions around it already (llama.cpp's grammar
        stacks grow with nested repetitions: two levels are plenty for the random ones)."""
        rng = self.rng
        kind = rng.randrange(8 if depth < 4 else 3)
        if kind == 0:
            return self.literal()
        if kind == 1:
            return self.char_class()
        if kind == 2:
            if self.rules and rng.random() < 0.6:
                name = rng.choice(self.rules)
                return name, f"(?:{self.regexes[name]})"
            return ".", "(?s:.)"
        if kind == 3:
            parts = [self.node(depth + 1, repeats) for _ in range(rng.randint(2, 3))]
            return " ".join(g for g, _ in parts), "".join(r for _, r in parts)
        if kind == 4 or repeats >= 2:
            parts = [self.node(depth + 1, repeats) for _ in range(rng.randint(2, 4))]
            gbnf = "(" + " | ".join(g for g, _ in parts) + ")"
            return gbnf, "(?:" + "|".join(r for _, r in parts) + ")"
        inner_g, inner_r = self.node(depth + 1, repeats + 1)
        op = rng.choice(["*", "+", "?", "{0,3}", "{2}", "{1,}", "{1,2}"])
        return f"({inner_g}){op}", f"(?:{inner_r}){op}"

    def grammar(self) -> tuple[str, str]:
        rng = self.rng
        for i in range(rng.randint(0, 3)):
            body, regex = self.node(1, repeats=1)  # a rule may be used inside a repetition
            name = rng.choice(["r", "rule-", "x9-"]) + str(i)
            self.rules.append(name)
            self.bodies[name] = body
            self.regexes[name] = regex
        body, regex = self.node(0, repeats=1)
        lines = [f"root ::= {body}"] + [f"{n} ::= {self.bodies[n]}" for n in self.rules]
        rng.shuffle(lines)
        if rng.random() < 0.3:
            lines.insert(rng.randrange(len(lines) + 1), "# a comment ::= ( | [")
        text = "\n".join(lines) + rng.choice(["\n", "", "\n\n", "  # end\n"])
        if rng.random() < 0.2:
            text = text.replace("\n", "\r\n")
        return text, regex


def _hostile_grammars() -> list[tuple[str, bytes, str | None]]:
    """(note, file bytes, regex or None): the limits, recursion, broken syntax, escapes, odd
    bytes."""
    found: list[tuple[str, bytes, str | None]] = []

    def add(note: str, text: str | bytes, regex: str | None = None) -> None:
        data = text.encode("utf-8", "surrogatepass") if isinstance(text, str) else text
        found.append((note, data, regex))

    for depth in (MAX_NESTING - 1, MAX_NESTING, MAX_NESTING + 1, 2000, 100_000):
        add(f"nesting {depth}", "root ::= " + "(" * depth + '"a"' + ")" * depth + "\n", "a")
    add(
        f"nesting {MAX_NESTING} of options",
        "root ::= " + '("a" ' * MAX_NESTING + ")?" * MAX_NESTING + "\n",
    )
    for n in (MAX_ALTERNATIVES - 1, MAX_ALTERNATIVES, MAX_ALTERNATIVES + 1, 60_000):
        words = [f'"{i}"' for i in range(n + 1)]  # n bars
        add(f"{n} alternatives", "root ::= " + "|".join(words) + "\n", r"\d+")
    for n in (MAX_RULES - 1, MAX_RULES, MAX_RULES + 1, 20_000):
        chain = ["root ::= r1"] + [f'r{i} ::= r{i + 1} "a"' for i in range(1, n - 1)]
        add(f"chain of {n} rules", "\n".join([*chain, f'r{n - 1} ::= "b"']) + "\n", "ba*")
        flat = [f'r{i} ::= "{i}"' for i in range(1, n)]
        add(f"{n} rules", "\n".join(["root ::= r1", *flat]) + "\n", "1")
    for bound in (MAX_REPEAT - 1, MAX_REPEAT, MAX_REPEAT + 1, 10**9, int("9" * 30)):
        for form in (f"{{{bound}}}", f"{{0,{bound}}}", f"{{{bound},}}"):
            matches = f"[a-z]{form}" if bound <= MAX_REPEAT else NOTHING  # past it: refused
            add(form, f"root ::= [a-z]{form}\n", matches)
    add(
        "nested repetitions at the limit", f"root ::= ([a-z]{{0,{MAX_REPEAT}}}){{0,{MAX_REPEAT}}}\n"
    )
    add("nested small repetitions", "root ::= (((([a]{0,20}){0,20}){0,20}){0,20})\n", "a*")
    # Alternatives that match the same character, each repetition of them followed at once:
    # two of the fuzz run's random grammars, one token's check 193 s (now refused).
    add("alike alternatives within repetitions",
        'root ::= "{" (((. | . | "a" | .) | (. | .) | (. | [^?])){0,3}){0,3}\n')  # fmt: skip
    add("alike alternatives by rule",
        'r0 ::= ("b" | (. | [^|+] | .))\nr1 ::= ([^z|] | [^[] "c" | r0){0,3}\n'
        "root ::= ((. | (r0 | r1 | r0) | r1)){1,2} r1 r1\n")  # fmt: skip
    add("repetition {2,1}", "root ::= [a-z]{2,1}\n", NOTHING)
    for bad in ("{,5}", "{ 3 }", "{}", "{a}", "{-1}", "{3", "{1,2,3}"):
        add(f"repetition {bad}", f"root ::= [a-z]{bad}\n")
    for note, text, regex in [
        ("left recursion", 'root ::= root "a" | "b"\n', "ba*"),
        ("indirect left recursion", 'root ::= x "a" | "b"\nx ::= root "c"\n', "b(?:ca)*"),
        ("right recursion", 'root ::= "a" root | "b"\n', "a*b"),
        ("balanced parentheses", 'root ::= "(" root ")" | "x"\n', r"\(*x\)*"),
        ("only recursion", 'root ::= "a" root\n', NOTHING),
        ("undefined rule", 'root ::= missing "a"\n', None),
        ("no root", 'start ::= "a"\n', None),
        ("empty root", "root ::=\n", ""),
        ("empty root then a rule", 'root ::=\nx ::= "a"\n', ""),
        ("root of an empty string", 'root ::= ""\n', ""),
        ("empty alternative", 'root ::= "a" | \n', "a?"),
        ("root twice", 'root ::= "a"\nroot ::= "b"\n', "a|b"),
        ("only comments", "# nothing\n# here\n", None),
        ("comment after root", 'root ::= "a" # ::= ( [ "\n', "a"),
        ("blank", "   \n\t\n", None),
        ("unterminated string", 'root ::= "abc\n', None),
        ("unterminated class", "root ::= [abc\n", None),
        ("unbalanced open", 'root ::= ("a"\n', None),
        ("unbalanced close", 'root ::= "a")\n', None),
        ("trailing backslash", 'root ::= "abc\\', None),
        ("bad hex escape", 'root ::= "\\xZZ"\n', None),
        ("short unicode escape", 'root ::= "\\u12"\n', None),
        ("surrogate escape", 'root ::= "\\ud800"\n', "\ud800"),
        ("escape past unicode", 'root ::= "\\U00110000"\n', NOTHING),
        ("NUL escape", 'root ::= "\\x00" "a"\n', "\x00a"),
        ("reversed range", "root ::= [z-a]\n", NOTHING),
        ("class of escapes", 'root ::= [\\]\\\\"\\[] [^\\n]\n', '[\\]\\\\"\\[][^\\n]'),
        ("any char", "root ::= . . .\n", "(?s:...)"),
        ("token reference", "root ::= <[1234]> | <unk>\n", None),
        ("bad rule name", 'root ::= a_b\na_b ::= "x"\n', None),
        ("no ::=", 'root "a"\n', None),
        ("operator alone", "root ::= *\n", None),
        ("double operator", 'root ::= "a"**\n', "a*"),
        ("unicode rule name", 'root ::= 日本\n日本 ::= "x"\n', "x"),
        ("very long line", "root ::= " + " ".join(f'"{i}"' for i in range(30_000)) + "\n", None),
        ("very long literal", 'root ::= "' + "a" * 200_000 + '"\n', "a{200000}"),
        ("over the size cap", 'root ::= "a"\n#' + "c" * MAX_GRAMMAR_BYTES + "\n", "a"),
    ]:
        add(note, text, regex)
    add("BOM", b'\xef\xbb\xbfroot ::= "a"\n', "a")
    add("invalid UTF-8 in a literal", b'root ::= "a\xff\xfe"\n')
    add("invalid UTF-8 in a comment", b'# \xc3\x28\nroot ::= "a"\n', "a")
    add("truncated UTF-8", b'root ::= "\xe6\x97"\n')
    add("surrogate as UTF-8", b'root ::= "\xed\xa0\x80"\n')
    add("NUL in a literal", b'root ::= "a\x00b"\n', "a\x00b")
    add("NUL between items", b'root ::= "a"\x00 "b"\n', "ab")
    add("latin-1 text", 'root ::= "é"\n'.encode("latin-1"), "é")
    add("UTF-16 text", 'root ::= "a"\n'.encode("utf-16"), "a")
    return found


# -- the cases ------------------------------------------------------------------------------


def cases(model: Path, chat_model: Path, base: Path, seed: int) -> list[Case]:
    rng = random.Random(seed)
    found: list[Case] = []

    def run(*args: str) -> list[str]:
        chosen = model if rng.random() < 0.75 else chat_model
        seed = str(rng.randrange(10**6))
        return ["run", str(chosen), *args, "--seed", seed, *RUN_FLAGS, PROMPT]

    def schema_case(note: str, text: str) -> None:
        found.append(Case(run("--schema", text), note, schema_text=text))

    def grammar_case(note: str, data: bytes, regex: str | None) -> None:
        path = base / f"grammar-{len(found)}.gbnf"
        path.write_bytes(data)
        found.append(Case(run("--grammar", str(path)), note, regex=regex))

    for _ in range(RANDOM_SCHEMAS):
        schema_case("random schema", json.dumps(SchemaMaker(rng).top(), ensure_ascii=False))
    for note, text in _hostile_schemas(rng):
        schema_case(note, text)
    for _ in range(RANDOM_GRAMMARS):
        text, pattern = GrammarMaker(rng).grammar()
        grammar_case("random grammar", text.encode(), pattern)
    for note, data, regex in _hostile_grammars():
        grammar_case(note, data, regex)
    # The schema as a file, and files that are not what they should be.
    schema_file = base / "schema.json"
    schema_file.write_text('{"type": "object", "properties": {"a": {"type": "boolean"}}}')
    odd = base / "odd.json"
    odd.write_bytes(b'{"const": "\xff"}')
    fifo = base / "fifo"
    os.mkfifo(fifo)
    for path in (schema_file, odd, fifo, base, base / "missing.json", Path("/dev/zero")):
        found.append(Case(run("--schema", str(path)), f"schema file {path.name}"))
    for path in (fifo, base, base / "missing.gbnf", Path("/dev/zero"), Path("/dev/null")):
        found.append(Case(run("--grammar", str(path)), f"grammar file {path.name}"))
    grammar_file = base / "a.gbnf"
    grammar_file.write_text('root ::= "a"\n')
    found.append(Case(run("--schema", "json", "--grammar", str(grammar_file)), "both"))
    schema_case("--schema json", "json")
    return found


# -- the checks -----------------------------------------------------------------------------

# A refusal whose reason is a Python exception's text or the converter's insides...
CONFUSING = re.compile(
    r"grammar: '[^']*'\. Hint"  # a KeyError's repr as the whole reason
    r"|object has no attribute|NoneType|not subscriptable|unhashable|index out of range"
    r"|object is not iterable|Error resolving ref|stdin#|Unrecognized schema"
)
# ... or, for a schema, words about a grammar the user never wrote: localrun wrote it.
SCHEMA_CONFUSING = re.compile(r"llama\.cpp cannot use the grammar|its root rule is empty")
# Errors met while the answer streams: what came before them is on stdout already.
STREAMED = ("reached its token limit", "the grammar allows no token here")


def _any_of(schema: Any) -> Any:
    """``schema`` with each oneOf read as anyOf: a grammar cannot say "exactly one", and
    localrun's converter enforces oneOf as anyOf (a known limit, not checked here)."""
    if isinstance(schema, dict):
        return {("anyOf" if k == "oneOf" else k): _any_of(v) for k, v in schema.items()}
    if isinstance(schema, list):
        return [_any_of(v) for v in schema]
    return schema


MATCH_SECONDS = 10.0  # the most one answer's check against its regex may take


def _matches(regex: str, texts: tuple[str, ...]) -> bool | None:
    """Whether one of ``texts`` matches ``regex`` whole; None when Python's regex engine could
    not tell within MATCH_SECONDS. A random grammar's ``. | .`` inside nested repetitions,
    which llama.cpp follows in step, made ``re`` backtrack for minutes: the match runs in a
    forked child, killed at its deadline."""
    pid = os.fork()
    if pid == 0:  # the child: its exit status is the answer
        try:
            os._exit(0 if any(re.fullmatch(regex, text) for text in texts) else 1)
        finally:
            os._exit(2)
    pidfd = os.pidfd_open(pid)
    try:
        ready, _, _ = select.select([pidfd], [], [], MATCH_SECONDS)
        if not ready:
            os.kill(pid, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)
    finally:
        os.close(pidfd)
    if not ready:
        return None
    code = os.WEXITSTATUS(status) if os.WIFEXITED(status) else -1
    assert code in (0, 1), f"matching {regex!r:.80} failed in its child (status {status})"
    return code == 0


def _answer_problem(case: Case, stdout: str) -> str | None:
    """What is wrong with a complete answer (exit 0), or None."""
    answer = stdout[:-1] if stdout.endswith("\n") else stdout  # run ends a line it left open
    if "\ufffd" in answer:
        # The tiny models' byte tokens can write bytes that are not UTF-8, which llama.cpp's
        # grammar lets through as it reads them and localrun shows as U+FFFD: a known limit
        # (docs/user-guide.md, structured output), not a fault of the grammar's making.
        return None
    if case.regex is not None:
        if _matches(case.regex, (stdout, answer)) is False:
            return "an answer its grammar does not match"
        return None
    if case.schema_text is None:
        return None
    try:
        value = json.loads(answer)
    except ValueError:
        return "an answer that is not JSON"
    try:
        schema = _any_of(json.loads(case.schema_text))
        jsonschema.Draft202012Validator.check_schema(schema)
        error = jsonschema.exceptions.best_match(
            jsonschema.Draft202012Validator(schema).iter_errors(value)
        )
    except (ValueError, RecursionError, re.error, jsonschema.SchemaError, Unresolvable):
        return None  # not a valid schema (or one Python cannot check): nothing to hold it to
    if error is not None:
        return f"an answer that breaks its schema ({error.message[:80]})"
    return None


def problem(case: Case, result: dict[str, Any]) -> str | None:
    """What is wrong with how ``case`` ended, or None."""
    if result["timed_out"]:
        return f"a hang (killed after {CASE_TIMEOUT} s)"
    if result["signal"] is not None:
        # faulthandler's stack, innermost call first
        return f"killed by signal {result['signal']} ({result['stderr'][:1500]!r})"
    if result["code"] not in (0, 1, 2):
        return f"exit code {result['code']}"
    if not 0 < result["peak_mb"] <= PEAK_MB:
        return f"{result['peak_mb']:.0f} MB of memory"
    err = result["stderr"]
    if "Traceback" in err or "this is a bug" in err:
        return "a traceback or an unexpected error"
    if result["code"] == 0:
        return _answer_problem(case, result["stdout"])
    lines = [line for line in err.splitlines() if line.strip()]
    if len(lines) != 1 or not lines[0].startswith("Error: ") or "Hint: " not in lines[0]:
        return "not a one-line error with a hint"
    if CONFUSING.search(lines[0]):
        return "a refusal in a Python exception's words"
    if case.schema_text is not None and SCHEMA_CONFUSING.search(lines[0]):
        return "a schema refused in words about a grammar the user never wrote"
    if result["stdout"] and not any(s in lines[0] for s in STREAMED):
        return "output on stdout with an error"
    return None


def run_harness(all_cases: list[Case], tmp_path: Path) -> list[dict[str, Any]]:
    home = str(tmp_path / "home")
    steps = [{"steps": [case.args], "stdin": "", "home": home} for case in all_cases]
    case_file, result_file = tmp_path / "cases.json", tmp_path / "results.json"
    case_file.write_text(json.dumps(steps))
    env = {k: v for k, v in os.environ.items() if k != "LOCALRUN_DEBUG"}
    root = Path(__file__).resolve().parent.parent
    command = [sys.executable, "-m", "tests.fuzz_harness", str(case_file), str(result_file)]
    command += [str(CASE_TIMEOUT), str(JOBS), str(MEMORY_MB)]
    subprocess.run(command, check=True, cwd=root, env=env, timeout=600)
    results: list[dict[str, Any]] = json.loads(result_file.read_text())
    assert len(results) == len(all_cases)
    return results


def _describe(case: Case, result: dict[str, Any]) -> str:
    shown = [a if len(a) < 160 else a[:100] + f"...({len(a):,} chars)" for a in case.args]
    if "--grammar" in case.args:
        path = Path(case.args[case.args.index("--grammar") + 1])
        if path.is_file() and path.stat().st_size < 300:
            shown.append(f"(the file: {path.read_bytes()!r})")
    return (
        f"  [{case.note}] {shown!r}\n    -> exit {result['code']}, "
        f"stdout {result['stdout'][-100:]!r}, stderr {result['stderr'][-200:]!r}"
    )


def test_schemas_and_grammars_survive_random_and_hostile_input(
    tiny_model: Path, tiny_chat_model: Path, tmp_path: Path
) -> None:
    all_cases = cases(tiny_model, tiny_chat_model, tmp_path, fuzz_seed())
    results = run_harness(all_cases, tmp_path)
    by_problem: dict[str, list[str]] = collections.defaultdict(list)
    for case, result in zip(all_cases, results, strict=True):
        if (why := problem(case, result)) is not None:
            by_problem[why.split(" (")[0]].append(_describe(case, result))
    report = [
        f"{len(found)} x {why}:\n" + "\n".join(found[:6]) for why, found in by_problem.items()
    ]
    failed = sum(len(found) for found in by_problem.values())
    assert not report, f"{failed} of {len(results)} cases ({replay()}):\n" + "\n".join(report)
    # Not all refused: random schemas and grammars must give answers that were checked.
    for note, made in (("random schema", RANDOM_SCHEMAS), ("random grammar", RANDOM_GRAMMARS)):
        answered = [r for c, r in zip(all_cases, results, strict=True) if c.note == note]
        assert sum(r["code"] == 0 for r in answered) > made // 3, f"{note} ({replay()})"


def test_a_seed_draws_the_same_cases_and_another_seed_others(tmp_path: Path) -> None:
    """A failure's seed replays it exactly; another seed makes other random schemas and
    grammars (and other wrong values here and there among the hostile ones)."""

    def drawn(seed: int, name: str) -> list[Case]:
        base = tmp_path / name / "cases"  # one name: a case's note may hold it
        base.mkdir(parents=True)
        found = cases(Path("m.gguf"), Path("chat.gguf"), base, seed)
        return [
            Case([a.replace(str(base), "BASE") for a in c.args], c.note, c.schema_text, c.regex)
            for c in found
        ]

    one, again, other = drawn(1, "a"), drawn(1, "b"), drawn(2, "c")
    assert again == one
    assert other != one
    assert len(other) == len(one) > RANDOM_SCHEMAS + RANDOM_GRAMMARS + 200


def test_the_checks_tell_a_right_answer_from_a_wrong_one() -> None:
    """The checker itself, on answers written by hand."""
    schema = Case(
        [], "s", schema_text='{"type": "object", "properties": {"a": {"type": "integer"}}}'
    )
    ok = {"timed_out": False, "signal": None, "code": 0, "peak_mb": 50.0, "stderr": ""}
    assert problem(schema, {**ok, "stdout": '{"a": 1}\n'}) is None
    assert "breaks its schema" in str(problem(schema, {**ok, "stdout": '{"a": "x"}\n'}))
    assert "not JSON" in str(problem(schema, {**ok, "stdout": '{"a": \n'}))
    grammar = Case([], "g", regex="(?:a|b)+\n")
    assert problem(grammar, {**ok, "stdout": "ab\n"}) is None
    assert "does not match" in str(problem(grammar, {**ok, "stdout": "abc\n"}))
    cut = "Error: the answer reached its token limit (40 tokens). Hint: raise --max-tokens\n"
    assert problem(schema, {**ok, "code": 1, "stdout": '{"a', "stderr": cut}) is None
    bare = "Error: the schema's 'maxLength' (at $) must be a whole number\n"
    assert "hint" in str(problem(schema, {**ok, "code": 2, "stdout": "", "stderr": bare}))
    raw = "Error: the schema cannot be turned into a grammar: 'anyOf'. Hint: simplify it\n"
    assert "exception" in str(problem(schema, {**ok, "code": 2, "stdout": "", "stderr": raw}))
    assert "hang" in str(problem(schema, {**ok, "timed_out": True, "code": None, "signal": 9}))


def test_random_grammars_are_what_their_regexes_say() -> None:
    """Each random grammar's regex compiles and accepts text built from a literal-only
    grammar (the cheap half of the check: the fuzz run checks the rest on real answers)."""
    for seed in range(50):
        text, regex = GrammarMaker(random.Random(seed)).grammar()
        assert re.search(r"^root ::= ", text, re.MULTILINE), text
        re.compile(regex)
