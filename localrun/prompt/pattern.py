"""A JSON schema's pattern made ready for llama-cpp-python's converter (see
:mod:`localrun.prompt.schema`): a regular expression anchored at both ends, its ``\\d``,
``\\w`` and ``\\s`` spelled out as the classes they stand for (``\\s`` as a space alone: JSON
writes the other spaces escaped, which the pattern would not match), other escapes as llama.cpp
reads them, and its repetitions within what a grammar can hold.

The pattern matches the string's characters as the model writes them between the quotes, so
no class may let through what JSON writes escaped (a quote, a backslash, a control
character): negated classes leave them out too, and positive ones have them cut out of their
ranges (``[ -~]``, all printable ASCII, would let a quote end the string early)."""

from __future__ import annotations

import re
from typing import Any

from localrun.errors import UsageError

# Shorthand classes, as explicit ones the converter passes on to llama.cpp (which knows none).
_SHORTHAND = {"d": "0-9", "w": "a-zA-Z0-9_", "s": " "}
_SHORTHAND_RANGES = {
    "d": [(0x30, 0x39)],
    "w": [(0x61, 0x7A), (0x41, 0x5A), (0x30, 0x39), (0x5F, 0x5F)],
    "s": [(0x20, 0x20)],
}
_CLASS_ESCAPES = {"t": 0x09, "n": 0x0A, "r": 0x0D, "f": 0x0C, "v": 0x0B}
_CONVERTER_UNESCAPES = set("[]()|{}*+?")  # outside a class, the converter reads these itself


def _refused(letter: str, where: str) -> None:
    """Refuses an escape ``\\letter`` that a grammar cannot enforce (the negated shorthands,
    anchors and back-references)."""
    if letter.isalnum() and letter not in _SHORTHAND and letter not in _CLASS_ESCAPES:
        raise UsageError(
            f"the schema's pattern (at {where}) uses \\{letter}, which a grammar cannot enforce",
            "spell it out as a class, such as [^0-9] for \\D",
        )


def _unwritable(where: str) -> UsageError:
    return UsageError(
        f"the schema's pattern (at {where}) matches a quote, a backslash or a control "
        "character, which JSON writes escaped and a grammar cannot enforce",
        "leave them out of the pattern",
    )


def _escaped(letter: str, where: str) -> str:
    """A pattern's escape ``\\letter`` outside a class as the converter and llama.cpp read it:
    shorthand classes spelled out, other punctuation as a hex escape (llama.cpp knows no
    ``\\.``)."""
    _refused(letter, where)
    if letter in _SHORTHAND:
        return f"[{_SHORTHAND[letter]}]"
    if letter in _CLASS_ESCAPES or letter in '"\\':
        raise _unwritable(where)
    if letter in _CONVERTER_UNESCAPES:
        return "\\" + letter
    # A class of one: the converter splits a literal's last character off (for a repetition
    # that may follow), which would cut a hex escape in two.
    return f"[{_spelled(ord(letter))}]"


# What JSON writes escaped, which a class must not let the model write raw.
_UNWRITABLE = ((0x00, 0x1F), (0x22, 0x22), (0x5C, 0x5C), (0x7F, 0x7F))


def _class_char(value: str, i: int, where: str) -> tuple[list[tuple[int, int]], int]:
    """The ranges that a class's item at ``i`` stands for (a character, an escape or a
    shorthand), and where the item ends."""
    if value[i] != "\\":
        return [(ord(value[i]), ord(value[i]))], i + 1
    letter = value[i + 1]
    _refused(letter, where)
    if letter in _SHORTHAND_RANGES:
        return list(_SHORTHAND_RANGES[letter]), i + 2
    if letter in _CLASS_ESCAPES:
        return [(_CLASS_ESCAPES[letter], _CLASS_ESCAPES[letter])], i + 2
    return [(ord(letter), ord(letter))], i + 2


def _without(ranges: list[tuple[int, int]], cut: tuple[int, int]) -> list[tuple[int, int]]:
    out = []
    for low, high in ranges:
        if high < cut[0] or low > cut[1]:
            out.append((low, high))
            continue
        if low < cut[0]:
            out.append((low, cut[0] - 1))
        if high > cut[1]:
            out.append((cut[1] + 1, high))
    return out


def _spelled(code: int) -> str:
    if chr(code).isalnum():
        return chr(code)
    if code < 0x100:
        return f"\\x{code:02X}"
    return f"\\u{code:04X}" if code < 0x10000 else f"\\U{code:08X}"


def _char_class(value: str, start: int, where: str) -> tuple[str, int]:
    """The class that opens at ``start``, written for llama.cpp without what JSON escapes,
    and where it ends."""
    i = start + 1
    negated = value.startswith("^", i)
    i += negated
    ranges: list[tuple[int, int]] = []
    first = True
    while value[i] != "]" or first:
        first = False
        items, i = _class_char(value, i, where)
        if value.startswith("-", i) and i + 1 < len(value) and value[i + 1] != "]":
            high, i = _class_char(value, i + 1, where)
            items = [(items[0][0], high[-1][1])]
        ranges += items
    if negated:
        ranges += _UNWRITABLE
    else:
        for cut in _UNWRITABLE:
            ranges = _without(ranges, cut)
        if not ranges:
            raise UsageError(
                f"the schema's pattern (at {where}) has a class of nothing but characters "
                "JSON writes escaped (quotes, backslashes, control characters)",
                "a grammar cannot enforce those: leave them out of the pattern",
            )
    body = "".join(
        _spelled(low) if low == high else f"{_spelled(low)}-{_spelled(high)}"
        for low, high in ranges
    )
    return f"[{'^' if negated else ''}{body}]", i + 1


_QUANTIFIER = re.compile(r"\{\s*(\d*)\s*(?:(,)\s*(\d*)\s*)?\}")


def pattern(value: Any, where: str, most: int) -> str:
    """A pattern as the converter can read it: a regular expression, its shorthand classes
    spelled out, each repetition (its inner ones multiplied in) at most ``most`` times."""
    if not isinstance(value, str):
        raise UsageError(
            f"the schema's pattern (at {where}) must be a string", "give a regular expression"
        )
    try:
        re.compile(value)
    except RecursionError:
        raise UsageError(
            f"the schema's pattern (at {where}) nests too deeply for a grammar",
            "flatten its parentheses",
        ) from None
    except (re.error, OverflowError) as e:
        raise UsageError(
            f"the schema's pattern (at {where}) is not a regular expression: {e}",
            "fix the pattern",
        ) from None
    if not value.startswith("^") or not value.endswith("$") or value.endswith("\\$"):
        raise UsageError(
            f"the schema's pattern (at {where}) is not anchored at both ends (^...$): a "
            "grammar can enforce only a whole-text pattern",
            "write it as ^...$, with .* where any text may stand",
        )
    out: list[str] = []
    # The most times anything inside each open group repeats, its inner repetitions
    # multiplied in: ((a{0,9}){0,9}){0,9} keeps 729 ways open at once, and llama.cpp follows
    # each of them (four levels of {0,20} ran for minutes).
    inside = [1]
    last = 1  # how many times the item before a quantifier repeats within itself
    i, n = 0, len(value)
    while i < n:
        c = value[i]
        if c == "\\" and i + 1 < n:
            out.append(_escaped(value[i + 1], where))
            i, last = i + 2, 1
            continue
        if c == "[":
            text, i = _char_class(value, i, where)
            out.append(text)
            last = 1
            continue
        if c == "(":
            inside.append(1)
        elif c == ")" and len(inside) > 1:
            last = inside.pop()
            inside[-1] = max(inside[-1], last)
        elif c == "{" and (found := _QUANTIFIER.match(value, i)):
            low, comma, high = found.groups()
            if comma and low and high and int(low) > int(high):
                raise UsageError(
                    f"the schema's pattern (at {where}) repeats {found.group(0)}: its least "
                    "is more than its most",
                    "give {m,n} with m at most n",
                )
            times = last * max(int(high or low or 0), 1)
            if times > most:
                within = f", {times:,} with the repetitions inside it" if last > 1 else ""
                raise UsageError(
                    f"the schema's pattern (at {where}) repeats {found.group(0)} times"
                    f"{within}: a grammar can enforce at most {most:,}",
                    "lower the bounds, or use * or + and check the length yourself",
                )
            inside[-1] = max(inside[-1], times)
            out.append(found.group(0))
            i = found.end()
            continue
        else:
            if c == '"' or ord(c) < 0x20 or c == "\x7f":
                raise _unwritable(where)
            last = 1
        out.append(c)
        i += 1
    return "".join(out)
