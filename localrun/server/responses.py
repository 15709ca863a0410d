"""OpenAI's Responses API (what Codex speaks): request bodies to an :class:`Ask`, events to
its objects.

A request's ``input`` is a string or a list of items: messages (their content a string, or
``input_text``, ``output_text`` and ``input_image`` parts), an assistant's earlier
``function_call`` and its ``function_call_output``, and earlier ``reasoning`` items, which
are not read again. ``instructions`` is the system prompt; ``tools`` are flat function tools
(``{"type": "function", "name", "parameters"}``); ``text.format`` holds the answer to JSON or
a schema; ``truncation: "auto"`` leaves the oldest turns out of a conversation too long
for the context (the default refuses it). Nothing is stored (``previous_response_id`` is
refused: the client sends the whole conversation). A stream is named server-sent events,
each with a ``sequence_number``: ``response.created``, ``response.in_progress``, then each
output item's ``added``, its part's deltas and ``done`` (a trace's ``reasoning`` item, the
text's ``message``, each call's ``function_call``), and ``response.completed`` (or
``response.incomplete``) with the whole response. Errors before the stream take OpenAI's
shape (:func:`localrun.server.openai.error`).

Over 400 lines because the request's items and the stream's items are one API's two halves
that share their shapes (a function_call read back is the one written); the request's half
would split off as it is, should it grow.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from localrun.engine.types import FinishReason, Logprobs, Stats
from localrun.errors import LocalrunError, UsageError
from localrun.images import Image
from localrun.models.parameters import openai_fields
from localrun.prompt import grammar
from localrun.prompt.template import Message
from localrun.prompt.tools import ToolCall, parse_tools
from localrun.server import fields, openai
from localrun.server.answer import Ask
from localrun.server.stream import NAMED_SSE, Done, Obj
from localrun.server.wire import OPENAI_ROLES, image_url

WIRE = NAMED_SSE
_ROLES = {k: v for k, v in OPENAI_ROLES.items() if k != "tool"}  # results: function_call_output
_TEXT_PARTS = ("input_text", "output_text", "text", "refusal")
# What a stateless server cannot do: each asks for something stored between requests.
_STATEFUL = ("previous_response_id", "conversation", "prompt")


def request_ask(body: dict[str, Any], remote_images: bool = False) -> Ask:
    """``/v1/responses``' request. ``remote_images``: an ``input_image``'s http(s) URL is
    fetched (so, with it, call this off the event loop)."""
    for name in _STATEFUL:
        if body.get(name) is not None:
            raise UsageError(
                f"'{name}' is not supported: this server keeps no responses or conversations",
                "send the whole conversation as 'input'",
            )
    if fields.get(body, "background", bool, False):
        raise UsageError("'background' is not supported", "send the request without it")
    if fields.get(body, "top_logprobs", int, 0):
        raise UsageError("'top_logprobs' is not supported yet", "send the request without it")
    name = fields.model_name(body)
    instructions = fields.get(body, "instructions", str, "")
    given = [Message("system", instructions)] if instructions else []
    messages = _leading_system(given + _input(body.get("input"), remote_images))
    return Ask(
        name,
        tuple(messages),
        _options(body),
        grammar=_text_format(body.get("text")),
        tools=parse_tools(_tools(body.get("tools"))),
        tool_choice=_tool_choice(body.get("tool_choice")),
        think=fields.reasoning_effort(body),
        think_budget=fields.think_budget(body),
        truncate=_truncation(body),
    )


def _truncation(body: dict[str, Any]) -> bool:
    """``truncation``: "auto" leaves the oldest turns out of a conversation too long for the
    context (the instructions, the first system message, stay); "disabled", the default,
    refuses it with a 400."""
    value = body.get("truncation")
    if value is None or value in ("auto", "disabled"):
        return value == "auto"
    raise UsageError(f"'truncation' cannot be {json.dumps(value)[:40]}", 'use "auto" or "disabled"')


def _leading_system(messages: list[Message]) -> list[Message]:
    """The system messages the conversation begins with, as one: Codex sends its
    ``instructions`` and then developer messages, and many chat templates (Llama 3's,
    Mistral's, Gemma's) read only one system message, the first."""
    first = 0
    while first < len(messages) and messages[first].role == "system":
        first += 1
    if first < 2:
        return messages
    text = "\n\n".join(m.content for m in messages[:first] if m.content)
    return [Message("system", text), *messages[first:]]


def _input(value: Any, remote_images: bool) -> list[Message]:
    """``input``: one user message's text, or a list of items."""
    if isinstance(value, str):
        if not value:
            raise UsageError("'input' is empty", "send the user's text, or a list of items")
        return [Message("user", value)]
    if not isinstance(value, list) or not value:
        raise UsageError(
            "'input' must be a string or a non-empty list of items",
            'send "input": "Hi" or [{"role": "user", "content": "Hi"}]',
        )
    out: list[Message] = []
    names: dict[str, str] = {}  # each earlier call's id: its function's name
    for i, item in enumerate(value):
        where = f"input[{i}]"
        if not isinstance(item, dict):
            raise UsageError(f"{where} must be an object", '{"role": "user", "content": ...}')
        kind = item.get("type", "message")
        if kind == "message":
            out.append(_message(item, where, remote_images))
        elif kind == "function_call":
            call = _call(item, where)
            names[call.id] = call.name
            last = out[-1] if out else None
            if last is not None and last.role == "assistant":  # the calls of one turn together
                out[-1] = Message("assistant", last.content, (*last.tool_calls, call))
            else:
                out.append(Message("assistant", "", (call,)))
        elif kind == "function_call_output":
            out.append(_result(item, where, names, remote_images))
        elif kind == "reasoning":
            continue  # an earlier answer's trace is not read again
        else:
            raise UsageError(
                f"{where} is an item of type {json.dumps(kind)[:40]}, which this server does "
                "not read",
                "send message, function_call, function_call_output and reasoning items",
            )
    if not any(m.role != "system" for m in out):
        raise UsageError("'input' holds no message", "send at least one user message")
    return out


def _message(item: dict[str, Any], where: str, remote_images: bool) -> Message:
    role = fields.get(item, "role", str, where=where)
    if role not in _ROLES:
        raise UsageError(
            f"{where} has the role {json.dumps(role)}",
            "use user, system, developer or assistant (a tool's result is a "
            "function_call_output item)",
        )
    text, images = _content(item.get("content"), where, remote_images)
    return Message(_ROLES[role], text, images=images)


def _content(
    value: Any, where: str, remote_images: bool, key: str = "content"
) -> tuple[str, tuple[Image, ...]]:
    """A message's content (or a tool's ``output``): a string, or a list of text and
    ``input_image`` parts (the pictures go before the text, as for chat completions)."""
    if value is None or isinstance(value, str):
        return value or "", ()
    if not isinstance(value, list):
        raise UsageError(f"{where}.{key} must be a string or a list of parts")
    texts: list[str] = []
    images: list[Image] = []
    for j, part in enumerate(value):
        at = f"{where}.{key}[{j}]"
        kind = part.get("type") if isinstance(part, dict) else type(part).__name__
        if kind in _TEXT_PARTS:
            texts.append(fields.get(part, "text" if kind != "refusal" else kind, str, "", where=at))
        elif kind == "input_image":
            if part.get("image_url") is None:
                raise UsageError(f"{at} has no image_url", "send the picture as a data: URL")
            images.append(image_url(part.get("image_url"), at, remote_images))
        else:
            raise UsageError(
                f"{at} is a part of type {json.dumps(kind)[:40]}",
                "send input_text, output_text and input_image parts (files are not read)",
            )
    return "".join(texts), tuple(images)


def _call(item: dict[str, Any], where: str) -> ToolCall:
    """An earlier ``function_call``: its arguments are a JSON string."""
    name = fields.get(item, "name", str, where=where)
    call_id = fields.get(item, "call_id", str, where=where)
    if not name or not call_id:
        raise UsageError(f"{where} must have a name and a call_id", "send the call as it came")
    raw = fields.get(item, "arguments", str, "", where=where)
    arguments = fields.json_text(raw, f"{where}.arguments") if raw.strip() else {}
    if not isinstance(arguments, dict):
        raise UsageError(f"'{where}.arguments' must be a JSON object")
    return ToolCall(name, arguments, call_id)


def _result(
    item: dict[str, Any], where: str, names: dict[str, str], remote_images: bool
) -> Message:
    """A ``function_call_output``: the tool's result, a string or parts, answering the call
    of its ``call_id`` (whose function's name templates such as Gemma's and Llama's write)."""
    call_id = fields.get(item, "call_id", str, where=where)
    if not call_id:
        raise UsageError(f"{where} needs the call_id of the call it answers")
    text, images = _content(item.get("output"), where, remote_images, "output")
    return Message("tool", text, tool_call_id=call_id, name=names.get(call_id), images=images)


def _options(body: dict[str, Any]) -> dict[str, Any]:
    """The sampling fields as the Ollama options they mean: ``max_output_tokens``, then
    OpenAI's and llama-server's names, as on the chat completions' endpoint."""
    options: dict[str, Any] = {}
    most = fields.get(body, "max_output_tokens", int)
    if most is not None:
        if most < 1:
            raise UsageError(
                f"'max_output_tokens' must be 1 or more, not {most}",
                "give a number of tokens, or leave it out for no limit",
            )
        options["num_predict"] = most
    for theirs, parameter in openai_fields():
        ours = parameter.name
        value = None if ours == "num_predict" else fields.get(body, theirs, parameter.kind)
        if value is not None and ours not in options:
            if ours == "temperature" and value > 2:
                raise UsageError(f"'temperature' must be between 0 and 2, not {value}")
            fields.in_range(ours, value)
            options[ours] = value
    return options


def _text_format(value: Any) -> str | None:
    """The grammar of ``text.format``: ``json_object``, or ``json_schema`` with its ``schema``
    (followed whether or not ``strict`` asks: a grammar is always strict)."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise UsageError("'text' must be an object", 'send {"format": {"type": "json_object"}}')
    spec = value.get("format")
    if spec is None:
        return None
    kind = spec.get("type") if isinstance(spec, dict) else None
    if kind == "text":
        return None
    if kind == "json_object":
        return grammar.json_value(object_only=True).grammar
    if kind == "json_schema":
        assert isinstance(spec, dict)
        if not isinstance(spec.get("schema"), dict):
            raise UsageError(
                "'text.format.schema' must be a JSON schema (an object)",
                'send {"type": "json_schema", "name": ..., "schema": {...}}',
            )
        return grammar.json_schema(spec["schema"]).grammar
    raise UsageError(
        f"'text.format' cannot be {json.dumps(spec)[:60]}",
        "use a format of type text, json_object or json_schema",
    )


# Hosted tools a client offers by default (Codex: web search), left out rather than refused:
# the model is not offered what nothing here runs, and the agent works without it.
_LEFT_OUT = {"web_search", "web_search_preview"}


def _tools(raw: Any) -> list[Any] | None:
    """The Responses API's function tools (flat: a name, a description, parameters) in
    the chat completions' form that :func:`parse_tools` reads; a ``namespace``'s function
    tools (Codex's groups) as tools of their own; web search left out; the other hosted
    tools (file search, a computer, MCP servers) refused by name: nothing here runs them."""
    if raw is None:
        return None
    if not isinstance(raw, list):
        raise UsageError("'tools' must be a list", 'send [{"type": "function", "name": ...}]')
    flat: list[Any] = []
    for tool in raw:
        if isinstance(tool, dict) and tool.get("type") == "namespace":
            inner = tool.get("tools")
            flat += inner if isinstance(inner, list) else []
        elif not (isinstance(tool, dict) and tool.get("type") in _LEFT_OUT):
            flat.append(tool)
    raw = flat
    others = sorted(
        {str(t.get("type")) for t in raw if isinstance(t, dict) and t.get("type") != "function"}
    )
    if others:
        raise UsageError(
            f"'tools' holds tools of type {', '.join(others)}, which this server does not run",
            "send function tools only: the client runs them and sends back their output",
        )
    spec: list[Any] = []
    for tool in raw:
        if isinstance(tool, dict) and "name" in tool:
            function = {k: tool.get(k) for k in ("name", "description", "parameters")}
            spec.append({"type": "function", "function": function})
        else:
            spec.append(tool)  # the chat completions' form, or not a tool: parse_tools says
    return spec


def _tool_choice(value: Any) -> str:
    """auto, none, required, or ``{"type": "function", "name": ...}``'s one function."""
    flat = isinstance(value, dict) and value.get("type") == "function" and "function" not in value
    if flat and isinstance(value.get("name"), str):
        return str(value["name"])
    try:
        return fields.tool_choice(value)
    except UsageError:
        raise UsageError(
            f"'tool_choice' cannot be {json.dumps(value)[:60]}",
            'use "auto", "none", "required" or {"type": "function", "name": ...}',
        ) from None


# -- the objects -------------------------------------------------------------------------


def _usage(stats: Stats) -> dict[str, Any]:
    # The prompt's tokens read back from the cache; none is known where nothing was
    # evaluated here (a remote engine's answer): at least the last token always is.
    cached = stats.prompt_tokens - stats.prompt_evaluated if stats.prompt_evaluated else 0
    return {
        "input_tokens": stats.prompt_tokens,
        "input_tokens_details": {"cached_tokens": max(0, cached), "cache_write_tokens": 0},
        "output_tokens": stats.completion_tokens,
        "output_tokens_details": {"reasoning_tokens": stats.thinking_tokens},
        "total_tokens": stats.prompt_tokens + stats.completion_tokens,
    }


def _ident(prefix: str) -> str:
    return prefix + secrets.token_hex(12)


def _reasoning(ident: str, text: str, status: str | None = None) -> Obj:
    item: Obj = {"type": "reasoning", "id": ident, "summary": []}
    item["content"] = [{"type": "reasoning_text", "text": text}] if text else []
    return item | ({"status": status} if status else {})


def _text_part(text: str) -> Obj:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def _message_item(ident: str, text: str | None, status: str) -> Obj:
    content = [] if text is None else [_text_part(text)]
    return {"type": "message", "id": ident, "status": status, "role": "assistant",
            "content": content}  # fmt: skip


def _function_call(call: ToolCall, ident: str, arguments: str, status: str) -> Obj:
    return {"type": "function_call", "id": ident, "call_id": call.id, "name": call.name,
            "arguments": arguments, "status": status}  # fmt: skip


def _arguments(call: ToolCall) -> str:
    return json.dumps(call.arguments, ensure_ascii=False)


def echo(body: dict[str, Any]) -> Obj:
    """What a response repeats of its (checked) request, as OpenAI's does: the openai
    client's ``Response`` requires ``tools``, ``tool_choice`` and ``parallel_tool_calls``."""
    tools = []
    for tool in parse_tools(_tools(body.get("tools"))):
        tools.append({"type": "function", "name": tool.name, "description": tool.description,
                      "parameters": tool.parameters, "strict": False})  # fmt: skip
    reasoning, text = body.get("reasoning"), body.get("text")
    reasoning = reasoning if isinstance(reasoning, dict) else {}
    text = text if isinstance(text, dict) else {}
    return {
        "instructions": body.get("instructions"),
        "max_output_tokens": body.get("max_output_tokens"),
        "metadata": body.get("metadata") or {},
        "parallel_tool_calls": bool(body.get("parallel_tool_calls", True)),
        "reasoning": {"effort": reasoning.get("effort"), "summary": None},
        "temperature": body.get("temperature"),
        "text": {"format": text.get("format") or {"type": "text"}},
        "tool_choice": body.get("tool_choice") or "auto",
        "tools": tools,
        "top_p": body.get("top_p"),
        "truncation": body.get("truncation") or "disabled",
        "user": body.get("user"),
    }


_ECHO_DEFAULT = {"parallel_tool_calls": True, "tool_choice": "auto", "tools": []}


@dataclass
class _Open:
    """The output item being streamed: a trace's reasoning item or the text's message."""

    kind: str  # reasoning or message
    ident: str
    index: int
    parts: list[str] = field(default_factory=list)


@dataclass
class ResponseReply:
    """``/v1/responses``' objects: the response's lifecycle events around its output items
    (each opened, filled and closed as the answer's events come), or the whole response.
    ``request``: the checked request body, whose settings the response repeats."""

    model: str
    request: dict[str, Any] | None = None
    ident: str = field(default_factory=lambda: _ident("resp_"))
    created_at: int = field(default_factory=lambda: int(time.time()))
    _sequence: int = 0
    _items: list[Obj] = field(default_factory=list)  # the output items closed so far
    _open: _Open | None = None

    def _response(self, status: str, output: list[Obj], stats: Stats | None = None) -> Obj:
        incomplete = {"reason": "max_output_tokens"} if status == "incomplete" else None
        return {
            "id": self.ident,
            "object": "response",
            "created_at": self.created_at,
            "status": status,
            "completed_at": int(time.time()) if status == "completed" else None,
            "error": None,
            "incomplete_details": incomplete,
            "model": self.model,
            "output": output,
            "previous_response_id": None,
            "store": False,
            "usage": _usage(stats) if stats is not None else None,
            **(echo(self.request) if self.request is not None else _ECHO_DEFAULT),
        }

    def _event(self, kind: str, **values: Any) -> Obj:
        event = {"type": kind, "sequence_number": self._sequence, **values}
        self._sequence += 1
        return event

    def opening(self) -> list[Obj]:
        started = self._response("in_progress", [])
        return [self._event("response.created", response=started),
                self._event("response.in_progress", response=started)]  # fmt: skip

    def _switch(self, kind: str) -> list[Obj]:
        """Close the open item unless it is of ``kind``, and open one of ``kind``."""
        if self._open is not None and self._open.kind == kind:
            return []
        out = self._close("completed")
        prefix = "rs_" if kind == "reasoning" else "msg_"
        opened = self._open = _Open(kind, _ident(prefix), len(self._items))
        if kind == "reasoning":
            item, part = _reasoning(opened.ident, ""), {"type": "reasoning_text", "text": ""}
        else:
            item, part = _message_item(opened.ident, None, "in_progress"), _text_part("")
        where = {"item_id": opened.ident, "output_index": opened.index, "content_index": 0}
        return [*out,
                self._event("response.output_item.added", output_index=opened.index, item=item),
                self._event("response.content_part.added", **where, part=part)]  # fmt: skip

    def _close(self, status: str) -> list[Obj]:
        """The open item's last events, with its whole text; it joins the output."""
        opened, self._open = self._open, None
        if opened is None:
            return []
        text = "".join(opened.parts)
        where = {"item_id": opened.ident, "output_index": opened.index, "content_index": 0}
        if opened.kind == "reasoning":
            part: Obj = {"type": "reasoning_text", "text": text}
            item = _reasoning(opened.ident, text, status if status == "incomplete" else None)
            done = self._event("response.reasoning_text.done", **where, text=text)
        else:
            part, item = _text_part(text), _message_item(opened.ident, text, status)
            done = self._event("response.output_text.done", **where, text=text, logprobs=[])
        self._items.append(item)
        part_done = self._event("response.content_part.done", **where, part=part)
        closed = self._event("response.output_item.done", output_index=opened.index, item=item)
        return [done, part_done, closed]

    def piece(self, text: str, probs: Sequence[Logprobs] = ()) -> list[Obj]:
        out = self._switch("message")
        assert self._open is not None
        self._open.parts.append(text)
        where = {"item_id": self._open.ident, "output_index": self._open.index}
        return [*out, self._event("response.output_text.delta", **where, content_index=0,
                                  delta=text, logprobs=[])]  # fmt: skip

    def thinking(self, text: str) -> list[Obj]:
        out = self._switch("reasoning")
        assert self._open is not None
        self._open.parts.append(text)
        where = {"item_id": self._open.ident, "output_index": self._open.index}
        return [*out, self._event("response.reasoning_text.delta", **where, content_index=0,
                                  delta=text)]  # fmt: skip

    def called(self, calls: tuple[ToolCall, ...]) -> list[Obj]:
        out = self._close("completed")
        for call in calls:
            ident, index, arguments = _ident("fc_"), len(self._items), _arguments(call)
            where = {"item_id": ident, "output_index": index}
            item = _function_call(call, ident, arguments, "completed")
            out += [
                self._event("response.output_item.added", output_index=index,
                            item=_function_call(call, ident, "", "in_progress")),
                self._event("response.function_call_arguments.delta", **where, delta=arguments),
                self._event("response.function_call_arguments.done", **where,
                            arguments=arguments),
                self._event("response.output_item.done", output_index=index, item=item),
            ]  # fmt: skip
            self._items.append(item)
        return out

    def last(self, done: Done) -> list[Obj]:
        status = _status(done.stats)
        out = self._close(status)
        whole = self._response(status, self._items, done.stats)
        return [*out, self._event(f"response.{status}", response=whole)]

    def whole(self, done: Done) -> Obj:
        status = _status(done.stats)
        output: list[Obj] = []
        if done.thinking:
            cut = status == "incomplete" and not done.text and not done.calls
            output.append(_reasoning(_ident("rs_"), done.thinking, status if cut else None))
        if done.text:
            output.append(_message_item(_ident("msg_"), done.text, status))
        for call in done.calls:
            output.append(_function_call(call, _ident("fc_"), _arguments(call), "completed"))
        return self._response(status, output, done.stats)

    def error(self, e: LocalrunError) -> Obj:
        """The stream's error event (after the response began): OpenAI's ``error`` event."""
        shaped = openai.error(e)["error"]
        return self._event("error", code=shaped["type"], message=shaped["message"], param=None)


def _status(stats: Stats) -> str:
    return "incomplete" if stats.finish_reason == FinishReason.LENGTH else "completed"
