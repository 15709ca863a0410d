"""The Ollama API, as the ``ollama`` clients call it, translated onto the engine.

Streams are NDJSON (one object a line); durations are nanoseconds; the last object carries
``done_reason`` and the timings. An error before the first token is ``{"error": ...}`` with
its HTTP status; one after it is a last line ``{"error": ...}``.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from localrun import __version__
from localrun.engine.types import Called, Finished, Stats, TextDelta
from localrun.errors import LocalrunError, UsageError
from localrun.gguf.reader import read_gguf
from localrun.images import Image, image_from_base64
from localrun.prompt import grammar
from localrun.prompt.template import Message
from localrun.prompt.tools import ToolCall, parse_tools
from localrun.server import catalog, fields
from localrun.server.admin import AdminAPI
from localrun.server.answer import (
    Answer,
    AnswerResponse,
    Ask,
    cancel_on_disconnect,
    collect,
    embed,
)
from localrun.server.config import ServeConfig
from localrun.server.guard import error_body
from localrun.server.pool import ModelPool, resolve_served

NDJSON = "application/x-ndjson"
ROLES = ("system", "user", "assistant", "tool")


def _now() -> str:
    return catalog.timestamp(time.time())


def _ns(seconds: float) -> int:
    return int(seconds * 1e9)


def timings(stats: Stats) -> dict[str, Any]:
    """The final object's counts and durations (nanoseconds)."""
    n = stats.completion_tokens
    # The decode rate is (n - 1) / decode_s; eval_count / eval_duration must give it back.
    eval_s = stats.decode_s * n / (n - 1) if n > 1 else stats.decode_s
    return {
        "done_reason": "length" if stats.finish_reason.value == "length" else "stop",
        "total_duration": _ns(stats.total_s + stats.load_s),
        "load_duration": _ns(stats.load_s),
        "prompt_eval_count": stats.prompt_tokens,
        "prompt_eval_duration": _ns(stats.prefill_s),
        "eval_count": n,
        "eval_duration": _ns(eval_s),
    }


def _line(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, ensure_ascii=False).encode() + b"\n"


def _refuse_unsupported(body: dict[str, Any], *names: str) -> None:
    """Fields localrun does not do yet, refused rather than silently ignored."""
    why = {
        "suffix": "fill-in-the-middle (suffix) is not supported",
        "template": "a per-request template is not supported: put it in a Modelfile",
    }
    for name in names:
        if body.get(name):
            raise UsageError(why[name], f"send the request without '{name}'")


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


class OllamaAPI:
    """The handlers, over one pool of models."""

    def __init__(self, pool: ModelPool, config: ServeConfig) -> None:
        self.pool = pool
        self.config = config

    def routes(self) -> list[Route]:
        return [
            Route("/", self.root, methods=["GET", "HEAD"]),
            Route("/api/version", self.version, methods=["GET"]),
            Route("/api/generate", self.generate, methods=["POST"]),
            Route("/api/chat", self.chat, methods=["POST"]),
            Route("/api/tags", self.tags, methods=["GET"]),
            Route("/api/show", self.show, methods=["POST"]),
            Route("/api/ps", self.ps, methods=["GET"]),
            Route("/api/embed", self.embed, methods=["POST"]),
            Route("/api/embeddings", self.embeddings, methods=["POST"]),
            *AdminAPI(self.pool, self.config).routes(),
        ]

    async def root(self, request: Request) -> Response:
        return PlainTextResponse("localrun is running")

    async def version(self, request: Request) -> Response:
        return JSONResponse({"version": __version__})

    async def generate(self, request: Request) -> Response:
        body = await fields.read_body(request)
        name = fields.model_name(body)
        _refuse_unsupported(body, "suffix", "template")
        prompt = fields.get(body, "prompt", str, "")
        images = _images(body.get("images"), "images")
        keep = fields.keep_alive(body.get("keep_alive"))
        context = fields.get(body, "context", list, [])
        if not all(isinstance(t, int) and not isinstance(t, bool) for t in context):
            raise UsageError("'context' must be a list of token ids")
        if not prompt and not context and not images:
            return JSONResponse(
                {
                    "model": name,
                    "created_at": _now(),
                    "response": "",
                    "done": True,
                    "done_reason": await self._load_only(name, body, keep),
                }
            )
        raw = fields.get(body, "raw", bool, False)
        ask = Ask(
            model=name,
            messages=(Message("user", prompt, images=images),),
            options=fields.options(body.get("options")),
            keep_alive=keep,
            system=fields.get(body, "system", str),
            raw=prompt if raw else None,
            context=tuple(context),
            grammar=_format(body),
        )
        streaming = fields.get(body, "stream", bool, True)  # read before the model is held
        answer = await Answer.begin(self.pool, ask)

        def piece(text: str) -> dict[str, Any]:
            return {"model": name, "created_at": _now(), "response": text, "done": False}

        def last(stats: Stats) -> dict[str, Any]:
            final = {"model": name, "created_at": _now(), "response": "", "done": True}
            final |= timings(stats)
            if not answer.images:  # an image's ids mean nothing to a client, nor sent back
                final["context"] = answer.prompt + answer.tokens
            return final

        if streaming:
            return _stream(request, answer, piece, last)
        text, stats = await collect(request.receive, answer)
        return JSONResponse(last(stats) | {"response": text})

    async def chat(self, request: Request) -> Response:
        body = await fields.read_body(request)
        name = fields.model_name(body)
        keep = fields.keep_alive(body.get("keep_alive"))
        tools = parse_tools(body.get("tools"))
        messages = _messages(fields.get(body, "messages", list, []))
        if not messages:
            return JSONResponse(
                {
                    "model": name,
                    "created_at": _now(),
                    "message": {"role": "assistant", "content": ""},
                    "done": True,
                    "done_reason": await self._load_only(name, body, keep),
                }
            )
        options = fields.options(body.get("options"))
        # tool_choice is not Ollama's; localrun takes it here too, as llama.cpp's server does.
        choice = fields.tool_choice(body.get("tool_choice"))
        ask = Ask(
            name, messages, options, keep, grammar=_format(body), tools=tools, tool_choice=choice
        )
        streaming = fields.get(body, "stream", bool, True)  # read before the model is held
        answer = await Answer.begin(self.pool, ask)

        def piece(text: str) -> dict[str, Any]:
            return {
                "model": name,
                "created_at": _now(),
                "message": {"role": "assistant", "content": text},
                "done": False,
            }

        def last(stats: Stats) -> dict[str, Any]:
            final = piece("") | {"done": True}
            return final | timings(stats)

        def called(calls: tuple[ToolCall, ...]) -> dict[str, Any]:
            made = piece("")
            made["message"]["tool_calls"] = [_call(c) for c in calls]
            return made

        if streaming:
            return _stream(request, answer, piece, last, called)
        text, stats = await collect(request.receive, answer)
        final = last(stats)
        final["message"]["content"] = text
        if answer.calls:
            final["message"]["tool_calls"] = [_call(c) for c in answer.calls]
        return JSONResponse(final)

    async def _load_only(self, name: str, body: dict[str, Any], keep: float | None) -> str:
        """A request without a prompt loads the model, or with keep_alive 0 unloads it."""
        if keep == 0:
            resolved = await asyncio.to_thread(resolve_served, name)
            await self.pool.unload(resolved.name)
            return "unload"
        num_ctx = fields.options(body.get("options")).get("num_ctx")
        runner = await self.pool.acquire(name, num_ctx)
        self.pool.release(runner, keep)
        return "load"

    async def embed(self, request: Request) -> Response:
        body = await fields.read_body(request)
        name = fields.model_name(body)
        texts = fields.texts(body.get("input"), "input")
        done = await embed(
            self.pool,
            name,
            texts,
            options=fields.options(body.get("options")),
            keep_alive=fields.keep_alive(body.get("keep_alive")),
            truncate=fields.get(body, "truncate", bool, True),
            dimensions=fields.get(body, "dimensions", int),
        )
        return JSONResponse(
            {
                "model": name,
                "embeddings": done.vectors,
                "total_duration": _ns(done.total_s),
                "load_duration": _ns(done.load_s),
                "prompt_eval_count": done.prompt_tokens,
            }
        )

    async def embeddings(self, request: Request) -> Response:
        """The older endpoint: one prompt, one ``embedding``."""
        body = await fields.read_body(request)
        name = fields.model_name(body)
        prompt = fields.get(body, "prompt", str, "")
        if not prompt:
            return JSONResponse({"embedding": []})
        done = await embed(
            self.pool,
            name,
            [prompt],
            options=fields.options(body.get("options")),
            keep_alive=fields.keep_alive(body.get("keep_alive")),
        )
        return JSONResponse({"embedding": done.vectors[0]})

    async def tags(self, request: Request) -> Response:
        return JSONResponse({"models": await asyncio.to_thread(catalog.tags)})

    async def show(self, request: Request) -> Response:
        body = await fields.read_body(request)
        name = fields.model_name(body)
        return JSONResponse(await asyncio.to_thread(catalog.show, name))

    async def ps(self, request: Request) -> Response:
        models = []
        for r in self.pool.runners():
            info = await asyncio.to_thread(read_gguf, r.loaded.path)
            plan = r.loaded.plan
            whole = plan.n_gpu_layers and not plan.remote and plan.offloaded == plan.n_layer + 1
            # What this machine's GPUs hold: not what RPC workers hold for it.
            on_gpu = r.size if whole else min(r.size, plan.local_gpu_bytes)
            models.append(
                {
                    "name": r.name,
                    "model": r.name,
                    "size": r.size,
                    "digest": r.digest,
                    "details": catalog.details(info),
                    "expires_at": catalog.timestamp(r.expires_at) if r.expires_at else None,
                    "size_vram": on_gpu,
                    "context_length": r.context_length,
                    "parallel": r.loaded.n_seq,
                    "active": r.active,
                    "placement": r.loaded.placement,
                }
            )
        return JSONResponse({"models": models})


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
        calls = tuple(
            _read_call(c, f"{where}.tool_calls[{j}]")
            for j, c in enumerate(fields.get(m, "tool_calls", list, [], where=where))
        )
        name = fields.get(m, "tool_name", str, where=where) or fields.get(
            m, "name", str, where=where
        )
        content = fields.get(m, "content", str, "", where=where)
        out.append(
            Message(role, content, calls, name=name if role == "tool" else None, images=images)
        )
    return tuple(out)


def _images(value: Any, where: str) -> tuple[Image, ...]:
    """Ollama's ``images``: pictures in base64."""
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise UsageError(f"'{where}' must be a list of base64 strings")
    return tuple(image_from_base64(v, f"{where}[{n}]") for n, v in enumerate(value))


def _read_call(raw: Any, where: str) -> ToolCall:
    """An earlier call, as Ollama's clients send it back: ``{"function": {"name": ...,
    "arguments": {...}}}``."""
    spec = raw.get("function") if isinstance(raw, dict) else None
    if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
        raise UsageError(f"{where} must hold {{'function': {{'name': ..., 'arguments': ...}}}}")
    arguments = spec.get("arguments") or {}
    if not isinstance(arguments, dict):
        raise UsageError(f"'{where}.function.arguments' must be an object")
    return ToolCall(spec["name"], arguments)


def _call(call: ToolCall) -> dict[str, Any]:
    return {"function": {"name": call.name, "arguments": call.arguments}}


def _stream(
    request: Request, answer: Answer, piece: Any, last: Any, called: Any = None
) -> StreamingResponse:
    async def lines() -> AsyncIterator[bytes]:
        try:
            async with cancel_on_disconnect(request.receive, answer):
                async for event in answer.events():
                    if isinstance(event, TextDelta) and event.text:
                        yield _line(piece(event.text))
                    elif isinstance(event, Called) and called is not None:
                        yield _line(called(event.calls))
                    elif isinstance(event, Finished):
                        yield _line(last(event.stats))
        except LocalrunError as e:
            yield _line(error_body(request.url.path, e))

    return AnswerResponse(answer, lines(), NDJSON)
