"""A real model's tool call, read by the real clients of the three APIs the agents speak.

The model is a scripted one (:mod:`tests.scripted_gguf`) with Qwen3's own chat template: it
calls ``Bash`` with one command, and after the result answers in text. It runs in llama.cpp
under the server's real pool and engine, in-process: no fakes between the request and the
weights. Claude Code's call (``/v1/messages``, streamed, thinking asked for), Codex's
(``/v1/responses``) and opencode's (``/v1/chat/completions``), each with the result sent
back the API's own way.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, TypeVar

import anthropic
import httpx
import pytest
from starlette.applications import Starlette

from tests.inprocess import oai, served
from tests.scripted_gguf import QWEN3_TEMPLATE, write_scripted_model, write_tool_caller

T = TypeVar("T")
COMMAND = {"command": "echo localrun-tool-call > marker"}
ANSWER = "The tool ran."
BASH_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"command": {"type": "string"}},
    "required": ["command"],
}
ASK = "Make the marker file."


@pytest.fixture(scope="module")
def caller(real_templates: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    template = (real_templates / QWEN3_TEMPLATE).read_text(encoding="utf-8")
    path = tmp_path_factory.mktemp("scripted") / "caller.gguf"
    return write_tool_caller(path, "Bash", COMMAND, chat_template=template, answer=ANSWER,
                             n_ctx_train=4096)  # fmt: skip


def claude(app: Starlette) -> anthropic.AsyncAnthropic:
    http = httpx.AsyncClient(transport=httpx.ASGITransport(app=app))
    return anthropic.AsyncAnthropic(base_url="http://127.0.0.1", api_key="x", http_client=http)


def test_claude_codes_call_is_a_tool_use_block(localrun_home: Path, caller: Path) -> None:
    bash: Any = {"name": "Bash", "description": "Run a command", "input_schema": BASH_SCHEMA}
    asked: dict[str, Any] = {"model": "caller", "max_tokens": 64, "tools": [bash],
                             "thinking": {"type": "adaptive"}}  # fmt: skip

    async def use(app: Starlette) -> tuple[Any, Any, Any]:
        client = claude(app)
        said: list[Any] = [{"role": "user", "content": ASK}]
        whole = await client.messages.create(messages=said, **asked)
        async with client.messages.stream(messages=said, **asked) as stream:
            streamed = await stream.get_final_message()
        call: Any = streamed.content[-1]
        result = {"type": "tool_result", "tool_use_id": call.id, "content": "done"}
        said += [
            {"role": "assistant", "content": [b.model_dump() for b in streamed.content]},
            {"role": "user", "content": [result]},
        ]
        return whole, streamed, await client.messages.create(messages=said, **asked)

    whole, streamed, answered = served(localrun_home, {"caller": caller}, use, num_ctx=4096)
    for message in (whole, streamed):
        assert message.stop_reason == "tool_use"
        (block,) = message.content
        assert block.type == "tool_use" and block.name == "Bash" and block.input == COMMAND
    assert answered.stop_reason == "end_turn"
    assert [b.type for b in answered.content] == ["text"] and answered.content[0].text == ANSWER


def test_codexs_call_is_a_function_call_item(localrun_home: Path, caller: Path) -> None:
    bash: Any = {"type": "function", "name": "Bash", "parameters": BASH_SCHEMA}

    async def use(app: Starlette) -> tuple[Any, Any]:
        client = oai(app)
        first = await client.responses.create(model="caller", input=ASK, tools=[bash])
        call: Any = first.output[0]
        back: Any = [
            {"role": "user", "content": ASK},
            {"type": "function_call", "call_id": call.call_id, "name": call.name,
             "arguments": call.arguments},
            # A long result: the model looks back 3,000 tokens for its <tool_response>.
            {"type": "function_call_output", "call_id": call.call_id, "output": "ok\n" * 1000},
        ]  # fmt: skip
        async with client.responses.stream(model="caller", input=back, tools=[bash]) as stream:
            answered = await stream.get_final_response()
        return first, answered

    first, answered = served(localrun_home, {"caller": caller}, use, num_ctx=4096)
    [call] = first.output
    assert call.type == "function_call" and call.name == "Bash"
    assert json.loads(call.arguments) == COMMAND and first.output_text == ""
    assert answered.output_text == ANSWER and answered.status == "completed"


def test_opencodes_call_is_a_tool_call_delta(localrun_home: Path, caller: Path) -> None:
    bash: Any = {"type": "function",
                 "function": {"name": "Bash", "parameters": BASH_SCHEMA}}  # fmt: skip

    async def use(app: Starlette) -> tuple[list[Any], Any]:
        client = oai(app)
        said: list[Any] = [{"role": "user", "content": ASK}]
        stream = await client.chat.completions.create(model="caller", messages=said,
                                                      tools=[bash], stream=True)  # fmt: skip
        chunks = [chunk async for chunk in stream]
        calls: list[Any] = [c for chunk in chunks for c in chunk.choices[0].delta.tool_calls or []]
        function = {"name": "Bash", "arguments": calls[0].function.arguments}
        said += [
            {"role": "assistant", "content": None,
             "tool_calls": [{"id": calls[0].id, "type": "function", "function": function}]},
            {"role": "tool", "tool_call_id": calls[0].id, "content": "done"},
        ]  # fmt: skip
        answered = await client.chat.completions.create(model="caller", messages=said,
                                                        tools=[bash])  # fmt: skip
        return chunks, answered

    chunks, answered = served(localrun_home, {"caller": caller}, use, num_ctx=4096)
    calls = [c for chunk in chunks for c in chunk.choices[0].delta.tool_calls or []]
    assert calls[0].function.name == "Bash"
    arguments = "".join(c.function.arguments or "" for c in calls)
    assert json.loads(arguments) == COMMAND
    assert chunks[-1].choices[0].finish_reason == "tool_calls"
    assert answered.choices[0].message.content == ANSWER
    assert answered.choices[0].finish_reason == "stop"


def test_a_script_holds_each_token_once(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="repeats a token"):
        write_scripted_model(tmp_path / "m.gguf", ["a", "b", "a"])
    with pytest.raises(ValueError, match="must not share"):
        write_scripted_model(tmp_path / "m.gguf", ["a"], then=["a"])
