"""The APIs' converters and the one stream writer, without a socket or weights.

The server's app runs in-process (httpx's ASGI transport) over a fake pool whose model is
:class:`tests.scripted.ScriptedModel` (the prompt's tokens) and whose engine answers with
scripted events; the converters are also called as the plain functions they are.
"""

from __future__ import annotations

from typing import Any

import pytest

from localrun.engine.types import (
    Event,
    Finished,
    FinishReason,
    FirstToken,
    TextDelta,
)
from localrun.errors import GenerationError, LocalrunError, UsageError
from localrun.models.resolve import Resolved
from localrun.prompt.tools import ToolCall
from localrun.server import ollama, openai
from localrun.server.stream import NDJSON, SSE, Done
from localrun.server.wire import read_call
from tests.fakeserve import Served, events_of, hello, lines_of, serve, stats_of
from tests.scripted import ScriptedModel

# A chat template that offers tools and reads calls in the <tool_call> form.
TOOLS_TEMPLATE = (
    "{% if tools %}tools: {{ tools | tojson }}; call them as <tool_call>{...}</tool_call>\n"
    "{% endif %}{% for m in messages %}{{ m.role }}: {{ m.content }}\n{% endfor %}assistant:"
)
WEATHER = {
    "type": "function",
    "function": {
        "name": "weather",
        "description": "The weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}


@pytest.fixture
def served() -> Served:
    return serve(hello)


# -- Ollama ----------------------------------------------------------------------------


def test_ollama_generate_streams_ndjson_pieces_then_the_timings(served: Served) -> None:
    r = served.post("/api/generate", {"model": "tiny", "prompt": "Hi", "keep_alive": "1m"})
    assert r.status_code == 200 and r.headers["content-type"] == NDJSON.media_type
    lines = lines_of(r)
    assert [line["response"] for line in lines] == ["Hel", "lo", ""]  # empty pieces not sent
    assert [line["done"] for line in lines] == [False, False, True]
    last = lines[-1]
    assert last["done_reason"] == "stop" and last["eval_count"] == 2
    assert last["prompt_eval_count"] == 5 and last["total_duration"] == 1_000_000_000
    # The answer's rate, (n - 1) / decode_s, given back by eval_count / eval_duration.
    assert last["eval_duration"] == 1_000_000_000
    prompt = served.pool.runner.loaded.model.tokenize("Hi", add_special=True, parse_special=True)
    assert last["context"][-2:] == [7, 8] and last["context"][:-2][-2:] == prompt[-2:]
    assert served.pool.calls == [("acquire", None), ("release", 60.0)]


def test_ollama_chat_whole_and_streamed_say_the_same(served: Served) -> None:
    asked = {"model": "tiny", "messages": [{"role": "user", "content": "Hi"}]}
    whole = served.post("/api/chat", asked | {"stream": False}).json()
    assert whole["message"] == {"role": "assistant", "content": "Hello"}
    assert whole["done"] is True and whole["done_reason"] == "stop"
    lines = lines_of(served.post("/api/chat", asked))
    assert "".join(line["message"]["content"] for line in lines) == "Hello"
    assert set(lines[-1]) == set(whole)


def test_ollama_options_reach_the_engine_under_the_tables_names(served: Served) -> None:
    options = {"temperature": 0.1, "top_k": 3, "repeat_penalty": 1.3, "num_predict": 9}
    served.post("/api/generate", {"model": "tiny", "prompt": "Hi", "options": options})
    sampling = served.engine.jobs[-1].sampling
    assert (sampling.temperature, sampling.top_k, sampling.repeat_penalty) == (0.1, 3, 1.3)
    assert served.engine.jobs[-1].max_tokens == 9


def test_ollama_errors_keep_their_status_and_shape(served: Served) -> None:
    r = served.post("/api/generate", {"model": "tiny", "prompt": "Hi", "options": {"top_p": 2}})
    assert r.status_code == 400
    assert r.json() == {"error": "top_p must be between 0 and 1, not 2.0 (give top_p in range)"}
    r = served.post("/api/chat", {"model": "other", "messages": [{"role": "user"}]})
    assert r.status_code == 404 and r.json() == {
        "error": "model 'other' not found (see GET /api/tags)"
    }
    r = served.post("/api/chat", {"model": "tiny", "messages": [{"role": "robot"}]})
    assert r.status_code == 400
    assert r.json()["error"] == (
        'messages[0] has the role "robot" (use one of system, user, assistant, tool)'
    )
    assert served.engine.jobs == []


def test_an_error_after_the_first_token_ends_the_stream_in_the_apis_shape() -> None:
    broken = serve(lambda: [TextDelta("Hel", 1), GenerationError("the backend failed", "retry")])
    lines = lines_of(broken.post("/api/generate", {"model": "tiny", "prompt": "Hi"}))
    assert lines == [lines[0], {"error": "the backend failed (retry)"}]
    asked = {"model": "tiny", "messages": [{"role": "user", "content": "Hi"}], "stream": True}
    events = events_of(broken.post("/v1/chat/completions", asked))
    assert "[DONE]" not in events  # the stream did not end as a whole answer does
    assert events[-1]["error"]["message"] == "the backend failed (retry)"
    assert events[-1]["error"]["type"] == "server_error"


def test_a_request_without_a_prompt_loads_or_unloads(
    served: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    from localrun.server import routes

    monkeypatch.setattr(routes, "resolve_served", lambda name: Resolved(name, ()))
    r = served.post("/api/generate", {"model": "tiny"}).json()
    assert (r["response"], r["done"], r["done_reason"]) == ("", True, "load")
    r = served.post("/api/chat", {"model": "tiny", "keep_alive": 0}).json()
    assert r["message"] == {"role": "assistant", "content": ""} and r["done_reason"] == "unload"
    assert served.pool.calls == [("acquire", None), ("release", None), ("unload", "tiny")]
    assert served.engine.jobs == []


# -- OpenAI ----------------------------------------------------------------------------


def test_openai_chat_streams_server_sent_events_with_one_id(served: Served) -> None:
    asked = {"model": "tiny", "messages": [{"role": "developer", "content": "Be brief."},
             {"role": "user", "content": "Hi"}], "stream": True,
             "stream_options": {"include_usage": True}}  # fmt: skip
    r = served.post("/v1/chat/completions", asked)
    assert r.headers["content-type"].startswith(SSE.media_type)
    events = events_of(r)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert len({c["id"] for c in chunks}) == 1 and chunks[0]["id"].startswith("chatcmpl-")
    deltas = [c["choices"][0]["delta"] for c in chunks[:-1]]
    assert deltas == [
        {"role": "assistant", "content": ""},
        {"content": "Hel"},
        {"content": "lo"},
        {},
    ]
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"] == {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}


def test_openai_completion_whole_says_length(served: Served) -> None:
    short = serve(lambda: [TextDelta("Hel", 1), Finished(stats_of(FinishReason.LENGTH))])
    r = short.post("/v1/completions", {"model": "tiny", "prompt": ["Hi"], "max_tokens": 1})
    body = r.json()
    assert body["object"] == "text_completion" and body["id"].startswith("cmpl-")
    assert body["choices"][0]["text"] == "Hel"
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["usage"]["completion_tokens"] == 2
    assert short.engine.jobs[-1].max_tokens == 1


def test_openai_fields_and_llama_servers_reach_the_engine(served: Served) -> None:
    """OpenAI's own names win over the others for one parameter, as the table orders them."""
    asked = {"model": "tiny", "prompt": "Hi", "max_completion_tokens": 4, "max_tokens": 9,
             "repetition_penalty": 1.2, "top_k": 5, "min_p": 0.05, "seed": 3}  # fmt: skip
    served.post("/v1/completions", asked)
    sampling = served.engine.jobs[-1].sampling
    assert (sampling.repeat_penalty, sampling.top_k, sampling.min_p) == (1.2, 5, 0.05)
    assert sampling.seed == 3 and served.engine.jobs[-1].max_tokens == 4
    asked |= {"repeat_penalty": 1.05}
    served.post("/v1/completions", asked)
    assert served.engine.jobs[-1].sampling.repeat_penalty == 1.05


def test_openai_refusals_keep_their_messages(served: Served) -> None:
    def error(body: dict[str, Any]) -> tuple[int, str]:
        r = served.post("/v1/chat/completions", {"model": "tiny", **body})
        return r.status_code, r.json()["error"]["message"]

    hi = {"messages": [{"role": "user", "content": "Hi"}]}
    assert error(hi | {"temperature": 2.5}) == (
        400,
        "'temperature' must be between 0 and 2, not 2.5",
    )
    assert error(hi | {"max_tokens": -1})[1].startswith("'max_tokens' must be 0 or more, not -1")
    assert error(hi | {"top_k": -1}) == (400, "top_k must be between 0 and 1000000, not -1 "
                                              "(give top_k in range)")  # fmt: skip
    assert error({"messages": []})[1] == "'messages' is empty (send at least one message)"
    bad_call = {"role": "assistant", "tool_calls": [{"function": {}}]}
    assert error({"messages": [bad_call]})[1] == (
        "messages[0].tool_calls[0] must hold a function with a name"
    )
    r = served.post("/v1/chat/completions", {"model": "none", **hi})
    assert r.status_code == 404 and r.json()["error"]["type"] == "not_found_error"


# -- tool calls --------------------------------------------------------------------------

CALL = '<tool_call>{"name": "weather", "arguments": {"city": "Oslo"}}</tool_call>'


def test_tool_calls_on_both_apis() -> None:
    called = serve(lambda: [TextDelta(CALL, 9), Finished(stats_of())], TOOLS_TEMPLATE)
    asked = {"model": "tiny", "messages": [{"role": "user", "content": "Oslo?"}],
             "tools": [WEATHER]}  # fmt: skip
    whole = called.post("/api/chat", asked | {"stream": False}).json()
    assert whole["message"]["content"] == ""
    assert whole["message"]["tool_calls"] == [
        {"function": {"name": "weather", "arguments": {"city": "Oslo"}}}
    ]
    events = events_of(called.post("/v1/chat/completions", asked | {"stream": True}))
    calls = [e["choices"][0]["delta"]["tool_calls"] for e in events[1:-2]]
    assert len(calls) == 1 and calls[0][0]["index"] == 0
    assert calls[0][0]["function"] == {"name": "weather", "arguments": '{"city": "Oslo"}'}
    assert events[-2]["choices"][0]["finish_reason"] == "tool_calls"
    answer = called.post("/v1/chat/completions", asked).json()["choices"][0]
    assert answer["message"]["content"] is None and answer["finish_reason"] == "tool_calls"


def test_a_tool_call_sent_back_is_read_alike_by_both_apis() -> None:
    ollama_form = {"function": {"name": "f", "arguments": {"x": 1}}}
    openai_form = {"id": "call_1", "function": {"name": "f", "arguments": '{"x": 1}'}}
    mine = read_call(ollama_form, "m", "a function")
    theirs = read_call(openai_form, "m", "a function", openai=True)
    assert (mine.name, mine.arguments) == (theirs.name, theirs.arguments) == ("f", {"x": 1})
    assert theirs.id == "call_1" and mine.id != "call_1"
    with pytest.raises(UsageError, match=r"^'m.function.arguments' must be an object$"):
        read_call(openai_form, "m", "a function")  # Ollama's arguments are an object
    with pytest.raises(UsageError, match=r"^m must hold a function$"):
        read_call({"function": {"arguments": {}}}, "m", "a function")


# -- the converters as plain functions -------------------------------------------------


def test_the_converters_are_plain_functions_of_the_events() -> None:
    done = Done(stats_of(FinishReason.LENGTH), "Hello", (ToolCall("f", {}, "call_9"),), (1, 2))
    chat = openai.ChatReply("tiny", include_usage=False, ident="chatcmpl-x")
    assert [c["choices"][0]["finish_reason"] for c in chat.last(done)] == ["tool_calls"]
    assert chat.whole(done)["choices"][0]["message"]["tool_calls"][0]["id"] == "call_9"
    generate = ollama.GenerateReply("tiny")
    assert generate.whole(done)["context"] == [1, 2]
    assert "context" not in generate.whole(Done(stats_of(), "Hi"))  # pictures: no ids sent back
    assert generate.last(done)[0]["done_reason"] == "length"
    assert generate.called(done.calls) == [] and generate.opening() == []
    e: LocalrunError = UsageError("bad", "fix it")
    assert ollama.error(e) == {"error": "bad (fix it)"}
    assert openai.error(e)["error"] == {"message": "bad (fix it)",
                                        "type": "invalid_request_error",
                                        "param": None, "code": None}  # fmt: skip
    assert NDJSON.frame({"a": "é"}) == '{"a": "é"}\n'.encode()
    assert SSE.frame({"a": 1}) == b'data: {"a": 1}\n\n' and SSE.end == b"data: [DONE]\n\n"


def test_requests_convert_to_asks_without_a_server() -> None:
    ask = ollama.generate_ask({"model": "tiny", "prompt": "Hi", "raw": True, "context": [4],
                               "options": {"seed": 7, "stop": ["\n"]}})  # fmt: skip
    assert ask.raw and ask.messages[0].content == "Hi" and ask.context == (4,)
    assert ask.options == {"seed": 7, "stop": ("\n",)}
    assert ollama.generate_ask({"model": "tiny"}).messages == ()  # load only
    ask = openai.chat_ask({"model": "tiny", "messages": [{"role": "developer", "content": "x"}],
                           "max_tokens": 3, "repetition_penalty": 1.2})  # fmt: skip
    assert ask.messages[0].role == "system"
    assert ask.options == {"num_predict": 3, "repeat_penalty": 1.2}
    assert openai.streaming({"stream": True}) == (True, False)
    assert ollama.streaming({}) is True


# A chat template whose model thinks (the <think> form), and an answer with a trace.
THINK_TEMPLATE = (
    "{% for m in messages %}{{ m.role }}: {{ m.content }}\n{% endfor %}assistant:"
    "{% if enable_thinking is defined and not enable_thinking %}<think></think>{% endif %}"
)


def thought() -> list[Event | BaseException]:
    return [FirstToken(0.1), TextDelta("<think>", 1, 0.1), TextDelta("I should gre", 2, 0.2),
            TextDelta("et.</thi", 3, 0.3), TextDelta("nk>\n\nHel", 4, 0.4),
            TextDelta("lo", 5, 0.5), Finished(stats_of())]  # fmt: skip


def test_a_trace_comes_apart_on_both_apis() -> None:
    thinks = serve(thought, THINK_TEMPLATE)
    asked = {"model": "tiny", "messages": [{"role": "user", "content": "Hi"}]}
    whole = thinks.post("/api/chat", asked | {"stream": False}).json()
    assert whole["message"]["thinking"] == "I should greet."
    assert whole["message"]["content"] == "Hello"
    lines = lines_of(thinks.post("/api/chat", asked))
    assert "".join(x["message"].get("thinking", "") for x in lines) == "I should greet."
    assert "".join(x["message"]["content"] for x in lines) == "Hello"
    generated = thinks.post("/api/generate", {"model": "tiny", "prompt": "Hi", "stream": False})
    assert generated.json()["thinking"] == "I should greet."
    # OpenAI's: reasoning_content deltas, and in the whole message.
    events = events_of(thinks.post("/v1/chat/completions", asked | {"stream": True}))
    deltas = [e["choices"][0]["delta"] for e in events[1:-1]]
    assert "".join(d.get("reasoning_content", "") for d in deltas) == "I should greet."
    assert "".join(d.get("content", "") for d in deltas) == "Hello"
    message = thinks.post("/v1/chat/completions", asked).json()["choices"][0]["message"]
    assert (message["reasoning_content"], message["content"]) == ("I should greet.", "Hello")
    # Asked for none, on a template that can switch it off: the switch reached the prompt.
    thinks.post("/api/chat", asked | {"think": False, "stream": False})
    assert thinks.engine.jobs[-1].prompt[-len("<think></think>") :] == list(
        ScriptedModel([]).tokenize("<think></think>", add_special=False, parse_special=False)
    )


@pytest.mark.parametrize(
    ("body", "think"),
    [({"think": True}, True), ({"think": "high"}, "high"), ({"think": False}, False), ({}, None)],
)
def test_ollama_think_reaches_the_request(body: dict[str, Any], think: Any) -> None:
    ask = ollama.chat_ask({"model": "tiny", "messages": [{"role": "user", "content": "x"}]} | body)
    assert ask.think == think


@pytest.mark.parametrize(
    ("body", "think"),
    [
        ({"reasoning_effort": "none"}, False),
        ({"reasoning_effort": "minimal"}, "low"),
        ({"reasoning_effort": "medium"}, "medium"),
        ({"reasoning": {"effort": "xhigh"}}, "high"),
        ({}, None),
    ],
)
def test_openai_reasoning_effort_reaches_the_request(body: dict[str, Any], think: Any) -> None:
    ask = openai.chat_ask({"model": "tiny", "messages": [{"role": "user", "content": "x"}]} | body)
    assert ask.think == think


def test_bad_thinking_settings_are_refused_by_name(served: Served) -> None:
    asked = {"model": "tiny", "messages": [{"role": "user", "content": "x"}], "stream": False}
    r = served.post("/api/chat", asked | {"think": "lots"})
    assert r.status_code == 400 and "'think' cannot be" in r.json()["error"]
    r = served.post("/v1/chat/completions", asked | {"reasoning_effort": 3})
    assert r.status_code == 400 and "'reasoning_effort' cannot be" in r.json()["error"]["message"]
    r = served.post("/api/chat", asked | {"think_budget": -1})
    assert r.status_code == 400 and "think_budget" in r.json()["error"]
    # A model that does not think is not asked to.
    r = served.post("/api/chat", asked | {"think": True})
    assert r.status_code == 400 and "does not think" in r.json()["error"]
