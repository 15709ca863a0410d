"""Translate Ollama's Go-template chat templates into Jinja.

Ollama's Modelfiles write TEMPLATE in Go's text/template language. localrun renders
Jinja (like the templates inside GGUF files), so the forms Ollama's own recipes use are
translated; anything else is refused, naming what is not supported:

- fields ``.System``, ``.Prompt``, ``.Response``, ``.Messages``, ``.Tools``, ``$.X``;
  inside ``range .Messages``: ``.Role``, ``.Content``;
- ``if`` / ``else if`` / ``else`` / ``end``, ``range .Messages`` (also ``range $i, $m :=``),
  ``$x := ...`` assignments, ``{{- -}}`` trimming, ``{{/* comments */}}``;
- the functions ``eq ne lt le gt ge and or not len slice json``.

A template without ``.Messages`` is Ollama's older per-turn form: it is applied to each
exchange in turn, and for the exchange being answered it stops at ``{{ .Response }}``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from localrun.errors import GoTemplateError

_ACTION = re.compile(r"\{\{(-?)(.*?)(-?)\}\}", re.DOTALL)
_TOKEN = re.compile(
    r'\s*(?:(?P<str>"(?:\\.|[^"\\])*"|`[^`]*`)|(?P<num>-?\d+(?:\.\d+)?)|(?P<punct>[()])'
    r"|(?P<assign>:=)|(?P<comma>,)|(?P<word>[$.\w][\w.$]*))"
)
_TOP_FIELDS = {
    "System": "system",
    "Prompt": "prompt",
    "Response": "response",
    "Messages": "messages",
    "Tools": "tools",
}
_MESSAGE_FIELDS = {"Role": "role", "Content": "content", "ToolCalls": "tool_calls"}
_BINARY = {"eq": "==", "ne": "!=", "lt": "<", "le": "<=", "gt": ">", "ge": ">="}


def is_go_template(text: str) -> bool:
    """Whether a TEMPLATE is in Go's syntax rather than Jinja's."""
    if "{%" in text:
        return False
    return bool(re.search(r"\{\{-?\s*(?:\.|\$|if\s|range\s|end\b|else\b|/\*)", text))


@dataclass
class _Scope:
    kind: str  # "if" or "for"
    dot: str | None = None  # what "." means inside a range
    names: dict[str, str] = field(default_factory=dict)


class _Translator:
    def __init__(self, source: str) -> None:
        self.source = source
        self.scopes: list[_Scope] = []
        self.response_nested = False

    def fail(self, what: str) -> GoTemplateError:
        return GoTemplateError(
            f"the Go template uses {what}, which localrun does not translate",
            "write the TEMPLATE in Jinja, or use one of the forms listed in docs/modelfile.md",
        )

    # -- expressions ---------------------------------------------------------------------

    def tokens(self, text: str) -> list[tuple[str, str]]:
        out, pos = [], 0
        while pos < len(text):
            if text[pos:].strip() == "":
                break
            m = _TOKEN.match(text, pos)
            if not m or m.end() == pos:
                raise self.fail(f"'{text.strip()}'")
            kind = m.lastgroup or ""
            out.append((kind, m.group(kind)))
            pos = m.end()
        return out

    def operand(self, word: str) -> str:
        if word.startswith("$."):
            return self.field(word[2:], top=True)
        if word.startswith("$"):
            name, _, rest = word[1:].partition(".")
            for scope in reversed(self.scopes):
                if name in scope.names:
                    base = scope.names[name]
                    return base if not rest else f"{base}.{self.message_field(rest)}"
            if not name:
                return "messages"
            raise self.fail(f"the variable ${name} before it is set")
        if word == ".":
            dot = self.dot()
            if dot is None:
                raise self.fail("'.' outside a range")
            return dot
        if word.startswith("."):
            return self.field(word[1:], top=self.dot() is None)
        raise self.fail(f"'{word}'")

    def dot(self) -> str | None:
        for scope in reversed(self.scopes):
            if scope.dot:
                return scope.dot
        return None

    def field(self, name: str, *, top: bool) -> str:
        if "." in name:
            raise self.fail(f"the field path '.{name}'")
        if not top:
            return f"{self.dot()}.{self.message_field(name)}"
        if name not in _TOP_FIELDS:
            raise self.fail(f"the field '.{name}'")
        return _TOP_FIELDS[name]

    def message_field(self, name: str) -> str:
        if name not in _MESSAGE_FIELDS:
            raise self.fail(f"the message field '.{name}'")
        return _MESSAGE_FIELDS[name]

    def expression(self, tokens: list[tuple[str, str]]) -> str:
        value, rest = self.command(tokens)
        if rest:
            raise self.fail(f"'{' '.join(t for _, t in rest)}'")
        return value

    def command(self, tokens: list[tuple[str, str]]) -> tuple[str, list[tuple[str, str]]]:
        """A function call with its arguments, or a single operand."""
        if not tokens:
            raise self.fail("an empty expression")
        kind, text = tokens[0]
        if kind == "word" and not text.startswith((".", "$")):
            args: list[str] = []
            rest = tokens[1:]
            while rest and rest[0][1] != ")":
                arg, rest = self.argument(rest)
                args.append(arg)
            return self.call(text, args), rest
        return self.argument(tokens)

    def argument(self, tokens: list[tuple[str, str]]) -> tuple[str, list[tuple[str, str]]]:
        kind, text = tokens[0]
        if kind == "punct" and text == "(":
            value, rest = self.command(tokens[1:])
            if not rest or rest[0][1] != ")":
                raise self.fail("an unclosed '('")
            return f"({value})", rest[1:]
        if kind == "str":
            body = text[1:-1] if text.startswith("`") else text
            return (repr(body) if text.startswith("`") else body), tokens[1:]
        if kind == "num":
            return text, tokens[1:]
        if kind == "word":
            if text in ("true", "false"):
                return text, tokens[1:]
            if text.startswith((".", "$")):
                return self.operand(text), tokens[1:]
        raise self.fail(f"'{text}'")

    def call(self, name: str, args: list[str]) -> str:
        if name in _BINARY and len(args) >= 2:
            op = _BINARY[name]
            if name == "eq" and len(args) > 2:
                return "(" + " or ".join(f"{args[0]} == {a}" for a in args[1:]) + ")"
            return f"({args[0]} {op} {args[1]})"
        if name in ("and", "or") and len(args) >= 2:
            return "(" + f" {name} ".join(args) + ")"
        if name == "not" and len(args) == 1:
            return f"(not {args[0]})"
        if name == "len" and len(args) == 1:
            return f"({args[0]} | length)"
        if name == "slice" and len(args) in (2, 3):
            end = args[2] if len(args) == 3 else ""
            return f"{args[0]}[{args[1]}:{end}]"
        if name == "json" and len(args) == 1:
            return f"({args[0]} | tojson)"
        raise self.fail(f"the function '{name}'")

    # -- actions -------------------------------------------------------------------------

    def action(self, body: str, left: str, right: str) -> str:
        text = body.strip()
        if text.startswith("/*"):
            return ""
        word = text.split(maxsplit=1)[0] if text else ""
        rest = text[len(word) :].strip()
        if word in ("if", "else", "end", "range") or ":=" in text:
            return self.control(word, rest, text, left, right)
        if word in ("with", "define", "template", "block", "break", "continue"):
            raise self.fail(f"'{word}'")
        value = self.expression(self.tokens(text))
        if value == "response" and any(s.kind != "top" for s in self.scopes):
            self.response_nested = True
        return "{{" + left + " " + value + " " + right + "}}"

    def control(self, word: str, rest: str, text: str, left: str, right: str) -> str:
        def tag(inner: str) -> str:
            # Go keeps the whitespace around an action unless it says "-"; the "+" turns
            # off Jinja's lstrip_blocks and trim_blocks for this tag to match.
            return "{%" + (left or "+") + " " + inner + " " + (right or "+") + "%}"

        if word == "if":
            self.scopes.append(_Scope("if"))
            return tag("if " + self.expression(self.tokens(rest)))
        if word == "else":
            if not self.scopes or self.scopes[-1].kind != "if":
                raise self.fail("'else' outside an if")
            if rest.startswith("if "):
                return tag("elif " + self.expression(self.tokens(rest[3:])))
            return tag("else")
        if word == "end":
            if not self.scopes:
                raise self.fail("an 'end' with nothing to close")
            return tag("endif" if self.scopes.pop().kind == "if" else "endfor")
        if word == "range":
            return tag(self.range(rest))
        name, _, value = text.partition(":=")
        name = name.strip()
        if not re.fullmatch(r"\$\w+", name):
            raise self.fail(f"the assignment '{text}'")
        var = "v_" + name[1:]
        tokens = self.tokens(value)
        if self.scopes:
            self.scopes[-1].names[name[1:]] = var
        else:
            self.scopes.append(_Scope("top", names={name[1:]: var}))
        # Ollama's recipes find the last message with: eq (len (slice $.Messages $i)) 1
        return tag(f"set {var} = {self.expression(tokens)}")

    def range(self, rest: str) -> str:
        names: list[str] = []
        if ":=" in rest:
            left, rest = rest.split(":=", 1)
            names = [n.strip().lstrip("$") for n in left.split(",")]
        target = self.expression(self.tokens(rest))
        if target != "messages":
            raise self.fail(f"'range' over something other than .Messages ({rest.strip()})")
        scope = _Scope("for", dot="message")
        if len(names) == 2:
            scope.names[names[0]] = "loop.index0"
            scope.names[names[1]] = "message"
        elif len(names) == 1:
            scope.names[names[0]] = "message"
        self.scopes.append(scope)
        return "for message in messages"

    def translate(self, text: str) -> str:
        out: list[str] = []
        pos = 0
        for m in _ACTION.finditer(text):
            out.append(text[pos : m.start()].replace("{#", "{{ '{#' }}"))
            out.append(self.action(m.group(2), m.group(1), m.group(3)))
            pos = m.end()
        out.append(text[pos:])
        if any(s.kind != "top" for s in self.scopes):
            raise self.fail("an 'if' or 'range' without its 'end'")
        return "".join(out)


def _per_turn(body: str) -> str:
    """Wrap an old-style (per-exchange) template so it covers the whole conversation."""
    marker = re.search(r"\{\{-?\s*response\s*-?\}\}", body)
    if marker is None:
        turn = body + "{%+ if not last +%}{{ response }}{%+ endif +%}"
    else:
        head, tail = body[: marker.end()], body[marker.end() :]
        turn = head + "{%+ if not last +%}" + tail + "{%+ endif +%}"
    return (
        "{%- macro turn(system, prompt, response, last) -%}" + turn + "{%+ endmacro -%}"
        "{%- set ns = namespace(system=system, prompt='', answered=false) -%}"
        "{%- for message in messages if message.role != 'system' -%}"
        "{%- if message.role == 'user' -%}"
        "{%- set ns.prompt = message.content -%}"
        "{%- if loop.last -%}"
        "{{- turn('' if ns.answered else ns.system, ns.prompt, '', true) -}}"
        "{%- endif -%}"
        "{%- else -%}"
        "{{- turn('' if ns.answered else ns.system, ns.prompt, message.content, false) -}}"
        "{%- set ns.answered = true -%}"
        "{%- endif -%}"
        "{%- endfor -%}"
    )


def to_jinja(text: str) -> str:
    """The Jinja equivalent of an Ollama Go template.

    It renders with localrun's chat-template variables: ``messages`` (all of them, the
    system message included), plus ``system`` (the system prompt), ``prompt`` (the last
    user message) and ``response`` (empty: the answer to come).
    """
    translator = _Translator(text)
    # Jinja drops a template's last newline; Go keeps it. An empty output after it keeps it.
    body = translator.translate(text) + ("{{ '' }}" if text.endswith("\n") else "")
    if re.search(r"\$?\.Messages\b", text):
        return body
    if translator.response_nested:
        raise translator.fail("'.Response' inside an 'if' (in a template without .Messages)")
    return _per_turn(body)
