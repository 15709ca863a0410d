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
from dataclasses import dataclass
from typing import Any

from localrun.engine.output import timed
from localrun.engine.types import (
    Event,
    Finished,
    FinishReason,
    FirstToken,
    PromptEvaluated,
    Request,
    Stats,
    TextDelta,
    ThinkingDelta,
)
from localrun.errors import GenerationError, LocalrunError, ModelNotFoundError, UsageError
from localrun.images import data_url
from localrun.models.parameters import TABLE
from localrun.prompt.template import Message
from localrun.remote.registry import Remote, base_url

TIMEOUT_S = 600.0  # a long answer from a busy engine
DESCRIBE_TIMEOUT_S = 30.0


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


# The sampling settings a remote engine is sent (when the user gave them), and each one's
# field: OpenAI's own in the body, llama.cpp's and vLLM's own (which other servers ignore) in
# extra_body.
_SENT = tuple(p for p in TABLE if p.remote)
SAMPLING = tuple(p.name for p in _SENT)


def generate(
    remote: Remote, request: Request, send: frozenset[str] = frozenset(SAMPLING)
) -> Iterator[Event | ThinkingDelta]:
    """Stream ``request``'s answer from ``remote``: the text as it comes (a thinking model's
    trace apart, as the engine sends it), the statistics last.

    Only the sampling settings in ``send`` go with it (those the user gave): the others are
    the engine's own defaults, or its model's, not localrun's."""
    import openai

    start = time.perf_counter()
    client = _client(remote, TIMEOUT_S)
    body = _body(remote, request, send)
    seen = _Seen(remote, start)
    started = False
    try:
        stream = client.chat.completions.create(**body)
        started = True
        yield PromptEvaluated(0, 0, 0.0)
        for chunk in stream:
            yield from seen.read(chunk)
    except openai.APIError as e:
        raise _translated(remote, e, waited=TIMEOUT_S, started=started) from None
    except UnicodeDecodeError:  # the openai library decodes the stream's lines as UTF-8
        raise _invalid(remote, "not UTF-8") from None
    except json.JSONDecodeError:  # and reads each event's data as JSON
        raise _invalid(remote, "an event's data is not JSON") from None
    if not seen.chunks:  # even an empty answer comes as chunks: a role, a finish reason
        raise _invalid(remote, "no server-sent events of a chat completion")
    yield Finished(seen.stats(time.perf_counter()))


def _body(remote: Remote, request: Request, send: frozenset[str]) -> dict[str, Any]:
    """The chat completion's request: the messages, the settings in ``send``, the length,
    the stop strings, the answer's schema."""
    s = request.sampling
    given = [(p, getattr(s, p.name)) for p in _SENT if p.name in send]
    extra = {p.llama_server[0]: value for p, value in given if p.llama_server}
    if not request.stop_at_eog:
        extra["ignore_eos"] = True  # llama-server's and vLLM's
    # An effort is OpenAI's reasoning_effort (gpt-oss's template reads it too).
    body_effort = {"reasoning_effort": request.think} if isinstance(request.think, str) else {}
    if isinstance(request.think, bool):  # llama-server and vLLM pass these to the template
        extra["chat_template_kwargs"] = {"enable_thinking": request.think}
    body: dict[str, Any] = {
        "model": remote.model,
        "messages": [{"role": m.role, "content": _content(m)} for m in request.messages],
        "stream": True,
        "stream_options": {"include_usage": True},
        **{p.openai[0]: value for p, value in given if p.openai and value is not None},
        **body_effort,
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
    return body


@dataclass
class _Seen:
    """What an answer's chunks have brought so far, timed here as they arrive."""

    remote: Remote
    start: float  # when the request was made
    first: float = 0.0  # when its first piece of text came
    last: float = 0.0  # and its last
    pieces: int = 0
    chunks: int = 0
    finish: str | None = None
    usage: Any = None
    thinking: int = 0  # pieces of a trace, to the last one
    first_answer: float = 0.0  # seconds after the request, to the answer's first piece

    def read(self, chunk: Any) -> Iterator[Event | ThinkingDelta]:
        """A chunk's events: its text, FirstToken before the first."""
        self.chunks += 1
        if (found := getattr(chunk, "usage", None)) is not None:
            self.usage = found
        for text, trace, reason in _choices(self.remote, chunk):
            for piece, kind in ((trace, ThinkingDelta), (text, TextDelta)):
                if not piece:
                    continue
                now = time.perf_counter()
                if not self.first:
                    self.first = now
                    yield FirstToken(now - self.start)
                self.last = now
                self.pieces += 1
                if kind is ThinkingDelta:
                    self.thinking = self.pieces
                    yield ThinkingDelta(piece, self.pieces)
                else:
                    self.first_answer = self.first_answer or now - self.start
                    yield TextDelta(piece, self.pieces, now - self.start)
            if reason:
                self.finish = reason

    def stats(self, end: float) -> Stats:
        stats = Stats()
        stats.prompt_tokens = _count(getattr(self.usage, "prompt_tokens", 0))  # not known
        stats.completion_tokens = _count(getattr(self.usage, "completion_tokens", 0))
        stats.completion_tokens = stats.completion_tokens or self.pieces
        reason = FinishReason.LENGTH if self.finish == "length" else FinishReason.STOP
        stats.finish_reason = reason
        # The same definitions as a local answer's (its prefill is not known: 0 here).
        timed(stats, start=self.start, first=self.first, last=self.last,
              sampled=stats.completion_tokens, end=end)  # fmt: skip
        details = getattr(self.usage, "completion_tokens_details", None)
        stats.thinking_tokens = _count(getattr(details, "reasoning_tokens", 0)) or self.thinking
        stats.first_answer_s = self.first_answer
        return stats


def _choices(remote: Remote, chunk: Any) -> Iterator[tuple[str | None, str | None, str | None]]:
    """A chunk's pieces of text, of a thinking model's trace (``reasoning_content``, as
    llama-server and vLLM send it) and finish reasons. The openai library builds its
    objects without checking them (a field of the wrong type is kept as it came): checked
    here."""
    choices = getattr(chunk, "choices", None)
    if not isinstance(choices, list):
        raise _invalid(remote, "a chunk has no list of choices")
    for choice in choices:
        if not hasattr(choice, "finish_reason"):
            raise _invalid(remote, "a choice is not an object")
        delta = getattr(choice, "delta", None)
        text = getattr(delta, "content", None)
        trace = getattr(delta, "reasoning_content", None)
        reason = choice.finish_reason
        if not all(isinstance(x, str | None) for x in (text, trace, reason)):
            raise _invalid(remote, "a choice's content or finish_reason is not a string")
        yield text, trace, reason


def _count(value: Any) -> int:
    """A token count from the engine's usage; 0 (not known) if it is not a count."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def _invalid(remote: Remote, why: str) -> GenerationError:
    return GenerationError(
        f"the answer of the remote engine at {remote.url} is not valid ({why})",
        "check that the URL is an OpenAI-compatible API, such as vLLM's or llama-server's",
    )


def _translated(
    remote: Remote, error: Any, *, waited: float, started: bool = False
) -> LocalrunError:
    """An ``openai`` error as localrun's one line: unreachable, not HTTP, broken off, a
    refused key, an unknown model, another status, else the engine's error event.
    ``waited``: the client's timeout; ``started``: the answer had begun (its status and
    headers had come)."""
    import openai

    if isinstance(error, openai.APITimeoutError):
        return GenerationError(
            f"the remote engine at {remote.url} did not answer within {waited:g} s",
            "see the engine's own log; it may be overloaded",
        )
    if isinstance(error, openai.APIConnectionError):
        # The HTTP library's own error (httpx's or httpx2's, by the openai library's version:
        # told by their shared class names) says whether the engine was reached at all.
        cause = error.__cause__
        kinds = {k.__name__ for k in type(cause).__mro__} if cause is not None else set()
        if "ConnectError" in kinds or not kinds:
            return LocalrunError(
                f"cannot reach the remote engine at {remote.url}",
                "check that it runs and that the URL is right: localrun remote list",
            )
        said = " ".join(str(cause).split())[:200] or type(cause).__name__
        if started:
            return GenerationError(
                f"the remote engine's stream broke off: {said}", "see the engine's own log"
            )
        if "ProtocolError" in kinds:
            return _invalid(remote, f"not HTTP: {said.rstrip('.')}")
        return GenerationError(
            f"the remote engine at {remote.url} gave no answer: {said}",
            "check that the URL is an OpenAI-compatible API, and see the engine's own log",
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
    return GenerationError(f"the remote engine sent an error: {_said(error)}", "try again")


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

    client = _client(remote, DESCRIBE_TIMEOUT_S)
    try:
        try:
            found = _fields(remote, client.models.retrieve(remote.model))
        except openai.NotFoundError:
            # Some engines (llama-server) list their models but do not look one up by id,
            # and answer whatever id a request names: say what they serve.
            served = [_fields(remote, m) for m in _listed(remote, client.models.list())]
            match = [m for m in served if m.get("id") == remote.model]
            if match:
                return match[0]
            return {"id": remote.model, "served": [m.get("id") for m in served]}
    except openai.APIError as e:
        raise _translated(remote, e, waited=DESCRIBE_TIMEOUT_S) from None
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise _invalid(remote, "its model is not described in JSON") from None
    return found


def _fields(remote: Remote, model: Any) -> dict[str, Any]:
    """A model object's fields. The openai library hands back what it could not read as a
    model as it came (text, a list): refused here."""
    if not hasattr(model, "model_dump"):
        raise _invalid(remote, "a model is not described as an object")
    return dict(model.model_dump(exclude_none=True, warnings=False))


def _listed(remote: Remote, page: Any) -> list[Any]:
    data = getattr(page, "data", None)
    if not isinstance(data, list):
        raise _invalid(remote, "its list of models is not a list")
    return data


def _client(remote: Remote, timeout: float) -> Any:
    """The openai library's client for ``remote``. Its URL is checked again: a remote
    registered before the checks were made may hold one the HTTP library cannot use."""
    import openai

    url = base_url(remote.url)
    return openai.OpenAI(base_url=url, api_key=api_key(remote), timeout=timeout, max_retries=0)


def _content(message: Message) -> str | list[dict[str, Any]]:
    """A message's content as OpenAI's API takes it: its pictures as data URLs."""
    if not message.images:
        return message.content
    parts: list[dict[str, Any]] = [
        {"type": "image_url", "image_url": {"url": data_url(image)}} for image in message.images
    ]
    return [*parts, {"type": "text", "text": message.content}]
