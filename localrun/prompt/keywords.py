"""Each keyword of a JSON schema whose value holds no schemas: its value checked (and made
ready for the converter), for :mod:`localrun.prompt.schema`; and the limits a schema is held to.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from localrun.errors import UsageError
from localrun.prompt import ranges
from localrun.prompt.pattern import pattern

MAX_SCHEMA_REPEAT = 1_000  # maxLength, minItems...: past this llama.cpp refuses the grammar
MAX_ENUM = 4_000  # values of one enum (its grammar has a few alternatives more)
MAX_DEPTH = 64  # schemas within schemas, and values within a const or an enum

FORMATS = {"date", "time", "date-time", "uuid", "uuid1", "uuid2", "uuid3", "uuid4", "uuid5"}
TYPES = {"object", "array", "string", "number", "integer", "boolean", "null"}

HINT = "see docs/user-guide.md (structured output) for what a schema may hold"


def _type(key: str, value: Any, where: str) -> Any:
    kinds = value if isinstance(value, list) else [value]
    bad = [k for k in kinds if not isinstance(k, str) or k not in TYPES]
    if bad or not kinds:
        raise UsageError(
            f"the schema's type {(bad[0] if bad else value)!r} (at {where}) "
            "is not a JSON schema type",
            "types: " + ", ".join(sorted(TYPES)),
        )
    return value


def _required(key: str, value: Any, where: str) -> Any:
    if not isinstance(value, list) or not all(isinstance(n, str) for n in value):
        raise UsageError(f"the schema's 'required' (at {where}) must be a list of names", HINT)
    return value


def _format(key: str, value: Any, where: str) -> Any:
    if value not in FORMATS:
        raise UsageError(
            f"the schema's format {str(value)[:40]!r} (at {where}) cannot be enforced by a grammar",
            "formats that can: " + ", ".join(sorted(FORMATS)) + "; or use a pattern",
        )
    return value


def _values(key: str, value: Any, where: str) -> Any:
    """An enum's values, or a const's value."""
    values = value if key == "enum" else [value]
    if not isinstance(values, list) or not values:
        raise UsageError(f"the schema's enum (at {where}) must be a non-empty list of values", HINT)
    if len(values) > MAX_ENUM:
        raise UsageError(
            f"the schema's enum (at {where}) has {len(values):,} values, more than "
            f"the {MAX_ENUM:,} a grammar can hold here",
            "offer fewer values, or use a pattern",
        )
    for v in values:
        _value_depth(v, f"{where}.{key}")
    return value


def bound(key: str, value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise UsageError(
            f"the schema's '{key}' (at {where}) must be a whole number, 0 or more, not "
            f"{json.dumps(value)[:20]}",
            f"give {key} as a number such as 10",
        )
    if value > MAX_SCHEMA_REPEAT:
        raise UsageError(
            f"the schema's {key} {value:,} (at {where}) is more than the {MAX_SCHEMA_REPEAT:,} "
            "a grammar can enforce",
            f"lower {key} to at most {MAX_SCHEMA_REPEAT:,}, or drop it and check the length "
            "yourself",
        )
    return value


def _value_depth(value: Any, where: str) -> None:
    """Refuse a const or enum value nested past MAX_DEPTH (the converter recurses into it)."""
    level = [value] if isinstance(value, (dict, list)) else []
    for _ in range(MAX_DEPTH + 1):
        if not level:
            return
        level = [
            v
            for item in level
            for v in (item.values() if isinstance(item, dict) else item)
            if isinstance(v, (dict, list))
        ]
    raise UsageError(
        f"a value of the schema's {where} nests deeper than {MAX_DEPTH} levels",
        "give a flatter value",
    )


def is_type(value: Any, kind: str) -> bool:
    """Whether ``value`` is of the JSON schema type ``kind``."""
    if kind == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "number":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    python = {"object": dict, "array": list, "string": str, "boolean": bool, "null": type(None)}
    return isinstance(value, python[kind])


# The keywords whose values hold no schemas: each one's check (which may rewrite it).
CHECKS: dict[str, Callable[[str, Any, str], Any]] = {
    "type": _type,
    "required": _required,
    "format": _format,
    "pattern": lambda key, value, where: pattern(value, where, MAX_SCHEMA_REPEAT),
    **{key: ranges.check for key in ranges.BOUNDS},
    "enum": _values,
    "const": _values,
}
