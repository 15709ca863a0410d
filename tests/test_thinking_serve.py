"""A thinking model's trace over both APIs, read by the real clients: Ollama's ``think`` and
``message.thinking``, OpenAI's ``reasoning_effort`` and ``reasoning_content`` deltas, the
trace's tokens in the usage, and a budget that closes it.

The model is the tiny one with DeepSeek-R1's template, which opens the trace in the prompt:
whatever the random weights write is trace, until a budget closes it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import ollama
import openai
import pytest

from tests.served import create_model, serving
from tests.tinygguf import write_tiny_model

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def r1(real_templates: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    template = (real_templates / "llama-cpp-deepseek-r1.jinja").read_text(encoding="utf-8")
    path = tmp_path_factory.mktemp("r1") / "r1.gguf"
    return write_tiny_model(path, chat_template=template, n_ctx_train=4096,
                            added=("<think>", "</think>"))  # fmt: skip


def test_both_apis_give_the_trace_apart(localrun_home: Path, r1: Path) -> None:
    create_model(localrun_home, "r1", f"FROM {r1}\n")
    hi: list[Any] = [{"role": "user", "content": "Hi"}]
    with serving(localrun_home, "--model", "r1") as server:
        # Ollama's client: the trace in message.thinking, streamed and whole.
        client = ollama.Client(host=server.url)
        options = {"num_predict": 12, "seed": 3}
        whole = client.chat(model="r1", messages=hi, think=True, options=options)
        assert whole.message.thinking and not whole.message.content
        parts = list(client.chat(model="r1", messages=hi, think=True, options=options,
                                 stream=True))  # fmt: skip
        assert "".join(p.message.thinking or "" for p in parts) == whole.message.thinking
        # think false: R1's template has no switch, so the trace is not shown at all.
        hidden = client.chat(model="r1", messages=hi, think=False, options=options)
        assert not hidden.message.thinking
        # A budget of 3 tokens closes the trace; what follows is the answer: as an option
        # (the real client), and as localrun's own field.
        budgeted = client.chat(model="r1", messages=hi, think=True,
                               options=options | {"think_budget": 3})  # fmt: skip
        assert budgeted.message.thinking and budgeted.message.content
        body = {"model": "r1", "messages": hi, "stream": False, "think_budget": 3,
                "options": options}  # fmt: skip
        answered = httpx.post(server.url + "/api/chat", json=body, timeout=120).json()
        assert answered["message"]["thinking"] and answered["message"]["content"].strip()

        # OpenAI's client: reasoning_content deltas, reasoning tokens in the usage.
        oai = openai.OpenAI(base_url=server.url + "/v1", api_key="none")
        extra = {"think_budget": 3, "seed": 3}
        stream = oai.chat.completions.create(
            model="r1", messages=hi, max_tokens=12, stream=True, reasoning_effort="high",
            stream_options={"include_usage": True}, extra_body=extra,
        )  # fmt: skip
        chunks = list(stream)
        trace = "".join(getattr(c.choices[0].delta, "reasoning_content", None) or ""
                        for c in chunks if c.choices)  # fmt: skip
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        usage = chunks[-1].usage
        assert trace and text.strip() and "</think>" not in trace + text
        assert usage is not None and usage.completion_tokens_details is not None
        assert usage.completion_tokens_details.reasoning_tokens == 4
        done = oai.chat.completions.create(model="r1", messages=hi, max_tokens=12,
                                           extra_body=extra)  # fmt: skip
        message = done.choices[0].message
        assert getattr(message, "reasoning_content", None) == trace
        assert message.content == text


def test_a_remote_engines_reasoning_content_stays_apart(localrun_home: Path, r1: Path) -> None:
    """Another localrun serve as the remote engine: its reasoning_content deltas become the
    trace here (apart in --format json, counted from its usage), and --think=false is sent
    to it as the template's switch."""
    import json

    from tests.proc import run

    create_model(localrun_home, "r1", f"FROM {r1}\nPARAMETER think_budget 3\n")
    with serving(localrun_home, "--model", "r1") as server:
        added = run(localrun_home, "remote", "add", "far", server.url, "--model", "r1")
        assert added.code == 0, added.stderr
        done = run(localrun_home, "run", "far", "--seed", "3", "-n", "12", "--format", "json",
                   "Hi")  # fmt: skip
        assert done.code == 0, done.stderr
        answer = json.loads(done.stdout)
        assert answer["thinking"] and answer["response"].strip()
        assert answer["stats"]["thinking_tokens"] == 4 and answer["stats"]["first_answer_s"] > 0
        piped = run(localrun_home, "run", "far", "--seed", "3", "-n", "12", "Hi")
        assert piped.stdout.rstrip("\n") == answer["response"]
