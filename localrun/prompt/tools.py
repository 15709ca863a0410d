"""Tool calls: the tools a model is offered, and its calls read back out of its text.

A model is told about tools by its chat template, which renders them (and earlier calls and
their results) in its family's own way; it calls one by writing text in that family's form.
Each form is read here:

- ``hermes``: Qwen 2.5 and 3, Hermes, SmolLM3: ``<tool_call>{"name": ..., "arguments": ...}
  </tool_call>`` blocks, after some text or not;
- ``llama3``: Llama 3.1-3.3: a JSON object ``{"name": ..., "parameters": ...}`` as the whole
  answer (or after ``<|python_tag|>``), several separated by ``;``;
- ``mistral``: ``[TOOL_CALLS][{"name": ..., "arguments": ...}, ...]``, or the newer
  ``[TOOL_CALLS]name[ARGS]{...}``;
- ``granite``: Granite 3 and Phi-4-mini: ``<|tool_call|>[{"name": ..., "arguments": ...}]``;
- ``deepseek``: DeepSeek R1 and V3: ``<｜tool▁call▁begin｜>function<｜tool▁sep｜>name``, then
  the arguments in a fenced JSON block.

The form is told from the template's own text. Where a call is required (``tool_choice``), a
grammar holds the answer to one call in the model's form, with arguments that follow the
tool's schema (:func:`call_grammar`).
"""

from __future__ import annotations

import json
import re
import secrets
import string
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from localrun.errors import UsageError
from localrun.prompt import grammar as grammars

_ID_CHARS = string.ascii_letters + string.digits


def new_call_id() -> str:
    """An id for a call: 9 letters and digits, the form Mistral's templates insist on."""
    return "".join(secrets.choice(_ID_CHARS) for _ in range(9))


@dataclass(frozen=True)
class ToolCall:
    """One call the model made: the tool's name and its arguments."""

    name: str
    arguments: dict[str, Any] = field(default_factory=dict)
    id: str = field(default_factory=new_call_id)

    def as_template(self) -> dict[str, Any]:
        """The call as chat templates read it (as transformers passes it)."""
        return {
            "id": self.id,
            "type": "function",
            "function": {"name": self.name, "arguments": self.arguments},
        }


@dataclass(frozen=True)
class Tool:
    """A tool the model may call: a function with a JSON schema for its arguments."""

    name: str
    description: str = ""
    parameters: dict[str, Any] = field(default_factory=dict)

    def as_template(self) -> dict[str, Any]:
        return {
            "type": "function",
            "function": {
                "name": self.name,
                "description": self.description,
                "parameters": self.parameters or {"type": "object", "properties": {}},
            },
        }


def parse_tools(raw: Any, where: str = "tools") -> tuple[Tool, ...]:
    """Tools in the form both APIs send: ``[{"type": "function", "function": {...}}]``."""
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise UsageError(
            f"'{where}' must be a list", f'send "{where}": [{{"type": "function", ...}}]'
        )
    tools = []
    for i, item in enumerate(raw):
        spec = item.get("function") if isinstance(item, dict) else None
        if not isinstance(spec, dict) or item.get("type", "function") != "function":
            raise UsageError(
                f"{where}[{i}] must be a function tool",
                '{"type": "function", "function": {"name": ..., "parameters": {...}}}',
            )
        name = spec.get("name")
        if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_.\-]{1,64}", name):
            raise UsageError(
                f"{where}[{i}] needs a name of 1-64 letters, digits, _ . or -",
                "name the function",
            )
        parameters = spec.get("parameters") or {}
        if not isinstance(parameters, dict):
            raise UsageError(f"{where}[{i}].function.parameters must be a JSON schema")
        description = spec.get("description") or ""
        if not isinstance(description, str):
            raise UsageError(f"{where}[{i}].function.description must be a string")
        tools.append(Tool(name, description, parameters))
    if len({t.name for t in tools}) != len(tools):
        raise UsageError(f"two of the {where} have the same name", "name each tool once")
    return tuple(tools)


# -- the forms ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Form:
    """How one family writes a call."""

    name: str
    starts: tuple[str, ...]  # text that begins a call (held back from a stream from there)
    json_start: bool = False  # a call may also be the answer's first "{"
    prefix: str = ""  # a required call, as the grammar writes it: prefix, JSON, suffix
    suffix: str = ""
    arguments_key: str = "arguments"
    in_list: bool = False  # the grammar's call goes inside a JSON list

    def write(self, calls: tuple[ToolCall, ...]) -> str:
        """Calls as the model writes them (for a template that leaves earlier calls out)."""
        key = self.arguments_key
        objects = [{"name": c.name, key: c.arguments} for c in calls]
        if self.name == "hermes" or self.name == "deepseek":
            return "\n".join(f"<tool_call>\n{json.dumps(o)}\n</tool_call>" for o in objects)
        if self.name == "llama3":
            return "; ".join(json.dumps(o) for o in objects)
        return self.prefix + json.dumps(objects)

    def parse(self, text: str, tools: tuple[Tool, ...]) -> tuple[str, list[ToolCall]]:
        """The answer's text without its calls, and the calls (of tools that exist)."""
        content, calls = _PARSERS[self.name](text)
        known = {t.name for t in tools}
        kept = [c for c in calls if c.name in known]
        if calls and not kept:
            return text, []  # not a call of ours after all: the text stands as it was
        return content.strip() if kept else text, kept


FORMS = {
    "hermes": Form("hermes", ("<tool_call>",), prefix="<tool_call>\n", suffix="\n</tool_call>"),
    "llama3": Form("llama3", ("<|python_tag|>",), json_start=True, arguments_key="parameters"),
    "mistral": Form("mistral", ("[TOOL_CALLS]",), prefix="[TOOL_CALLS]", in_list=True),
    "granite": Form("granite", ("<|tool_call|>",), prefix="<|tool_call|>", in_list=True),
    "deepseek": Form("deepseek", ("<｜tool▁calls▁begin｜>", "<｜tool▁call▁begin｜>")),
}


def form_of(template: str | None) -> Form | None:
    """The form a chat template's model writes calls in, told by the template's own text;
    None if it takes no tools, or writes them in a form localrun does not read."""
    if not template or "tools" not in template:
        return None
    for marker, name in (
        ("<tool_call>", "hermes"),
        ("[TOOL_CALLS]", "mistral"),
        ("<|tool_call|>", "granite"),
        ("tool▁call▁begin", "deepseek"),
        ("<|python_tag|>", "llama3"),
    ):
        if marker in template:
            return FORMS[name]
    if "ipython" in template and '"parameters"' in template:
        return FORMS["llama3"]  # Llama 3.2: tool results come back as "ipython"
    return None


def _call(obj: Any, keys: tuple[str, ...] = ("arguments", "parameters")) -> ToolCall | None:
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
        return None
    args: Any = next((obj[k] for k in keys if k in obj), {})
    if isinstance(args, str):  # some models write the arguments as a JSON string
        try:
            args = json.loads(args)
        except (ValueError, RecursionError):  # a model's text: nested past Python's stack too
            return None
    if not isinstance(args, dict):
        return None
    given = obj.get("id")
    return ToolCall(obj["name"], args, given if isinstance(given, str) and given else new_call_id())


def _json_values(text: str) -> tuple[list[Any], str]:
    """The JSON values written one after another in ``text`` (separated by space, ``,`` or
    ``;``), and what follows the last one."""
    decoder = json.JSONDecoder()
    values: list[Any] = []
    i = 0
    while True:
        while i < len(text) and text[i] in " \t\r\n,;":
            i += 1
        if i >= len(text) or text[i] not in "[{":
            return values, text[i:]
        try:
            value, i = decoder.raw_decode(text, i)
        except (ValueError, RecursionError):
            return values, text[i:]
        values.append(value)


def _hermes(text: str) -> tuple[str, list[ToolCall]]:
    calls, content = [], []
    pos = 0
    for m in re.finditer(r"<tool_call>(.*?)(?:</tool_call>|$)", text, re.DOTALL):
        content.append(text[pos : m.start()])
        pos = m.end()
        values, _ = _json_values(m.group(1).strip())
        calls += [c for v in values if (c := _call(v)) is not None]
    content.append(text[pos:])
    return "".join(content), calls


def _llama3(text: str) -> tuple[str, list[ToolCall]]:
    body = text.strip()
    if body.startswith("<|python_tag|>"):
        body = body[len("<|python_tag|>") :].strip()
    if not body.startswith("{"):
        return text, []
    values, rest = _json_values(body)
    calls = [c for v in values if (c := _call(v, ("parameters", "arguments"))) is not None]
    return (rest if calls else text), calls


def _in_list(marker: str) -> Any:
    def parse(text: str) -> tuple[str, list[ToolCall]]:
        at = text.find(marker)
        if at < 0:
            return text, []
        head, body = text[:at], text[at + len(marker) :]
        body = body.replace("<|/tool_call|>", "")
        calls: list[ToolCall] = []
        values, rest = _json_values(body)
        for value in values:
            for item in value if isinstance(value, list) else [value]:
                if (c := _call(item)) is not None:
                    calls.append(c)
        if not calls and marker == "[TOOL_CALLS]":
            return _mistral_args(text)
        return head + rest, calls

    return parse


def _mistral_args(text: str) -> tuple[str, list[ToolCall]]:
    """The newer Mistral forms: [TOOL_CALLS]name[ARGS]{...} and (Mistral Small 3.2)
    [TOOL_CALLS]name[CALL_ID]id[ARGS]{...}, once per call."""
    calls = []
    head = text[: text.find("[TOOL_CALLS]")]
    pattern = r"\[TOOL_CALLS\]\s*([A-Za-z0-9_.\-]+)\s*(?:\[CALL_ID\]\s*(\w+)\s*)?\[ARGS\]"
    for m in re.finditer(pattern, text):
        values, _ = _json_values(text[m.end() :])
        found = {"name": m.group(1), "arguments": values[0] if values else None, "id": m.group(2)}
        if values and (c := _call(found)) is not None:
            calls.append(c)
    return head, calls


def _deepseek(text: str) -> tuple[str, list[ToolCall]]:
    pattern = (
        r"<｜tool▁call▁begin｜>\s*(?:function)?\s*<｜tool▁sep｜>\s*([A-Za-z0-9_.\-]+)\s*"
        r"(?:```(?:json)?)?\s*(.*?)\s*(?:```)?\s*<｜tool▁call▁end｜>"
    )
    calls = []
    for m in re.finditer(pattern, text, re.DOTALL):
        values, _ = _json_values(m.group(2))
        if values and (c := _call({"name": m.group(1), "arguments": values[0]})) is not None:
            calls.append(c)
    starts = [text.find(s) for s in FORMS["deepseek"].starts if s in text]
    return (text[: min(starts)] if starts else text), calls


_PARSERS: dict[str, Any] = {
    "hermes": _hermes,
    "llama3": _llama3,
    "mistral": _in_list("[TOOL_CALLS]"),
    "granite": _in_list("<|tool_call|>"),
    "deepseek": _deepseek,
}


# -- holding a stream back where a call may begin --------------------------------------------


class CallWatch:
    """Passes an answer's text through as it streams, and holds it back from where a call
    may begin (a form's start, or a first ``{`` where the form allows one), so that calls
    are never shown as text; :meth:`finish` reads the calls out of what was held."""

    def __init__(self, form: Form, tools: tuple[Tool, ...]) -> None:
        self.form = form
        self.tools = tools
        self._held = ""  # text not passed on yet
        self._holding = False  # a call has begun: hold everything to the end
        self._passed = False  # some text went out already

    def feed(self, text: str) -> str:
        """The part of ``text`` that can be shown now."""
        self._held += text
        if self._holding:
            return ""
        if self.form.json_start and not self._passed and self._held.lstrip().startswith("{"):
            self._holding = True
            return ""
        for start in self.form.starts:
            at = self._held.find(start)
            if at >= 0:
                out, self._held, self._holding = self._held[:at], self._held[at:], True
                self._passed = self._passed or bool(out.strip())
                return out
        # Hold a tail that could be the beginning of a start, and leading space (the answer
        # may still open with "{").
        keep = max((_overlap(self._held, s) for s in self.form.starts), default=0)
        if self.form.json_start and not self._passed and not self._held.strip():
            keep = len(self._held)
        out = self._held[: len(self._held) - keep]
        self._held = self._held[len(self._held) - keep :]
        self._passed = self._passed or bool(out.strip())
        return out

    def finish(self) -> tuple[str, list[ToolCall]]:
        """The rest of the text to show, and the calls."""
        held, self._held = self._held, ""
        if not held:
            return "", []
        return self.form.parse(held, self.tools)


def _overlap(text: str, start: str) -> int:
    """How long a tail of ``text`` is a beginning of ``start``."""
    for n in range(min(len(start) - 1, len(text)), 0, -1):
        if text.endswith(start[:n]):
            return n
    return 0


# -- a required call -------------------------------------------------------------------------


def call_grammar(form: Form, tools: tuple[Tool, ...]) -> str:
    """GBNF for one call, in ``form``, of one of ``tools``, its arguments following the
    tool's schema (what a grammar cannot enforce in it is refused by name)."""
    if form.name == "deepseek":
        form = FORMS["hermes"]  # its call is not JSON throughout: the common form instead
    options = [
        {
            "type": "object",
            "properties": {
                "name": {"const": t.name},
                form.arguments_key: t.parameters or {"type": "object"},
            },
            "required": ["name", form.arguments_key],
        }
        for t in tools
    ]
    schema: dict[str, Any] = options[0] if len(options) == 1 else {"anyOf": options}
    if form.in_list:
        schema = {"type": "array", "items": schema, "minItems": 1, "maxItems": 1}
    body = grammars.json_schema(schema, inside=True).grammar
    body = re.sub(r"^root ::=", "tool-call ::=", body, count=1, flags=re.MULTILINE)
    literal = json.dumps  # a GBNF string literal is a JSON string here
    parts = [literal(form.prefix) if form.prefix else "", "tool-call"]
    parts.append(literal(form.suffix) if form.suffix else "")
    return "root ::= " + " ".join(p for p in parts if p) + "\n" + body


def tools_file(path: Path) -> tuple[Tool, ...]:
    """The tools defined in a JSON file (a list, in the form the APIs take)."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise UsageError(f"cannot read {path}: {e.strerror}", "give a JSON file") from None
    except ValueError as e:
        raise UsageError(f"{path} is not JSON: {e}", "give a JSON list of tools") from None
    return parse_tools(raw, str(path))
