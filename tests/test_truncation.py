"""A prompt longer than the context is refused with the numbers, never cut in silence, unless
the client asked for truncation (Ollama's ``truncate: true``, the Responses API's
``truncation: "auto"``): then the oldest turns are left out, the system prompt and the
newest turn stay, and the usage counts what was read.

The engine with a scripted model (one token a byte), the converters in-process over the fake
pool of :mod:`tests.fakeserve`, and once against a real ``localrun serve``.
"""

from __future__ import annotations

import asyncio
import logging
import re
from pathlib import Path
from typing import Any

import httpx
import httpx2
import openai
import pytest

from localrun.engine.answerer import LocalAnswerer, Trimmed
from localrun.engine.load import LoadedModel
from localrun.engine.types import Finished, Request
from localrun.errors import PromptTooLongError
from localrun.prompt.template import Message
from localrun.prompt.tools import ToolCall
from localrun.server.app import create_app
from localrun.server.config import ServeConfig
from tests.fakeserve import Served, hello, serve
from tests.scripted import ScriptedModel
from tests.served import create_model, serving

TEMPLATE = "{% for m in messages %}{{ m.role }}: {{ m.content }}\n{% endfor %}assistant:"
TOO_LONG = re.compile(r"the prompt is (\d+) tokens but the context holds only (\d+)")


def conversation() -> tuple[Message, ...]:
    """A system prompt, a long first turn, a turn with a tool call and its result, and the
    newest question: about 300 bytes in all, 130 without the first turn."""
    call = ToolCall("weather", {"city": "Oslo"}, "call_1")
    return (
        Message("system", "SYS"),
        Message("user", "first " + "a" * 100),
        Message("assistant", "one " + "b" * 40),
        Message("user", "second"),
        Message("assistant", "", (call,)),
        Message("tool", "sunny", tool_call_id="call_1", name="weather"),
        Message("assistant", "it is sunny"),
        Message("user", "newest " + "e" * 40),
    )


def answerer(n_ctx: int) -> tuple[LocalAnswerer, ScriptedModel]:
    model = ScriptedModel([b"ok"], chat_template=TEMPLATE, n_ctx=n_ctx)
    return LocalAnswerer(LoadedModel(name="m", path=Path("m.gguf"), model=model, load_s=0.0)), model


def sent(model: ScriptedModel) -> str:
    return bytes(t - 3 for t in model.prompts[-1] if t > 2).decode()


@pytest.mark.parametrize(
    ("n_ctx", "dropped", "kept"),
    [(256, 2, 5), (160, 6, 1)],  # the first turn goes; then the tool's turn, whole
)
def test_the_oldest_turns_go_whole_and_the_system_prompt_and_newest_stay(
    n_ctx: int, dropped: int, kept: int
) -> None:
    local, model = answerer(n_ctx)
    events = list(local.start(Request(conversation()), trim=True))
    assert events[0] == Trimmed(dropped, kept)
    prompt = sent(model)
    assert prompt.startswith("system: SYS\n") and "user: newest " + "e" * 40 in prompt
    assert "first" not in prompt and "one bbb" not in prompt
    # A tool's result never stays without the call and the question it answers.
    assert ("tool: sunny" in prompt) == ("user: second" in prompt) == (kept > 1)
    assert isinstance(events[-1], Finished)
    assert events[-1].stats.prompt_tokens == len(model.prompts[-1]) < n_ctx


def test_a_conversation_of_hundreds_of_turns_is_rendered_a_few_times(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The turns to keep are found by halving: an agent's long conversation is not
    rendered and tokenized once for each turn left out."""
    from localrun.engine import prompting

    rendered: list[int] = []
    render = prompting.messages_prompt

    def counted(*args: Any) -> Any:
        rendered.append(1)
        return render(*args)

    monkeypatch.setattr(prompting, "messages_prompt", counted)
    messages = [Message("system", "SYS")]
    for i in range(300):
        messages += [Message("user", f"q{i:03}"), Message("assistant", f"a{i:03}")]
    messages.append(Message("user", "newest"))
    local, model = answerer(256)
    events = list(local.start(Request(tuple(messages)), trim=True))
    assert len(rendered) <= 12
    trimmed = events[0]
    assert isinstance(trimmed, Trimmed) and trimmed.dropped % 2 == 0
    prompt = sent(model)
    turn = len("user: q000\nassistant: a000\n")
    assert len(prompt) + 64 <= 256 < len(prompt) + turn + 64  # as many turns as fit
    assert prompt.startswith("system: SYS\nuser: q") and prompt.endswith("user: newest\nassistant:")


def test_without_truncation_or_when_the_newest_turn_alone_is_too_long_it_is_refused() -> None:
    local, model = answerer(256)
    with pytest.raises(PromptTooLongError) as e:
        local.start(Request(conversation()))
    found = TOO_LONG.search(e.value.message)
    assert found and int(found[1]) > 256 and found[2] == "256", e.value.message
    local, model = answerer(64)
    with pytest.raises(PromptTooLongError, match=r"is \d+ tokens but the context holds only 64"):
        local.start(Request(conversation()), trim=True)
    assert model.prompts == []


# -- the APIs, in-process ----------------------------------------------------------------


def responses_input() -> list[dict[str, Any]]:
    return [
        {"role": "user", "content": "first " + "a" * 100},
        {"role": "assistant", "content": "one " + "b" * 40},
        {"role": "user", "content": "newest " + "e" * 40},
    ]


def create(served: Served, **body: Any) -> Any:
    """``responses.create`` with the openai client, over the app in-process."""

    async def go() -> Any:
        app = create_app(ServeConfig(), served.pool)
        http = httpx2.AsyncClient(transport=httpx2.ASGITransport(app=app))
        client = openai.AsyncOpenAI(
            base_url="http://127.0.0.1/v1", api_key="x", http_client=http, max_retries=0
        )
        async with client:
            return await client.responses.create(model="tiny", **body)

    return asyncio.run(go())


def prompt_of(served: Served) -> str:
    return bytes(t - 3 for t in served.engine.jobs[-1].prompt if t > 2).decode()


def test_responses_truncation_auto_leaves_the_oldest_turns_out(
    caplog: pytest.LogCaptureFixture,
) -> None:
    served = serve(hello, TEMPLATE, n_ctx=160)
    with pytest.raises(openai.BadRequestError) as e:
        create(served, input=responses_input(), instructions="SYS")
    message = e.value.body["message"]  # type: ignore[index]
    assert TOO_LONG.search(message) and 'truncation: "auto"' in message, message
    with pytest.raises(openai.BadRequestError, match="'truncation' cannot be \"middle\""):
        create(served, input=responses_input(), truncation="middle")
    assert served.engine.jobs == []
    with caplog.at_level(logging.INFO, logger="localrun.server"):
        whole = create(served, input=responses_input(), instructions="SYS", truncation="auto")
    assert whole.output_text == "Hello" and whole.truncation == "auto"
    prompt = prompt_of(served)
    assert prompt.startswith("system: SYS\n") and "newest" in prompt and "first" not in prompt
    said = [r.getMessage() for r in caplog.records if "left out" in r.getMessage()]
    assert said == [
        "tiny: 2 of the conversation's oldest messages left out to fit a context of 160 "
        "tokens (1 kept, the system prompt aside)"
    ]


def test_ollama_truncate_true_leaves_the_oldest_turns_out() -> None:
    served = serve(hello, TEMPLATE, n_ctx=160)
    messages = [{"role": "system", "content": "SYS"}, *responses_input()]
    refused = served.post("/api/chat", {"model": "tiny", "messages": messages, "stream": False})
    assert refused.status_code == 400 and TOO_LONG.search(refused.json()["error"]), refused.text
    assert "truncate: true" in refused.json()["error"]
    bad = served.post("/api/chat", {"model": "tiny", "messages": messages, "truncate": "yes"})
    assert bad.status_code == 400 and "'truncate' must be" in bad.json()["error"], bad.text
    body = {"model": "tiny", "messages": messages, "stream": False, "truncate": True}
    r = served.post("/api/chat", body)
    assert r.status_code == 200 and r.json()["message"]["content"] == "Hello", r.text
    prompt = prompt_of(served)
    assert prompt.startswith("system: SYS\n") and "newest" in prompt and "first" not in prompt


def test_ollama_generate_never_cuts_its_prompt() -> None:
    """/api/generate has one prompt and no turns to leave out (Ollama's runner would cut
    tokens out of its middle): asked to truncate, a prompt too long is still refused."""
    served = serve(hello, TEMPLATE, n_ctx=160)
    body = {"model": "tiny", "prompt": "x" * 300, "stream": False, "truncate": True}
    r = served.post("/api/generate", body)
    error = r.json()["error"]
    assert r.status_code == 400 and TOO_LONG.search(error), r.text
    assert "even with the oldest turns left out" in error and served.engine.jobs == []


# -- a real server -----------------------------------------------------------------------


@pytest.mark.slow
def test_a_real_server_truncates_only_when_asked(
    localrun_home: Path, tiny_chat_model: Path
) -> None:
    create_model(localrun_home, "tiny", f"FROM {tiny_chat_model}\n")
    turns: Any = [
        {"role": "user", "content": "first " + "word " * 300},
        {"role": "assistant", "content": "fine"},
        {"role": "user", "content": "newest question"},
    ]
    with serving(localrun_home, "--ctx", "512", "--parallel", "1") as server:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0)
        with pytest.raises(openai.BadRequestError) as e:
            client.responses.create(model="tiny", input=turns, instructions="Be brief.")
        found = TOO_LONG.search(str(e.value))
        assert found and int(found[1]) > int(found[2]), str(e.value)
        whole = client.responses.create(
            model="tiny", input=turns, instructions="Be brief.", truncation="auto",
            max_output_tokens=4, extra_body={"seed": 1},
        )  # fmt: skip
        assert whole.truncation == "auto" and whole.usage is not None
        assert 0 < whole.usage.input_tokens < int(found[1]) / 4
        assert whole.usage.output_tokens == 4

        chat = {"model": "tiny", "messages": turns, "stream": False,
                "options": {"num_predict": 4, "seed": 1}}  # fmt: skip
        refused = httpx.post(server.url + "/api/chat", json=chat, timeout=60)
        assert refused.status_code == 400 and TOO_LONG.search(refused.json()["error"])
        r = httpx.post(server.url + "/api/chat", json={**chat, "truncate": True}, timeout=60)
        assert r.status_code == 200, r.text
        assert 0 < r.json()["prompt_eval_count"] < int(found[1]) / 4
    assert "oldest messages left out to fit a context of" in server.stderr
