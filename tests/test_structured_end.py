"""A structured answer ends where its JSON value does: no blank lines or tabs after it.

The converter's grammar let every value, the top-level one too, be followed by up to two line
breaks and twenty spaces or tabs; a small model wrote them after its closing brace, and they
reached stdout and the APIs' answers. The top-level value now ends the grammar: after it only
the end of the answer may come (a tool call's arguments, which more text follows, keep it).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from localrun.prompt import grammar
from tests.proc import run

pytestmark = pytest.mark.e2e

PET = {
    "type": "object",
    "properties": {"name": {"type": "string", "maxLength": 12}, "age": {"type": "integer"}},
    "required": ["name", "age"],
    "additionalProperties": False,
}
SPACES = ["\n", " ", "\t", "\n\n"]


@pytest.fixture(scope="module")
def demo() -> Iterator[Any]:
    from localrun.backend import LoadOptions, load
    from localrun.models.demo import demo_model_path

    model = load(LoadOptions(demo_model_path(), n_ctx=256, n_threads=1))
    yield model
    model.close()


def _after(model: Any, gbnf: str, text: str) -> dict[str, bool]:
    """Which of SPACES, and the end of the answer, the grammar allows once ``text`` is
    written (each token of ``text`` must be allowed)."""
    import llama_cpp as lc

    from localrun.backend.llamacpp.sampler import _allows

    handle = model.compile_grammar(gbnf)
    try:
        for token in model.tokenize(text, add_special=False, parse_special=False):
            assert _allows(handle, token), (text, token)
            lc.llama_sampler_accept(handle, token)
        first = {s: model.tokenize(s, add_special=False, parse_special=False)[0] for s in SPACES}
        allowed = {s: _allows(handle, token) for s, token in first.items()}
        allowed["end"] = _allows(handle, model.eos_token)
        return allowed
    finally:
        model.free_grammar(handle)


@pytest.mark.parametrize(
    ("made", "text"),
    [
        (grammar.json_value(object_only=True), '{"a": [1, {"b": null}]}'),
        (grammar.json_value(), '[1, "x"]'),
        (grammar.json_value(), '"x"'),
        (grammar.json_value(), "true"),
        (grammar.json_value(), "12.5"),
        (grammar.json_schema(PET), '{"name": "Tom", "age": 3}'),
        (grammar.json_schema({"anyOf": [{"type": "integer"}, {"type": "string"}]}), '"x"'),
        (grammar.json_schema({"type": "array", "items": {"type": "integer"}}), "[1,\n 2]"),
        (grammar.json_schema({"type": "string", "pattern": "^[a-z]+$"}), '"abc"'),
        (grammar.json_schema({"enum": ["a", 1]}), "1"),
    ],
)
def test_after_the_value_only_the_end_may_come(
    demo: Any, made: grammar.Constraint, text: str
) -> None:
    assert _after(demo, made.grammar, text) == {**dict.fromkeys(SPACES, False), "end": True}


@pytest.mark.parametrize("pattern", ["^.{1,4}$", "^[^a]{1,5}$", '^[^"\\\\]{1,5}$', "^[ -~]+$"])
def test_a_pattern_never_lets_through_what_json_escapes(demo: Any, pattern: str) -> None:
    """A dot, a negated class or a range over printable ASCII let a control character through
    raw (the tiny model wrote U+0010 into an answer a JSON parser then refused), and a quote
    or backslash that would end the string or start an escape the pattern never meant."""
    import llama_cpp as lc

    from localrun.backend.llamacpp.sampler import _allows

    handle = demo.compile_grammar(
        grammar.json_schema({"type": "string", "pattern": pattern}).grammar
    )
    try:
        (quote,) = demo.tokenize('"', add_special=False, parse_special=False)
        lc.llama_sampler_accept(handle, quote)
        allowed = {
            text: _allows(handle, demo.tokenize(text, add_special=False, parse_special=False)[0])
            for text in ['"', "\\", "\x10", "\t", "\n", "\x7f", "b"]
        }
    finally:
        demo.free_grammar(handle)
    assert allowed == {**dict.fromkeys(allowed, False), "b": True}


def test_inside_a_larger_grammar_the_spaces_stay(demo: Any) -> None:
    """A tool call's arguments are followed by more text (``</tool_call>``): spaces before it
    stay allowed, as models write them."""
    made = grammar.json_schema(PET, inside=True)
    assert _after(demo, made.grammar, '{"name": "Tom", "age": 3}')["\n"]


def test_values_inside_may_still_span_lines(demo: Any) -> None:
    allowed = _after(demo, grammar.json_schema(PET).grammar, '{\n  "name": "Tom",')
    assert allowed["\n"] and allowed[" "] and not allowed["end"]


def test_stdout_ends_with_the_value(localrun_home: Path) -> None:
    """A seed with which the old grammar padded the answer (checked when this was written)."""
    for seed in ("1",):
        done = run(localrun_home, "run", "demo", "--seed", seed, "-n", "64",
                   "--schema", json.dumps(PET), "A cat, as JSON:")  # fmt: skip
        assert done.code == 0, done.stderr
        assert done.stdout.endswith("}\n") and not done.stdout.endswith("\n\n"), done.stdout
        json.loads(done.stdout)
        whole = run(localrun_home, "run", "demo", "--seed", seed, "-n", "64", "--format", "json",
                    "--schema", "json", "A cat, as JSON:")  # fmt: skip
        assert whole.code == 0, whole.stderr
        response = json.loads(whole.stdout)["response"]
        assert response == response.rstrip() and json.loads(response) is not None, response


@pytest.mark.parametrize(
    ("grammar_of", "body", "text"),
    [
        ("ollama", {"format": "json"}, '{"a": 1}'),
        ("ollama", {"format": PET}, '{"name": "Tom", "age": 3}'),
        ("openai", {"response_format": {"type": "json_object"}}, '{"a": 1}'),
        (
            "openai",
            {"response_format": {"type": "json_schema", "json_schema": {"schema": PET}}},
            '{"name": "Tom", "age": 3}',
        ),
    ],
)
def test_the_servers_grammars_end_with_the_value(
    demo: Any, grammar_of: str, body: dict[str, Any], text: str
) -> None:
    from localrun.server import ollama, openai

    made = ollama._format(body) if grammar_of == "ollama" else openai._response_format(body)
    assert made is not None
    assert _after(demo, made, text) == {**dict.fromkeys(SPACES, False), "end": True}


def test_the_apis_answer_ends_with_the_value(localrun_home: Path) -> None:
    """Both APIs, streamed and not, on the demo model (whose answers the old grammar padded
    with seed 1: checked when this was written)."""
    import ollama
    import openai
    from openai.types.chat import ChatCompletionMessageParam
    from openai.types.shared_params import ResponseFormatJSONSchema

    from tests.served import serving

    asked: list[ChatCompletionMessageParam] = [{"role": "user", "content": "A cat, as JSON:"}]
    strict: ResponseFormatJSONSchema = {
        "type": "json_schema",
        "json_schema": {"name": "pet", "schema": PET},
    }
    with serving(localrun_home, "--model", "demo", "--threads", "1") as server:
        streamed = ollama.Client(host=server.url).chat(
            model="demo", messages=asked, format=PET, stream=True,
            options={"num_predict": 48, "seed": 1},
        )  # fmt: skip
        texts = ["".join(part.message.content or "" for part in streamed)]
        done = openai.OpenAI(base_url=server.url + "/v1", api_key="none").chat.completions.create(
            model="demo", messages=asked, max_tokens=48, seed=1,
            response_format=strict,
        )  # fmt: skip
        texts.append(done.choices[0].message.content or "")
    for text in texts:
        assert text.endswith("}"), repr(text)
        json.loads(text)
