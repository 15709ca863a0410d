"""OpenAI's Responses API (``/v1/responses``, what Codex speaks), driven by the real openai
client: in-process over the fake pool of :mod:`tests.fakeserve` (scripted events, the prompt's
tokens the rendered text's bytes), and once against a real ``localrun serve``.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import httpx2
import openai
import pytest

from localrun.engine.types import Event, Finished, FinishReason, FirstToken, TextDelta
from localrun.errors import GenerationError, UsageError
from localrun.prompt.tools import ToolCall
from localrun.server import responses
from localrun.server.app import create_app
from localrun.server.config import ServeConfig
from localrun.server.stream import Done
from tests.fakeserve import Served, hello, serve, stats_of
from tests.served import create_model, serving

T = TypeVar("T")

# A chat template that offers tools and reads calls in the <tool_call> form.
TOOLS_TEMPLATE = (
    "{% if tools %}tools: {{ tools | tojson }}; call them as <tool_call>{...}</tool_call>\n"
    "{% endif %}{% for m in messages %}{{ m.role }}: {{ m.content }}\n{% endfor %}assistant:"
)
WEATHER: Any = {
    "type": "function",
    "name": "weather",
    "description": "The weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    "strict": False,
}
CALL = '<tool_call>{"name": "weather", "arguments": {"city": "Oslo"}}</tool_call>'
# A chat template whose model thinks (the <think> form), and an answer with a trace.
THINK_TEMPLATE = (
    "{% for m in messages %}{{ m.role }}: {{ m.content }}\n{% endfor %}assistant:"
    "{% if enable_thinking is defined and not enable_thinking %}<think></think>{% endif %}"
)


def thought() -> list[Event | BaseException]:
    return [FirstToken(0.1), TextDelta("<think>", 1, 0.1), TextDelta("I should gre", 2, 0.2),
            TextDelta("et.</thi", 3, 0.3), TextDelta("nk>\n\nHel", 4, 0.4),
            TextDelta("lo", 5, 0.5), Finished(stats_of())]  # fmt: skip


def ask(served: Served, call: Callable[[openai.AsyncOpenAI], Awaitable[T]]) -> T:
    """``call`` with the openai client, over the app in-process (the client's own httpx)."""

    async def go() -> T:
        app = create_app(ServeConfig(), served.pool)
        http = httpx2.AsyncClient(transport=httpx2.ASGITransport(app=app))
        client = openai.AsyncOpenAI(
            base_url="http://127.0.0.1/v1", api_key="x", http_client=http, max_retries=0
        )
        async with client:
            return await call(client)

    return asyncio.run(go())


def prompt_of(served: Served) -> str:
    """The last prompt the engine was given, as text (the scripted model's bytes)."""
    return bytes(t - 3 for t in served.engine.jobs[-1].prompt if t > 2).decode()


def events_of(served: Served, **body: Any) -> list[Any]:
    async def call(c: openai.AsyncOpenAI) -> list[Any]:
        stream = await c.responses.create(model="tiny", stream=True, **body)
        return [e async for e in stream]

    return ask(served, call)


def test_a_whole_response_reads_as_the_sdks_response() -> None:
    served = serve(hello)
    r = ask(served, lambda c: c.responses.create(model="tiny", input="Hi"))
    assert r.output_text == "Hello" and r.status == "completed" and r.id.startswith("resp_")
    assert r.object == "response" and r.model == "tiny" and r.incomplete_details is None
    [message] = r.output
    assert message.type == "message" and message.role == "assistant"
    assert message.status == "completed" and message.id.startswith("msg_")
    assert r.usage is not None
    assert (r.usage.input_tokens, r.usage.output_tokens, r.usage.total_tokens) == (5, 2, 7)
    assert r.usage.output_tokens_details.reasoning_tokens == 0
    assert r.tools == [] and r.tool_choice == "auto" and r.parallel_tool_calls is True
    assert prompt_of(served).endswith("Hi")


def test_a_stream_opens_fills_and_closes_its_message() -> None:
    events = events_of(serve(hello), input="Hi")
    assert [e.type for e in events] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert events[0].response.status == "in_progress" and events[0].response.output == []
    deltas = [e.delta for e in events if e.type == "response.output_text.delta"]
    assert deltas == ["Hel", "lo"] and events[6].text == "Hello"
    item = events[2].item.id
    assert {e.item_id for e in events[3:8]} == {item} and events[8].item.id == item
    done = events[-1].response
    assert done.id == events[0].response.id and done.output_text == "Hello"
    assert done.output[0].id == item and done.usage.total_tokens == 7


def test_the_sdks_stream_helper_accumulates_the_same_response() -> None:
    """openai's ``responses.stream`` checks each item's identity from added to completed."""

    async def call(c: openai.AsyncOpenAI) -> Any:
        async with c.responses.stream(model="tiny", input="Hi") as stream:
            async for _ in stream:
                pass
            return await stream.get_final_response()

    final = ask(serve(thought, THINK_TEMPLATE), call)
    assert final.output_text == "Hello"
    assert [item.type for item in final.output] == ["reasoning", "message"]


def test_a_length_cut_is_incomplete_whole_and_streamed() -> None:
    short = serve(lambda: [TextDelta("Hel", 1), Finished(stats_of(FinishReason.LENGTH))])
    r = ask(short, lambda c: c.responses.create(model="tiny", input="Hi", max_output_tokens=1))
    assert short.engine.jobs[-1].max_tokens == 1
    assert r.status == "incomplete" and r.incomplete_details is not None
    assert r.incomplete_details.reason == "max_output_tokens"
    [message] = r.output
    assert message.type == "message" and message.status == "incomplete"
    assert r.output_text == "Hel"
    events = events_of(short, input="Hi", max_output_tokens=1)
    assert events[-1].type == "response.incomplete"
    assert events[-1].response.incomplete_details.reason == "max_output_tokens"
    assert events[-2].item.status == "incomplete"


def test_a_function_call_is_an_item_with_its_call_id() -> None:
    called = serve(lambda: [TextDelta(CALL, 9), Finished(stats_of())], TOOLS_TEMPLATE)
    r = ask(called, lambda c: c.responses.create(model="tiny", input="Oslo?", tools=[WEATHER]))
    [call] = r.output
    assert call.type == "function_call" and call.name == "weather"
    assert json.loads(call.arguments) == {"city": "Oslo"}
    assert call.call_id and call.id and call.id.startswith("fc_") and call.status == "completed"
    assert r.output_text == ""
    assert '"name": "weather"' in prompt_of(called)  # the tool reached the template
    events = events_of(called, input="Oslo?", tools=[WEATHER])
    assert [e.type for e in events[2:-1]] == [
        "response.output_item.added",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        "response.output_item.done",
    ]
    assert events[2].item.arguments == "" and events[2].item.status == "in_progress"
    assert json.loads(events[4].arguments) == {"city": "Oslo"}
    assert events[-1].response.output[0].call_id == events[5].item.call_id


def test_a_call_and_its_output_sent_back_reach_the_template() -> None:
    served = serve(hello, TOOLS_TEMPLATE)
    conversation: Any = [
        {"type": "message", "role": "developer", "content": "Use tools."},
        {"role": "user", "content": [{"type": "input_text", "text": "Oslo?"}]},
        {"type": "reasoning", "id": "rs_1", "summary": []},
        {"type": "function_call", "call_id": "call_1", "name": "weather",
         "arguments": '{"city": "Oslo"}'},
        {"type": "function_call_output", "call_id": "call_1", "output": "Sunny, 21 C"},
    ]  # fmt: skip
    r = ask(
        served,
        lambda c: c.responses.create(model="tiny", instructions="Be brief.", input=conversation),
    )
    assert r.output_text == "Hello"
    prompt = prompt_of(served)
    # instructions and the developer message are one system prompt, first; the earlier call
    # is written in the model's form (this template leaves calls out), then its result
    assert prompt.endswith(
        "system: Be brief.\n\nUse tools.\nuser: Oslo?\nassistant: <tool_call>\n"
        '{"name": "weather", "arguments": {"city": "Oslo"}}\n</tool_call>\n'
        "tool: Sunny, 21 C\nassistant:"
    )
    ask_ = responses.request_ask({"model": "tiny", "input": conversation})
    assistant, result = ask_.messages[-2:]
    assert assistant.tool_calls == (ToolCall("weather", {"city": "Oslo"}, "call_1"),)
    assert (result.role, result.tool_call_id, result.name) == ("tool", "call_1", "weather")


def test_a_trace_is_a_reasoning_item_and_counted() -> None:
    thinks = serve(thought, THINK_TEMPLATE)
    r = ask(thinks, lambda c: c.responses.create(model="tiny", input="Hi"))
    reasoning, message = r.output
    assert reasoning.type == "reasoning" and reasoning.id.startswith("rs_")
    assert message.type == "message"
    assert reasoning.content is not None and reasoning.summary == []
    assert reasoning.content[0].text == "I should greet." and r.output_text == "Hello"
    assert r.usage is not None and r.usage.output_tokens_details.reasoning_tokens > 0
    events = events_of(thinks, input="Hi")
    kinds = [e.type for e in events]
    assert kinds[2:5] == ["response.output_item.added", "response.content_part.added",
                          "response.reasoning_text.delta"]  # fmt: skip
    trace = "".join(e.delta for e in events if e.type == "response.reasoning_text.delta")
    assert trace == "I should greet."
    done = [e for e in events if e.type == "response.output_item.done"]
    assert [e.item.type for e in done] == ["reasoning", "message"]
    assert [e.output_index for e in done] == [0, 1]
    assert events[-1].response.usage.output_tokens_details.reasoning_tokens > 0
    # reasoning.effort none asks the template's switch for no trace
    ask(
        thinks, lambda c: c.responses.create(model="tiny", input="Hi", reasoning={"effort": "none"})
    )
    assert prompt_of(thinks).endswith("<think></think>")


def test_text_format_holds_the_answer_to_a_grammar() -> None:
    served = serve(hello)
    ask(served, lambda c: c.responses.create(model="tiny", input="Hi"))
    assert served.engine.jobs[-1].sampling.grammar is None
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
    text: Any = {"format": {"type": "json_schema", "name": "a", "schema": schema, "strict": True}}
    ask(served, lambda c: c.responses.create(model="tiny", input="Hi", text=text))
    grammar = served.engine.jobs[-1].sampling.grammar
    assert grammar is not None and '"\\"a\\""' in grammar
    ask(served, lambda c: c.responses.create(model="tiny", input="Hi",
                                             text={"format": {"type": "json_object"}}))  # fmt: skip
    assert served.engine.jobs[-1].sampling.grammar not in (None, grammar)


def test_sampling_fields_reach_the_engine() -> None:
    served = serve(hello)
    ask(
        served,
        lambda c: c.responses.create(
            model="tiny", input="Hi", temperature=0.2, top_p=0.5, max_output_tokens=7,
            store=False, metadata={"k": "v"}, user="u", parallel_tool_calls=False,
            truncation="disabled", extra_body={"seed": 3, "top_k": 4},
        ),
    )  # fmt: skip
    job = served.engine.jobs[-1]
    assert (job.sampling.temperature, job.sampling.top_p, job.max_tokens) == (0.2, 0.5, 7)
    assert (job.sampling.seed, job.sampling.top_k) == (3, 4)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"input": "Hi", "previous_response_id": "resp_1"},
         "'previous_response_id' is not supported: this server keeps no responses or "
         "conversations (send the whole conversation as 'input')"),
        ({"input": "Hi", "tools": [{"type": "file_search"}, WEATHER]},
         "'tools' holds tools of type file_search, which this server does not run (send "
         "function tools only: the client runs them and sends back their output)"),
        ({"input": [{"type": "item_reference", "id": "x"}]},
         'input[0] is an item of type "item_reference", which this server does not read '
         "(send message, function_call, function_call_output and reasoning items)"),
        ({"input": 3}, "'input' must be a string or a non-empty list of items "
         '(send "input": "Hi" or [{"role": "user", "content": "Hi"}])'),
        ({"input": [{"role": "tool", "content": "x"}]},
         'input[0] has the role "tool" (use user, system, developer or assistant (a '
         "tool's result is a function_call_output item))"),
        ({"input": "Hi", "text": {"format": {"type": "yaml"}}},
         '\'text.format\' cannot be {"type": "yaml"} (use a format of type text, '
         "json_object or json_schema)"),
        ({"input": "Hi", "tool_choice": {"type": "file_search"}},
         '\'tool_choice\' cannot be {"type": "file_search"} (use "auto", "none", '
         '"required" or {"type": "function", "name": ...})'),
        ({"input": "Hi", "max_output_tokens": 0},
         "'max_output_tokens' must be 1 or more, not 0 (give a number of tokens, or leave "
         "it out for no limit)"),
        ({"input": "Hi", "temperature": 3}, "'temperature' must be between 0 and 2, not 3.0"),
    ],
)  # fmt: skip
def test_refusals_are_400s_in_openais_shape(body: dict[str, Any], message: str) -> None:
    served = serve(hello)

    async def call(c: openai.AsyncOpenAI) -> Any:
        return await c.responses.create(model="tiny", **body)

    with pytest.raises(openai.BadRequestError) as e:
        ask(served, call)
    assert e.value.status_code == 400
    assert e.value.body == {"message": message, "type": "invalid_request_error",
                            "param": None, "code": None}  # fmt: skip
    assert served.engine.jobs == []


def test_an_error_after_the_first_token_is_the_streams_error_event() -> None:
    broken = serve(lambda: [TextDelta("Hel", 1), GenerationError("the backend failed", "retry")])
    events = events_of(broken, input="Hi")
    assert events[-2].type == "response.output_text.delta"
    last = events[-1]
    assert last.type == "error" and last.message == "the backend failed (retry)"
    assert last.code == "server_error" and last.sequence_number == len(events) - 1


def test_the_reply_repeats_its_requests_settings() -> None:
    body: dict[str, Any] = {"model": "tiny", "input": "Hi", "tools": [WEATHER],
                            "tool_choice": {"type": "function", "name": "weather"},
                            "instructions": "Be brief.", "temperature": 0.3,
                            "max_output_tokens": 9, "parallel_tool_calls": False}  # fmt: skip
    assert responses.request_ask(body).tool_choice == "weather"
    whole = responses.ResponseReply("tiny", body).whole(
        Done(stats_of(), "", (ToolCall("weather", {"city": "Oslo"}, "call_7"),))
    )
    assert whole["tools"] == [WEATHER] and whole["tool_choice"] == body["tool_choice"]
    assert (whole["instructions"], whole["temperature"], whole["max_output_tokens"]) == (
        "Be brief.", 0.3, 9)  # fmt: skip
    assert whole["parallel_tool_calls"] is False
    assert whole["output"][0]["call_id"] == "call_7"
    assert whole["output"][0]["arguments"] == '{"city": "Oslo"}'


def test_requests_convert_to_asks_without_a_server() -> None:
    image = "data:image/png;base64,iVBORw0KGgo="
    with pytest.raises(UsageError, match=r"input\[0\].content\[1\]"):
        responses.request_ask({"model": "tiny", "input": [
            {"role": "user", "content": [{"type": "input_text", "text": "x"},
                                         {"type": "input_file", "file_id": "f"}]}]})  # fmt: skip
    with pytest.raises(UsageError, match="this server does not fetch images from URLs"):
        responses.request_ask({"model": "tiny", "input": [{"role": "user", "content": [
            {"type": "input_image", "image_url": "https://example.com/a.png"}]}]})  # fmt: skip
    seen = responses.request_ask({"model": "tiny", "input": [{"role": "user", "content": [
        {"type": "input_text", "text": "What is it?"},
        {"type": "input_image", "image_url": image, "detail": "auto"}]}]})  # fmt: skip
    [message] = seen.messages
    assert message.content == "What is it?" and len(message.images) == 1
    plain = responses.request_ask({"model": "tiny", "input": "Hi", "reasoning": {"effort": "low"},
                                   "think_budget": 64})  # fmt: skip
    assert plain.messages[0].role == "user" and plain.think == "low"
    assert plain.think_budget == 64 and plain.options == {}
    assert responses.request_ask({"model": "tiny", "input": "Hi", "tool_choice": "required",
                                  "tools": [WEATHER]}).tool_choice == "required"  # fmt: skip


def test_codexs_default_tools_are_offered_as_the_model_can_take_them() -> None:
    """Codex offers web search (a hosted tool: left out, as nothing here runs it) and groups
    of function tools in a namespace (each offered as a tool of its own)."""
    spawn = {"type": "function", "name": "spawn_agent", "description": "Start an agent",
             "parameters": {"type": "object", "properties": {}}}  # fmt: skip
    asked = responses.request_ask({"model": "tiny", "input": "Hi", "tools": [
        {"type": "web_search", "external_web_access": False},
        {"type": "namespace", "name": "multi_agent_v1", "description": "Agents",
         "tools": [spawn]},
        WEATHER]})  # fmt: skip
    assert [t.name for t in asked.tools] == ["spawn_agent", WEATHER["name"]]


# -- a real server -----------------------------------------------------------------------


@pytest.mark.slow
def test_a_real_server_answers_whole_and_streamed(
    localrun_home: Path, tiny_chat_model: Path
) -> None:
    create_model(localrun_home, "tiny", f"FROM {tiny_chat_model}\n")
    with serving(localrun_home) as server:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0)
        whole = client.responses.create(
            model="tiny", input="hello", max_output_tokens=4, extra_body={"seed": 1}
        )
        assert whole.status == "incomplete" and whole.usage is not None
        assert whole.usage.output_tokens == 4 and whole.usage.input_tokens > 0
        events = list(
            client.responses.create(
                model="tiny", input="hello", max_output_tokens=4, extra_body={"seed": 1},
                stream=True,
            )
        )  # fmt: skip
    assert events[0].type == "response.created" and events[-1].type == "response.incomplete"
    streamed = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert streamed == whole.output_text == events[-1].response.output_text
