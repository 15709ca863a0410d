"""Anthropic's Messages API (what Claude Code speaks): request bodies to an :class:`Ask`,
events to its objects.

A request holds a ``system`` prompt (a string or text blocks), messages whose content is a
string or blocks (text, image, an assistant's ``tool_use``, a user's ``tool_result``, an
earlier ``thinking`` that is not read again), ``tools`` with their ``input_schema``, and
``thinking`` ({"type": "enabled", "budget_tokens": N} asks for a trace of at most N tokens).
A stream is named server-sent events: ``message_start``, ``ping``, then each content block's
``content_block_start``, deltas and ``content_block_stop`` (a trace's ``thinking`` block, the
text's, each call's ``tool_use`` with its input as one JSON delta), ``message_delta`` with the
stop reason and usage, ``message_stop``. Errors take Anthropic's shape. Plain functions of
the body and the events: the handlers are :mod:`.routes`.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from localrun.engine.types import FinishReason, Logprobs, Stats
from localrun.errors import LocalrunError, UsageError
from localrun.images import Image, image_from_data_url
from localrun.prompt.template import Message
from localrun.prompt.tools import ToolCall, parse_tools
from localrun.server import fields
from localrun.server.answer import Ask
from localrun.server.stream import NAMED_SSE, Done, Obj

WIRE = NAMED_SSE
_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    503: "overloaded_error",
}
# What a request may hold; the others are refused by name, not quietly dropped.
_FIELDS = {
    "model", "messages", "system", "max_tokens", "stop_sequences", "temperature", "top_p",
    "top_k", "tools", "tool_choice", "thinking", "stream", "metadata", "service_tier",
    "think_budget", "container", "context_management", "output_config", "num_ctx",
}  # fmt: skip
_SIGNATURE = "localrun"  # a thinking block's signature: nothing is signed here


def error(e: LocalrunError) -> Obj:
    """An error in Anthropic's shape."""
    text = e.message if not e.hint else f"{e.message} ({e.hint})"
    kind = _ERROR_TYPES.get(e.http_status, "api_error")
    return {"type": "error", "error": {"type": kind, "message": text}}


def request_ask(body: dict[str, Any]) -> Ask:
    """``/v1/messages``' request."""
    unknown = sorted(set(body) - _FIELDS)
    if unknown:
        raise UsageError(f"'{unknown[0]}' is not supported", "send the request without it")
    name = fields.model_name(body)
    max_tokens = fields.get(body, "max_tokens", int)
    if max_tokens is None or max_tokens < 1:
        raise UsageError("'max_tokens' must be a number of tokens, 1 or more")
    conversation = _messages(body.get("messages"))
    # A system message among the others (Claude Code's reminders) joins the system prompt:
    # most chat templates take one, first.
    system = "\n\n".join(
        [*(m.content for m in _system(body.get("system"))),
         *(m.content for m in conversation if m.role == "system")]
    )  # fmt: skip
    messages = [Message("system", system)] if system else []
    messages += [m for m in conversation if m.role != "system"]
    if not any(m.role != "system" for m in messages):
        raise UsageError("'messages' is empty", "send at least one message")
    options: dict[str, Any] = {"num_predict": max_tokens}
    for theirs, ours, kind in (("temperature", "temperature", float), ("top_p", "top_p", float),
                               ("top_k", "top_k", int), ("num_ctx", "num_ctx", int)):  # fmt: skip
        value = fields.get(body, theirs, kind)
        if value is not None:
            fields.in_range(ours, value)
            options[ours] = value
    if body.get("stop_sequences") is not None:
        options["stop"] = fields.stops(body["stop_sequences"], "stop_sequences")
    think, budget = _thinking(body.get("thinking"))
    return Ask(
        name,
        tuple(messages),
        options,
        tools=_tools(body.get("tools")),
        tool_choice=_tool_choice(body.get("tool_choice")),
        think=think,
        think_budget=budget if budget is not None else fields.think_budget(body),
    )


def _system(value: Any) -> list[Message]:
    if value is None:
        return []
    text = value if isinstance(value, str) else _text_blocks(value, "system")
    return [Message("system", text)] if text else []


def _text_blocks(value: Any, where: str) -> str:
    if not isinstance(value, list):
        raise UsageError(f"'{where}' must be a string or a list of text blocks")
    texts = []
    for i, block in enumerate(value):
        if not isinstance(block, dict) or block.get("type") != "text":
            raise UsageError(f"{where}[{i}] must be a text block", '{"type": "text", "text": ...}')
        texts.append(fields.get(block, "text", str, "", where=f"{where}[{i}]"))
    return "\n\n".join(t for t in texts if t)


def _messages(raw: Any) -> list[Message]:
    if not isinstance(raw, list):
        raise UsageError("'messages' must be a list", 'send [{"role": "user", "content": ...}]')
    out: list[Message] = []
    for i, m in enumerate(raw):
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            raise UsageError(f"{where} must be an object with 'role' and 'content'")
        role = fields.get(m, "role", str, where=where)
        if role not in ("user", "assistant", "system"):
            raise UsageError(
                f"{where} has the role {json.dumps(role)}",
                "use user or assistant (the system prompt is 'system')",
            )
        content = m.get("content")
        if role == "system":
            text = content if isinstance(content, str) else _text_blocks(content, where)
            out.append(Message("system", text))
        elif isinstance(content, str):
            out.append(Message(role, content))
        elif isinstance(content, list):
            out += _blocks(role, content, where)
        else:
            raise UsageError(f"{where}.content must be a string or a list of blocks")
    return out


def _blocks(role: str, blocks: list[Any], where: str) -> list[Message]:
    """A message's blocks as the messages a chat template reads: a user's tool results each
    a ``tool`` message (before the rest of its text), an assistant's tool uses its calls."""
    texts: list[str] = []
    images: list[Image] = []
    calls: list[ToolCall] = []
    results: list[Message] = []
    for j, block in enumerate(blocks):
        at = f"{where}.content[{j}]"
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "text":
            texts.append(fields.get(block, "text", str, "", where=at))
        elif kind == "image" and role == "user":
            images.append(_image(block.get("source"), at))
        elif kind == "tool_use" and role == "assistant":
            arguments = block.get("input") if isinstance(block.get("input"), dict) else {}
            call_id = (fields.get(block, "id", str, where=at) or "").removeprefix("toolu_")
            calls.append(ToolCall(fields.get(block, "name", str, where=at), arguments, call_id))
        elif kind == "tool_result" and role == "user":
            results.append(_result(block, at))
        elif kind in ("thinking", "redacted_thinking") and role == "assistant":
            continue  # an earlier answer's trace is not read again
        else:
            raise UsageError(
                f"{at} is a block of type {json.dumps(kind)} in a {role} message",
                "send text, image, tool_use (assistant) or tool_result (user) blocks",
            )
    text = "".join(texts)
    if role == "assistant":
        return [Message("assistant", text, tuple(calls))]
    return [*results, *([Message("user", text, images=tuple(images))] if text or images else [])]


def _result(block: dict[str, Any], where: str) -> Message:
    """A tool's result: its text (a string, or the text blocks of a list), marked when the
    tool failed."""
    content = block.get("content")
    if isinstance(content, list):
        texts = [b for b in content if isinstance(b, dict) and b.get("type") == "text"]
        content = _text_blocks(texts, where)
    elif content is not None and not isinstance(content, str):
        raise UsageError(f"{where}.content must be a string or a list of blocks")
    text = content or ""
    if block.get("is_error"):
        text = f"Error: {text}"
    call_id = (fields.get(block, "tool_use_id", str, where=where) or "").removeprefix("toolu_")
    return Message("tool", text, tool_call_id=call_id)


def _image(source: Any, where: str) -> Image:
    """An image block's picture: base64 data (a URL is not fetched)."""
    if not isinstance(source, dict) or source.get("type") != "base64":
        raise UsageError(
            f"{where}: only base64 image sources are read",
            'send {"type": "base64", "media_type": "image/png", "data": ...}',
        )
    media = fields.get(source, "media_type", str, "image/png", where=where)
    data = fields.get(source, "data", str, "", where=where)
    return image_from_data_url(f"data:{media};base64,{data}", where)


def _tools(raw: Any) -> tuple[Any, ...]:
    """Anthropic's tools (a name, a description, an ``input_schema``) as both other APIs
    send them; server tools (web search, code execution) are not run here."""
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise UsageError("'tools' must be a list")
    spec = []
    for i, tool in enumerate(raw):
        if not isinstance(tool, dict) or tool.get("type", "custom") not in ("custom", None):
            kind = tool.get("type") if isinstance(tool, dict) else None
            raise UsageError(
                f"tools[{i}] is a {kind} tool, which this server does not run",
                "send tools with a name, a description and an input_schema",
            )
        function = {
            "name": tool.get("name"),
            "description": tool.get("description") or "",
            "parameters": tool.get("input_schema") or {},
        }
        spec.append({"type": "function", "function": function})
    return parse_tools(spec)


def _tool_choice(value: Any) -> str:
    """auto, any (required), none, or one tool by name."""
    if value is None:
        return "auto"
    kind = value.get("type") if isinstance(value, dict) else None
    if kind in ("auto", "none"):
        return str(kind)
    if kind == "any":
        return "required"
    if kind == "tool" and isinstance(value.get("name"), str):
        return str(value["name"])
    raise UsageError(
        f"'tool_choice' cannot be {json.dumps(value)[:60]}",
        'use {"type": "auto"}, {"type": "any"}, {"type": "none"} or {"type": "tool", "name": ...}',
    )


def _thinking(value: Any) -> tuple[bool | None, int | None]:
    """``thinking``: enabled with its budget, or disabled."""
    if value is None:
        return None, None
    kind = value.get("type") if isinstance(value, dict) else None
    if kind == "disabled":
        return False, None
    if kind == "enabled":
        budget = value.get("budget_tokens")
        if budget is not None and (isinstance(budget, bool) or not isinstance(budget, int)):
            raise UsageError("'thinking.budget_tokens' must be a number of tokens")
        return True, budget
    if kind == "adaptive":
        return True, None
    raise UsageError(
        f"'thinking' cannot be {json.dumps(value)[:60]}",
        'use {"type": "enabled", "budget_tokens": N} or {"type": "disabled"}',
    )


def _stop_reason(done: Done) -> tuple[str, str | None]:
    """Why the answer ended, as Anthropic says it, and the stop sequence that ended it."""
    if done.calls:
        return "tool_use", None
    if done.stats.finish_reason == FinishReason.LENGTH:
        return "max_tokens", None
    return "end_turn", None


def _usage(stats: Stats) -> dict[str, int]:
    """Anthropic's usage: ``input_tokens`` are those read, the cached ones apart."""
    cached = stats.prompt_tokens - stats.prompt_evaluated if stats.prompt_evaluated else 0
    return {
        "input_tokens": stats.prompt_tokens - cached,
        "output_tokens": stats.completion_tokens,
        "cache_read_input_tokens": cached,
        "cache_creation_input_tokens": 0,
    }


def _tool_use(call: ToolCall) -> dict[str, Any]:
    return {"type": "tool_use", "id": _tool_id(call), "name": call.name, "input": call.arguments}


def _tool_id(call: ToolCall) -> str:
    return call.id if call.id.startswith("toolu_") else f"toolu_{call.id}"


@dataclass
class MessageReply:
    """``/v1/messages``' objects: the message's start, its content blocks as they come (a
    trace's block, the text's, the calls'), its stop reason and usage."""

    model: str
    ident: str = field(default_factory=lambda: "msg_" + secrets.token_hex(12))
    _open: str | None = None  # the content block being streamed: thinking or text
    _index: int = -1  # its index

    def _message(self, content: list[Any], stats: Stats | None = None) -> Obj:
        return {
            "id": self.ident,
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": content,
            "stop_reason": None,
            "stop_sequence": None,
            "usage": _usage(stats or Stats()),
        }

    def opening(self) -> list[Obj]:
        return [{"type": "message_start", "message": self._message([])}, {"type": "ping"}]

    def _switch(self, kind: str) -> list[Obj]:
        """Close the open block unless it is of ``kind``, and open one of ``kind``."""
        if self._open == kind:
            return []
        out = self._close()
        self._open, self._index = kind, self._index + 1
        empty: Obj = {"type": "text", "text": ""}
        if kind == "thinking":
            empty = {"type": "thinking", "thinking": "", "signature": ""}
        return [*out, {"type": "content_block_start", "index": self._index, "content_block": empty}]

    def _close(self) -> list[Obj]:
        if self._open is None:
            return []
        out: list[Obj] = []
        if self._open == "thinking":
            delta = {"type": "signature_delta", "signature": _SIGNATURE}
            out.append({"type": "content_block_delta", "index": self._index, "delta": delta})
        self._open = None
        return [*out, {"type": "content_block_stop", "index": self._index}]

    def piece(self, text: str, probs: Sequence[Logprobs] = ()) -> list[Obj]:
        delta = {"type": "text_delta", "text": text}
        return [*self._switch("text"),
                {"type": "content_block_delta", "index": self._index, "delta": delta}]  # fmt: skip

    def thinking(self, text: str) -> list[Obj]:
        delta = {"type": "thinking_delta", "thinking": text}
        return [*self._switch("thinking"),
                {"type": "content_block_delta", "index": self._index, "delta": delta}]  # fmt: skip

    def called(self, calls: tuple[ToolCall, ...]) -> list[Obj]:
        out = self._close()
        for call in calls:
            self._index += 1
            block = _tool_use(call) | {"input": {}}
            arguments = json.dumps(call.arguments, ensure_ascii=False)
            delta = {"type": "input_json_delta", "partial_json": arguments}
            out += [
                {"type": "content_block_start", "index": self._index, "content_block": block},
                {"type": "content_block_delta", "index": self._index, "delta": delta},
                {"type": "content_block_stop", "index": self._index},
            ]
        return out

    def last(self, done: Done) -> list[Obj]:
        reason, sequence = _stop_reason(done)
        usage = _usage(done.stats)  # the prompt's size is known only now: message_start had 0
        delta = {"stop_reason": reason, "stop_sequence": sequence}
        return [
            *self._close(),
            {"type": "message_delta", "delta": delta, "usage": usage},
            {"type": "message_stop"},
        ]

    def whole(self, done: Done) -> Obj:
        content: list[Any] = []
        if done.thinking:
            content.append({"type": "thinking", "thinking": done.thinking, "signature": _SIGNATURE})
        if done.text:
            content.append({"type": "text", "text": done.text})
        content += [_tool_use(c) for c in done.calls]
        reason, sequence = _stop_reason(done)
        return self._message(content, done.stats) | {"stop_reason": reason,
                                                     "stop_sequence": sequence}  # fmt: skip

    def error(self, e: LocalrunError) -> Obj:
        return error(e)
