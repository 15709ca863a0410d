"""One answer from a remote engine, as the same events a local answer gives.

The request goes to the endpoint's ``/chat/completions``, streamed, with the flags mapped
onto its fields (and llama.cpp's and vLLM's own sampling fields in the body, which other
servers ignore). TTFT runs from the request to the first piece of text that arrives, and the
decode rate from then to the last, measured here: what the user gets over this wire. The
token counts are the engine's own (its ``usage``) where it sends them, else the pieces
counted. The prefill rate is not known from outside: it is left at 0.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from typing import Any

from localrun.engine.types import (
    Event,
    Finished,
    FinishReason,
    FirstToken,
    PromptEvaluated,
    Request,
    Stats,
    TextDelta,
)
from localrun.errors import GenerationError, LocalrunError, ModelNotFoundError, UsageError
from localrun.images import data_url
from localrun.prompt.template import Message
from localrun.remote.registry import Remote

TIMEOUT_S = 600.0  # a long answer from a busy engine


def api_key(remote: Remote) -> str:
    """The key to send: from the remote's environment variable (a placeholder without one:
    the client library insists on some key, and servers without keys ignore it)."""
    if remote.api_key_env is None:
        return "none"
    key = os.environ.get(remote.api_key_env)
    if not key:
        raise UsageError(
            f"the remote {remote.name} takes its API key from {remote.api_key_env}, "
            "which is not set",
            f"export {remote.api_key_env}=...",
        )
    return key


SAMPLING = ("temperature", "top_k", "top_p", "min_p", "repeat_penalty", "seed")


def generate(
    remote: Remote, request: Request, send: frozenset[str] = frozenset(SAMPLING)
) -> Iterator[Event]:
    """Stream ``request``'s answer from ``remote``: the text as it comes, the statistics last.

    Only the sampling settings in ``send`` go with it (those the user gave): the others are
    the engine's own defaults, or its model's, not localrun's."""
    import openai

    start = time.perf_counter()
    client = openai.OpenAI(
        base_url=remote.url, api_key=api_key(remote), timeout=TIMEOUT_S, max_retries=0
    )
    s = request.sampling
    given = {name: getattr(s, name) for name in SAMPLING if name in send}
    # llama.cpp's and vLLM's own fields go in the body: other servers ignore them.
    extra = {k: given[k] for k in ("top_k", "min_p", "repeat_penalty") if k in given}
    body: dict[str, Any] = {
        "model": remote.model,
        "messages": [{"role": m.role, "content": _content(m)} for m in request.messages],
        "stream": True,
        "stream_options": {"include_usage": True},
        **{k: given[k] for k in ("temperature", "top_p", "seed") if given.get(k) is not None},
    }
    if extra:
        body["extra_body"] = extra
    if s.schema is not None:
        schema = json.loads(s.schema)
        body["response_format"] = {
            "type": "json_schema",
            "json_schema": {"name": "answer", "schema": schema},
        }
    elif s.grammar is not None:
        raise UsageError(
            "a remote engine takes a JSON schema, not a GBNF grammar",
            "give --schema (or a line's 'schema'), or run a local model",
        )
    if request.max_tokens is not None:
        body["max_tokens"] = request.max_tokens
    if request.stop:
        body["stop"] = list(request.stop)
    stats = Stats()
    first = last = 0.0
    pieces = 0
    finish: str | None = None
    usage: Any = None
    try:
        stream = client.chat.completions.create(**body)
        yield PromptEvaluated(0, 0, 0.0)
        for chunk in stream:
            if chunk.usage is not None:
                usage = chunk.usage
            for choice in chunk.choices:
                text = choice.delta.content if choice.delta else None
                if text:
                    now = time.perf_counter()
                    if not first:
                        first = now
                        yield FirstToken(now - start)
                    last = now
                    pieces += 1
                    yield TextDelta(text, pieces)
                if choice.finish_reason:
                    finish = choice.finish_reason
    except openai.APIError as e:
        raise _translated(remote, e, "the remote engine's stream broke off") from None
    end = time.perf_counter()
    stats.prompt_tokens = int(getattr(usage, "prompt_tokens", 0) or 0)  # evaluated: not known
    stats.completion_tokens = int(getattr(usage, "completion_tokens", 0) or 0) or pieces
    stats.finish_reason = FinishReason.LENGTH if finish == "length" else FinishReason.STOP
    if first:
        stats.ttft_s = first - start
        stats.decode_s = last - first
        if stats.completion_tokens > 1 and stats.decode_s > 0:
            stats.decode_tokens_per_s = (stats.completion_tokens - 1) / stats.decode_s
    stats.total_s = end - start
    yield Finished(stats)


def _translated(remote: Remote, error: Any, otherwise: str) -> LocalrunError:
    """An ``openai`` error as localrun's one line: unreachable, a refused key, an unknown
    model, another status, else ``otherwise`` (a stream that broke off, say)."""
    import openai

    if isinstance(error, openai.APIConnectionError):
        return LocalrunError(
            f"cannot reach the remote engine at {remote.url}",
            "check that it runs and that the URL is right: localrun remote list",
        )
    if isinstance(error, openai.AuthenticationError):
        return LocalrunError(
            f"the remote engine at {remote.url} refused the API key",
            f"check {remote.api_key_env}" if remote.api_key_env else "add one: --api-key-env",
        )
    if isinstance(error, openai.NotFoundError):
        return ModelNotFoundError(
            f"the remote engine at {remote.url} has no model {remote.model!r} ({_said(error)})",
            "see its models at /v1/models; name one: localrun remote add NAME URL --model ID",
        )
    if isinstance(error, openai.APIStatusError):
        return GenerationError(
            f"the remote engine at {remote.url} answered {error.status_code}: {_said(error)}",
            "see the engine's own log",
        )
    return GenerationError(f"{otherwise}: {error.message}", "try again")


def _said(error: Any) -> str:
    """The error message the engine sent, in one line."""
    body = getattr(error, "body", None)
    if isinstance(body, dict):
        inner = body.get("error", body)
        message = inner.get("message") if isinstance(inner, dict) else inner
        if message:
            return " ".join(str(message).split())[:200]
    return str(getattr(error, "message", error))[:200]


def describe(remote: Remote) -> dict[str, Any]:
    """What the endpoint says of its model (``GET /v1/models/{id}``: its id, owner, and
    whatever else it tells, such as vLLM's ``max_model_len``)."""
    import openai

    client = openai.OpenAI(base_url=remote.url, api_key=api_key(remote), timeout=30, max_retries=0)
    try:
        try:
            found = client.models.retrieve(remote.model)
        except openai.NotFoundError:
            # Some engines (llama-server) list their models but do not look one up by id,
            # and answer whatever id a request names: say what they serve.
            served = [m.model_dump(exclude_none=True) for m in client.models.list()]
            match = [m for m in served if m.get("id") == remote.model]
            if match:
                return dict(match[0])
            return {"id": remote.model, "served": [m.get("id") for m in served]}
    except openai.APIError as e:
        raise _translated(remote, e, f"the remote engine at {remote.url} answered") from None
    return dict(found.model_dump(exclude_none=True))


def _content(message: Message) -> str | list[dict[str, Any]]:
    """A message's content as OpenAI's API takes it: its pictures as data URLs."""
    if not message.images:
        return message.content
    parts: list[dict[str, Any]] = [
        {"type": "image_url", "image_url": {"url": data_url(image)}} for image in message.images
    ]
    return [*parts, {"type": "text", "text": message.content}]
