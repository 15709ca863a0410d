"""A thinking model's answer on the engine: the trace apart, switched, bounded and counted.

A tiny random model carries the real templates (Qwen3's, DeepSeek-R1's) and ``<think>`` and
``</think>`` as the text tokens they are in those models' vocabularies; a grammar makes it
write an exact trace and answer (the parsers meet the real shapes), and a thinking budget
closes the trace that DeepSeek-R1's template opens in the prompt, whatever the model writes.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from localrun import engine
from localrun.backend import SamplingParams
from localrun.engine.answerer import LocalAnswerer
from localrun.engine.types import Called, Finished, Request, TextDelta, ThinkingDelta
from localrun.prompt.template import Message
from localrun.prompt.tools import Tool
from tests.tinygguf import write_tiny_model

pytestmark = pytest.mark.slow

QWEN3 = "Qwen-Qwen3-0.6B.jinja"
R1 = "llama-cpp-deepseek-r1.jinja"
WEATHER = Tool("weather", "The weather in a city", {"type": "object",
               "properties": {"city": {"type": "string"}}})  # fmt: skip


@pytest.fixture(scope="module")
def models(real_templates: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """Qwen3's and DeepSeek-R1's templates on the tiny model, loaded once."""
    where = tmp_path_factory.mktemp("thinking")
    loaded = {}
    for name in (QWEN3, R1):
        template = (real_templates / name).read_text(encoding="utf-8")
        path = write_tiny_model(where / f"{name}.gguf", chat_template=template,
                                n_ctx_train=4096, added=("<think>", "</think>"))  # fmt: skip
        loaded[name] = engine.load_model(str(path), n_ctx=1024, n_threads=1)
    yield loaded
    for model in loaded.values():
        model.close()


def _answer(loaded: Any, request: Request) -> tuple[str, str, list[Any]]:
    events = list(LocalAnswerer(loaded).start(request))
    trace = "".join(e.text for e in events if isinstance(e, ThinkingDelta))
    text = "".join(e.text for e in events if isinstance(e, TextDelta))
    return trace, text, events


def _forced(text: str) -> SamplingParams:
    """A grammar that makes the model write exactly ``text``."""
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return SamplingParams(seed=1, grammar=f'root ::= "{escaped}"')


def test_the_trace_comes_apart_from_the_answer_and_is_counted(models: Any) -> None:
    written = "<think>\nThe user greets me.\n</think>\n\nHello there."
    request = Request((Message("user", "Hi"),), _forced(written), max_tokens=60)
    trace, text, events = _answer(models[QWEN3], request)
    assert (trace, text) == ("The user greets me.", "Hello there.")
    stats = events[-1].stats
    assert isinstance(events[-1], Finished)
    assert 0 < stats.thinking_tokens < stats.completion_tokens
    assert stats.first_answer_s > stats.ttft_s > 0  # the answer began after the trace


def test_a_tool_call_after_a_trace_is_still_read(models: Any) -> None:
    written = ('<think>\nI need the weather.\n</think>\n\n<tool_call>\n'
               '{"name": "weather", "arguments": {"city": "Paris"}}\n</tool_call>')  # fmt: skip
    request = Request((Message("user", "Weather in Paris?"),), _forced(written), max_tokens=200,
                      tools=(WEATHER,))  # fmt: skip
    trace, text, events = _answer(models[QWEN3], request)
    (called,) = [e for e in events if isinstance(e, Called)]
    assert trace == "I need the weather."
    assert [(c.name, c.arguments) for c in called.calls] == [("weather", {"city": "Paris"})]
    assert "tool_call" not in text and "think" not in text


def test_thinking_off_reaches_the_template(models: Any) -> None:
    """Qwen3's enable_thinking, rendered false, writes the family's empty trace itself."""
    from localrun.engine.prompting import messages_prompt

    loaded = models[QWEN3]
    asked = Request((Message("user", "Hi"),), SamplingParams(seed=1))
    off = messages_prompt(loaded, asked.messages, replace(asked, think=False)).text
    default = messages_prompt(loaded, asked.messages, asked).text
    assert off.endswith("<think>\n\n</think>\n\n") and not default.endswith("</think>\n\n")


def test_a_budget_closes_the_trace_the_prompt_opened_and_the_answer_follows(
    models: Any,
) -> None:
    """DeepSeek-R1's template ends the prompt inside a trace: without a budget the random
    model's whole answer is trace; with one of 3 tokens, the engine writes </think> after
    three, and what the model writes next is the answer."""
    loaded = models[R1]
    asked = Request((Message("user", "Hi"),), SamplingParams(seed=3), max_tokens=16,
                    stop_at_eog=False)  # fmt: skip
    trace, text, events = _answer(loaded, asked)
    assert trace and not text.strip()
    trace, text, events = _answer(loaded, replace(asked, think_budget=3))
    stats = events[-1].stats
    assert stats.thinking_tokens == 4  # three of its own and the closing marker
    assert trace and text.strip() and stats.first_answer_s > 0
    assert "</think>" not in trace + text


def test_asking_a_model_that_does_not_think_to_think_is_refused(tiny_chat_model: Path) -> None:
    from localrun.errors import UsageError

    loaded = engine.load_model(str(tiny_chat_model), n_ctx=256, n_threads=1)
    try:
        request = Request((Message("user", "Hi"),), SamplingParams(seed=1), think=True)
        with pytest.raises(UsageError, match="does not think"):
            LocalAnswerer(loaded).start(request)
        _answer(loaded, replace(request, think=False, max_tokens=2))  # nothing to turn off
    finally:
        loaded.close()


def test_run_and_batch_lines_take_a_budget(
    real_templates: Path, localrun_home: Path, tmp_path: Path
) -> None:
    """``run --think-budget``, a Modelfile's PARAMETER think_budget and a --batch line's
    ``think_budget``: each closes the trace DeepSeek-R1's template opens, and the answer
    follows; piped stdout has the answer only, --format json the trace beside it."""
    import json

    from tests.proc import run
    from tests.served import create_model

    template = (real_templates / R1).read_text(encoding="utf-8")
    path = write_tiny_model(tmp_path / "r1.gguf", chat_template=template, n_ctx_train=4096,
                            added=("<think>", "</think>"))  # fmt: skip
    create_model(localrun_home, "r1", f"FROM {path}\nPARAMETER think_budget 3\n")
    fixed = ("--seed", "3", "-n", "16")
    whole = run(localrun_home, "run", "r1", *fixed, "--format", "json", "Hi")
    assert whole.code == 0, whole.stderr
    done = json.loads(whole.stdout)
    assert done["thinking"] and done["response"] and done["stats"]["thinking_tokens"] == 4
    flagged = run(localrun_home, "run", "r1", *fixed, "--think-budget", "5", "Hi")
    assert flagged.code == 0 and flagged.stdout.strip(), flagged.stderr
    assert flagged.stdout.rstrip("\n") != done["thinking"] + done["response"]
    lines = tmp_path / "lines.jsonl"
    line = {"prompt": "Hi", "seed": 3, "max_tokens": 16}
    lines.write_text(json.dumps(line | {"think_budget": 2}) + "\n"
                     + json.dumps(line | {"think_budget": -1}) + "\n")  # fmt: skip
    batch = run(localrun_home, "run", "r1", "--batch", str(lines))
    first, second = (json.loads(line) for line in batch.stdout.splitlines())
    assert first["thinking"] and first["stats"]["thinking_tokens"] == 3
    assert "think_budget" in second["error"]


def test_gpt_oss_channels_come_apart(real_templates: Path, tmp_path: Path) -> None:
    """gpt-oss's harmony markers are control tokens: shown to the split (the answer is read
    with them), then cut; the analysis channel is the trace, the final one the answer."""
    template = (real_templates / "openai-gpt-oss-120b.jinja").read_text(encoding="utf-8")
    # Not <|end|> nor <|return|>: a llama vocabulary reads those as the end of the answer
    # (gpt-oss's own keeps <|end|> going), which the grammar may pick over their bytes.
    specials = ("<|start|>", "<|channel|>", "<|message|>")
    path = write_tiny_model(tmp_path / "oss.gguf", chat_template=template, n_ctx_train=4096,
                            specials=specials)  # fmt: skip
    loaded = engine.load_model(str(path), n_ctx=2048, n_threads=1)
    try:
        written = ("<|channel|>analysis<|message|>They greet me.<|end|>"
                   "<|start|>assistant<|channel|>final<|message|>Hi!")  # fmt: skip
        request = Request((Message("user", "Hi"),), _forced(written), max_tokens=300)
        trace, text, events = _answer(loaded, request)
        assert (trace, text) == ("They greet me.", "Hi!")
        assert events[-1].stats.thinking_tokens > 0
    finally:
        loaded.close()
