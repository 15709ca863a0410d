"""Grammars llama.cpp cannot hold are refused by name before it sees them.

The hostile sweep of 2026-12-06 found a schema of ``maxLength: 100000`` killing the process
(SIGSEGV in llama.cpp's recursive grammar parser, the server included), and enums and GBNF
alternatives by the hundred thousand keeping a core busy for minutes. Each case here failed
so; the limits are in :mod:`localrun.prompt.grammar`, their measurements in its docstring.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from localrun.backend import LoadOptions, SamplingParams, load
from localrun.engine.batch import BatchEngine, Job, collect
from localrun.engine.types import FinishReason
from localrun.errors import GenerationError, UsageError
from localrun.prompt import grammar
from localrun.prompt.gbnf import MAX_ALTERNATIVES, MAX_NESTING, MAX_REPEAT, MAX_RULES
from localrun.prompt.schema import MAX_ENUM, MAX_SCHEMA_REPEAT
from tests.proc import run


def _nested(depth: int) -> str:
    return "root ::= " + "(" * depth + '"a"' + ")" * depth + "\n"


def _alternatives(n: int) -> str:
    return "root ::= " + " | ".join(f'"w{i}"' for i in range(n)) + "\n"


def _chain(rules: int) -> str:
    """``rules`` rules, each the leftmost part of the one before: llama.cpp's left-recursion
    check recurses down the chain."""
    lines = ["root ::= r1"] + [f'r{i} ::= r{i + 1} "a"' for i in range(1, rules - 1)]
    return "\n".join([*lines, f'r{rules - 1} ::= "b"']) + "\n"


AT_THE_LIMITS = {
    "nesting": _nested(MAX_NESTING),
    "alternatives": _alternatives(MAX_ALTERNATIVES),
    "rules": _chain(MAX_RULES),
    "repeat": f"root ::= [a-z]{{0,{MAX_REPEAT}}}\n",
}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (_nested(MAX_NESTING + 1), f"has {MAX_NESTING + 1:,} levels of parentheses, more than"),
        (_alternatives(MAX_ALTERNATIVES + 2), f"has {MAX_ALTERNATIVES + 1:,} alternatives"),
        (_chain(MAX_RULES + 1), f"has {MAX_RULES + 1:,} rules, more than the {MAX_RULES:,}"),
        (f"root ::= [a-z]{{0,{MAX_REPEAT + 1}}}", f"at most {{{MAX_REPEAT}}}"),
        (f"root ::= [a-z]{{{MAX_REPEAT + 1}}}", f"at most {{{MAX_REPEAT}}}"),
        ("root ::= " + '"x"' * 100_000, "characters, more than 262,144"),
        ("root ::= ", "allows only an empty answer"),
        ("root ::=  # nothing\nother ::= [a]\n", "allows only an empty answer"),
    ],
)
def test_a_grammar_past_a_limit_is_refused_by_name(text: str, message: str) -> None:
    with pytest.raises(UsageError) as refused:
        grammar.gbnf(text, "g.gbnf")
    assert refused.value.message.startswith("the grammar in g.gbnf ")
    assert message in refused.value.message


def test_what_looks_like_a_limit_inside_a_literal_is_not_one() -> None:
    text = 'root ::= "{0,5000} ((( | | |" [|({] "\\"{9999}"\n' + "# ((((((( {0,99999}\n"
    assert grammar.gbnf(text, "g.gbnf").grammar == text
    assert grammar.gbnf("root ::=\n  [a-z]+\n", "g.gbnf")  # the body on the next line


@pytest.mark.parametrize(
    ("schema", "message"),
    [
        ({"type": "string", "maxLength": 100_000}, "maxLength 100,000 (at $) is more than"),
        ({"type": "string", "minLength": 5_000}, "minLength 5,000 (at $)"),
        ({"type": "array", "minItems": 1_000_000}, "minItems 1,000,000 (at $)"),
        (
            {"properties": {"a": {"type": "array", "maxItems": 1001}}},
            "maxItems 1,001 (at $.properties.a)",
        ),
        ({"type": "string", "pattern": "^a{1000000}$"}, "pattern (at $) repeats {1000000}"),
        ({"type": "string", "pattern": "^[a-z]{2,5000}$"}, "repeats {2,5000}"),
        ({"enum": [f"v{i}" for i in range(100_000)]}, "enum (at $) has 100,000 values"),
        ({"type": "string", "maxLength": -1}, "'maxLength' (at $) must be a whole number"),
    ],
)
def test_a_schema_past_a_limit_is_refused_by_name(schema: dict[str, Any], message: str) -> None:
    with pytest.raises(UsageError) as refused:
        grammar.json_schema(schema)
    assert message in refused.value.message


def test_a_schema_at_its_limits_converts() -> None:
    grammar.json_schema({"type": "string", "maxLength": MAX_SCHEMA_REPEAT})
    grammar.json_schema({"type": "array", "minItems": 1, "maxItems": MAX_SCHEMA_REPEAT})
    grammar.json_schema({"enum": [f"value {i}" for i in range(MAX_ENUM)]})


def test_the_crashing_schema_is_one_line_not_a_segfault(
    localrun_home: Path, tiny_model: Path
) -> None:
    schema = '{"type":"string","maxLength":100000}'
    done = run(localrun_home, "run", str(tiny_model), "hi", "--schema", schema, "--max-tokens", "6")
    assert done.code == 2, done  # was 139, with nothing on stderr
    assert done.stderr.strip().splitlines() == [
        "Error: the schema's maxLength 100,000 (at $) is more than the 1,000 a grammar can "
        "enforce. Hint: lower maxLength to at most 1,000, or drop it and check the length "
        "yourself"
    ]


# llama.cpp's parser recurses once per level of parentheses: the grammar at the nesting limit
# needs about 430 KB of stack, more than the small thread below has. It is built all the same,
# since grammars are parsed on a thread of their own with a 16 MiB stack.
_PROOF = textwrap.dedent(
    """
    import json, sys, threading
    from localrun.backend import LoadOptions, load
    texts = json.loads(sys.stdin.read())
    model = load(LoadOptions(sys.argv[1], n_ctx=256, n_threads=1))
    built = []
    def build():
        for name, text in texts.items():
            model.free_grammar(model.compile_grammar(text))
            built.append(name)
    threading.stack_size(256 * 1024)
    small = threading.Thread(target=build)
    small.start()
    small.join()
    print(json.dumps(built))
    """
)


def test_grammars_at_every_limit_build_even_from_a_thread_with_a_small_stack(
    tiny_model: Path,
) -> None:
    done = subprocess.run(
        [sys.executable, "-c", _PROOF, str(tiny_model)],
        input=json.dumps(AT_THE_LIMITS),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]  # -11: the stack overflowed
    assert json.loads(done.stdout) == list(AT_THE_LIMITS)


@pytest.mark.e2e
def test_a_grammar_too_costly_to_follow_fails_its_answer_alone() -> None:
    """An enum whose values begin alike keeps thousands of alternatives open at once: llama.cpp
    would check each of them against every token of the demo model's 262,144 (10 s a token).
    The answer fails in one line within about a second; the other answers go on."""
    from localrun.models.demo import demo_model_path

    model = load(LoadOptions(demo_model_path(), n_ctx=512, n_threads=2))
    engine = BatchEngine(model)  # type: ignore[arg-type]
    try:
        prefix = "the same long prefix that every value shares "
        costly = grammar.json_schema({"enum": [prefix + str(i) for i in range(MAX_ENUM)]})
        tokens = model.tokenize("hi", add_special=True, parse_special=False)
        slow = engine.submit(Job(tokens, SamplingParams(grammar=costly.grammar), max_tokens=40))
        plain = engine.submit(Job(tokens, SamplingParams(temperature=0.0), max_tokens=8))
        with pytest.raises(GenerationError) as failed:
            collect(slow)
        assert failed.value.message.startswith("the grammar costs too much to follow")
        _, stats = collect(plain)
        assert stats.finish_reason is FinishReason.LENGTH and stats.completion_tokens == 8
        assert engine.alive
    finally:
        engine.close()
        model.close()


def test_an_answer_whose_sampling_fails_fails_alone(
    tiny_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Once, an answer whose grammar allowed no token (or cost too much) stopped the engine
    thread, and every other answer on the model with it."""
    model: Any = load(LoadOptions(tiny_model, n_ctx=512, n_threads=2))
    doomed: set[int] = set()
    made, sample = model.new_sampler, model.sample

    def new_sampler(sampling: SamplingParams, history: list[int], grammar: Any = None) -> Any:
        chain = made(sampling, history, grammar)
        if sampling.seed == 13:
            doomed.add(id(chain))
        return chain

    def failing(chain: Any, row: int) -> int:
        if id(chain) in doomed:
            raise GenerationError("the grammar allows no token here")
        return int(sample(chain, row))

    monkeypatch.setattr(model, "new_sampler", new_sampler)
    monkeypatch.setattr(model, "sample", failing)
    engine = BatchEngine(model)
    try:
        tokens = model.tokenize("hi", add_special=True, parse_special=False)
        nowhere = engine.submit(Job(tokens, SamplingParams(seed=13), max_tokens=4))
        plain = engine.submit(Job(tokens, SamplingParams(temperature=0.0), max_tokens=4))
        with pytest.raises(GenerationError, match="the grammar allows no token here"):
            collect(nowhere)
        assert collect(plain)[1].completion_tokens == 4
        assert engine.alive
    finally:
        engine.close()
        model.close()


def test_the_grammar_budget_counts_cpu_time_not_time_waiting_for_a_core(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """On a machine whose other processes take the cores, a check that waited for one must not
    fail the answer: only the CPU time the grammar's checks take is foreseen."""
    import ctypes
    import time

    import llama_cpp.llama_cpp as lc  # the bindings the sampler calls

    from localrun.backend.llamacpp import sampler

    def waits(grammar: object, array: object) -> None:
        time.sleep(0.1)  # as if preempted: 0.1 s of the clock, almost no CPU

    def works(grammar: object, array: object) -> None:
        end = time.thread_time() + 0.1
        while time.thread_time() < end:  # 0.1 s of this thread's CPU
            pass

    monkeypatch.setattr(lc, "llama_sampler_apply", waits)
    cost = sampler._Cost()
    cost.apply(None, ctypes.c_int(0), 256)
    cost.check(4096)  # foreseen from CPU time: nothing like 16 x 0.1 s
    monkeypatch.setattr(lc, "llama_sampler_apply", works)
    cost = sampler._Cost()
    cost.apply(None, ctypes.c_int(0), 256)
    with pytest.raises(GenerationError, match="costs too much to follow"):
        cost.check(4096)  # 16 x 0.1 s of real work is past the 1 s budget
