"""Requests from JSON Lines (``localrun run MODEL --batch FILE``): one request a line.

A line is ``{"prompt": "..."}`` or ``{"messages": [{"role": ..., "content": ...}, ...]}``,
optionally with ``system``, ``temperature``, ``top_k``, ``top_p``, ``seed``, ``max_tokens``,
``stop``, ``think`` (true, false, low, medium or high: a thinking model's trace), ``schema``
(a JSON schema, or ``"json"`` for any JSON value) or ``grammar`` (GBNF),
``images`` (picture files, or data URLs, for a vision model: they go with the last user
message; a message may carry its own ``images`` too), and an ``id`` that is echoed back.
The run's options (flags over the Modelfile) are the defaults; a line's own fields win. A
bad line is a :class:`UsageError` naming its line.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from localrun.backend import SamplingParams
from localrun.engine.options import RunOptions
from localrun.engine.types import Request
from localrun.errors import LocalrunError, UsageError
from localrun.images import Image, image_from_data_url, read_image
from localrun.models.parameters import TABLE, check
from localrun.prompt.grammar import ANY_JSON, gbnf, json_schema, json_value
from localrun.prompt.template import Message
from localrun.prompt.thinking import EFFORTS

ROLES = ("system", "user", "assistant", "tool")
# A line's sampling fields, and the parameters whose types and ranges they have.
_NUMBERS = {p.batch: p for p in TABLE if p.batch and p.kind is not str}
FIELDS = frozenset(
    {"id", "prompt", "messages", "system", "schema", "grammar", "images", "think", "think_budget"}
    | {p.batch for p in TABLE if p.batch}
)


@dataclass(frozen=True)
class Job:
    """One line's request, with its id (None when the line has none)."""

    line: int
    id: Any
    request: Request


def parse_line(text: str, line: int, defaults: RunOptions) -> Job:
    """The request on one line of a batch file."""

    def bad(what: str) -> UsageError:
        return UsageError(f"line {line}: {what}", "see 'localrun run --help' for --batch")

    data = _object(text, bad)
    messages = _conversation(data, defaults.system, bad)
    sampling, max_tokens = _numbers(data, defaults.sampling, defaults.max_tokens, bad)
    stop = _stop(data, defaults.stop, bad)
    sampling = _constraint(data, sampling, bad)
    # The line's own settings: a remote engine is sent these (and the flags given) only.
    given = frozenset(p.name for field, p in _NUMBERS.items() if field in data)
    think = _think(data, defaults.think, bad)
    budget = _budget(data, defaults.think_budget, bad)
    request = Request(tuple(messages), sampling, max_tokens, stop, given=given, think=think,
                      think_budget=budget)  # fmt: skip
    return Job(line, data.get("id"), request)


Bad = Callable[[str], UsageError]  # a line's error, saying what is wrong


def _object(text: str, bad: Bad) -> dict[str, Any]:
    """The line's JSON object, its text checked and its fields known."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise bad(f"not JSON ({e.msg})") from None
    except RecursionError:  # Python's decoder recurses: a line of 100,000 '[' ends here
        raise bad("JSON nested too deeply to read") from None
    if not isinstance(data, dict):
        raise bad("not a JSON object")
    # Before any message repeats the line's text (a field's name, say), and before the text
    # meets a UTF-8 encoder (the tokenizer's, stdout's), where it would fail outside this line.
    for key, value in data.items():
        half = lone_surrogate(key) or lone_surrogate(value)
        if half is not None:
            raise bad(f"{key!r} holds {half!r}, half of a UTF-16 surrogate pair, which is not text")
    unknown = sorted(set(data) - FIELDS)
    if unknown:
        raise bad(f"unknown field {unknown[0]!r}")
    return data


def _conversation(data: dict[str, Any], system: str | None, bad: Bad) -> list[Message]:
    """The line's messages, with its pictures and the system prompt (its own, or the run's)."""
    messages = _messages(data, bad)
    if "images" in data:
        last = max(i for i, m in enumerate(messages) if m.role == "user")
        pictures = _images(data["images"], bad)
        messages[last] = replace(messages[last], images=messages[last].images + pictures)
    system = data.get("system", system)
    if system is not None and not isinstance(system, str):
        raise bad("'system' must be a string")
    if system and not any(m.role == "system" for m in messages):
        messages = [Message("system", system), *messages]
    return messages


def _numbers(
    data: dict[str, Any], sampling: SamplingParams, max_tokens: int | None, bad: Bad
) -> tuple[SamplingParams, int | None]:
    """The run's sampling settings and length, with the line's own over them."""
    for field, parameter in _NUMBERS.items():
        if field not in data:
            continue
        value, kind = data[field], parameter.kind
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad(f"{field!r} must be a number")
        if kind is int and value != int(value):
            raise bad(f"{field!r} must be a whole number")
        try:
            check(parameter.name, kind(value))
        except ValueError as e:
            raise bad(str(e).replace(parameter.name, field, 1)) from None
        if field == "max_tokens":
            max_tokens = int(value) if value >= 0 else None
        elif field == "seed":
            sampling = replace(sampling, seed=int(value) if value >= 0 else None)
        else:
            sampling = replace(sampling, **{field: kind(value)})
    return sampling, max_tokens


def _budget(data: dict[str, Any], budget: int | None, bad: Bad) -> int | None:
    """The line's ``think_budget`` (the most tokens its trace may take), else the run's."""
    if "think_budget" not in data:
        return budget
    value = data["think_budget"]
    if isinstance(value, bool) or not isinstance(value, int):
        raise bad("'think_budget' must be a whole number of tokens")
    try:
        check("think_budget", value)
    except ValueError as e:
        raise bad(str(e)) from None
    return value


def _think(data: dict[str, Any], think: bool | str | None, bad: Bad) -> bool | str | None:
    """The line's ``think`` (as the Ollama API's: a bool or an effort), else the run's."""
    if "think" not in data:
        return think
    value = data["think"]
    if not isinstance(value, bool) and value not in EFFORTS:
        raise bad('\'think\' must be true, false, "low", "medium" or "high"')
    return value  # type: ignore[no-any-return]


def _stop(data: dict[str, Any], stop: tuple[str, ...], bad: Bad) -> tuple[str, ...]:
    if "stop" not in data:
        return stop
    given = data["stop"]
    given = [given] if isinstance(given, str) else given
    if not isinstance(given, list) or not all(isinstance(s, str) for s in given):
        raise bad("'stop' must be a string or a list of strings")
    return tuple(given)


def _constraint(data: dict[str, Any], sampling: SamplingParams, bad: Bad) -> SamplingParams:
    """The sampling settings under the line's schema or grammar, if it gives one."""
    if "schema" in data and "grammar" in data:
        raise bad("give 'schema' or 'grammar', not both")
    if "grammar" in data and not isinstance(data["grammar"], str):
        raise bad("'grammar' must be a string (GBNF)")
    try:
        if data.get("schema") == ANY_JSON:
            return json_value().apply(sampling)
        if "schema" in data:
            return json_schema(data["schema"]).apply(sampling)
        if "grammar" in data:
            return gbnf(data["grammar"], "'grammar'").apply(sampling)
    except UsageError as e:
        raise bad(e.message) from None
    return sampling


# JSON's \uXXXX escapes can name half of a UTF-16 pair alone, and Python's decoder gives it
# back as a lone surrogate: a str that no UTF-8 encoder takes. Valid text never holds one.
_SURROGATE = re.compile("[\ud800-\udfff]")


def lone_surrogate(value: Any) -> str | None:
    """The first lone surrogate in a decoded JSON value's strings (keys too), or None."""
    stack = [value]  # not recursion: a value may be nested as deeply as the decoder allows
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            found = _SURROGATE.search(item)
            if found:
                return found.group()
        elif isinstance(item, dict):
            stack.extend(item)
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return None


def _messages(data: dict[str, Any], bad: Bad) -> list[Message]:
    if ("prompt" in data) == ("messages" in data):
        raise bad("give either 'prompt' or 'messages'")
    if "prompt" in data:
        prompt = data["prompt"]
        if not isinstance(prompt, str) or not prompt.strip():
            raise bad("'prompt' must be a non-empty string")
        return [Message("user", prompt)]
    given = data["messages"]
    if not isinstance(given, list) or not given:
        raise bad("'messages' must be a non-empty list")
    messages = []
    for m in given:
        if not isinstance(m, dict) or set(m) - {"role", "content", "images"}:
            raise bad("each message is {'role': ..., 'content': ...}")
        role, content = m.get("role"), m.get("content")
        if role not in ROLES or not isinstance(content, str):
            raise bad(f"a message needs a role ({', '.join(ROLES)}) and text content")
        messages.append(Message(role, content, images=_images(m.get("images", []), bad)))
    if not any(m.content.strip() or m.images for m in messages if m.role == "user"):
        raise bad("no user message with text")
    return messages


def _images(given: Any, bad: Bad) -> tuple[Image, ...]:
    """A line's pictures: files (relative to where localrun runs), or data URLs."""
    if not isinstance(given, list) or not all(isinstance(i, str) for i in given):
        raise bad("'images' must be a list of picture files or data URLs")
    try:
        return tuple(
            image_from_data_url(i, f"image {n + 1}") if i.startswith("data:") else read_image(i)
            for n, i in enumerate(given)
        )
    except LocalrunError as e:
        raise bad(e.message) from None
