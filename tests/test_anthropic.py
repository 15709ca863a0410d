"""Anthropic's Messages API (Claude Code's), read by the real ``anthropic`` client.

In-process over the fake pool (tests/fakeserve.py): the whole message and its stream of named
events, a trace as a thinking block, a tool use and its result sent back, the system prompt
and sampling fields reaching the engine, refusals in Anthropic's error shape. Against a real
``localrun serve``: messages.create, a stream, count_tokens and the x-api-key header.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import anthropic
import httpx
import pytest

from localrun.engine.types import Event, Finished, FirstToken, TextDelta
from localrun.server.app import create_app
from tests.fakeserve import Served, serve, stats_of

T = TypeVar("T")
HI: list[Any] = [{"role": "user", "content": "Hi"}]
TOOLS_TEMPLATE = (
    "{% if tools %}tools: {{ tools | tojson }}; call them as <tool_call>{...}</tool_call>\n"
    "{% endif %}{% for m in messages %}{{ m.role }}: {{ m.content }}\n{% endfor %}assistant:"
)
THINK_TEMPLATE = "{% for m in messages %}{{ m.role }}: {{ m.content }}\n{% endfor %}</think>"
WEATHER: Any = {
    "name": "weather",
    "description": "The weather in a city",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
}
CALL = '<tool_call>\n{"name": "weather", "arguments": {"city": "Oslo"}}\n</tool_call>'


def hello() -> list[Event | BaseException]:
    return [FirstToken(0.1), TextDelta("Hel", 1), TextDelta("lo", 2), Finished(stats_of())]


def thought() -> list[Event | BaseException]:
    return [FirstToken(0.1), TextDelta("<think>Greet", 1), TextDelta(".</think>\n\n", 2),
            TextDelta("Hello", 3), Finished(stats_of())]  # fmt: skip


def called() -> list[Event | BaseException]:
    return [FirstToken(0.1), TextDelta(CALL, 9), Finished(stats_of())]


def with_client(
    served: Served, use: Callable[[anthropic.AsyncAnthropic], Coroutine[Any, Any, T]]
) -> T:
    """Run ``use`` with the real client, talking to the app in-process."""

    async def go() -> T:
        app = create_app(served.pool.config, served.pool)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport) as http:
            client = anthropic.AsyncAnthropic(
                base_url="http://127.0.0.1", api_key="none", http_client=http
            )
            return await use(client)

    return asyncio.run(go())


def _prompt(served: Served, job: int = -1) -> str:
    """The text the engine was asked to continue (the scripted model's tokens are bytes)."""
    tokens = served.engine.jobs[job].prompt
    return bytes(t - 3 for t in tokens if t > 3).decode(errors="replace")


def test_a_whole_message_and_its_stream() -> None:
    served = serve(hello)

    async def use(client: anthropic.AsyncAnthropic) -> tuple[Any, list[Any], Any]:
        asked: dict[str, Any] = {"system": "Be brief.", "temperature": 0.2, "top_k": 7}
        whole = await client.messages.create(model="tiny", max_tokens=9, messages=HI, **asked)
        events = []
        async with client.messages.stream(model="tiny", max_tokens=9, messages=HI) as stream:
            async for event in stream:
                events.append(event)
            final = await stream.get_final_message()
        return whole, events, final

    whole, events, final = with_client(served, use)
    assert [b.type for b in whole.content] == ["text"] and whole.content[0].text == "Hello"
    assert whole.stop_reason == "end_turn" and whole.usage.output_tokens == 2
    job = served.engine.jobs[0]
    assert job.max_tokens == 9 and job.sampling.temperature == 0.2 and job.sampling.top_k == 7
    assert _prompt(served, 0).startswith("Be brief.")  # no template: the plain text
    kinds = [e.type for e in events]
    assert kinds[0] == "message_start" and kinds[-1] == "message_stop"
    assert "content_block_start" in kinds and "message_delta" in kinds
    assert final.content[0].text == "Hello" and final.stop_reason == "end_turn"


def test_a_trace_is_a_thinking_block() -> None:
    served = serve(thought, THINK_TEMPLATE)

    async def use(client: anthropic.AsyncAnthropic) -> tuple[Any, Any]:
        thinking = {"type": "enabled", "budget_tokens": 1024}
        asked: dict[str, Any] = {"model": "tiny", "max_tokens": 20, "messages": HI}
        asked["thinking"] = thinking
        whole = await client.messages.create(**asked)
        async with client.messages.stream(**asked) as stream:
            async for _ in stream:
                pass
            final = await stream.get_final_message()
        return whole, final

    whole, final = with_client(served, use)
    for message in (whole, final):
        assert [b.type for b in message.content] == ["thinking", "text"]
        assert message.content[0].thinking == "Greet." and message.content[1].text == "Hello"
    assert served.engine.jobs[-1].think_budget is not None  # the budget reached the engine


def test_a_tool_use_and_its_result() -> None:
    served = serve(called, TOOLS_TEMPLATE, n_ctx=2048)

    async def use(client: anthropic.AsyncAnthropic) -> tuple[Any, Any]:
        message = await client.messages.create(model="tiny", max_tokens=50, messages=HI,
                                               tools=[WEATHER])  # fmt: skip
        async with client.messages.stream(model="tiny", max_tokens=50, messages=HI,
                                          tools=[WEATHER]) as stream:  # fmt: skip
            streamed = await stream.get_final_message()
        use_block: Any = message.content[0]
        back: list[Any] = [
            *HI,
            {"role": "assistant", "content": [use_block.model_dump()]},
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": use_block.id, "content": "21 degrees"}
                ],
            },
        ]
        await client.messages.create(model="tiny", max_tokens=5, messages=back, tools=[WEATHER])
        return message, streamed

    message, streamed = with_client(served, use)
    for m in (message, streamed):
        assert m.stop_reason == "tool_use"
        (block,) = m.content
        assert block.type == "tool_use" and block.name == "weather"
        assert block.input == {"city": "Oslo"}
    assert "21 degrees" in _prompt(served)  # the result reached the template


@pytest.mark.parametrize(
    ("body", "status", "words"),
    [
        ({"messages": HI}, 400, "'max_tokens'"),
        ({"max_tokens": 5, "messages": [{"role": "tool", "content": "x"}]}, 400, "role"),
        (
            {
                "max_tokens": 5,
                "messages": HI,
                "tools": [{"type": "web_search_20250305", "name": "web_search"}],
            },
            400,
            "does not run",
        ),
        ({"max_tokens": 5, "messages": HI, "thinking": {"type": "lots"}}, 400, "'thinking'"),
        ({"max_tokens": 5, "messages": HI, "foo": 1}, 400, "'foo' is not supported"),
        ({"max_tokens": 5, "messages": HI, "model": "nothere"}, 404, "not found"),
    ],
)
def test_refusals_take_anthropics_shape(body: dict[str, Any], status: int, words: str) -> None:
    served = serve(hello)
    r = served.post("/v1/messages", {"model": "tiny"} | body)
    assert r.status_code == status
    error = r.json()
    assert error["type"] == "error" and words in error["error"]["message"]
    assert error["error"]["type"] in ("invalid_request_error", "not_found_error")


def test_system_messages_among_the_others_join_the_system_prompt() -> None:
    """Claude Code sends reminders as system messages mid-conversation (and an effort in
    output_config): they join the one system prompt templates take, first."""
    served = serve(hello, "{% for m in messages %}{{ m.role }}: {{ m.content }}\n{% endfor %}")
    said: list[Any] = [*HI, {"role": "assistant", "content": "Hello"},
                       {"role": "system", "content": [{"type": "text", "text": "Be terse."}]},
                       {"role": "user", "content": "More?"}]  # fmt: skip
    body = {"model": "tiny", "max_tokens": 5, "system": "You help.", "messages": said,
            "output_config": {"effort": "high"}}  # fmt: skip
    assert served.post("/v1/messages", body).status_code == 200
    assert _prompt(served).startswith("system: You help.\n\nBe terse.\nuser: Hi\n")


def test_count_tokens_is_the_prompt_the_model_reads() -> None:
    served = serve(hello)
    short = served.post("/v1/messages/count_tokens", {"model": "tiny", "messages": HI}).json()
    longer = served.post(
        "/v1/messages/count_tokens",
        {"model": "tiny", "messages": HI, "system": "You are a careful assistant."},
    ).json()
    assert 0 < short["input_tokens"] < longer["input_tokens"]
    assert served.engine.jobs == []  # counted, not answered


@pytest.mark.slow
def test_the_real_client_against_localrun_serve(localrun_home: Path, tiny_chat_model: Path) -> None:
    from tests.served import create_model, serving

    create_model(localrun_home, "tiny", f"FROM {tiny_chat_model}\nPARAMETER num_ctx 1024\n")
    args = ("--model", "tiny", "--api-key", "sesame", "--parallel", "1")
    with serving(localrun_home, *args) as server:
        client = anthropic.Anthropic(base_url=server.url, api_key="sesame")  # x-api-key
        message = client.messages.create(model="tiny", max_tokens=4, messages=HI)
        assert message.content and message.usage.output_tokens <= 4
        with client.messages.stream(model="tiny", max_tokens=4, messages=HI) as stream:
            text = "".join(stream.text_stream)
        assert text == "".join(b.text for b in stream.get_final_message().content
                               if b.type == "text")  # fmt: skip
        # The Modelfile's context, which an agent on /v1 cannot ask for itself.
        ps = httpx.get(server.url + "/api/ps", headers={"x-api-key": "sesame"}).json()
        assert ps["models"][0]["context_length"] == 1024
        counted = client.messages.count_tokens(model="tiny", messages=HI)
        assert counted.input_tokens == message.usage.input_tokens
        wrong = anthropic.Anthropic(base_url=server.url, api_key="nope")
        with pytest.raises(anthropic.AuthenticationError):
            wrong.messages.create(model="tiny", max_tokens=4, messages=HI)
        headers = {"Authorization": "Bearer sesame"}
        asked = {"model": "tiny", "max_tokens": 2, "messages": HI}
        bearer = httpx.post(server.url + "/v1/messages", headers=headers, json=asked, timeout=60)
        assert bearer.status_code == 200 and json.loads(bearer.text)["type"] == "message"


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/messages", {"max_tokens": 2, "messages": HI}),
        ("/v1/chat/completions", {"messages": HI}),
        ("/v1/responses", {"input": "Hi"}),
    ],
)
def test_a_request_on_v1_may_ask_for_its_context(path: str, body: dict[str, Any]) -> None:
    """An agent's request may need more than the model's default: ``num_ctx`` on /v1 too (as
    Ollama's options have it), which loads the model with that context."""
    served = serve(hello)
    assert served.post(path, {"model": "tiny", "num_ctx": 16384, **body}).status_code == 200
    assert ("acquire", 16384) in served.pool.calls
