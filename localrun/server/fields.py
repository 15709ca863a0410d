"""Reading a JSON request body: each field checked for its type, with a one-line 400.

Unknown fields are ignored, as Ollama and OpenAI do (clients send fields of newer API
versions); a known field of the wrong type, or out of its range, is refused by name.

What no field can use is refused once, here, as the body is read, and wherever it is in the
body (known field or not): text that is not Unicode (a lone UTF-16 surrogate, such as
``"\\ud800"``, which JSON's escapes can write and UTF-8 cannot), a number no field takes
(past 64 bits, or not finite: ``1e400``, ``NaN``), and nesting deeper than any request needs.
So nothing past this point meets them: a tokenizer, a float() or a recursive walk.
"""

from __future__ import annotations

import asyncio
import json
import math
from typing import Any

from starlette.requests import Request

from localrun.errors import UsageError
from localrun.models.parameters import TABLE, check
from localrun.prompt.thinking import EFFORTS

_TYPES: dict[type, str] = {str: "a string", bool: "true or false", int: "an integer"}

# Deeper than any real request nests (a JSON schema at the grammar's limit of 64 levels takes
# two of the body's each), and shallow enough that nothing recursive after the parser
# (templates, json.dumps, copies) meets Python's recursion limit; its parser stops near 1,000.
MAX_DEPTH = 256
# No field takes a number past 64 bits (seeds, token ids, sizes); past it a float() overflows.
_INT_BOUND = 1 << 64
# A body this large is read in a worker thread, not on the event loop (32 MiB of small
# numbers takes seconds to parse and check).
_IN_THREAD = 1 << 16


async def read_body(request: Request) -> dict[str, Any]:
    """The request's JSON object, read and checked by :func:`parse_body`."""
    raw = await request.body()
    if len(raw) > _IN_THREAD:
        return await asyncio.to_thread(parse_body, raw)
    return parse_body(raw)


def parse_body(raw: bytes) -> dict[str, Any]:
    """The request's JSON object; an empty body is an empty object."""
    if not raw.strip():
        return {}
    try:
        body = json.loads(raw)
    except RecursionError:
        raise _too_deep("the request body") from None
    except (UnicodeDecodeError, ValueError) as e:  # JSONDecodeError too
        raise UsageError(f"the request body is not valid JSON: {e}", "send a JSON object") from None
    if not isinstance(body, dict):
        raise UsageError("the request body must be a JSON object", "send {...}")
    check_values(body)
    return body


def json_text(text: str, where: str) -> Any:
    """A JSON value carried in a string field (OpenAI's tool-call ``arguments``), read and
    checked as a body is: its escapes can write what the body's own text could not."""
    try:
        value = json.loads(text)
    except RecursionError:
        raise _too_deep(f"'{where}'") from None
    except ValueError:
        raise UsageError(f"'{where}' is not JSON", "send a JSON object as a string") from None
    check_values(value, where)
    return value


def _path(parent: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{parent}[{key}]"
    return f"{parent}.{key}" if parent else key


# An entry of check_values' walk: the value, its parent's entry (None at the top), its key
# or index there, its depth.
_Entry = tuple[Any, Any, Any, int]


def _spelled(entry: _Entry) -> str:
    """The path of an entry, as a request's fields are named: ``messages[0].content``."""
    keys: list[str | int] = []
    while entry[1] is not None:
        keys.append(entry[2])
        entry = entry[1]
    spelled = str(entry[2])
    for key in reversed(keys):
        spelled = _path(spelled, key)
    return spelled[:200] or "the request body"


def check_values(value: Any, where: str = "") -> None:
    """Refuse, naming where it is, a lone surrogate in any string or key, a number no field
    takes, or nesting past :data:`MAX_DEPTH`.

    Iterative, so that the check itself cannot run out of stack; a path is spelled only for
    the error.
    """
    stack: list[_Entry] = [(value, None, where, 0)]
    while stack:
        entry = stack.pop()
        item, _, _, depth = entry
        kind = type(item)
        if kind is str:
            _check_text(item, entry)
        elif kind is dict or kind is list:
            if depth >= MAX_DEPTH:
                raise _too_deep(f"'{_spelled(entry)}'")
            if kind is dict:
                for key, sub in item.items():
                    _check_text(key, entry, key=True)
                    stack.append((sub, entry, key, depth + 1))
            else:
                stack.extend((sub, entry, i, depth + 1) for i, sub in enumerate(item))
        elif kind is int:
            if not -_INT_BOUND < item < _INT_BOUND:
                raise UsageError(
                    f"'{_spelled(entry)}' is a number of {len(str(abs(item)))} digits, "
                    "larger than any field takes",
                    "send a number that fits in 64 bits",
                )
        elif kind is float and not math.isfinite(item):
            raise UsageError(
                f"'{_spelled(entry)}' is not a finite number: {item}",
                "send a number: JSON has no NaN or Infinity, and 1e400 is past a double",
            )


def _too_deep(what: str) -> UsageError:
    return UsageError(f"{what} nests deeper than {MAX_DEPTH} levels", "send a flatter JSON value")


def _check_text(text: str, entry: _Entry, *, key: bool = False) -> None:
    """Refuse a string that holds a lone surrogate: it is not text, and has no UTF-8."""
    if text.isascii():
        return
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        where = f"a key in '{_spelled(entry)}'" if key else f"'{_spelled(entry)}'"
        raise UsageError(
            f"{where} holds a lone UTF-16 surrogate (\\u{ord(text[e.start]):04x}) at "
            f"character {e.start}, which is not text",
            "send valid Unicode: a \\ud800-\\udbff escape must be followed by a "
            "\\udc00-\\udfff one",
        ) from None


def get(
    body: dict[str, Any], name: str, kind: type, default: Any = None, *, where: str = ""
) -> Any:
    """``body[name]`` if present and not null, checked to be of ``kind``. ``where`` is the
    path of ``body`` in the request (``messages[0]``), for the error."""
    value = body.get(name)
    if value is None:
        return default
    field = _path(where, name)
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise UsageError(f"'{field}' must be a number, not {json.dumps(value)[:40]}")
        if not math.isfinite(value):
            raise UsageError(f"'{field}' must be a finite number")
        return float(value)
    if kind is int and isinstance(value, float) and value.is_integer():
        return int(value)
    if (kind is not bool and isinstance(value, bool)) or not isinstance(value, kind):
        what = _TYPES.get(kind, "an object" if kind is dict else "a list")
        raise UsageError(f"'{field}' must be {what}, not {json.dumps(value)[:40]}")
    return value


def model_name(body: dict[str, Any], key: str = "model") -> str:
    """The model a request names (``name`` too, as older Ollama clients send)."""
    name: str | None = get(body, key, str) or get(body, "name", str)
    if not name or not name.strip():
        raise UsageError(f"the request names no model: '{key}' is missing", 'add "model": NAME')
    return name.strip()


# The Ollama options localrun applies, with their types: a Modelfile's parameters, less those
# that belong to loading (threads, GPU layers, speculative decoding) and stop (a list, read
# on its own).
OPTION_TYPES: dict[str, type] = {p.name: p.kind for p in TABLE if p.ollama}
MAX_INPUTS = 2048  # texts in one embedding request


def texts(value: Any, name: str, *, allow_empty: bool = True, hint: str | None = None) -> list[str]:
    """A string or a list of strings, as a list (embedding inputs), at most MAX_INPUTS."""
    found = [value] if isinstance(value, str) else value
    if (
        not isinstance(found, list)
        or (not found and not allow_empty)
        or not all(isinstance(t, str) for t in found)
    ):
        raise UsageError(f"'{name}' must be a string or a list of strings", hint)
    if len(found) > MAX_INPUTS:
        raise UsageError(f"'{name}' has {len(found)} texts", f"send at most {MAX_INPUTS}")
    return found


def options(raw: Any) -> dict[str, Any]:
    """Ollama's ``options``, checked against the Modelfile's ranges; ``stop`` as a tuple."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise UsageError("'options' must be an object", 'send "options": {"temperature": 0.7}')
    out: dict[str, Any] = {}
    for name, kind in OPTION_TYPES.items():
        value = get(raw, name, kind, where="options")
        if value is None:
            continue
        if kind is str:  # the KV cache's type and flash attention: fixed when it loads
            raise UsageError(
                f"options.{name} cannot change per request: the model's cache is made when it "
                "loads",
                f"set it with serve --{name.replace('_', '-')}, or PARAMETER {name} in the "
                "model's Modelfile",
            )
        in_range(name, value)
        out[name] = value
    stop = raw.get("stop")
    if stop is not None:
        out["stop"] = stops(stop, "options.stop")
    return out


def logit_bias(body: dict[str, Any]) -> tuple[tuple[int, float], ...]:
    """OpenAI's ``logit_bias``: token ids (as strings) to a bias from -100 to 100."""
    raw = get(body, "logit_bias", dict, {})
    found = []
    for key, bias in raw.items():
        number = isinstance(bias, (int, float)) and not isinstance(bias, bool)
        if not key.isdigit() or not number or not -100 <= bias <= 100:
            raise UsageError(
                f"'logit_bias' cannot hold {json.dumps(key)[:24]}: {json.dumps(bias)[:24]}",
                'map token ids to a bias from -100 to 100, as {"1234": -100}',
            )
        found.append((int(key), float(bias)))
    return tuple(found)


def in_range(name: str, value: float | int) -> None:
    """Refuse a sampling setting outside its range (the same ranges as the run flags)."""
    try:
        check(name, value)
    except ValueError as e:
        raise UsageError(str(e), f"give {name} in range") from None


def stops(value: Any, name: str = "stop") -> tuple[str, ...]:
    """A stop string or a list of them."""
    if isinstance(value, str):
        return (value,) if value else ()
    if isinstance(value, list) and all(isinstance(s, str) for s in value):
        if len(value) > 16:
            raise UsageError(f"'{name}' has {len(value)} strings", "give at most 16")
        return tuple(s for s in value if s)
    raise UsageError(f"'{name}' must be a string or a list of strings")


_FOREVER = 10 * 365 * 86400.0  # a keep-alive this long is "keep it loaded"


def _seconds(value: float) -> float:
    if math.isnan(value):
        raise ValueError("not a number")
    return -1.0 if value < 0 or value > _FOREVER else value


def keep_alive(value: Any) -> float | None:
    """Ollama's ``keep_alive`` in seconds: a number, or "5m", "1h30m", "10s", "-1"."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise UsageError("'keep_alive' must be a duration like \"5m\" or a number of seconds")
    if isinstance(value, (int, float)) and not math.isnan(value):
        return _seconds(float(value))
    if isinstance(value, str):
        text = value.strip()
        try:
            return _seconds(float(text))
        except ValueError:
            pass
        total, number = 0.0, ""
        units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
        i = 0
        sign = -1.0 if text.startswith("-") else 1.0
        text = text.lstrip("+-")
        while i < len(text):
            c = text[i]
            if c.isdigit() or c == ".":
                number += c
                i += 1
                continue
            unit = "ms" if text[i : i + 2] == "ms" else c
            if unit not in units or not number:
                break
            total += float(number) * units[unit]
            number = ""
            i += len(unit)
        else:
            if not number and text:
                return _seconds(sign * total)
    raise UsageError(
        f"'keep_alive' cannot be {json.dumps(value)[:40]}",
        'use a duration like "5m", "30s", "1h", 0 to unload at once, or -1 to keep loaded',
    )


def tool_choice(value: Any) -> str:
    """auto, none, required, or the name of the one function to call."""
    if value is None:
        return "auto"
    if value in ("auto", "none", "required"):
        return str(value)
    spec = value.get("function") if isinstance(value, dict) else None
    if isinstance(spec, dict) and isinstance(spec.get("name"), str):
        return str(spec["name"])
    raise UsageError(
        f"'tool_choice' cannot be {json.dumps(value)[:60]}",
        'use "auto", "none", "required" or {"type": "function", "function": {"name": ...}}',
    )


def think(value: Any, name: str = "think") -> bool | str | None:
    """Ollama's ``think``: true, false, or an effort (low, medium, high); None if absent."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str) and value in EFFORTS:
        return value
    if value == "max":  # Ollama's most: the most there is here
        return "high"
    raise UsageError(
        f"'{name}' cannot be {json.dumps(value)[:40]}", "use true, false, low, medium or high"
    )


def reasoning_effort(body: dict[str, Any]) -> bool | str | None:
    """OpenAI's ``reasoning_effort`` (or ``reasoning.effort``) as a thinking setting: none
    turns it off, minimal is the least there is (low), xhigh and max the most (high)."""
    value = body.get("reasoning_effort")
    name = "reasoning_effort"
    reasoning = body.get("reasoning")
    if value is None and reasoning is not None:
        if not isinstance(reasoning, dict):
            raise UsageError("'reasoning' must be an object", 'send {"effort": "low"}')
        value, name = reasoning.get("effort"), "reasoning.effort"
    if value is None:
        return None
    if value == "none":
        return False
    if value == "minimal":
        return "low"
    if value in ("xhigh", "max"):
        return "high"
    if isinstance(value, str) and value in EFFORTS:
        return value
    if value == "max":  # Ollama's most: the most there is here
        return "high"
    raise UsageError(
        f"'{name}' cannot be {json.dumps(value)[:40]}",
        "use none, minimal, low, medium, high, xhigh or max",
    )


def think_budget(body: dict[str, Any]) -> int | None:
    """``think_budget`` (localrun's, in both APIs): the most tokens a trace may take."""
    value = body.get("think_budget")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 1_000_000:
        raise UsageError(
            "'think_budget' must be a whole number of tokens from 0 to 1000000",
            "send the most tokens the reasoning trace may take",
        )
    return value
