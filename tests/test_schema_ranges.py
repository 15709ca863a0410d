"""An integer's bounds become a grammar of its digits that admits exactly the integers in range.

The grammars are run two ways: turned into a Python regular expression (tests/gbnf_regex.py,
a small reader of the converter's GBNF layout), over every integer of a window and the
malformed ones beside them; and through llama.cpp's own grammar code, on the suite's tiny
model. What pydantic writes is in tests/test_schema_pydantic.py.
"""

from __future__ import annotations

import random
import re
from pathlib import Path
from typing import Any

import pytest

from localrun.errors import UsageError
from localrun.prompt import grammar
from localrun.prompt.ranges import LARGEST, integer_range
from tests.gbnf_regex import accepted, to_regex


def test_the_regex_reader_reads_a_grammar_right() -> None:
    g = 'root ::= "a" x{2} ("-" | [0-1])? "\\"yz"* "\\x41\\t"?\nx ::= [b-c]\n'
    candidates = ["abb", "abc-", "abc1", "ab", "abc2", "abbb", 'abb"yz"yz', 'abb"yzz', "abbA\t"]
    assert accepted(g, candidates) == {"abb", "abc-", "abc1", 'abb"yz"yz', "abbA\t"}


# -- integers in range -------------------------------------------------------------------------

MALFORMED = ["", "-", "-0", "00", "01", "-01", "+1", "1.0", "1e1", " 1", "--1", "0-"]
WINDOW = [str(v) for v in range(-130, 131)] + MALFORMED


def _range_gbnf(low: int, high: int) -> str:
    return f"root ::= {integer_range(low, high)}\n"


def _expected(low: int, high: int) -> set[str]:
    return {str(v) for v in range(max(low, -130), min(high, 130) + 1)}


EDGES = [-120, -101, -100, -99, -21, -20, -19, -11, -10, -9, -2, -1, 0, 1, 2, 9, 10, 11, 19]
EDGES += [20, 21, 99, 100, 101, 119, 120]


def test_every_range_between_the_digit_edges_takes_exactly_its_integers() -> None:
    for low in EDGES:
        for high in (h for h in EDGES if h >= low):
            assert accepted(_range_gbnf(low, high), WINDOW) == _expected(low, high), (low, high)


@pytest.mark.slow
def test_every_range_within_120_takes_exactly_its_integers() -> None:
    """All 29,161 pairs of bounds from -120 to 120 (about 6 s)."""
    for low in range(-120, 121):
        for high in range(low, 121):
            assert accepted(_range_gbnf(low, high), WINDOW) == _expected(low, high), (low, high)


def _around(*values: int) -> list[int]:
    """Each value and its neighbours, and the digit-count edges, within 16 digits."""
    edges = [10**k + d for k in range(17) for d in (-1, 0, 1)]
    near = {v + d for v in values for d in (-2, -1, 0, 1, 2)} | set(edges) | {-e for e in edges}
    return sorted(v for v in near if abs(v) <= LARGEST)


def _schema_accepts(schema: dict[str, Any], values: list[int]) -> set[int]:
    made = grammar.json_schema(schema).grammar
    return {int(text) for text in accepted(made, [str(v) for v in values])}


def test_wide_and_one_sided_ranges_take_exactly_their_integers() -> None:
    rng = random.Random(34)
    bounds = [rng.randrange(-LARGEST, LARGEST) // 10 ** rng.randrange(16) for _ in range(40)]
    for _ in range(60):
        low, high = sorted(rng.sample(bounds, 2))
        inside = [rng.randint(low, high) for _ in range(5)]
        values = _around(low, high, *inside)
        schema = {"type": "integer", "minimum": low, "maximum": high}
        assert _schema_accepts(schema, values) == {v for v in values if low <= v <= high}
    for bound in [*bounds[:20], 0, 1, -1, 9, 10, -10, LARGEST, -LARGEST]:
        values = _around(bound)
        below = _schema_accepts({"type": "integer", "maximum": bound}, values)
        assert below == {v for v in values if v <= bound}, bound
        above = _schema_accepts({"type": "integer", "minimum": bound}, values)
        assert above == {v for v in values if v >= bound}, bound


@pytest.mark.parametrize(
    ("bounds", "low", "high"),
    [
        ({"exclusiveMinimum": 0, "exclusiveMaximum": 10}, 1, 9),
        ({"minimum": 0.5, "maximum": 3.5}, 1, 3),
        ({"exclusiveMinimum": -0.5, "exclusiveMaximum": 2.0}, 0, 1),
        ({"minimum": 2, "exclusiveMinimum": True, "maximum": 5, "exclusiveMaximum": True}, 3, 4),
        ({"minimum": 2, "exclusiveMinimum": False, "maximum": 5}, 2, 5),
        ({"minimum": 3, "exclusiveMinimum": 5, "maximum": 8, "exclusiveMaximum": 7}, 6, 6),
        ({"minimum": -(10**30), "maximum": -(10**15)}, -LARGEST, -(10**15)),
    ],
)
def test_exclusive_fractional_and_huge_bounds(bounds: dict[str, Any], low: int, high: int) -> None:
    values = _around(low, high)
    got = _schema_accepts({"type": "integer", **bounds}, values)
    assert got == {v for v in values if low <= v <= high}


def test_bounds_reach_integers_inside_objects_lists_and_alternatives() -> None:
    schema = {
        "type": "object",
        "properties": {
            "age": {"type": "integer", "minimum": 0, "maximum": 120},
            "maybe": {"type": ["integer", "null"], "minimum": 1},
            "either": {"type": "integer", "anyOf": [{"maximum": -10}, {"minimum": 10}]},
            "scores": {"type": "array", "items": {"type": "integer", "maximum": 9}},
        },
        "required": ["age", "maybe", "either", "scores"],
        "additionalProperties": False,
    }
    regex = re.compile(to_regex(grammar.json_schema(schema).grammar))
    answer = '{{"age": {}, "maybe": {}, "either": {}, "scores": [{}]}}'.format
    assert regex.fullmatch(answer(120, "null", -10, "9, -3"))
    assert regex.fullmatch(answer(0, 1, 10, ""))
    for wrong in (
        answer(121, "null", -10, "9"),
        answer(-1, "null", -10, "9"),
        answer(5, 0, 10, "9"),
        answer(5, 1, 9, "9"),
        answer(5, 1, -9, "9"),
        answer(5, 1, 10, "9, 10"),
    ):
        assert not regex.fullmatch(wrong), wrong


def test_bounds_beside_a_type_that_is_no_number_mean_nothing() -> None:
    assert grammar.json_schema({"type": "string", "minimum": 3}).grammar == (
        grammar.json_schema({"type": "string"}).grammar
    )


@pytest.mark.parametrize(
    ("schema", "message"),
    [
        ({"type": "number", "minimum": 0}, "the schema's 'minimum' (at $) bounds a number"),
        ({"maximum": 3}, "'maximum' (at $) bounds a value that may be any number"),
        (
            {"type": "object", "properties": {"p": {"type": "number", "exclusiveMaximum": 1}}},
            "'exclusiveMaximum' (at $.properties.p) bounds a number",
        ),
        ({"type": "integer", "minimum": 5, "maximum": 4}, "leave no integer between 5 and 4"),
        ({"type": "integer", "exclusiveMinimum": 4, "maximum": 4}, "no integer between 5 and 4"),
        ({"type": "integer", "minimum": 10**16}, "integers of more than 16 digits"),
        ({"type": "integer", "minimum": "3"}, "'minimum' (at $) must be a number, not \"3\""),
        ({"type": "integer", "maximum": True}, "'maximum' (at $) must be a number, not true"),
        ({"type": "integer", "maximum": float("nan")}, "'maximum' (at $) must be a number"),
        ({"type": "integer", "minimum": 10**400}, "integers of more than 16 digits"),
        ({"type": "integer", "multipleOf": 2}, "'multipleOf' (at $) cannot be enforced"),
        ({"type": "string", "format": "date", "maxLength": 5}, "format and its maxLength"),
        ({"type": "string", "format": "uuid", "pattern": "^a$"}, "format and its pattern"),
        (
            {"type": "array", "prefixItems": [{"type": "integer"}], "minItems": 2},
            "prefixItems (at $) are 1, outside its minItems or maxItems",
        ),
    ],
)
def test_what_no_grammar_here_enforces_is_refused_in_one_line(
    schema: dict[str, Any], message: str
) -> None:
    with pytest.raises(UsageError) as e:
        grammar.json_schema(schema)
    assert message in e.value.message, e.value.message
    assert "\n" not in e.value.message and e.value.hint


# -- llama.cpp's own grammar code agrees -------------------------------------------------------


def test_llama_cpp_takes_exactly_the_integers_in_range(tiny_model: Path) -> None:
    import llama_cpp as lc

    from localrun.backend import LoadOptions, load
    from localrun.backend.llamacpp.sampler import _allows
    from tests.tinygguf import _vocab

    model: Any = load(LoadOptions(tiny_model, n_ctx=256, n_threads=1))
    # The text's bytes as the vocabulary's byte tokens (its tokenizer would put "▁" first).
    byte_zero = _vocab()[0].index("<0x00>")
    ranges = [(0, 120), (-120, -3), (-5, 5), (13, 987), (-1000, -999), (5, LARGEST), (-LARGEST, 7)]
    try:
        for low, high in ranges:
            handle = model.compile_grammar(
                grammar.json_schema({"type": "integer", "minimum": low, "maximum": high}).grammar
            )
            try:
                for text in [str(v) for v in _around(low, high)] + MALFORMED[1:]:
                    lc.llama_sampler_reset(handle)
                    ok = True
                    for token in [byte_zero + b for b in text.encode()]:
                        ok = ok and _allows(handle, token)
                        if ok:
                            lc.llama_sampler_accept(handle, token)
                    ok = ok and _allows(handle, model.eos_token)
                    within = re.fullmatch(r"0|-?[1-9][0-9]*", text) and low <= int(text) <= high
                    assert ok == bool(within), (low, high, text)
            finally:
                model.free_grammar(handle)
    finally:
        model.close()


def test_an_array_of_any_items_keeps_its_bounds() -> None:
    """``items: {}`` (any value) with ``maxItems`` 0 once let a fuzzed answer write
    ``[ true ]`` (seed 635785903): the converter reads {} as no items given, and drops the
    bounds with it. Its root rule now bounds the items (any value being recursive, the
    answers are checked by the fuzz test, which ran the model under it)."""

    def root(most: int) -> str:
        gbnf = grammar.json_schema({"type": "array", "items": {}, "maxItems": most}).grammar
        return next(line for line in gbnf.splitlines() if line.startswith("root ::="))

    assert root(0) == 'root ::= "[" space "]"'
    assert root(2) == 'root ::= "[" space (item ("," space item)?)? "]"'
