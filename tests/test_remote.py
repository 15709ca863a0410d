"""Remote engines: ``localrun remote`` and ``run --endpoint`` against a real ``localrun serve``.

The remote here is another localrun process on 127.0.0.1, serving a tiny chat model; the
client side is the real CLI, which talks to it through the ``openai`` library.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.proc import run
from tests.served import Server, create_model, free_port, serving


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, tiny_chat_model: Path) -> Iterator[Server]:
    home = tmp_path_factory.mktemp("remote-server")
    create_model(home, "tiny", f"FROM {tiny_chat_model}\nPARAMETER temperature 0\n")
    with serving(home, "--api-key", "sesame", "--model", "tiny") as s:
        yield s


@pytest.fixture
def home(localrun_home: Path) -> Path:
    return localrun_home


def test_a_registered_remote_answers_like_a_local_model(
    home: Path, server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    added = run(home, "remote", "add", "far", server.url, "--model", "tiny", "--api-key-env", "KEY")
    assert added.code == 0, added.stderr
    listed = run(home, "remote", "list", "--json")
    assert json.loads(listed.stdout) == [
        {"name": "far", "url": server.url + "/v1", "model": "tiny", "api_key_env": "KEY"}
    ]
    # Its key comes from the environment: missing, then wrong, then right.
    monkeypatch.delenv("KEY", raising=False)
    missing = run(home, "run", "far", "hi")
    assert missing.code == 2 and "KEY, which is not set" in missing.stderr
    monkeypatch.setenv("KEY", "wrong")
    refused = run(home, "run", "far", "hi")
    assert refused.code == 1 and "refused the API key" in refused.stderr
    monkeypatch.setenv("KEY", "sesame")
    done = run(home, "run", "far", "--format", "json", "--max-tokens", "12", "hi")
    assert done.code == 0, done.stderr
    answer = json.loads(done.stdout)
    stats = answer["stats"]
    assert answer["mode"] == "remote" and answer["response"]
    assert stats["completion_tokens"] == 12 and stats["finish_reason"] == "length"
    assert stats["prompt_tokens"] > 0  # the engine's own count, from its usage
    assert stats["ttft_s"] > 0 and stats["decode_tokens_per_s"] > 0  # timed here
    verbose = run(home, "run", "far", "--verbose", "--max-tokens", "4", "hi")
    assert verbose.code == 0 and "TTFT:" in verbose.stderr and "remote engine" in verbose.stderr
    # A created model FROM the remote: its SYSTEM and PARAMETERs go with each request.
    create_model(
        home, "terse", "FROM far\nSYSTEM You answer in one word, always.\nPARAMETER num_predict 3\n"
    )
    plain = json.loads(run(home, "run", "far", "--format", "json", "hi").stdout)["stats"]
    made = run(home, "run", "terse", "--format", "json", "hi")
    assert made.code == 0, made.stderr
    terse = json.loads(made.stdout)["stats"]
    assert terse["completion_tokens"] == 3 and terse["prompt_tokens"] > plain["prompt_tokens"]
    # list shows it beside local models; show asks the engine.
    assert "far" in run(home, "list").stdout
    assert {"name": "far", "remote": server.url + "/v1", "model": "tiny"} in json.loads(
        run(home, "list", "--json").stdout
    )
    shown = json.loads(run(home, "show", "far", "--json").stdout)
    assert shown["id"] == "tiny" and shown["remote"] == server.url + "/v1"
    assert run(home, "remote", "rm", "far").code == 0
    assert json.loads(run(home, "remote", "list", "--json").stdout) == []


def test_endpoint_errors_are_one_line(
    home: Path, server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    closed = f"http://127.0.0.1:{free_port()}"
    gbnf = home.parent / "yes.gbnf"
    gbnf.write_text('root ::= "yes"\n')
    cases = [
        (["--endpoint", closed, "tiny"], 1, "cannot reach the remote engine"),
        (["--endpoint", "ftp://x", "tiny"], 2, "is not an http(s) URL"),
        (["--endpoint", server.url, "tiny", "-i"], 2, "interactive chat needs a terminal"),
        (["--endpoint", server.url, "tiny", "--grammar", str(gbnf)], 2, "does its own decoding"),
    ]
    for args, code, message in cases:
        done = run(home, "run", *args, "hi")
        assert done.code == code and message in done.stderr, (args, done.stderr)
        assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr
    # An unknown model: the engine's own words, in the one line.
    add = run(home, "remote", "add", "x", server.url, "--model", "nothere", "--api-key-env", "K")
    assert add.code == 0
    monkeypatch.setenv("K", "sesame")
    unknown = run(home, "run", "x", "hi")
    assert unknown.code == 1 and "has no model 'nothere'" in unknown.stderr


def test_batch_and_bench_against_a_remote(
    home: Path, server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KEY", "sesame")
    assert (
        run(
            home, "remote", "add", "far", server.url, "--model", "tiny", "--api-key-env", "KEY"
        ).code
        == 0
    )
    file = home.parent / "in.jsonl"
    lines = [{"id": i, "prompt": f"question {i}", "max_tokens": 6} for i in range(6)]
    lines.insert(3, {"id": "bad", "prompt": ""})  # a bad line: an error line, the rest run
    file.write_text("".join(json.dumps(line) + "\n" for line in lines))
    done = run(home, "run", "far", "--batch", str(file), "--parallel", "3")
    assert done.code == 1  # one line failed
    out = [json.loads(line) for line in done.stdout.splitlines()]
    assert [o["id"] for o in out] == [0, 1, 2, "bad", 3, 4, 5]  # input order
    assert "error" in out[3]
    assert all(
        o["stats"]["completion_tokens"] == 6 and o["model"] == "far"
        for o in out
        if o["id"] != "bad"
    )
    # Concurrent streams: aggregate and per-stream rates, TTFT percentiles, errors counted.
    bench = run(home, "bench", "far", "--parallel", "1,4", "-n", "8", "--json")
    assert bench.code == 0, bench.stderr
    loads = json.loads(bench.stdout)["loads"]
    assert [x["streams"] for x in loads] == [1, 4] and all(x["errors"] == 0 for x in loads)
    assert loads[1]["tokens"] == 32 and loads[1]["aggregate_tokens_per_s"] > 0
    assert loads[1]["ttft_p99_s"] >= loads[1]["ttft_p50_s"] > 0
    monkeypatch.setenv("KEY", "wrong")  # every stream refused: counted, and the exit code says so
    refused = run(home, "bench", "far", "--parallel", "2", "-n", "4", "--json")
    assert refused.code == 1 and json.loads(refused.stdout)["loads"][0]["errors"] == 2


def test_a_chat_with_a_remote(
    home: Path, server: Server, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The chat's session over a remote engine: the whole conversation goes each turn, the
    history grows, /save and /load work, and an engine's refusal leaves the chat going."""
    from localrun.engine.chat import Options
    from localrun.engine.types import Finished
    from localrun.errors import LocalrunError
    from localrun.remote.chat import RemoteChatSession
    from localrun.remote.registry import Remote, base_url

    monkeypatch.setenv("KEY", "sesame")
    remote = Remote("far", base_url(server.url), "tiny", "KEY")
    session = RemoteChatSession(remote, system="Be brief.", options=Options(max_tokens=5))
    first = list(session.ask("hello"))
    assert isinstance(first[-1], Finished) and first[-1].stats.completion_tokens == 5
    session.set_parameter("temperature", "0")
    assert "temperature" in session.send  # sent from now on; the engine's defaults until then
    list(session.ask("and again"))
    assert [m.role for m in session.messages] == ["user", "assistant", "user", "assistant"]
    # The second turn carried the first: the engine counted more prompt tokens.
    assert session.last_stats is not None and session.last_stats.prompt_tokens > 20
    path = tmp_path / "chat.json"
    session.save(path)
    other = RemoteChatSession(remote)
    other.load(path)
    assert other.messages == session.messages and other.system == "Be brief."
    monkeypatch.setenv("KEY", "wrong")
    with pytest.raises(LocalrunError, match="refused the API key"):
        list(session.ask("once more"))
    assert len(session.messages) == 4  # the unanswered question is not kept


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["add", "bad name", "http://h"], "not a valid remote name"),
        (["add", "ok", "http://h", "--api-key-env", "1X"], "not an environment variable"),
        (["rm", "never"], "no remote called 'never'"),
    ],
)
def test_remote_command_errors(home: Path, args: list[str], message: str) -> None:
    done = run(home, "remote", *args)
    assert done.code == 2 and message in done.stderr


def test_a_schema_goes_to_the_remote_engine(
    home: Path, server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--schema (and a batch line's "schema") go as OpenAI's response_format: the engine
    holds its answer to the schema, whatever its model says."""
    import jsonschema

    monkeypatch.setenv("KEY", "sesame")
    add = run(home, "remote", "add", "far", server.url, "--model", "tiny", "--api-key-env", "KEY")
    assert add.code == 0
    schema = {
        "type": "object",
        "properties": {"word": {"enum": ["yes", "no"]}, "ok": {"type": "boolean"}},
        "required": ["word", "ok"],
        "additionalProperties": False,
    }
    done = run(home, "run", "far", "--schema", json.dumps(schema), "--max-tokens", "80", "hi")
    assert done.code == 0, done.stderr
    jsonschema.validate(json.loads(done.stdout), schema)
    file = home.parent / "in.jsonl"
    lines = [
        {"id": "s", "prompt": "hi", "schema": schema, "max_tokens": 80},
        {"id": "g", "prompt": "hi", "grammar": 'root ::= "yes"'},
    ]
    file.write_text("".join(json.dumps(line) + "\n" for line in lines))
    batch = run(home, "run", "far", "--batch", str(file))
    assert batch.code == 1  # the grammar line: a remote engine takes schemas
    out = {o["id"]: o for o in map(json.loads, batch.stdout.splitlines())}
    jsonschema.validate(json.loads(out["s"]["response"]), schema)
    assert "takes a JSON schema, not a GBNF grammar" in out["g"]["error"]
