"""The OpenAI API's converter: request bodies to an :class:`Ask`, events to its objects.

Streams are server-sent events: the first chunk carries the role, ``finish_reason`` comes
in a chunk of its own, the usage in one more when ``stream_options.include_usage`` asks,
then ``data: [DONE]``; one id across a stream. Errors take OpenAI's shape. Plain functions
of the body and the events: the handlers are :mod:`.routes`.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from localrun.engine.types import FinishReason, Logprobs, Stats
from localrun.errors import LocalrunError, UsageError
from localrun.images import Image
from localrun.models.parameters import openai_fields
from localrun.prompt import grammar
from localrun.prompt.template import Message
from localrun.prompt.tools import ToolCall, parse_tools
from localrun.server import catalog, fields, probs
from localrun.server.answer import Ask
from localrun.server.stream import SSE, Done, Obj
from localrun.server.wire import OPENAI_ROLES, image_url, read_call

WIRE = SSE
_ERROR_TYPES = {401: "authentication_error", 403: "permission_error", 404: "not_found_error"}


def error(e: LocalrunError) -> Obj:
    """An error in OpenAI's shape."""
    text = e.message if not e.hint else f"{e.message} ({e.hint})"
    kind = _ERROR_TYPES.get(e.http_status, "invalid_request_error")
    return {
        "error": {
            "message": text,
            "type": kind if e.http_status < 500 else "server_error",
            "param": None,
            "code": None,
        }
    }


def _usage(stats: Stats) -> dict[str, Any]:
    usage: dict[str, Any] = {
        "prompt_tokens": stats.prompt_tokens,
        "completion_tokens": stats.completion_tokens,
        "total_tokens": stats.prompt_tokens + stats.completion_tokens,
    }
    details: dict[str, int] = {}
    if stats.thinking_tokens:
        details["reasoning_tokens"] = stats.thinking_tokens
    if stats.drafted:
        # Speculative decoding's guesses, in the fields OpenAI gives predicted outputs.
        details["accepted_prediction_tokens"] = stats.accepted
        details["rejected_prediction_tokens"] = stats.drafted - stats.accepted
    if details:
        usage["completion_tokens_details"] = details
    return usage


def _finish(stats: Stats, calls: tuple[ToolCall, ...] = ()) -> str:
    if calls:
        return "tool_calls"
    return "length" if stats.finish_reason == FinishReason.LENGTH else "stop"


def _call(call: ToolCall) -> dict[str, Any]:
    """A call as OpenAI gives it: the arguments as a JSON string."""
    arguments = json.dumps(call.arguments, ensure_ascii=False)
    return {
        "id": call.id,
        "type": "function",
        "function": {"name": call.name, "arguments": arguments},
    }


def _message(m: Any, i: int, remote_images: bool = False) -> Message:
    """One of the request's messages: text (with pictures), an assistant's tool calls, a
    tool's result. ``remote_images``: an image_url part's http(s) URL is fetched."""
    where = f"messages[{i}]"
    if not isinstance(m, dict):
        raise UsageError(f"{where} must be an object")
    role = fields.get(m, "role", str, where=where)
    if role == "function":  # the form before tools: a result without the call it answers
        raise UsageError(
            f'{where} has the old role "function"',
            'send it as a "tool" message with the tool_call_id of the call it answers',
        )
    if role not in OPENAI_ROLES:
        raise UsageError(
            f"{where} has the role {json.dumps(role)}", f"use one of {', '.join(OPENAI_ROLES)}"
        )
    calls = [
        read_call(c, f"{where}.tool_calls[{j}]", "a function with a name", openai=True)
        for j, c in enumerate(fields.get(m, "tool_calls", list, [], where=where))
    ]
    tool_call_id = fields.get(m, "tool_call_id", str, where=where) if role == "tool" else None
    name = fields.get(m, "name", str, where=where) if role == "tool" else None
    content, images = _content(m.get("content"), where, remote_images)
    return Message(OPENAI_ROLES[role], content, tuple(calls), tool_call_id, name, images)


def _content(value: Any, where: str, remote_images: bool) -> tuple[str, tuple[Image, ...]]:
    """A message's content: a string, or a list of text and image_url parts (the pictures
    go before the text, as Ollama puts them)."""
    if value is None or isinstance(value, str):
        return value or "", ()
    if not isinstance(value, list):
        raise UsageError(f"{where} must be a string or a list of text and image_url parts")
    texts: list[str] = []
    images: list[Image] = []
    for j, part in enumerate(value):
        kind = part.get("type") if isinstance(part, dict) else type(part).__name__
        if kind in ("text", "refusal"):  # an assistant's refusal, sent back, is its text
            texts.append(fields.get(part, kind, str, "", where=f"{where}.content[{j}]"))
        elif kind == "image_url":
            images.append(image_url(part.get("image_url"), f"{where}.content[{j}]", remote_images))
        else:
            raise UsageError(
                f"{where} has a part of type {json.dumps(kind)}",
                "send text and image_url parts",
            )
    return "".join(texts), tuple(images)


def _options(body: dict[str, Any]) -> dict[str, Any]:
    """OpenAI's sampling fields as the Ollama options they mean."""
    if body.get("functions"):
        raise UsageError("'functions' is the old form of tools", "send them as 'tools'")
    options: dict[str, Any] = {}
    # OpenAI's own fields, then those llama-server and vLLM also take.
    for theirs, parameter in openai_fields():
        ours = parameter.name
        value = fields.get(body, theirs, parameter.kind)
        if value is not None and ours not in options:
            if ours == "temperature" and value > 2:
                raise UsageError(f"'temperature' must be between 0 and 2, not {value}")
            if ours == "num_predict" and value < 0:
                # Ollama's -1 ("until the context is full") is not OpenAI's: its lengths are
                # counts. Left out, the answer runs until the model stops or the context fills.
                raise UsageError(
                    f"'{theirs}' must be 0 or more, not {value}",
                    f"give a number of tokens, or leave '{theirs}' out for no limit",
                )
            fields.in_range(ours, value)
            options[ours] = value
    if body.get("stop") is not None:
        options["stop"] = fields.stops(body["stop"])
    return options


def _n(body: dict[str, Any]) -> int:
    """How many answers to the prompt (each its own sequence of the engine, and seed)."""
    from localrun.server.choices import MAX_N

    n = int(fields.get(body, "n", int, 1))
    if not 1 <= n <= MAX_N:
        raise UsageError(f"'n' must be between 1 and {MAX_N}, not {n}", "ask for fewer choices")
    return n


def _response_format(body: dict[str, Any]) -> str | None:
    """The grammar of ``response_format``: ``json_object``, or ``json_schema`` with its
    ``schema`` (followed whether or not ``strict`` asks: a grammar is always strict)."""
    value = body.get("response_format")
    if value is None:
        return None
    if not isinstance(value, dict):
        raise UsageError("'response_format' must be an object", 'send {"type": "json_object"}')
    kind = value.get("type")
    if kind in (None, "text"):
        return None
    if kind == "json_object":
        return grammar.json_value(object_only=True).grammar
    if kind == "json_schema":
        spec = value.get("json_schema")
        if not isinstance(spec, dict) or not isinstance(spec.get("schema"), dict):
            raise UsageError(
                "'response_format.json_schema.schema' must be a JSON schema (an object)",
                'send {"type": "json_schema", "json_schema": {"name": ..., "schema": {...}}}',
            )
        return grammar.json_schema(spec["schema"]).grammar
    raise UsageError(
        f"'response_format.type' cannot be {json.dumps(kind)[:40]}",
        "use text, json_object or json_schema",
    )


def chat_ask(body: dict[str, Any], remote_images: bool = False) -> Ask:
    """``/v1/chat/completions``' request. ``remote_images``: an image_url part's http(s)
    URL is fetched (so, with it, call this off the event loop)."""
    name = fields.model_name(body)
    raw = fields.get(body, "messages", list, [])
    if not raw:
        raise UsageError("'messages' is empty", "send at least one message")
    messages = [_message(m, i, remote_images) for i, m in enumerate(raw)]
    tools = parse_tools(body.get("tools"))
    choice = fields.tool_choice(body.get("tool_choice"))
    return Ask(
        name,
        tuple(messages),
        _options(body),
        grammar=_response_format(body),
        tools=tools,
        tool_choice=choice,
        ignore_eos=fields.get(body, "ignore_eos", bool, False),
        think=fields.reasoning_effort(body),
        think_budget=fields.think_budget(body),
        logprobs=probs.asked(body),
        n=_n(body),
        logit_bias=fields.logit_bias(body),
    )


def completion_ask(body: dict[str, Any]) -> Ask:
    """``/v1/completions``' request: one prompt."""
    name = fields.model_name(body)
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if not isinstance(prompt, str) or not prompt:
        raise UsageError("'prompt' must be one non-empty string", "send one prompt a request")
    echo = fields.get(body, "echo", bool, False)
    top = probs.asked_legacy(body)
    if echo and top is not None and fields.get(body, "stream", bool, False):
        raise UsageError(
            "'echo' with 'logprobs' is answered whole: the prompt's figures come at once",
            "send stream: false",
        )
    if fields.get(body, "best_of", int, 1) != 1:
        raise UsageError("'best_of' other than 1 is not supported")
    return Ask(
        name,
        (Message("user", prompt),),
        _options(body),
        grammar=_response_format(body),
        ignore_eos=fields.get(body, "ignore_eos", bool, False),
        logprobs=top,
        n=_n(body),
        suffix=fields.get(body, "suffix", str) or None,
        # Echoed, the prompt is read as it is (no chat template), as its figures are of it.
        raw=echo,
        prompt_logprobs=top if echo else None,
        logit_bias=fields.logit_bias(body),
    )


def streaming(body: dict[str, Any]) -> tuple[bool, bool]:
    """Whether the answer streams (OpenAI's default: it does not), and with its usage."""
    stream = fields.get(body, "stream", bool, False)
    options = fields.get(body, "stream_options", dict, {})
    return stream, bool(fields.get(options, "include_usage", bool, False))


@dataclass
class ChatReply:
    """``/v1/chat/completions``' objects: the role, content deltas, the calls, the finish
    reason, the usage."""

    model: str
    include_usage: bool = False
    ident: str = field(default_factory=lambda: "chatcmpl-" + secrets.token_hex(12))
    index: int = 0  # which choice (OpenAI's n)

    def choice(self, index: int) -> ChatReply:
        return replace(self, index=index, include_usage=False)

    def _chunk(
        self, delta: dict[str, Any], finish: str | None = None, tokens: Sequence[Logprobs] = ()
    ) -> Obj:
        logprobs = {"content": probs.entries(tokens), "refusal": None} if tokens else None
        return {
            "id": self.ident,
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": self.model,
            "system_fingerprint": "localrun",
            "choices": [
                {"index": self.index, "delta": delta, "logprobs": logprobs, "finish_reason": finish}
            ],
        }

    def opening(self) -> list[Obj]:
        return [self._chunk({"role": "assistant", "content": ""})]

    def piece(self, text: str, tokens: Sequence[Logprobs] = ()) -> list[Obj]:
        return [self._chunk({"content": text}, tokens=tokens)]

    def thinking(self, text: str) -> list[Obj]:
        return [self._chunk({"reasoning_content": text})]  # llama-server's and vLLM's field

    def called(self, calls: tuple[ToolCall, ...]) -> list[Obj]:
        return [self._chunk({"tool_calls": [_call(c) | {"index": i}]}) for i, c in enumerate(calls)]

    def last(self, done: Done) -> list[Obj]:
        def finish() -> Obj:
            return self._chunk({}, _finish(done.stats, done.calls))

        return [finish()] + ([_with_usage(finish(), done.stats)] if self.include_usage else [])

    def whole(self, done: Done) -> Obj:
        message: dict[str, Any] = {"role": "assistant", "content": done.text}
        if done.thinking:
            message["reasoning_content"] = done.thinking
        if done.calls:
            message["content"] = done.text or None
            message["tool_calls"] = [_call(c) for c in done.calls]
        logprobs = {"content": probs.entries(done.logprobs), "refusal": None}
        choice = {
            "index": self.index, "message": message, "logprobs": logprobs if done.logprobs else None
        }  # fmt: skip
        return {
            "id": self.ident,
            "object": "chat.completion",
            "created": int(time.time()),
            "model": self.model,
            "system_fingerprint": "localrun",
            "choices": [choice | {"finish_reason": _finish(done.stats, done.calls)}],
            "usage": _usage(done.stats),
        }

    def error(self, e: LocalrunError) -> Obj:
        return error(e)


@dataclass
class CompletionReply:
    """``/v1/completions``' objects: text pieces, the finish reason, the usage."""

    model: str
    include_usage: bool = False
    ident: str = field(default_factory=lambda: "cmpl-" + secrets.token_hex(12))
    index: int = 0  # which choice (OpenAI's n)
    echo: str | None = None  # the prompt, given back before the answer (OpenAI's echo)

    def choice(self, index: int) -> CompletionReply:
        return replace(self, index=index, include_usage=False)

    _offset: int = 0  # where the next piece begins in the answer (the text offsets' origin)

    def _chunk(self, text: str, finish: str | None = None, tokens: Sequence[Logprobs] = ()) -> Obj:
        logprobs = probs.legacy(tokens, self._offset) if tokens else None
        self._offset += len(text)
        return {
            "id": self.ident,
            "object": "text_completion",
            "created": int(time.time()),
            "model": self.model,
            "system_fingerprint": "localrun",
            "choices": [
                {"index": self.index, "text": text, "logprobs": logprobs, "finish_reason": finish}
            ],
        }

    def opening(self) -> list[Obj]:
        return [self._chunk(self.echo)] if self.echo else []

    def piece(self, text: str, tokens: Sequence[Logprobs] = ()) -> list[Obj]:
        return [self._chunk(text, tokens=tokens)]

    def thinking(self, text: str) -> list[Obj]:
        return []  # a completion has no field for it: only the answer is its text

    def called(self, calls: tuple[ToolCall, ...]) -> list[Obj]:
        return []  # a completion offers no tools

    def last(self, done: Done) -> list[Obj]:
        def finish() -> Obj:
            return self._chunk("", _finish(done.stats))

        return [finish()] + ([_with_usage(finish(), done.stats)] if self.include_usage else [])

    def whole(self, done: Done) -> Obj:
        text = (self.echo or "") + done.text
        tokens = (*done.prompt_logprobs, *done.logprobs) if self.echo else done.logprobs
        return self._chunk(text, _finish(done.stats), tokens) | {"usage": _usage(done.stats)}

    def error(self, e: LocalrunError) -> Obj:
        return error(e)


def _with_usage(chunk: Obj, stats: Stats) -> Obj:
    """The stream's usage chunk (``stream_options.include_usage``): no choices."""
    return chunk | {"choices": [], "usage": _usage(stats)}


def model(m: catalog.Listed) -> dict[str, Any]:
    return {"id": m.name, "object": "model", "created": int(m.modified), "owned_by": "localrun"}
