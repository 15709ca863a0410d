"""``localrun serve`` driven by the real ``ollama`` and ``openai`` clients, over HTTP.

One server for the module, on 127.0.0.1, serving a tiny chat model that the suite makes.
"""

from __future__ import annotations

import concurrent.futures
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import ollama
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from tests.served import Server, create_model, serving, wait_for

MODEL = "tiny"
FAST = {"num_predict": 8, "seed": 1}


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory, tiny_chat_model: Path) -> Path:
    home = tmp_path_factory.mktemp("serve-home")
    create_model(home, MODEL, f"FROM {tiny_chat_model}\nPARAMETER temperature 0.7\n")
    return home


@pytest.fixture(scope="module")
def server(home: Path) -> Iterator[Server]:
    with serving(home, "--parallel", "4", "--max-queue", "8") as s:
        yield s


@pytest.fixture
def client(server: Server) -> ollama.Client:
    return ollama.Client(host=server.url)


@pytest.fixture
def oai(server: Server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)


def test_generate_without_streaming(client: ollama.Client) -> None:
    r = client.generate(model=MODEL, prompt="hello there", options=FAST)
    assert r.done and r.done_reason == "length"
    assert r.eval_count == 8 and r.prompt_eval_count and r.prompt_eval_count > 0
    assert r.response and r.total_duration and r.eval_duration and r.eval_duration > 0
    assert r.context and len(r.context) == r.prompt_eval_count + r.eval_count


def test_generate_streams_the_same_text(client: ollama.Client) -> None:
    whole = client.generate(model=MODEL, prompt="hello there", options=FAST).response
    parts = list(client.generate(model=MODEL, prompt="hello there", options=FAST, stream=True))
    assert not any(p.done for p in parts[:-1]) and parts[-1].done
    assert parts[-1].done_reason == "length" and parts[-1].eval_count == 8
    assert "".join(p.response or "" for p in parts) == whole


def test_chat_streaming_and_not(client: ollama.Client) -> None:
    messages = [{"role": "user", "content": "hi"}]
    whole = client.chat(model=MODEL, messages=messages, options=FAST)
    assert whole.message.role == "assistant" and whole.message.content
    parts = list(client.chat(model=MODEL, messages=messages, options=FAST, stream=True))
    assert "".join(p.message.content or "" for p in parts) == whole.message.content
    assert parts[-1].done and parts[-1].eval_count == 8


def test_stop_strings_and_num_predict(client: ollama.Client) -> None:
    long = client.generate(model=MODEL, prompt="abc", options={"num_predict": 30, "seed": 3})
    text = long.response or ""
    assert len(text) > 4
    stop = text[2:4]
    cut = client.generate(
        model=MODEL, prompt="abc", options={"num_predict": 30, "seed": 3, "stop": [stop]}
    )
    assert cut.done_reason == "stop" and cut.response == text[: text.index(stop)]


def test_tags_show_ps_and_version(client: ollama.Client, server: Server) -> None:
    names = [m.model for m in client.list().models]
    assert MODEL in names
    shown = client.show(MODEL)
    assert shown.details and shown.details.format == "gguf" and shown.modelfile
    assert "temperature" in (shown.parameters or "")
    client.generate(model=MODEL, prompt="x", options=FAST)
    running = client.ps().models
    assert [m.model for m in running] == [MODEL]
    assert running[0].context_length and running[0].expires_at is not None
    assert httpx.get(server.url + "/api/version").json()["version"]
    assert httpx.head(server.url + "/").status_code == 200


def test_unknown_model_is_404_for_both_clients(client: ollama.Client, oai: openai.OpenAI) -> None:
    with pytest.raises(ollama.ResponseError) as e:
        client.generate(model="no-such-model", prompt="x")
    assert e.value.status_code == 404 and "no-such-model" in e.value.error
    with pytest.raises(openai.NotFoundError) as o:
        oai.chat.completions.create(
            model="no-such-model", messages=[{"role": "user", "content": "x"}]
        )
    assert "no-such-model" in str(o.value)


def test_a_path_is_not_a_model_name(client: ollama.Client, home: Path) -> None:
    """A request must not make the server open files of its choosing."""
    gguf = next(home.rglob("*.Modelfile"))
    with pytest.raises(ollama.ResponseError) as e:
        client.generate(model=str(gguf), prompt="x")
    assert e.value.status_code == 404
    assert "a request names a model, never a file" in e.value.error  # not "pull /etc/..."
    assert "pull" not in e.value.error


def test_bad_options_are_400(client: ollama.Client) -> None:
    with pytest.raises(ollama.ResponseError) as e:
        client.generate(model=MODEL, prompt="x", options={"temperature": -1})
    assert e.value.status_code == 400 and "temperature" in e.value.error
    with pytest.raises(ollama.ResponseError) as e:
        client.generate(model=MODEL, prompt="x", options={"num_predict": 10**7})
    assert e.value.status_code == 400


def test_openai_chat_without_streaming(oai: openai.OpenAI) -> None:
    r = oai.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=8, seed=1
    )
    choice = r.choices[0]
    assert choice.message.role == "assistant" and choice.message.content
    assert choice.finish_reason == "length"
    assert r.usage and r.usage.completion_tokens == 8 and r.usage.prompt_tokens > 0
    assert r.id.startswith("chatcmpl-")


def test_openai_chat_streaming_with_usage(oai: openai.OpenAI) -> None:
    messages: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hi"}]
    whole = oai.chat.completions.create(model=MODEL, messages=messages, max_tokens=8, seed=1)
    chunks = list(
        oai.chat.completions.create(
            model=MODEL,
            messages=messages,
            max_tokens=8,
            seed=1,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert len({c.id for c in chunks}) == 1
    assert chunks[0].choices[0].delta.role == "assistant"
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == "length" and not any(finishes[:-1])
    assert chunks[-1].choices == [] and chunks[-1].usage and chunks[-1].usage.completion_tokens == 8
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content


def test_openai_completions_and_models(oai: openai.OpenAI) -> None:
    r = oai.completions.create(model=MODEL, prompt="once upon", max_tokens=6, seed=2)
    assert r.choices[0].text and r.usage and r.usage.completion_tokens == 6
    streamed = "".join(
        c.choices[0].text
        for c in oai.completions.create(
            model=MODEL, prompt="once upon", max_tokens=6, seed=2, stream=True
        )
    )
    assert streamed == r.choices[0].text
    assert MODEL in [m.id for m in oai.models.list()]
    assert oai.models.retrieve(MODEL).id == MODEL
    with pytest.raises(openai.NotFoundError):
        oai.models.retrieve("nope")


def test_openai_errors_take_openai_shape(server: Server) -> None:
    r = httpx.post(server.url + "/v1/chat/completions", json={"model": MODEL, "messages": []})
    assert r.status_code == 400
    assert r.json()["error"]["type"] == "invalid_request_error"
    r = httpx.post(server.url + "/v1/chat/completions", content=b"{not json")
    assert r.status_code == 400 and "JSON" in r.json()["error"]["message"]


def test_bad_json_and_wrong_types_are_400(server: Server) -> None:
    r = httpx.post(server.url + "/api/generate", content=b"[1, 2")
    assert r.status_code == 400 and "JSON" in r.json()["error"]
    r = httpx.post(server.url + "/api/generate", json={"model": MODEL, "prompt": 5})
    assert r.status_code == 400 and "'prompt' must be a string" in r.json()["error"]
    r = httpx.post(server.url + "/api/chat", json={"model": MODEL, "messages": [{"role": "x"}]})
    assert r.status_code == 400


def test_concurrent_streams_of_one_prompt_give_one_text(client: ollama.Client) -> None:
    def one(_: int) -> str:
        return client.generate(model=MODEL, prompt="the same", options=FAST).response or ""

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        texts = list(pool.map(one, range(4)))
    assert len(set(texts)) == 1, texts


def test_disconnect_mid_stream_frees_the_sequence(server: Server) -> None:
    body = {"model": MODEL, "prompt": "go on", "options": {"num_predict": -1}}
    with httpx.stream("POST", server.url + "/api/generate", json=body, timeout=60) as r:
        lines = r.iter_lines()
        assert json.loads(next(lines))["done"] is False
        assert json.loads(next(lines))["done"] is False

    def idle() -> bool:
        models = httpx.get(server.url + "/api/ps").json()["models"]
        return all(m["active"] == 0 for m in models)

    wait_for(idle, what="the disconnected request's release")


def test_keep_alive_zero_unloads(client: ollama.Client) -> None:
    client.generate(model=MODEL, prompt="x", options=FAST)
    assert MODEL in [m.model for m in client.ps().models]
    r = client.generate(model=MODEL, keep_alive=0)
    assert r.done_reason == "unload"
    wait_for(lambda: MODEL not in [m.model for m in client.ps().models], what="the unload")
    r = client.generate(model=MODEL)
    assert r.done_reason == "load"
    assert MODEL in [m.model for m in client.ps().models]


def test_ps_and_stop_commands(server: Server, client: ollama.Client) -> None:
    import os
    import subprocess

    from tests.served import LOCALRUN

    client.generate(model=MODEL, prompt="x", options=FAST)
    env = {**os.environ, "LOCALRUN_HOST": f"127.0.0.1:{server.port}"}
    ps = subprocess.run([LOCALRUN, "ps"], capture_output=True, text=True, env=env, timeout=60)
    assert ps.returncode == 0 and MODEL in ps.stdout and "CONTEXT" in ps.stdout
    stop = subprocess.run(
        [LOCALRUN, "stop", MODEL], capture_output=True, text=True, env=env, timeout=60
    )
    assert stop.returncode == 0, stop.stderr
    wait_for(lambda: not client.ps().models, what="the stop")
    again = subprocess.run(
        [LOCALRUN, "stop", MODEL], capture_output=True, text=True, env=env, timeout=60
    )
    assert again.returncode == 1 and again.stderr.count("\n") == 1 and "localrun ps" in again.stderr


def test_ps_without_a_server_is_one_line(tmp_path: Path) -> None:
    import os
    import subprocess

    from tests.served import LOCALRUN, free_port

    env = {**os.environ, "LOCALRUN_HOST": f"127.0.0.1:{free_port()}"}
    ps = subprocess.run([LOCALRUN, "ps"], capture_output=True, text=True, env=env, timeout=60)
    assert ps.returncode == 1 and ps.stderr.count("\n") == 1
    assert "no localrun server" in ps.stderr and "localrun serve" in ps.stderr


def test_embeddings_for_both_clients(client: ollama.Client, oai: openai.OpenAI) -> None:
    before = client.generate(model=MODEL, prompt="hello there", options=FAST).response
    r = client.embed(model=MODEL, input=["a cat", "a dog", "a cat"])
    a, b, c = r.embeddings
    assert len(a) == len(b) > 8 and a == c and a != b
    assert abs(sum(x * x for x in a) - 1.0) < 1e-4  # scaled to length 1, as Ollama's
    assert r.prompt_eval_count and r.prompt_eval_count > 3
    legacy = client.embeddings(model=MODEL, prompt="a cat").embedding
    assert legacy == pytest.approx(a, abs=1e-6)
    short = client.embed(model=MODEL, input="a cat", dimensions=4).embeddings[0]
    assert len(short) == 4 and abs(sum(x * x for x in short) - 1.0) < 1e-4
    # The openai client asks for base64 unless told: both decode to the same numbers.
    o = oai.embeddings.create(model=MODEL, input=["a cat", "a dog"])
    assert [d.index for d in o.data] == [0, 1] and o.usage.prompt_tokens > 3
    assert o.data[0].embedding == pytest.approx(a, abs=1e-5)
    floats = oai.embeddings.create(model=MODEL, input="a dog", encoding_format="float")
    assert floats.data[0].embedding == pytest.approx(b, abs=1e-5)
    # The engine's sequences are as they were: the same answer as before.
    assert client.generate(model=MODEL, prompt="hello there", options=FAST).response == before


def test_copy_create_and_delete(client: ollama.Client) -> None:
    assert client.copy(MODEL, "tiny-copy").status == "success"
    assert "tiny-copy" in [m.model for m in client.list().models]
    made = client.create(
        model="tiny-terse",
        from_=MODEL,
        system="Answer in one word.",
        parameters={"temperature": 0.2, "stop": ["\n\n"]},
    )
    assert made.status == "success"
    shown = client.show("tiny-terse")
    assert "Answer in one word." in (shown.modelfile or "")
    assert "temperature" in (shown.parameters or "")
    assert client.generate(model="tiny-terse", prompt="x", options=FAST).eval_count == 8
    for name in ("tiny-copy", "tiny-terse"):
        assert client.delete(name).status == "success"
    names = [m.model for m in client.list().models]
    assert "tiny-copy" not in names and "tiny-terse" not in names
    with pytest.raises(ollama.ResponseError) as e:
        client.delete("tiny-copy")
    assert e.value.status_code == 404


def test_create_quantizes_as_ollama_does(client: ollama.Client, home: Path) -> None:
    updates = list(client.create(model="tiny-q8", from_=MODEL, quantize="q8_0", stream=True))
    assert updates[0].status == "quantized F32 model to Q8_0"
    assert updates[-1].status == "success"
    shown = client.show("tiny-q8")
    assert shown.details is not None and shown.details.quantization_level == "Q8_0"
    assert client.generate(model="tiny-q8", prompt="x", options=FAST).eval_count == 8
    weights = list(home.rglob("tiny-q8.Q8_0.gguf"))
    assert len(weights) == 1
    assert client.delete("tiny-q8").status == "success"
    assert not weights[0].exists()


def test_create_names_models_never_files(client: ollama.Client, home: Path) -> None:
    some_file = str(next(home.rglob("*.Modelfile")))
    for base, status in ((some_file, 400), ("/etc/passwd", 400), ("no-such-base", 404)):
        with pytest.raises(ollama.ResponseError) as e:
            client.create(model="bad", from_=base)
        assert e.value.status_code == status, (base, e.value.error)
    for bad_name in ("../escape", "/abs", "a/../../b"):
        with pytest.raises(ollama.ResponseError) as e:
            client.create(model=bad_name, from_=MODEL)
        assert e.value.status_code == 400
    with pytest.raises(ollama.ResponseError) as e:
        client.create(model="bad", from_=MODEL, parameters={"temperature": "hot"})
    assert e.value.status_code == 400
    with pytest.raises(ollama.ResponseError) as e:
        client.create(model="bad", from_=MODEL, quantize="q9")
    assert e.value.status_code == 400 and "unknown quantization type 'q9'" in e.value.error
    assert "bad" not in [m.model for m in client.list().models]
    assert not list(home.rglob("escape*"))


def test_openai_requests_take_llama_server_sampling_fields(oai: openai.OpenAI) -> None:
    messages: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hi"}]
    greedy = {"temperature": 0.0}
    plain = oai.chat.completions.create(
        model=MODEL, messages=messages, max_tokens=12, extra_body=greedy
    )
    cut = oai.chat.completions.create(
        model=MODEL,
        messages=messages,
        max_tokens=12,
        extra_body={**greedy, "repeat_penalty": 100.0},
    )
    assert plain.choices[0].message.content != cut.choices[0].message.content
    with pytest.raises(openai.BadRequestError):
        oai.chat.completions.create(model=MODEL, messages=messages, extra_body={"top_k": -1})


def test_what_a_review_found_is_refused_cleanly(server: Server, client: ollama.Client) -> None:
    url = server.url

    def active() -> int:
        return sum(m["active"] for m in httpx.get(url + "/api/ps").json()["models"])

    # Token ids outside the vocabulary: a 400, and the model answers the next request.
    r = httpx.post(url + "/api/generate", json={"model": MODEL, "context": [99_999_999]})
    assert r.status_code == 400 and "vocabulary" in r.json()["error"]
    assert client.generate(model=MODEL, prompt="x", options=FAST).eval_count == 8
    # A field refused after the model was found does not keep the model held.
    for path, body in (
        ("/api/generate", {"model": MODEL, "prompt": "x", "stream": "true"}),
        ("/v1/completions", {"model": MODEL, "prompt": "x", "stream": "yes"}),
    ):
        assert httpx.post(url + path, json=body).status_code == 400
    wait_for(lambda: active() == 0, what="the models' release")
    # Durations past any clock, and JSON nested past Python's recursion limit.
    for keep in ("inf", "1e300", 1e300):
        r = httpx.post(url + "/api/generate", json={"model": MODEL, "keep_alive": keep})
        assert r.status_code in (200, 400), r.text
    assert httpx.get(url + "/api/ps").status_code == 200
    deep = b"[" * 100_000 + b"]" * 100_000
    assert httpx.post(url + "/api/generate", content=deep).status_code in (400, 413)


def test_create_values_cannot_become_instructions(client: ollama.Client) -> None:
    for fields in (
        {"parameters": {"temperature": "0.5\nADAPTER /etc/passwd"}},
        {"parameters": {"nonsense": 1}},
        {"system": "x\rFROM\t/tmp/evil.gguf"},
        {"system": "x\u2028ADAPTER /etc/passwd"},
    ):
        try:
            client.create(model="sneaky", from_=MODEL, **fields)
        except ollama.ResponseError as e:
            assert e.status_code == 400, (fields, e.error)
            continue
        from localrun.models.modelfile import parse

        shown = parse(client.show("sneaky").modelfile or "")  # accepted: the text stayed a value
        assert shown.from_ == MODEL and shown.adapters == [], fields
        client.delete("sneaky")
    url = str(client._client.base_url).rstrip("/")
    r = httpx.post(url + "/api/create", json={"model": "sneaky", "from": MODEL, "license": 5})
    assert r.status_code == 400


def _post(server: Server, path: str, body: str) -> httpx.Response:
    """A body as written: JSON text with escapes the clients would not send."""
    return httpx.post(server.url + path, content=body.encode(), timeout=60)


def _error(r: httpx.Response) -> str:
    error = r.json()["error"]
    return str(error["message"] if isinstance(error, dict) else error)


def test_a_lone_surrogate_is_a_400_naming_its_field(server: Server) -> None:
    """JSON's escapes can write half of a UTF-16 pair, which is not text: refused where the
    body is read, with the field's path, on every endpoint (each was a 500)."""
    lone = r"\ud800"
    chat = '[{"role": "user", "content": "a' + lone + '"}]'
    for path, body, field in (
        ("/api/generate", f'{{"model": "{MODEL}", "prompt": "{lone}"}}', "'prompt'"),
        ("/api/generate", f'{{"model": "{MODEL}", "prompt": "x", "system": "{lone}"}}', "system"),
        ("/api/generate", f'{{"model": "ti{lone}ny", "prompt": "x"}}', "'model'"),
        ("/api/chat", f'{{"model": "{MODEL}", "messages": {chat}}}', "'messages[0].content'"),
        ("/api/embed", f'{{"model": "{MODEL}", "input": ["a", "{lone}"]}}', "'input[1]'"),
        ("/v1/completions", f'{{"model": "{MODEL}", "prompt": "{lone}"}}', "'prompt'"),
        ("/v1/chat/completions", f'{{"model": "{MODEL}", "messages": {chat}}}', "messages[0]"),
        ("/api/create", f'{{"model": "x{lone}", "from": "{MODEL}"}}', "'model'"),
        ("/api/generate", f'{{"model": "{MODEL}", "prompt": "x", "{lone}": 1}}', "a key"),
    ):
        r = _post(server, path, body)
        assert r.status_code == 400, (path, body, r.text)
        assert field in _error(r) and "surrogate" in _error(r), (path, r.text)
    # A pair is text (an emoji written as escapes, as json.dumps writes it), and so is NUL.
    for prompt in ("\U0001f600", "a\x00b"):
        body = json.dumps({"model": MODEL, "prompt": prompt, "stream": False, "options": FAST})
        r = _post(server, "/api/generate", body)
        assert r.status_code == 200 and r.json()["eval_count"] == 8, r.text


def test_a_number_no_field_takes_is_a_400(server: Server) -> None:
    """A 401-digit integer made float() overflow (a 500); 1e400 and NaN are not numbers."""
    huge = "1" + "0" * 400
    user = '"messages": [{"role": "user", "content": "x"}]'
    hot = f'"prompt": "x", "options": {{"temperature": {huge}}}'
    for path, fields, field in (
        ("/api/generate", hot, "'options.temperature'"),
        ("/api/generate", f'"keep_alive": {huge}', "'keep_alive'"),
        ("/v1/chat/completions", f'"temperature": {huge}, {user}', "'temperature'"),
        ("/api/generate", '"options": {"seed": 1e400}', "'options.seed'"),
        ("/api/generate", '"options": {"top_p": NaN}', "'options.top_p'"),
    ):
        r = _post(server, path, f'{{"model": "{MODEL}", {fields}}}')
        assert r.status_code == 400, (path, r.text)
        assert field in _error(r), r.text


def test_tool_calls_of_the_wrong_shape_are_400(server: Server) -> None:
    """``"tool_calls": 5`` and arguments nested 100,000 deep were 500s."""
    body = {"model": MODEL, "messages": [
        {"role": "assistant", "content": "", "tool_calls": 5},
        {"role": "user", "content": "x"},
    ]}  # fmt: skip
    r = httpx.post(server.url + "/api/chat", json=body)
    assert r.status_code == 400 and "'messages[0].tool_calls' must be a list" in _error(r)
    deep = "[" * 100_000
    call: dict[str, Any] = {
        "id": "c1",
        "type": "function",
        "function": {"name": "f", "arguments": deep},
    }
    body = {"model": MODEL, "messages": [
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "user", "content": "x"},
    ]}  # fmt: skip
    r = httpx.post(server.url + "/v1/chat/completions", json=body)
    assert r.status_code == 400, r.text
    assert "messages[0].tool_calls[0].function.arguments" in _error(r), r.text
    call["function"]["arguments"] = json.dumps({"a": "\ud800"})  # the escape inside the string
    r = httpx.post(server.url + "/v1/chat/completions", json=body)
    assert r.status_code == 400 and "arguments.a' holds a lone" in _error(r), r.text


def test_lengths_zero_and_unbounded(server: Server, client: ollama.Client) -> None:
    """OpenAI's lengths are counts (-1 was "until the context is full"); 0 asks for nothing,
    as Ollama answers it (one token came)."""
    messages = [{"role": "user", "content": "hi"}]
    for name in ("max_tokens", "max_completion_tokens"):
        r = httpx.post(
            server.url + "/v1/chat/completions",
            json={"model": MODEL, "messages": messages, name: -1},
        )
        assert r.status_code == 400 and f"'{name}' must be 0 or more" in _error(r), r.text
    r = httpx.post(
        server.url + "/v1/completions", json={"model": MODEL, "prompt": "x", "max_tokens": 0}
    )
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["text"] == "" and r.json()["usage"]["completion_tokens"] == 0
    assert r.json()["choices"][0]["finish_reason"] == "length"
    nothing = client.generate(model=MODEL, prompt="hello there", options={"num_predict": 0})
    assert nothing.response == "" and nothing.eval_count == 0
    assert nothing.done_reason == "length" and nothing.prompt_eval_count
    streamed = list(
        client.chat(model=MODEL, messages=messages, options={"num_predict": 0}, stream=True)
    )
    assert len(streamed) == 1 and streamed[0].done and streamed[0].eval_count == 0


def test_a_client_leaving_an_unbounded_answer_frees_its_slot(home: Path) -> None:
    """num_predict -1 (Ollama's "until the context is full") stays, and is cancelled when its
    client leaves: on a server of one slot, the next request runs at once.

    Under the JSON grammar and this seed, the tiny model writes until its context is full
    (4,095 tokens: about 8 s on an idle machine, longer under the other tests' load), so an
    answer within a few seconds of the client leaving means the slot was freed."""
    import time

    from tests.tinygguf import write_tiny_model

    write_tiny_model(home / "long.gguf", n_ctx_train=32768)
    create_model(home, "tiny-long", f"FROM {home / 'long.gguf'}\n")
    body = {
        "model": "tiny-long",
        "prompt": "x",
        "format": "json",
        "options": {"num_predict": -1, "seed": 2},
    }
    with serving(home, "--parallel", "1") as one:
        with httpx.stream("POST", one.url + "/api/generate", json=body, timeout=60) as r:
            lines = r.iter_lines()
            for _ in range(20):
                assert json.loads(next(lines))["done"] is False
        left = time.monotonic()
        r = httpx.post(
            one.url + "/api/generate",
            json={"model": "tiny-long", "prompt": "x", "stream": False, "options": FAST},
            timeout=60,
        )
        assert r.status_code == 200 and r.json()["eval_count"] == 8
        assert time.monotonic() - left < 4, "the answer ran on after its client left"


def test_create_refuses_what_it_would_drop(server: Server, client: ollama.Client) -> None:
    """An ADAPTER line or a second FROM (a projector) in a request's modelfile named files on
    the server's disk: it was dropped in silence and the create answered success."""
    for modelfile, said in (
        (f"FROM {MODEL}\nADAPTER /etc/passwd\n", "ADAPTER /etc/passwd"),
        (f"FROM {MODEL}\nFROM /etc/passwd\n", "a second FROM: /etc/passwd"),
        (f"FROM {MODEL}\nPROJECTOR /etc/passwd\n", "PROJECTOR: /etc/passwd"),
    ):
        r = httpx.post(
            server.url + "/api/create", json={"model": "dropped", "modelfile": modelfile}
        )
        assert r.status_code == 400 and said in _error(r), r.text
    assert "dropped" not in [m.model for m in client.list().models]


def test_a_prompt_too_long_names_the_requests_context_and_knob(server: Server) -> None:
    """The context is the request's share (2048 here, of 4 x 2048), and the knob the API's
    own: --ctx is a flag of the command line."""
    r = httpx.post(
        server.url + "/api/generate",
        json={"model": MODEL, "prompt": "word " * 30_000, "options": FAST},
        timeout=60,
    )
    assert r.status_code == 400, r.text
    ctx = next(m["context_length"] for m in httpx.get(server.url + "/api/ps").json()["models"])
    assert f"context of {ctx} tokens" in _error(r), r.text
    assert "options.num_ctx" in _error(r) and "--ctx" not in _error(r), r.text
    r = httpx.post(
        server.url + "/api/generate",
        json={"model": MODEL, "prompt": "w " * 3000, "raw": True, "options": FAST},
        timeout=60,
    )
    assert r.status_code == 400 and f"holds only {ctx}" in _error(r), r.text
    assert "options.num_ctx" in _error(r) and "--ctx" not in _error(r), r.text


def test_grammars_that_once_killed_or_held_the_server_are_400s(
    server: Server, client: ollama.Client, oai: openai.OpenAI
) -> None:
    """One request with a maxLength of 100,000,000 killed the server (SIGSEGV in llama.cpp's
    grammar parser); an enum of 100,000 values kept a core busy for minutes after its client
    left, and the requests after it waited."""
    deep = "^" + "(" * 30_000 + "a" + ")" * 30_000 + "$"
    refused_schemas: tuple[tuple[dict[str, object], str], ...] = (
        ({"type": "string", "maxLength": 100_000_000}, "maxLength 100,000,000 (at $)"),
        ({"enum": [f"value {i}" for i in range(100_000)]}, "enum (at $) has 100,000 values"),
        ({"type": "string", "pattern": deep}, "pattern (at $) nests too deeply"),
    )
    for schema, message in refused_schemas:
        body = {"model": MODEL, "prompt": "hi", "format": schema}
        r = _post(server, "/api/generate", json.dumps(body))
        assert r.status_code == 400 and message in _error(r), r.text
        with pytest.raises(openai.BadRequestError) as refused:
            oai.chat.completions.create(
                model=MODEL,
                messages=[{"role": "user", "content": "hi"}],
                response_format={
                    "type": "json_schema",
                    "json_schema": {"name": "x", "schema": schema},
                },
            )
        assert message in str(refused.value)
    short = {"type": "object", "properties": {"a": {"type": "string", "maxLength": 8}}}
    answer = client.generate(
        model=MODEL, prompt="hi", format=short, options={"num_predict": 60, "seed": 1}
    )
    assert answer.done and json.loads(answer.response or "").keys() <= {"a"}  # answers on


def test_ignore_eos_goes_on_past_the_end_of_text(server: Server) -> None:
    """llama-server's and vLLM's field, which load tests send so that every answer has its
    full length: a grammar that ends at once makes the model end at once, unless it is set."""
    body = {
        "model": MODEL,
        "prompt": "x",
        "max_tokens": 12,
        "response_format": {
            "type": "json_schema",
            "json_schema": {"name": "a", "schema": {"const": 1}},
        },
    }
    ended = httpx.post(server.url + "/v1/completions", json=body, timeout=60).json()
    assert ended["choices"][0]["finish_reason"] == "stop", ended
    assert ended["usage"]["completion_tokens"] < 12
    full = httpx.post(server.url + "/v1/completions", json=body | {"ignore_eos": True}, timeout=60)
    assert full.status_code == 200, full.text
    assert full.json()["usage"]["completion_tokens"] == 12
    assert full.json()["choices"][0]["finish_reason"] == "length"
    assert full.json()["choices"][0]["text"].startswith(ended["choices"][0]["text"].strip())


def test_names_with_latest_and_one_catalog_for_the_cli_and_the_api(
    client: ollama.Client, oai: openai.OpenAI, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ollama's clients add ':latest'; the API lists what `localrun list` lists."""
    assert client.generate(model=MODEL + ":latest", prompt="x", options=FAST).eval_count == 8
    assert oai.models.retrieve(MODEL + ":latest").id == MODEL
    assert client.show(MODEL + ":latest").modelfile
    with pytest.raises(ollama.ResponseError) as e:
        client.generate(model="tinny", prompt="x")
    assert e.value.status_code == 404 and f"did you mean {MODEL}" in e.value.error
    from localrun.models import catalog

    monkeypatch.setenv("LOCALRUN_HOME", str(home))  # the server's home, read here
    here = {e.name: e for e in catalog.entries() if e.problem is None}
    listed = {m.model: m for m in client.list().models}
    assert set(listed) == set(here)
    assert {m.id for m in oai.models.list()} == set(here)
    assert listed[MODEL].size == here[MODEL].size and listed[MODEL].digest == here[MODEL].digest
