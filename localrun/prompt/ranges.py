"""A JSON schema's number bounds (``minimum``, ``exclusiveMaximum``...) as a grammar can hold
them: an integer's range as a grammar of its digits, a number's refused by name.

llama-cpp-python's converter drops the bounds (the answers then broke them); llama.cpp's own
converter now writes an integer's range as the digits each place may take, and drops a
number's. localrun does the same for integers and refuses bounds on anything else that may be
a number: a grammar of decimal fractions and exponents within bounds is not worth its size.

The converter is llama-cpp-python's and cannot be given a new rule, so :func:`integers` puts a
``const`` in the range's place, a marker only this process writes; the converter writes it as
a literal, and :func:`expand` puts the range's grammar there. Integers have at most 16 digits,
as the converter's own ``integer`` rule allows (``[1-9] [0-9]{0,15}``).
"""

from __future__ import annotations

import json
import math
import re
import secrets
from typing import Any

from localrun.errors import UsageError

BOUNDS = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum")
DIGITS = 16
LARGEST = 10**DIGITS - 1

# A literal the converter writes for the const {"const": MARK + "low:high"}.
_MARK = f"localrun-integer-range-{secrets.token_hex(8)}:"
_MARKED = re.compile('"\\\\"' + re.escape(_MARK) + r'(-?\d+):(-?\d+)\\""')
_OF_SCHEMAS = ("properties", "$defs", "definitions")  # objects of schemas
_LISTS = ("prefixItems", "anyOf", "oneOf", "allOf")  # lists of schemas
_NOT_NUMBERS = ("string", "boolean", "null", "object", "array")


def check(key: str, value: Any, where: str) -> Any:
    """A bound's value: a finite number (or, for an exclusive bound, JSON Schema draft 4's
    ``true``/``false``)."""
    if isinstance(value, bool) and key.startswith("exclusive"):
        return value
    finite = isinstance(value, int) or (isinstance(value, float) and math.isfinite(value))
    if isinstance(value, bool) or not finite:
        raise UsageError(
            f"the schema's '{key}' (at {where}) must be a number, not {json.dumps(value)[:20]}",
            f"give {key} as a number such as 10",
        )
    return value


def integers(schema: Any, where: str) -> Any:
    """``schema`` (prepared) with every integer's bounds as a marked ``const``; bounds on what
    may be a number other than an integer are refused."""
    if not isinstance(schema, dict):
        return schema  # additionalProperties: false
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key in _OF_SCHEMAS:
            out[key] = {n: integers(s, f"{where}.{key}.{n}") for n, s in value.items()}
        elif key in _LISTS:
            out[key] = [integers(s, f"{where}.{key}[{i}]") for i, s in enumerate(value)]
        elif key in ("items", "additionalProperties"):
            out[key] = integers(value, f"{where}.{key}")
        else:
            out[key] = value
    if not any(key in out for key in BOUNDS):
        return out
    return _bounded(out, where)


def _bounded(schema: dict[str, Any], where: str) -> dict[str, Any]:
    bounds = {key: schema.pop(key) for key in BOUNDS if key in schema}
    kind = schema.get("type")
    if kind in _NOT_NUMBERS:
        return schema  # bounds hold only numbers: they mean nothing here
    first = next(iter(bounds))
    if kind != "integer":
        what = "a number" if kind == "number" else "a value that may be any number"
        raise UsageError(
            f"the schema's '{first}' (at {where}) bounds {what}, which a grammar cannot "
            "enforce (it can bound integers)",
            f'give the value "type": "integer", or remove \'{first}\' and check the number '
            "yourself",
        )
    low, high = _inclusive(bounds)
    if low > high:
        raise UsageError(
            f"the schema's bounds (at {where}) leave no integer between {low} and {high}",
            "make the minimum at most the maximum",
        )
    low, high = max(low, -LARGEST), min(high, LARGEST)
    if low > high:
        raise UsageError(
            f"the schema's '{first}' (at {where}) leaves only integers of more than {DIGITS} "
            "digits, more than a grammar here writes",
            f"bound the integer within {DIGITS} digits",
        )
    if (low, high) == (-LARGEST, LARGEST):
        return schema  # the converter's integer is this range
    definitions = {k: v for k, v in schema.items() if k in _OF_SCHEMAS[1:]}
    return {"const": f"{_MARK}{low}:{high}", **definitions}


def _inclusive(bounds: dict[str, Any]) -> tuple[int | float, int | float]:
    """The least and the most integer the bounds allow (infinite where unbounded)."""
    low: int | float = -math.inf
    high: int | float = math.inf
    if "minimum" in bounds:
        low = math.ceil(bounds["minimum"])
    if "maximum" in bounds:
        high = math.floor(bounds["maximum"])
    # Draft 4: a true exclusiveMinimum makes the minimum exclusive; since draft 6 it is a bound.
    below, above = bounds.get("exclusiveMinimum"), bounds.get("exclusiveMaximum")
    if below is True and "minimum" in bounds:
        low = max(low, math.floor(bounds["minimum"]) + 1)
    elif not isinstance(below, bool) and below is not None:
        low = max(low, math.floor(below) + 1)
    if above is True and "maximum" in bounds:
        high = min(high, math.ceil(bounds["maximum"]) - 1)
    elif not isinstance(above, bool) and above is not None:
        high = min(high, math.ceil(above) - 1)
    return low, high


def expand(grammar: str) -> str:
    """The converter's grammar with each marked const's literal replaced by its range's
    grammar (followed by ``space``, as the converter's integers are)."""
    expanded = _MARKED.sub(lambda m: f"{integer_range(int(m[1]), int(m[2]))} space", grammar)
    # Were the converter to write a const another way, the model must not write the marker.
    if _MARK in expanded:
        raise AssertionError("an integer's range was not found in the converter's grammar")
    return expanded


# -- the digits of a range ---------------------------------------------------------------------


def integer_range(low: int, high: int) -> str:
    """GBNF for exactly the integers from ``low`` to ``high`` as JSON writes them (no leading
    zeros, no "-0"), as one parenthesized group."""
    assert low <= high
    parts = []
    if low < 0:
        negative = _naturals(max(1, -high), -low)
        parts.append(f'"-" {_group(negative)}' if len(negative) > 1 else f'"-" {negative[0]}')
    if high >= 0:
        parts += _naturals(max(0, low), high)
    return _group(parts)


def _group(alternatives: list[str]) -> str:
    return "(" + " | ".join(alternatives) + ")"


def _naturals(low: int, high: int) -> list[str]:
    """The alternatives that together write the integers ``low``..``high`` (0 or more)."""
    out = []
    if low == 0:
        out.append('"0"')
        low = 1
        if high == 0:
            return out
    full: list[int] = []  # digit counts whose every number is in range, in a run
    for digits in range(len(str(low)), len(str(high)) + 1):
        first, last = max(low, 10 ** (digits - 1)), min(high, 10**digits - 1)
        if (first, last) == (10 ** (digits - 1), 10**digits - 1):
            full.append(digits)
            continue
        out += _any_digits(full)
        full = []
        out.append(_same_length(str(first), str(last)))
    return out + _any_digits(full)


def _any_digits(counts: list[int]) -> list[str]:
    """Every number of each digit count in ``counts`` (consecutive)."""
    if not counts:
        return []
    return [f"[1-9]{_times(counts[0] - 1, counts[-1] - 1)}"]


def _times(least: int, most: int) -> str:
    """``[0-9]`` repeated ``least`` to ``most`` times, after a space; nothing for none."""
    if most == 0:
        return ""
    if least == most:
        return " [0-9]" if most == 1 else f" [0-9]{{{most}}}"
    return f" [0-9]{{{least},{most}}}"


def _digits(first: int, last: int) -> str:
    return f"[{first}]" if first == last else f"[{first}-{last}]"


def _same_length(low: str, high: str) -> str:
    """Every digit string from ``low`` to ``high`` (of one length, leading zeros kept)."""
    shared = 0
    while shared < len(low) and low[shared] == high[shared]:
        shared += 1
    prefix = f'"{low[:shared]}"' if shared else ""
    if shared == len(low):
        return prefix
    rest = _differing(low[shared:], high[shared:])
    return f"{prefix} {rest}" if prefix else rest


def _differing(low: str, high: str) -> str:
    """Every digit string from ``low`` to ``high``, whose first digits differ."""
    places = len(low) - 1
    first, last = int(low[0]), int(high[0])
    if places == 0:
        return _digits(first, last)
    alternatives = []
    if low[1:] != "0" * places:  # the first digit's numbers from low up
        alternatives.append(f"[{first}] {_same_length(low[1:], '9' * places)}")
        first += 1
    tail = None
    if high[1:] != "9" * places:  # the last digit's numbers up to high
        tail = f"[{last}] {_same_length('0' * places, high[1:])}"
        last -= 1
    if first <= last:
        alternatives.append(_digits(first, last) + _times(places, places))
    if tail:
        alternatives.append(tail)
    return _group(alternatives) if len(alternatives) > 1 else alternatives[0]
