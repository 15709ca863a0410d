"""A non-recursive GBNF grammar (the converter's layout: one ``name ::= body`` a line) as a
Python regular expression, to run grammars over many texts at C speed in the tests."""

from __future__ import annotations

import re

_TOKEN = re.compile(
    r'\s*(?:(?P<lit>"(?:[^"\\]|\\.)*")|(?P<cls>\[(?:[^\]\\]|\\.)*\])|(?P<name>[a-zA-Z0-9-]+)'
    r"|(?P<rep>\{\d*(?:,\d*)?\}|[?*+])|(?P<op>[()|.]))"
)
_ESCAPES = {"n": "\n", "r": "\r", "t": "\t", '"': '"', "\\": "\\", "[": "[", "]": "]"}


def _unescape(text: str) -> str:
    """A GBNF literal's text, its escapes read."""

    def one(m: re.Match[str]) -> str:
        code = m["x"] or m["u"] or m["U"]
        return chr(int(code, 16)) if code else _ESCAPES.get(m["c"], m["c"])

    escape = r"\\(?:x(?P<x>[0-9a-fA-F]{2})|u(?P<u>[0-9a-fA-F]{4})|U(?P<U>[0-9a-fA-F]{8})|(?P<c>.))"
    return re.sub(escape, one, text)


def to_regex(gbnf: str, rule: str = "root") -> str:
    """The regular expression of a non-recursive GBNF grammar's ``rule``."""
    rules = dict(line.split(" ::= ", 1) for line in gbnf.splitlines() if " ::= " in line)
    done: dict[str, str] = {}

    def body(name: str, seen: tuple[str, ...]) -> str:
        assert name not in seen, f"recursive rule {name}"
        if name not in done:
            done[name] = translate(rules[name], (*seen, name))
        return done[name]

    def translate(text: str, seen: tuple[str, ...]) -> str:
        out, at = [], 0
        while at < len(text.rstrip()):
            m = _TOKEN.match(text, at)
            assert m, text[at:]
            at = m.end()
            if m["lit"]:
                out.append(f"(?:{re.escape(_unescape(m['lit'][1:-1]))})")
            elif m["cls"]:
                out.append(m["cls"])  # GBNF's classes are written as Python's
            elif m["name"]:
                out.append(f"(?:{body(m['name'], seen)})")
            elif m["rep"]:
                out.append(m["rep"].replace("{,", "{0,"))
            else:
                out.append({"(": "(?:", ".": "[^\\n]"}.get(m["op"], m["op"]))
        return "".join(out)

    return body(rule, ())


def accepted(gbnf: str, candidates: list[str]) -> set[str]:
    """Which candidates (no line breaks in them) the grammar's root matches whole."""
    regex = re.compile(f"^(?:{to_regex(gbnf)})$", re.MULTILINE)
    return set(regex.findall("\n".join(candidates)))
