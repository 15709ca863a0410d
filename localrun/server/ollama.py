"""The Ollama API's converter: request bodies to an :class:`Ask`, events to its objects.

Streams are NDJSON (one object a line); durations are nanoseconds; the last object carries
``done_reason`` and the timings. An error before the first token is ``{"error": ...}`` with
its HTTP status; one after it is a last line ``{"error": ...}``. Plain functions of the body
and the events: the handlers are :mod:`.routes`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from localrun.engine.types import Logprobs, Stats
from localrun.errors import LocalrunError, UsageError
from localrun.images import Image, image_from_base64
from localrun.models.gotemplate import is_go_template, to_jinja
from localrun.prompt import grammar
from localrun.prompt.template import Message
from localrun.prompt.tools import ToolCall, parse_tools
from localrun.server import catalog, fields, probs
from localrun.server.answer import Ask, Embedded
from localrun.server.stream import NDJSON, Done, Obj
from localrun.server.wire import ROLES, read_call

WIRE = NDJSON


def now() -> str:
    return catalog.timestamp(time.time())


def ns(seconds: float) -> int:
    return int(seconds * 1e9)


def error(e: LocalrunError) -> Obj:
    """An error in Ollama's shape."""
    return {"error": e.message if not e.hint else f"{e.message} ({e.hint})"}


def timings(stats: Stats) -> dict[str, Any]:
    """The final object's counts and durations (nanoseconds)."""
    n = stats.completion_tokens
    # The decode rate is (n - 1) / decode_s; eval_count / eval_duration must give it back.
    eval_s = stats.decode_s * n / (n - 1) if n > 1 else stats.decode_s
    return {
        "done_reason": "length" if stats.finish_reason.value == "length" else "stop",
        "total_duration": ns(stats.total_s + stats.load_s),
        "load_duration": ns(stats.load_s),
        "prompt_eval_count": stats.prompt_tokens,
        "prompt_eval_duration": ns(stats.prefill_s),
        "eval_count": n,
        "eval_duration": ns(eval_s),
    }


def _template(body: dict[str, Any], raw: bool) -> str | None:
    """``/api/generate``'s own ``template`` (a Go template, translated as a Modelfile's
    TEMPLATE is), over the model's for this request."""
    text = fields.get(body, "template", str) or None
    if text is None:
        return None
    if raw:
        raise UsageError(
            "'template' is not read with 'raw': a raw prompt is read as it is",
            "send one of them",
        )
    return to_jinja(text) if is_go_template(text) else text


def _format(body: dict[str, Any]) -> str | None:
    """The grammar of Ollama's ``format``: ``"json"`` (a JSON object) or a JSON schema."""
    value = body.get("format")
    if value is None or value == "":
        return None
    if value == "json":
        return grammar.json_value(object_only=True).grammar
    if isinstance(value, dict):
        return grammar.json_schema(value).grammar
    raise UsageError(
        f"'format' cannot be {json.dumps(value)[:40]}", 'send "json" or a JSON schema (an object)'
    )


def streaming(body: dict[str, Any]) -> bool:
    """Whether the answer streams (Ollama's default: it does)."""
    return bool(fields.get(body, "stream", bool, True))


def generate_ask(body: dict[str, Any]) -> Ask:
    """``/api/generate``'s request. With nothing to answer (no prompt, context or pictures)
    the Ask has no messages: the model is only loaded, or unloaded."""
    name = fields.model_name(body)
    prompt = fields.get(body, "prompt", str, "")
    images = _images(body.get("images"), "images")
    keep = fields.keep_alive(body.get("keep_alive"))
    context = fields.get(body, "context", list, [])
    if not all(isinstance(t, int) and not isinstance(t, bool) for t in context):
        raise UsageError("'context' must be a list of token ids")
    if not prompt and not context and not images:
        return Ask(name, keep_alive=keep)
    raw = fields.get(body, "raw", bool, False)
    suffix = fields.get(body, "suffix", str) or None
    if suffix is not None and (raw or images or context):
        raise UsageError(
            "'suffix' fills in the middle of a plain prompt: not with 'raw', 'images' or 'context'",
            "send the text before as 'prompt' and the text after as 'suffix'",
        )
    return Ask(
        model=name,
        messages=(Message("user", prompt, images=images),),
        options=fields.options(body.get("options")),
        keep_alive=keep,
        system=fields.get(body, "system", str),
        raw=raw,
        context=tuple(context),
        grammar=_format(body),
        think=fields.think(body.get("think")),
        think_budget=fields.think_budget(body),
        truncate=_truncate(body) and not raw,
        logprobs=probs.asked(body),
        suffix=suffix,
        template=_template(body, raw),
    )


def chat_ask(body: dict[str, Any]) -> Ask:
    """``/api/chat``'s request; without messages, the model is only loaded (or unloaded)."""
    name = fields.model_name(body)
    keep = fields.keep_alive(body.get("keep_alive"))
    tools = parse_tools(body.get("tools"))
    messages = _messages(fields.get(body, "messages", list, []))
    if not messages:
        return Ask(name, keep_alive=keep)
    options = fields.options(body.get("options"))
    # tool_choice is not Ollama's; localrun takes it here too, as llama.cpp's server does.
    choice = fields.tool_choice(body.get("tool_choice"))
    return Ask(name, messages, options, keep, grammar=_format(body), tools=tools,
               tool_choice=choice, think=fields.think(body.get("think")),
               think_budget=fields.think_budget(body), truncate=_truncate(body),
               logprobs=probs.asked(body))  # fmt: skip


def _truncate(body: dict[str, Any]) -> bool:
    """Ollama's ``truncate``: leave the oldest turns out of a conversation too long for the
    context (on /api/generate, a Modelfile's MESSAGE turns, as Ollama's generate does; the
    prompt itself is never cut, where Ollama's runner cuts tokens out of its middle).
    Ollama's default truncates; localrun's refuses a prompt too long unless asked."""
    return bool(fields.get(body, "truncate", bool, False))


def loaded(ask: Ask, reason: str, *, chat: bool) -> Obj:
    """The answer to a request with nothing to answer: ``reason`` is load or unload."""
    said: Obj = {"message": {"role": "assistant", "content": ""}} if chat else {"response": ""}
    return {"model": ask.model, "created_at": now(), **said, "done": True, "done_reason": reason}


@dataclass
class GenerateReply:
    """``/api/generate``'s objects: ``response`` pieces, then the timings and ``context``."""

    model: str

    def opening(self) -> list[Obj]:
        return []

    def _piece(self, text: str) -> Obj:
        return {"model": self.model, "created_at": now(), "response": text, "done": False}

    def piece(self, text: str, tokens: Sequence[Logprobs] = ()) -> list[Obj]:
        return [self._piece(text) | ({"logprobs": probs.entries(tokens)} if tokens else {})]

    def thinking(self, text: str) -> list[Obj]:
        return [self._piece("") | {"thinking": text}]

    def called(self, calls: tuple[ToolCall, ...]) -> list[Obj]:
        return []  # generate offers no tools

    def _last(self, done: Done) -> Obj:
        final = self._piece("") | {"done": True} | timings(done.stats)
        if done.context is not None:
            final["context"] = list(done.context)
        return final

    def last(self, done: Done) -> list[Obj]:
        return [self._last(done)]

    def whole(self, done: Done) -> Obj:
        whole = self._last(done) | {"response": done.text} | _logprobs(done)
        return whole | ({"thinking": done.thinking} if done.thinking else {})

    def error(self, e: LocalrunError) -> Obj:
        return error(e)


@dataclass
class ChatReply:
    """``/api/chat``'s objects: ``message`` pieces, the calls, then the timings."""

    model: str

    def opening(self) -> list[Obj]:
        return []

    def _piece(self, text: str) -> Obj:
        return {
            "model": self.model,
            "created_at": now(),
            "message": {"role": "assistant", "content": text},
            "done": False,
        }

    def piece(self, text: str, tokens: Sequence[Logprobs] = ()) -> list[Obj]:
        return [self._piece(text) | ({"logprobs": probs.entries(tokens)} if tokens else {})]

    def thinking(self, text: str) -> list[Obj]:
        made = self._piece("")
        made["message"]["thinking"] = text
        return [made]

    def called(self, calls: tuple[ToolCall, ...]) -> list[Obj]:
        made = self._piece("")
        made["message"]["tool_calls"] = [_call(c) for c in calls]
        return [made]

    def _last(self, done: Done) -> Obj:
        return self._piece("") | {"done": True} | timings(done.stats)

    def last(self, done: Done) -> list[Obj]:
        return [self._last(done)]

    def whole(self, done: Done) -> Obj:
        final = self._last(done)
        final["message"]["content"] = done.text
        if done.thinking:
            final["message"]["thinking"] = done.thinking
        if done.calls:
            final["message"]["tool_calls"] = [_call(c) for c in done.calls]
        return final | _logprobs(done)

    def error(self, e: LocalrunError) -> Obj:
        return error(e)


def _logprobs(done: Done) -> Obj:
    """Ollama's ``logprobs`` of a whole answer: one object a token, where asked."""
    return {"logprobs": probs.entries(done.logprobs)} if done.logprobs else {}


def _messages(raw: list[Any]) -> tuple[Message, ...]:
    out = []
    for i, m in enumerate(raw):
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            raise UsageError(f"{where} must be an object with 'role' and 'content'")
        role = fields.get(m, "role", str, where=where)
        if role not in ROLES:
            raise UsageError(
                f"{where} has the role {json.dumps(role)}", f"use one of {', '.join(ROLES)}"
            )
        images = _images(m.get("images"), f"{where}.images")
        shape = "{'function': {'name': ..., 'arguments': ...}}"
        calls = tuple(
            read_call(c, f"{where}.tool_calls[{j}]", shape)
            for j, c in enumerate(fields.get(m, "tool_calls", list, [], where=where))
        )
        name = fields.get(m, "tool_name", str, where=where) or fields.get(
            m, "name", str, where=where
        )
        content = fields.get(m, "content", str, "", where=where)
        answers = fields.get(m, "tool_call_id", str, where=where) if role == "tool" else None
        out.append(Message(role, content, calls, answers, name if role == "tool" else None,
                           images))  # fmt: skip
    return tuple(out)


def _images(value: Any, where: str) -> tuple[Image, ...]:
    """Ollama's ``images``: pictures in base64."""
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise UsageError(f"'{where}' must be a list of base64 strings")
    return tuple(image_from_base64(v, f"{where}[{n}]") for n, v in enumerate(value))


def _call(call: ToolCall) -> dict[str, Any]:
    return {"function": {"name": call.name, "arguments": call.arguments}}


def embedded(model: str, done: Embedded) -> Obj:
    """``/api/embed``'s answer."""
    return {
        "model": model,
        "embeddings": done.vectors,
        "total_duration": ns(done.total_s),
        "load_duration": ns(done.load_s),
        "prompt_eval_count": done.prompt_tokens,
    }
