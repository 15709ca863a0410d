"""The OpenAI API, as the ``openai`` client calls it, translated onto the engine.

Streams are server-sent events: the first chunk carries the role, ``finish_reason`` comes
in a chunk of its own, the usage in one more when ``stream_options.include_usage`` asks,
then ``data: [DONE]``; one id across a stream. Errors take OpenAI's shape.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections.abc import AsyncIterator
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from localrun.engine.types import Called, Finished, FinishReason, Stats, TextDelta
from localrun.errors import LocalrunError, ModelNotFoundError, UsageError
from localrun.images import Image, fetch_image, image_from_data_url
from localrun.models.parameters import openai_fields
from localrun.prompt import grammar
from localrun.prompt.template import Message
from localrun.prompt.tools import ToolCall, new_call_id, parse_tools
from localrun.server import catalog, fields
from localrun.server.answer import (
    Answer,
    AnswerResponse,
    Ask,
    cancel_on_disconnect,
    collect,
    embed,
)
from localrun.server.guard import error_body
from localrun.server.pool import ModelPool

ROLES = {
    "system": "system",
    "developer": "system",
    "user": "user",
    "assistant": "assistant",
    "tool": "tool",
}


def _usage(stats: Stats) -> dict[str, Any]:
    usage: dict[str, Any] = {
        "prompt_tokens": stats.prompt_tokens,
        "completion_tokens": stats.completion_tokens,
        "total_tokens": stats.prompt_tokens + stats.completion_tokens,
    }
    if stats.drafted:
        # Speculative decoding's guesses, in the fields OpenAI gives predicted outputs.
        usage["completion_tokens_details"] = {
            "accepted_prediction_tokens": stats.accepted,
            "rejected_prediction_tokens": stats.drafted - stats.accepted,
        }
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
    if role not in ROLES:
        raise UsageError(f"{where} has the role {json.dumps(role)}")
    calls = []
    for j, c in enumerate(fields.get(m, "tool_calls", list, [], where=where)):
        spec = c.get("function") if isinstance(c, dict) else None
        if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
            raise UsageError(f"{where}.tool_calls[{j}] must hold a function with a name")
        at = f"{where}.tool_calls[{j}].function.arguments"
        raw = spec.get("arguments") or "{}"
        arguments = fields.json_text(raw, at) if isinstance(raw, str) else raw
        if not isinstance(arguments, dict):
            raise UsageError(f"'{at}' must be an object")
        given = c.get("id")
        ident = given if isinstance(given, str) and given else new_call_id()
        calls.append(ToolCall(spec["name"], arguments, ident))
    tool_call_id = fields.get(m, "tool_call_id", str, where=where) if role == "tool" else None
    name = fields.get(m, "name", str, where=where) if role == "tool" else None
    content, images = _content(m.get("content"), where, remote_images)
    return Message(ROLES[role], content, tuple(calls), tool_call_id, name, images)


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
        if kind == "text":
            texts.append(fields.get(part, "text", str, "", where=f"{where}.content[{j}]"))
        elif kind == "image_url":
            images.append(_image(part.get("image_url"), f"{where}.content[{j}]", remote_images))
        else:
            raise UsageError(
                f"{where} has a part of type {json.dumps(kind)}",
                "send text and image_url parts",
            )
    return "".join(texts), tuple(images)


def _image(value: Any, where: str, remote: bool) -> Image:
    """An image_url part's picture: a data URL, or (with --allow-remote-images) fetched."""
    url = value.get("url") if isinstance(value, dict) else value
    if not isinstance(url, str) or not url:
        raise UsageError(f"{where}.image_url needs a url", "send data:image/png;base64,...")
    if url.startswith("data:"):
        return image_from_data_url(url, where)
    if url.startswith(("http://", "https://")):
        if not remote:
            raise UsageError(
                f"{where}: this server does not fetch images from URLs",
                "send the picture as a data URL, or start the server with --allow-remote-images",
            )
        return fetch_image(url, where)
    raise UsageError(f"{where}.image_url is not a data: or http(s) URL")


def _options(body: dict[str, Any]) -> dict[str, Any]:
    """OpenAI's sampling fields as the Ollama options they mean."""
    if fields.get(body, "n", int, 1) != 1:
        raise UsageError("'n' other than 1 is not supported", "ask for one choice per request")
    for name in ("frequency_penalty", "presence_penalty"):
        if fields.get(body, name, float, 0.0) != 0.0:
            raise UsageError(f"'{name}' is not supported", "use the repeat_penalty option instead")
    if fields.get(body, "logprobs", bool, False):
        raise UsageError("'logprobs' is not supported yet", "send the request without it")
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


class OpenAIAPI:
    """The handlers, over one pool of models."""

    def __init__(self, pool: ModelPool) -> None:
        self.pool = pool

    def routes(self) -> list[Route]:
        return [
            Route("/v1/chat/completions", self.chat, methods=["POST"]),
            Route("/v1/completions", self.completions, methods=["POST"]),
            Route("/v1/embeddings", self.embeddings, methods=["POST"]),
            Route("/v1/models", self.models, methods=["GET"]),
            Route("/v1/models/{model:path}", self.model, methods=["GET"]),
        ]

    async def chat(self, request: Request) -> Response:
        body = await fields.read_body(request)
        name = fields.model_name(body)
        raw = fields.get(body, "messages", list, [])
        if not raw:
            raise UsageError("'messages' is empty", "send at least one message")
        remote = self.pool.config.allow_remote_images
        if remote:  # fetching waits on the network: not on the event loop
            messages = await asyncio.to_thread(
                lambda: [_message(m, i, remote) for i, m in enumerate(raw)]
            )
        else:
            messages = [_message(m, i) for i, m in enumerate(raw)]
        tools = parse_tools(body.get("tools"))
        choice = fields.tool_choice(body.get("tool_choice"))
        ask = Ask(
            name,
            tuple(messages),
            _options(body),
            grammar=_response_format(body),
            tools=tools,
            tool_choice=choice,
            ignore_eos=fields.get(body, "ignore_eos", bool, False),
        )
        streaming, with_usage = fields.get(body, "stream", bool, False), _include_usage(body)
        answer = await Answer.begin(self.pool, ask)
        ident = "chatcmpl-" + secrets.token_hex(12)

        def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
            return {
                "id": ident,
                "object": "chat.completion.chunk",
                "created": int(time.time()),
                "model": name,
                "system_fingerprint": "localrun",
                "choices": [
                    {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
                ],
            }

        if streaming:
            first = chunk({"role": "assistant", "content": ""})
            return _sse(
                request,
                answer,
                first,
                lambda t: chunk({"content": t}),
                lambda s: chunk({}, _finish(s, answer.calls)),
                with_usage,
                lambda calls: [
                    chunk({"tool_calls": [_call(c) | {"index": i}]}) for i, c in enumerate(calls)
                ],
            )
        text, stats = await collect(request.receive, answer)
        message: dict[str, Any] = {"role": "assistant", "content": text}
        if answer.calls:
            message["content"] = text or None
            message["tool_calls"] = [_call(c) for c in answer.calls]
        return JSONResponse(
            {
                "id": ident,
                "object": "chat.completion",
                "created": int(time.time()),
                "model": name,
                "system_fingerprint": "localrun",
                "choices": [
                    {
                        "index": 0,
                        "message": message,
                        "logprobs": None,
                        "finish_reason": _finish(stats, answer.calls),
                    }
                ],
                "usage": _usage(stats),
            }
        )

    async def completions(self, request: Request) -> Response:
        body = await fields.read_body(request)
        name = fields.model_name(body)
        prompt = body.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
            prompt = prompt[0]
        if not isinstance(prompt, str) or not prompt:
            raise UsageError("'prompt' must be one non-empty string", "send one prompt a request")
        if body.get("suffix") or fields.get(body, "echo", bool, False):
            raise UsageError("'suffix' and 'echo' are not supported", "send the request without")
        if fields.get(body, "best_of", int, 1) != 1:
            raise UsageError("'best_of' other than 1 is not supported")
        ask = Ask(
            name,
            (Message("user", prompt),),
            _options(body),
            grammar=_response_format(body),
            ignore_eos=fields.get(body, "ignore_eos", bool, False),
        )
        streaming, with_usage = fields.get(body, "stream", bool, False), _include_usage(body)
        answer = await Answer.begin(self.pool, ask)
        ident = "cmpl-" + secrets.token_hex(12)

        def chunk(text: str, finish: str | None = None) -> dict[str, Any]:
            return {
                "id": ident,
                "object": "text_completion",
                "created": int(time.time()),
                "model": name,
                "system_fingerprint": "localrun",
                "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish}],
            }

        if streaming:
            return _sse(request, answer, None, chunk, lambda s: chunk("", _finish(s)), with_usage)
        text, stats = await collect(request.receive, answer)
        return JSONResponse(chunk(text, _finish(stats)) | {"usage": _usage(stats)})

    async def embeddings(self, request: Request) -> Response:
        body = await fields.read_body(request)
        name = fields.model_name(body)
        texts = fields.texts(
            body.get("input"),
            "input",
            allow_empty=False,
            hint="token arrays are not supported: send the text",
        )
        encoding = fields.get(body, "encoding_format", str, "float")
        if encoding not in ("float", "base64"):
            raise UsageError(f"'encoding_format' cannot be {encoding!r}", "use float or base64")
        done = await embed(self.pool, name, texts, dimensions=fields.get(body, "dimensions", int))
        data = [
            {"object": "embedding", "index": i, "embedding": _encoded(v, encoding)}
            for i, v in enumerate(done.vectors)
        ]
        usage = {"prompt_tokens": done.prompt_tokens, "total_tokens": done.prompt_tokens}
        return JSONResponse({"object": "list", "data": data, "model": name, "usage": usage})

    async def models(self, request: Request) -> Response:
        listed = await asyncio.to_thread(catalog.listed)
        return JSONResponse({"object": "list", "data": [_model(m) for m in listed]})

    async def model(self, request: Request) -> Response:
        from localrun.models.names import canonical

        wanted = request.path_params["model"]
        name = await asyncio.to_thread(canonical, wanted)  # NAME:latest is NAME
        for m in await asyncio.to_thread(catalog.listed):
            if m.name == name:
                return JSONResponse(_model(m))
        raise ModelNotFoundError(f"model '{wanted}' not found", "see GET /v1/models")


def _encoded(vector: list[float], encoding: str) -> list[float] | str:
    """A vector as floats, or as base64 of its little-endian float32s (what the openai
    client asks for by default)."""
    if encoding == "float":
        return vector
    import array
    import base64
    import sys

    floats = array.array("f", vector)
    if sys.byteorder != "little":
        floats.byteswap()
    return base64.b64encode(floats.tobytes()).decode()


def _model(m: catalog.Listed) -> dict[str, Any]:
    return {"id": m.name, "object": "model", "created": int(m.modified), "owned_by": "localrun"}


def _include_usage(body: dict[str, Any]) -> bool:
    options = fields.get(body, "stream_options", dict, {})
    return bool(fields.get(options, "include_usage", bool, False))


def _event(obj: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(obj, ensure_ascii=False).encode() + b"\n\n"


def _sse(
    request: Request,
    answer: Answer,
    first: dict[str, Any] | None,
    piece: Any,
    finish: Any,
    include_usage: bool,
    called: Any = None,
) -> StreamingResponse:
    async def events() -> AsyncIterator[bytes]:
        try:
            if first is not None:
                yield _event(first)
            async with cancel_on_disconnect(request.receive, answer):
                async for event in answer.events():
                    if isinstance(event, TextDelta) and event.text:
                        yield _event(piece(event.text))
                    elif isinstance(event, Called) and called is not None:
                        for made in called(event.calls):
                            yield _event(made)
                    elif isinstance(event, Finished):
                        yield _event(finish(event.stats))
                        if include_usage:
                            usage = finish(event.stats) | {
                                "choices": [],
                                "usage": _usage(event.stats),
                            }
                            yield _event(usage)
            yield b"data: [DONE]\n\n"
        except LocalrunError as e:
            yield _event(error_body(request.url.path, e))

    return AnswerResponse(answer, events(), "text/event-stream")
