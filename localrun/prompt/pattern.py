"""A JSON schema's pattern made ready for llama-cpp-python's converter (see
:mod:`localrun.prompt.schema`): a regular expression anchored at both ends, its ``\\d``,
``\\w`` and ``\\s`` spelled out as the classes they stand for (``\\s`` as a space alone: JSON
writes the other spaces escaped, which the pattern would not match), other escapes as llama.cpp
reads them, and its repetitions within what a grammar can hold."""

from __future__ import annotations

import re
from typing import Any

from localrun.errors import UsageError

# Shorthand classes, as explicit ones the converter passes on to llama.cpp (which knows none).
_SHORTHAND = {"d": "0-9", "w": "a-zA-Z0-9_", "s": " "}
_CONVERTER_UNESCAPES = set("[]()|{}*+?")  # outside a class, the converter reads these itself


def _escaped(letter: str, in_class: bool, where: str) -> str:
    """A pattern's escape ``\\letter`` as the converter and llama.cpp read it: shorthand
    classes spelled out, other punctuation as a hex escape (llama.cpp knows no ``\\.``)."""
    if letter in _SHORTHAND:
        return _SHORTHAND[letter] if in_class else f"[{_SHORTHAND[letter]}]"
    if letter.isalnum() and letter not in "tnrfv":
        raise UsageError(
            f"the schema's pattern (at {where}) uses \\{letter}, which a grammar cannot enforce",
            "spell it out as a class, such as [^0-9] for \\D",
        )
    if (
        letter in "tnrfv"
        or (in_class and letter in "]\\")
        or (not in_class and letter in _CONVERTER_UNESCAPES | {"\\"})
    ):
        return "\\" + letter
    # A class of one: the converter splits a literal's last character off (for a repetition
    # that may follow), which would cut a hex escape in two.
    hexed = f"\\x{ord(letter):02X}" if ord(letter) < 256 else f"\\u{ord(letter):04X}"
    return hexed if in_class else f"[{hexed}]"


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
    i, n, in_class = 0, len(value), False
    while i < n:
        c = value[i]
        if c == "\\" and i + 1 < n:
            out.append(_escaped(value[i + 1], in_class, where))
            i, last = i + 2, 1
            continue
        if in_class:
            in_class = c != "]"
        elif c == "[":
            in_class, last = True, 1
        elif c == "(":
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
            last = 1
        out.append(c)
        i += 1
    return "".join(out)
