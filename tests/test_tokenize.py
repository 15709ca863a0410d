"""Tokens: ``localrun tokenize`` on the suite's tiny models (their vocabulary alone), and the
server's ``/tokenize`` and ``/detokenize`` (llama-server's and vLLM's shapes), in-process over
the fake pool and over the real pool with a tiny model in llama.cpp. A count is the prompt an
answer reads: ``run --verbose``'s prompt tokens, ``/api/chat``'s ``prompt_eval_count``,
``/v1/chat/completions``' ``usage.prompt_tokens``.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest

from localrun.backend.llamacpp.vocab import Vocabulary
from localrun.engine.tokens import Tokenized, detokenize
from localrun.models import recipes
from localrun.server.app import create_app
from localrun.server.config import ServeConfig
from localrun.server.pool import ModelPool
from tests.fakeserve import hello, serve
from tests.tinygguf import write_tiny_model

T = TypeVar("T")
TEXT = "hello world the sky日本é"  # words of the tiny vocabulary, and characters of its own
# Calls in Qwen's and Hermes' form: a template with a place for tools.
TOOLS_TEMPLATE = (
    "{% if tools %}tools: {{ tools | tojson }}; call them as <tool_call>{...}</tool_call>\n"
    "{% endif %}{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n"
    "{% endfor %}<|im_start|>assistant\n"
)
WEATHER: Any = {
    "type": "function",
    "function": {
        "name": "weather",
        "description": "The weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}
CHAT: list[Any] = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "why is the sky blue"},
]


def ids_of(out: str) -> list[int]:
    return [int(t) for t in out.split()]


# -- the command ------------------------------------------------------------------------


def test_ids_detokenize_back_to_the_text(cli: Any, tiny_model: Path) -> None:
    r = cli(["tokenize", str(tiny_model), TEXT])
    assert r.exit_code == 0, r.stderr
    ids = ids_of(r.stdout)
    assert ids[0] == 1  # the model's BOS, as llama-tokenize adds it
    with Vocabulary(tiny_model) as vocab:
        assert detokenize(vocab, ids) == "<s> " + TEXT  # a sentencepiece vocabulary's space
        bare = ids_of(cli(["tokenize", str(tiny_model), TEXT, "--no-bos"]).stdout)
        assert bare == ids[1:]
        assert detokenize(vocab, bare) == " " + TEXT


def test_count_is_the_number_of_ids(cli: Any, tiny_model: Path) -> None:
    ids = ids_of(cli(["tokenize", str(tiny_model), TEXT]).stdout)
    r = cli(["tokenize", str(tiny_model), TEXT, "--count"])
    assert r.exit_code == 0 and r.stdout == f"{len(ids)}\n"
    piped = cli(["tokenize", str(tiny_model), "--count"], input=TEXT + "\n")
    assert piped.stdout == f"{len(ids) + 1}\n"  # standard input as it is: its newline too


def test_pieces_are_text_or_the_bytes_of_a_split_character(cli: Any, tiny_model: Path) -> None:
    r = cli(["tokenize", str(tiny_model), "<|im_start|>ß", "--pieces", "--no-bos"])
    assert r.exit_code == 0, r.stderr
    lines = [line.split("\t") for line in r.stdout.splitlines()]
    # The special token's text is read as that token. The tiny vocabulary has neither the
    # space sentencepiece puts before a text nor ß: each is its bytes, split characters.
    space, sharp_s = [(231, [226]), (155, [150]), (134, [129])], [(200, [195]), (164, [159])]
    assert [(int(i), json.loads(p)) for i, p in lines] == [(3, "<|im_start|>"), *space, *sharp_s]
    plain = cli(["tokenize", str(tiny_model), "<|im_start|>", "--no-parse-special", "--count"])
    assert int(plain.stdout) > 2  # its characters, each a token or more
    data = json.loads(cli(["tokenize", str(tiny_model), "ß", "--pieces", "--json"]).stdout)
    assert data == {
        "model": str(tiny_model),
        "count": 6,
        "tokens": [{"id": i, "piece": p} for i, p in [(1, "<s>"), *space, *sharp_s]],
    }


def _run_prompt_tokens(cli: Any, args: list[str]) -> int:
    r = cli(["run", *args, "-n", "1", "--verbose"])
    assert r.exit_code == 0, r.stderr
    found = re.search(r"prompt tokens:\s+(\d+)", r.stderr)
    assert found, r.stderr
    return int(found.group(1))


def test_chat_counts_what_run_reads(cli: Any, tiny_chat_model: Path, localrun_home: Path) -> None:
    model = str(tiny_chat_model)
    counted = cli(["tokenize", model, "why is the sky blue", "--chat", "--count"])
    assert counted.exit_code == 0, counted.stderr
    assert int(counted.stdout) == _run_prompt_tokens(cli, [model, "why is the sky blue"])
    with_system = cli(["tokenize", model, "why", "--chat", "--system", "Be brief.", "--count"])
    assert int(with_system.stdout) == _run_prompt_tokens(cli, [model, "why", "--system",
                                                               "Be brief."])  # fmt: skip
    # A Modelfile's system prompt and earlier messages are read too.
    localrun_home.mkdir(parents=True, exist_ok=True)
    modelfile = localrun_home / "Modelfile"
    modelfile.write_text(f"FROM {model}\nSYSTEM You answer in one word.\n"
                         "MESSAGE user hello\nMESSAGE assistant world\n")  # fmt: skip
    assert cli(["create", "worded", "-f", str(modelfile)]).exit_code == 0
    made = int(cli(["tokenize", "worded", "why", "--chat", "--count"]).stdout)
    assert made == _run_prompt_tokens(cli, ["worded", "why"])
    assert made > int(cli(["tokenize", model, "why", "--chat", "--count"]).stdout)


def test_the_weights_are_never_loaded(
    cli: Any, tiny_chat_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from localrun import backend
    from localrun.backend.llamacpp import model

    def refused(*args: object, **kwargs: object) -> None:
        raise AssertionError("the weights were loaded")

    monkeypatch.setattr(backend, "load", refused)
    monkeypatch.setattr(model.LlamaCppModel, "__init__", refused)
    for flags in ([], ["--chat"], ["--pieces"]):
        r = cli(["tokenize", str(tiny_chat_model), "hello", *flags])
        assert r.exit_code == 0, r.stderr


def test_the_command_only_passes_its_flags_on(
    cli: Any, tiny_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from localrun.engine import tokens

    asked: list[tuple[str, str, dict[str, Any]]] = []

    def fake(ref: str, text: str, **kwargs: Any) -> Tokenized:
        asked.append((ref, text, kwargs))
        return Tokenized("m", [5, 6])

    monkeypatch.setattr(tokens, "tokenize", fake)
    r = cli(["tokenize", str(tiny_model), "hi", "--chat", "--think", "false", "--json"])
    assert r.exit_code == 0 and json.loads(r.stdout) == {"model": "m", "count": 2,
                                                         "tokens": [5, 6]}  # fmt: skip
    passed = {"chat": True, "system": None, "think": False, "add_special": True,
              "parse_special": True, "with_pieces": False}  # fmt: skip
    assert asked == [(str(tiny_model), "hi", passed)]


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["--system", "s"], "add --chat"),
        (["--chat", "--no-bos"], "drop --chat"),
        (["--chat", "--think", "maybe"], "--think cannot be 'maybe'"),
    ],
)
def test_flags_that_do_not_go_together(
    cli: Any, tiny_model: Path, args: list[str], said: str
) -> None:
    r = cli(["tokenize", str(tiny_model), "hi", *args])
    assert r.exit_code == 2 and said in r.stderr and r.stderr.count("\n") == 1


def test_an_unknown_model_is_one_line(cli: Any) -> None:
    r = cli(["tokenize", "no-such-model", "hi"])
    assert r.exit_code == 1 and "no-such-model" in r.stderr and r.stderr.count("\n") == 1


# -- the endpoints over the fake pool (the scripted model: one token a byte) ------------------


def test_content_is_tokenized_as_llama_server_does() -> None:
    served = serve(hello)
    r = served.post("/tokenize", {"model": "tiny", "content": "hi<s>"})
    assert r.status_code == 200
    # llama-server's defaults: no BOS added, special tokens' text read as those tokens.
    assert r.json() == {"tokens": [107, 108, 1], "count": 3, "max_model_len": 256}
    asked = {"model": "tiny", "content": ["hi", 7, "a"], "add_special": True,
             "parse_special": False}  # fmt: skip
    assert served.post("/tokenize", asked).json()["tokens"] == [1, 107, 108, 7, 100]
    assert served.engine.jobs == []  # tokenized, not answered


def test_messages_count_is_what_an_answer_reads() -> None:
    served = serve(hello, TOOLS_TEMPLATE, n_ctx=1024)
    counted = served.post("/tokenize", {"model": "tiny", "messages": CHAT, "tools": [WEATHER]})
    assert counted.status_code == 200, counted.text
    assert served.post("/api/chat", {"model": "tiny", "messages": CHAT, "tools": [WEATHER],
                                     "stream": False}).status_code == 200  # fmt: skip
    ollama = served.engine.jobs[-1].prompt
    assert served.post("/v1/chat/completions", {"model": "tiny", "messages": CHAT,
                                                "tools": [WEATHER]}).status_code == 200  # fmt: skip
    assert counted.json()["tokens"] == ollama == served.engine.jobs[-1].prompt
    without = served.post("/tokenize", {"model": "tiny", "messages": CHAT}).json()
    assert without["count"] < counted.json()["count"]  # the tools are part of the prompt
    prompt = served.post("/tokenize", {"model": "tiny", "prompt": "why"}).json()
    assert served.post("/v1/completions", {"model": "tiny", "prompt": "why"}).status_code == 200
    assert prompt["tokens"] == served.engine.jobs[-1].prompt


@pytest.mark.parametrize(
    ("path", "body", "status", "named"),
    [
        ("/tokenize", {"content": "hi"}, 400, "'model'"),
        ("/detokenize", {"tokens": [5]}, 400, "'model'"),
        ("/tokenize", {"model": "nope", "content": "hi"}, 404, "nope"),
        ("/detokenize", {"model": "tiny", "tokens": [5, 259]}, 400, "'tokens[1]' is 259"),
        ("/detokenize", {"model": "tiny", "tokens": [5, -1]}, 400, "'tokens[1]' is -1"),
        ("/detokenize", {"model": "tiny", "tokens": [5, "6"]}, 400, "'tokens[1]' must be"),
        ("/detokenize", {"model": "tiny", "tokens": [1.5]}, 400, "'tokens[0]' must be"),
        ("/detokenize", {"model": "tiny"}, 400, "'tokens'"),
        ("/tokenize", {"model": "tiny", "content": ["a", 999]}, 400, "'content[1]' is 999"),
        ("/tokenize", {"model": "tiny", "content": {"a": 1}}, 400, "'content'"),
        ("/tokenize", {"model": "tiny"}, 400, "'content'"),
        ("/tokenize", {"model": "tiny", "content": "a", "with_pieces": 1}, 400, "'with_pieces'"),
        ("/tokenize", {"model": "tiny", "messages": []}, 400, "'messages'"),
        ("/tokenize", {"model": "tiny", "messages": CHAT, "add_generation_prompt": False}, 400,
         "'add_generation_prompt'"),
    ],
)  # fmt: skip
def test_bad_requests_name_the_field(path: str, body: Any, status: int, named: str) -> None:
    r = serve(hello).post(path, body)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert named in error and "\n" not in error


# -- the endpoints over the real pool, the model in llama.cpp --------------------------------


def _served(home: Path, gguf: Path, use: Callable[[httpx.AsyncClient], Awaitable[T]]) -> T:
    """``use`` with a client of the server's app, its pool loading ``gguf`` as "tiny"."""
    home.mkdir(parents=True, exist_ok=True)
    modelfile = home / "Modelfile"
    modelfile.write_text(f"FROM {gguf}\nSYSTEM You are terse.\nPARAMETER num_ctx 1024\n")
    recipes.create("tiny", modelfile)
    config = ServeConfig(parallel=1, threads=1)

    async def go() -> T:
        pool = ModelPool(config)
        transport = httpx.ASGITransport(app=create_app(config, pool))
        try:
            async with httpx.AsyncClient(transport=transport, base_url="http://x") as client:
                return await use(client)
        finally:
            await pool.close()

    return asyncio.run(go())


def test_real_counts_are_the_answers_prompt_tokens(localrun_home: Path, tmp_path: Path) -> None:
    gguf = write_tiny_model(tmp_path / "tools.gguf", chat_template=TOOLS_TEMPLATE)
    asked: dict[str, Any] = {"model": "tiny", "messages": CHAT, "tools": [WEATHER]}

    async def use(client: httpx.AsyncClient) -> list[Any]:
        counted = (await client.post("/tokenize", json=asked)).json()
        chat = await client.post("/api/chat", json={**asked, "stream": False,
                                                    "options": {"num_predict": 1}})  # fmt: skip
        oai = await client.post("/v1/chat/completions", json={**asked, "max_tokens": 1})
        # Without a system prompt of its own, the Modelfile's is read, and counted.
        alone = {"model": "tiny", "messages": CHAT[1:]}
        own = (await client.post("/tokenize", json=alone)).json()
        answered = await client.post("/api/chat", json={**alone, "stream": False,
                                                        "options": {"num_predict": 1}})  # fmt: skip
        assert own["count"] == answered.json()["prompt_eval_count"]
        read = await client.post("/detokenize", json={"model": "tiny", "tokens": own["tokens"]})
        assert "You are terse." in read.json()["content"]
        # The one model loaded answers a request that names none, as llama-server does.
        text = await client.post("/tokenize", json={"content": TEXT, "with_pieces": True})
        ids = [t["id"] for t in text.json()["tokens"]]
        back = await client.post("/detokenize", json={"tokens": ids})
        return [counted, chat.json(), oai.json(), text.json(), back.json()]

    counted, chat, oai, text, back = _served(localrun_home, gguf, use)
    # The request's system prompt replaces the Modelfile's, as it does for an answer.
    assert counted["count"] == chat["prompt_eval_count"] == oai["usage"]["prompt_tokens"]
    assert counted["max_model_len"] == 1024
    pieces = text["tokens"]
    assert pieces[-3:] == [{"id": 321, "piece": "日"}, {"id": 322, "piece": "本"},
                           {"id": 320, "piece": "é"}]  # fmt: skip
    assert back == {"content": " " + TEXT, "prompt": " " + TEXT}
