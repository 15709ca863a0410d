"""The packaged chat model (SmolLM2-135M-Instruct) served: a real model through its real chat
template, where the tiny models' noise and the base demo model cannot show what a user sees.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import jsonschema
import ollama
import openai
import pytest

from tests.served import Server, serving

MODEL = "smollm2:135m"
PERSON = {
    "type": "object",
    "properties": {"name": {"type": "string", "maxLength": 20}, "age": {"type": "integer"}},
    "required": ["name", "age"],
}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    home = tmp_path_factory.mktemp("chat-model-home")
    with serving(home, "--model", MODEL, "--threads", "2") as s:
        yield s


@pytest.mark.e2e
def test_a_conversation_goes_through_the_template_and_keeps_its_turns(server: Server) -> None:
    client = ollama.Client(host=server.url)
    assert MODEL in [m.model for m in client.list().models]
    said = [{"role": "user", "content": "My name is Ada. Say hello."}]
    first = client.chat(model=MODEL, messages=said, options={"temperature": 0, "num_predict": 12})
    assert first.message.content and first.prompt_eval_count
    said += [
        {"role": "assistant", "content": first.message.content},
        {"role": "user", "content": "What is my name?"},
    ]
    second = client.chat(model=MODEL, messages=said, options={"temperature": 0, "num_predict": 12})
    assert second.message.content and second.prompt_eval_count
    # The template's turns: the first exchange is in the second prompt, with its markers.
    assert second.prompt_eval_count > first.prompt_eval_count + (first.eval_count or 0)


@pytest.mark.e2e
def test_structured_answers_follow_the_schema_and_end_at_the_object(server: Server) -> None:
    client = ollama.Client(host=server.url)
    done = client.chat(
        model=MODEL,
        messages=[{"role": "user", "content": "Describe a person as JSON."}],
        format=PERSON,
        options={"temperature": 0, "num_predict": 80},
    )
    assert done.done_reason == "stop"
    text = done.message.content or ""
    jsonschema.validate(json.loads(text), PERSON)
    assert text.endswith("}")


@pytest.mark.e2e
def test_tools_offered_to_a_template_without_a_place_for_them_are_a_400(server: Server) -> None:
    oai = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)
    weather = {
        "type": "function",
        "function": {
            "name": "get_weather",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    }
    with pytest.raises(openai.BadRequestError) as e:
        oai.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "Weather in Paris?"}],
            tools=[weather],  # type: ignore[list-item]
            max_tokens=8,
        )
    assert "its chat template has no place for them" in str(e.value)
    # The server answers the next request.
    done = oai.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=4
    )
    assert done.usage and done.usage.completion_tokens == 4
