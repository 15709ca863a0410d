"""Tool calls: offered through real chat templates, read back in each family's form.

The sample outputs are written as each family's models write calls (their templates show the
form to the model, and render earlier calls the same way). The server tests drive the real
clients; a tiny model with Qwen 2.5's real template makes a required call under a grammar.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from localrun.backend import LoadOptions, SamplingParams, load
from localrun.engine.batch import BatchEngine, Job, collect
from localrun.errors import UsageError
from localrun.prompt.template import Message, render
from localrun.prompt.tools import (
    FORMS,
    CallWatch,
    Tool,
    ToolCall,
    call_grammar,
    form_of,
    parse_tools,
)

WEATHER = Tool(
    "get_weather",
    "The weather in a city",
    {
        "type": "object",
        "properties": {
            "city": {"type": "string", "pattern": "^[a-z]{1,10}$"},
            "unit": {"enum": ["celsius", "fahrenheit"]},
        },
        "required": ["city", "unit"],
    },
)
TIME = Tool(
    "get_time",
    "The time in a timezone",
    {"type": "object", "properties": {"tz": {"type": "string", "pattern": "^[A-Z]{3}$"}}},
)
TOOLS = (WEATHER, TIME)

SAMPLES = {
    "hermes": (
        'Let me look.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "paris", '
        '"unit": "celsius"}}\n</tool_call>\n<tool_call>\n{"name": "get_time", "arguments": '
        '{"tz": "CET"}}\n</tool_call>',
        "Let me look.",
    ),
    "llama3": (
        '{"name": "get_weather", "parameters": {"city": "paris", "unit": "celsius"}}; '
        '{"name": "get_time", "parameters": {"tz": "CET"}}',
        "",
    ),
    "mistral": (
        '[TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "paris", "unit": '
        '"celsius"}, "id": "abcDEF123"}, {"name": "get_time", "arguments": {"tz": "CET"}}]',
        "",
    ),
    "granite": (
        '<|tool_call|>[{"name": "get_weather", "arguments": {"city": "paris", "unit": '
        '"celsius"}}, {"name": "get_time", "arguments": {"tz": "CET"}}]',
        "",
    ),
    "deepseek": (
        "<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>get_weather\n"
        '```json\n{"city": "paris", "unit": "celsius"}\n```<｜tool▁call▁end｜>'
        "<｜tool▁call▁begin｜>function<｜tool▁sep｜>get_time\n"
        '```json\n{"tz": "CET"}\n```<｜tool▁call▁end｜><｜tool▁calls▁end｜>',
        "",
    ),
}
EXPECTED = [("get_weather", {"city": "paris", "unit": "celsius"}), ("get_time", {"tz": "CET"})]


@pytest.mark.parametrize("form", sorted(SAMPLES))
def test_each_form_is_read_back(form: str) -> None:
    text, content = SAMPLES[form]
    found, calls = FORMS[form].parse(text, TOOLS)
    assert [(c.name, c.arguments) for c in calls] == EXPECTED
    assert found == content
    assert all(len(c.id) == 9 and c.id.isalnum() for c in calls)
    if form == "mistral":
        assert calls[0].id == "abcDEF123"  # the model's own id is kept


def test_other_forms_and_text_that_only_looks_like_a_call() -> None:
    # Phi-4-mini closes its list; the newer Mistral form names the function before [ARGS].
    phi = '<|tool_call|>[{"name": "get_time", "arguments": {"tz": "UTC"}}]<|/tool_call|>'
    assert [c.name for c in FORMS["granite"].parse(phi, TOOLS)[1]] == ["get_time"]
    new = '[TOOL_CALLS]get_weather[ARGS]{"city": "rome", "unit": "celsius"}'
    assert [c.arguments["city"] for c in FORMS["mistral"].parse(new, TOOLS)[1]] == ["rome"]
    # A JSON answer that calls no tool of ours is text, as it was.
    plain = '{"name": "Ada", "parameters": {}}'
    assert FORMS["llama3"].parse(plain, TOOLS) == (plain, [])
    # A call cut off by the token limit: what parses is kept, the rest is text.
    cut = (
        '<tool_call>\n{"name": "get_time", "arguments": {"tz": "UTC"}}\n</tool_call><tool_call>{"na'
    )
    assert [c.name for c in FORMS["hermes"].parse(cut, TOOLS)[1]] == ["get_time"]


@pytest.mark.parametrize(
    ("file", "form"),
    [
        ("Qwen-Qwen2.5-7B-Instruct.jinja", "hermes"),
        ("Qwen-Qwen3-0.6B.jinja", "hermes"),
        ("NousResearch-Hermes-3-Llama-3.1-8B-tool_use.jinja", "hermes"),
        ("meta-llama-Llama-3.1-8B-Instruct.jinja", "llama3"),
        ("meta-llama-Llama-3.2-3B-Instruct.jinja", "llama3"),
        ("mistralai-Mistral-Nemo-Instruct-2407.jinja", "mistral"),
        ("Mistral-Small-3.2-24B-Instruct-2506.jinja", "mistral"),
        ("ibm-granite-granite-3.3-2B-Instruct.jinja", "granite"),
        ("llama-cpp-deepseek-r1.jinja", "deepseek"),
        ("google-gemma-2-2b-it.jinja", None),
        ("microsoft-Phi-3.5-mini-instruct.jinja", None),
    ],
)
def test_real_templates_take_tools_calls_and_results(
    real_templates: Path, file: str, form: str | None
) -> None:
    template = (real_templates / file).read_text(encoding="utf-8")
    assert (f.name if (f := form_of(template)) else None) == form
    if form is None:
        return
    call = ToolCall("get_weather", {"city": "paris", "unit": "celsius"}, "abcDEF123")
    messages = [
        Message("user", "What is the weather in Paris?"),
        Message("assistant", "", (call,)),
        Message("tool", '{"temperature": 21}', tool_call_id="abcDEF123", name="get_weather"),
    ]  # the model answers next, with the result in hand
    text = render(template, messages, bos_token="<s>", eos_token="</s>", tools=TOOLS)
    # The tools are offered, the earlier call and its result are in the prompt.
    assert "get_weather" in text and "The time in a timezone" in text
    # (Llama 3.1's template writes a tool's result as a JSON string: "{\\"temperature...)
    assert '"paris"' in text and "temperature" in text
    assert text.index("What is the weather") < text.index("paris") < text.index("temperature")
    # The call as the template renders it reads back as the call.
    rendered = text[text.index("What is the weather") : text.index("temperature")]
    found = [c for c in FORMS[form].parse(rendered[rendered.index(_start(form)) :], TOOLS)[1]]
    assert [(c.name, c.arguments) for c in found] == [(call.name, call.arguments)]


def _start(form: str) -> str:
    return {"llama3": '{"name"', "deepseek": "<｜tool▁call▁begin｜>"}.get(
        form, FORMS[form].starts[0]
    )


def test_a_stream_never_shows_a_call() -> None:
    text, _ = SAMPLES["hermes"]
    watch = CallWatch(FORMS["hermes"], TOOLS)
    shown = "".join(watch.feed(ch) for ch in text)
    tail, calls = watch.finish()
    assert shown + tail == "Let me look.\n" + tail and "<tool" not in shown
    assert [c.name for c in calls] == ["get_weather", "get_time"]
    # Llama 3: a call is the whole answer, so an answer that opens with "{" is held.
    watch = CallWatch(FORMS["llama3"], TOOLS)
    assert "".join(watch.feed(ch) for ch in "  " + SAMPLES["llama3"][0]) == ""
    assert len(watch.finish()[1]) == 2
    watch = CallWatch(FORMS["llama3"], TOOLS)
    assert "".join(watch.feed(ch) for ch in "It is sunny {mostly}.") == "It is sunny {mostly}."
    assert watch.finish() == ("", [])


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"type": "function"}, "'tools' must be a list"),
        ([{"type": "retrieval"}], "tools[0] must be a function tool"),
        ([{"type": "function", "function": {"name": "has space"}}], "tools[0] needs a name"),
        ([{"function": {"name": "a"}}, {"function": {"name": "a"}}], "the same name"),
    ],
)
def test_bad_tools_are_refused_by_name(raw: Any, message: str) -> None:
    with pytest.raises(UsageError, match=re.escape(message)):
        parse_tools(raw)


@pytest.mark.parametrize("form", ["hermes", "llama3", "mistral", "granite"])
def test_a_required_call_is_a_call(form: str, tiny_model: Path) -> None:
    """The tiny model writes noise; under the grammar, the noise is a call of a real tool
    with arguments that follow its schema, which the form's parser reads back."""
    model: Any = load(LoadOptions(tiny_model, n_ctx=1024, n_threads=2))
    engine = BatchEngine(model)
    try:
        prompt = model.tokenize("hello", add_special=True, parse_special=False)
        for seed in range(3):
            sampling = SamplingParams(
                temperature=1.0, seed=seed, grammar=call_grammar(FORMS[form], (WEATHER,))
            )
            text, _ = collect(engine.submit(Job(prompt, sampling, max_tokens=200)))
            _, calls = FORMS[form].parse(text, TOOLS)
            assert len(calls) == 1 and calls[0].name == "get_weather", text
            jsonschema.validate(calls[0].arguments, WEATHER.parameters)
    finally:
        engine.close()
        model.close()


# -- through the server -------------------------------------------------------------------

OPENAI_TOOLS = [WEATHER.as_template(), TIME.as_template()]


@pytest.fixture(scope="module")
def qwen_tiny(tmp_path_factory: pytest.TempPathFactory, real_templates: Path) -> Path:
    from tests.tinygguf import write_tiny_model

    template = (real_templates / "Qwen-Qwen2.5-7B-Instruct.jinja").read_text(encoding="utf-8")
    return write_tiny_model(
        tmp_path_factory.mktemp("qwen") / "qwen-tiny.gguf", chat_template=template
    )


@pytest.mark.slow
def test_the_clients_get_tool_calls(
    localrun_home: Path, qwen_tiny: Path, tiny_chat_model: Path
) -> None:
    import httpx
    import ollama
    import openai
    from openai.types.chat import (
        ChatCompletionFunctionToolParam,
        ChatCompletionNamedToolChoiceParam,
    )

    from tests.served import create_model, serving

    create_model(localrun_home, "qwen", f"FROM {qwen_tiny}\n")
    create_model(localrun_home, "plain", f"FROM {tiny_chat_model}\n")
    said: list[Any] = [{"role": "user", "content": "weather in paris?"}]
    tools: list[ChatCompletionFunctionToolParam] = [
        {"type": "function", "function": tool["function"]} for tool in OPENAI_TOOLS
    ]
    with serving(localrun_home, "--model", "qwen") as server:
        oai = openai.OpenAI(base_url=server.url + "/v1", api_key="none")
        done = oai.chat.completions.create(
            model="qwen",
            messages=said,
            tools=tools,
            tool_choice="required",
            max_tokens=200,
            temperature=0,  # the tiny model's noise, the same each run, held to a call
        )
        choice = done.choices[0]
        assert choice.finish_reason == "tool_calls"
        call = (choice.message.tool_calls or [])[0]
        assert call.type == "function"
        assert call.function.name in ("get_weather", "get_time")
        json.loads(call.function.arguments)
        # A named function, streamed: the client puts the deltas back together.
        named: ChatCompletionNamedToolChoiceParam = {
            "type": "function",
            "function": {"name": "get_weather"},
        }
        stream = oai.chat.completions.create(
            model="qwen",
            messages=said,
            tools=tools,
            tool_choice=named,
            max_tokens=200,
            temperature=0,
            stream=True,
        )
        deltas, finish = [], None
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.tool_calls:
                deltas += chunk.choices[0].delta.tool_calls
            if chunk.choices and chunk.choices[0].finish_reason:
                finish = chunk.choices[0].finish_reason
        assert (
            finish == "tool_calls"
            and deltas[0].function
            and deltas[0].function.name == "get_weather"
        )
        jsonschema.validate(json.loads(deltas[0].function.arguments or ""), WEATHER.parameters)
        # The call and its result go back in, and the model answers on.
        back = [
            *said,
            {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
            {"role": "tool", "tool_call_id": call.id, "content": '{"temperature": 21}'},
        ]
        after = oai.chat.completions.create(model="qwen", messages=back, tools=tools, max_tokens=5)
        assert after.choices[0].finish_reason in ("stop", "length", "tool_calls")
        # Ollama's shape, parsed by its client's own response model (its API has no
        # tool_choice; localrun takes it, as llama.cpp's server does).
        body = {
            "model": "qwen",
            "messages": said,
            "tools": OPENAI_TOOLS,
            "tool_choice": "required",
            "stream": False,
            "options": {"num_predict": 200, "temperature": 0},
        }
        r = httpx.post(server.url + "/api/chat", json=body, timeout=120)
        reply = ollama.ChatResponse.model_validate(r.json())
        assert reply.message.tool_calls and reply.message.tool_calls[0].function.name in (
            "get_weather",
            "get_time",
        )
        assert isinstance(reply.message.tool_calls[0].function.arguments, dict)
        # The real client with tools (the model's choice), and a model without a place for them.
        client = ollama.Client(host=server.url)
        client.chat(model="qwen", messages=said, tools=OPENAI_TOOLS, options={"num_predict": 8})
        with pytest.raises(ollama.ResponseError, match="does not take tools"):
            client.chat(model="plain", messages=said, tools=OPENAI_TOOLS)


@pytest.mark.slow
def test_the_chat_offers_tools_and_shows_calls(qwen_tiny: Path, tmp_path: Path) -> None:
    """/tools FILE: the tools reach the template, a call comes back as a Called event (here
    held to one by a grammar, as --grammar would), and the next turn renders it."""
    from localrun.engine.answerer import LocalAnswerer
    from localrun.engine.chat import ChatSession, Options
    from localrun.engine.load import load_model
    from localrun.engine.types import Called, Finished

    loaded = load_model(str(qwen_tiny), n_ctx=2048, n_threads=2, path=qwen_tiny)
    try:
        file = tmp_path / "tools.json"
        file.write_text(json.dumps(OPENAI_TOOLS))
        held = call_grammar(FORMS["hermes"], (WEATHER,))
        session = ChatSession(
            LocalAnswerer(loaded), options=Options(SamplingParams(grammar=held), 200)
        )
        assert session.load_tools(file) == 2
        events = list(session.ask("weather in paris?"))
        called = [e for e in events if isinstance(e, Called)]
        assert len(called) == 1 and called[0].calls[0].name == "get_weather"
        assert isinstance(events[-1], Finished)
        assert session.messages[-1].tool_calls == called[0].calls
        bad = tmp_path / "bad.json"
        bad.write_text('{"not": "a list"}')
        with pytest.raises(UsageError, match="must be a list"):
            session.load_tools(bad)
    finally:
        loaded.close()


@pytest.mark.parametrize("form", sorted(SAMPLES))
def test_a_call_nested_past_pythons_stack_is_text_not_a_crash(form: str) -> None:
    """A model may write brackets without end: that was a RecursionError mid-answer."""
    deep = "[" * 100_000
    text = SAMPLES[form][0].replace('"paris"', deep).replace('{"city": "rome"', deep)
    _, calls = FORMS[form].parse(text, TOOLS)
    assert all(c.name in {t.name for t in TOOLS} for c in calls)
    as_string = '<tool_call>{"name": "get_time", "arguments": "' + deep + '"}</tool_call>'
    assert FORMS["hermes"].parse(as_string, TOOLS)[1] == []
