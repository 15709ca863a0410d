"""Remote engines: ``localrun remote`` and ``run --endpoint`` against a real ``localrun serve``.

The remote here is another localrun process on 127.0.0.1, serving a tiny chat model; the
client side is the real CLI, which talks to it through the ``openai`` library.
"""

from __future__ import annotations

import json
import random
import socket
import socketserver
import threading
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
    from localrun.engine.chat import ChatSession, Options
    from localrun.engine.types import Finished
    from localrun.errors import LocalrunError
    from localrun.remote.answerer import RemoteAnswerer
    from localrun.remote.registry import Remote, base_url

    monkeypatch.setenv("KEY", "sesame")
    remote = Remote("far", base_url(server.url), "tiny", "KEY")
    session = ChatSession(RemoteAnswerer(remote), system="Be brief.", options=Options(max_tokens=5))
    first = list(session.ask("hello"))
    assert isinstance(first[-1], Finished) and first[-1].stats.completion_tokens == 5
    session.set_parameter("temperature", "0")
    assert "temperature" in session.changed  # sent from now on; the engine's defaults until then
    list(session.ask("and again"))
    assert [m.role for m in session.messages] == ["user", "assistant", "user", "assistant"]
    # The second turn carried the first: the engine counted more prompt tokens.
    assert session.last_stats is not None and session.last_stats.prompt_tokens > 20
    path = tmp_path / "chat.json"
    session.save(path)
    other = ChatSession(RemoteAnswerer(remote))
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


# -- an engine that answers junk ----------------------------------------------------------------


class Junk:
    """A server on 127.0.0.1 that answers every request with the same bytes: random ones, or
    HTTP with a broken body. It reads each request first and closes its side after the
    answer, so that the client reads all of it (and no reset races it); a thread a
    connection, each bounded by a socket timeout."""

    def __init__(self, answer: bytes) -> None:
        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                sock = self.request
                sock.settimeout(10)
                received = b""
                while b"\r\n\r\n" not in received and (part := sock.recv(65536)):
                    received += part
                head, _, body = received.partition(b"\r\n\r\n")
                length = next(
                    (int(line.split(b":")[1]) for line in head.split(b"\r\n")
                     if line.lower().startswith(b"content-length:")),
                    0,
                )  # fmt: skip
                while len(body) < length and (part := sock.recv(65536)):
                    body += part
                sock.sendall(answer)
                sock.shutdown(socket.SHUT_WR)
                while sock.recv(65536):  # until the client closes: then no reset
                    pass

        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,))

    def __enter__(self) -> Junk:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(10)


def http(
    body: bytes, content_type: bytes = b"text/event-stream", length: int | None = None
) -> bytes:
    """An HTTP 200 answer with ``body``; a ``length`` over the body's is a connection closed
    mid-stream."""
    size = len(body) if length is None else length
    return (
        b"HTTP/1.1 200 OK\r\ncontent-type: " + content_type
        + b"\r\ncontent-length: %d\r\nconnection: close\r\n\r\n" % size + body
    )  # fmt: skip


CHUNK = b'data: {"choices":[{"index":0,"delta":{"content":"hi"}}]}\n\n'
JUNK = {
    "random bytes": (random.Random(7).randbytes(300), "is not valid (not HTTP"),
    "SSE of invalid UTF-8": (http(b"data: \xff\xfe\xfd\n\n"), "is not valid (not UTF-8)"),
    "SSE not JSON": (http(b"data: hello there\n\n"), "is not valid (an event's data is not JSON)"),
    "choices not a list": (http(b'data: {"choices": 5}\n\n'), "is not valid (a chunk has no"),
    "a chunk that is a list": (http(b"data: [1, 2]\n\n"), "is not valid (a chunk has no"),
    "a choice that is a number": (http(b'data: {"choices": [5]}\n\n'), "a choice is not"),
    "content a number": (
        http(b'data: {"choices": [{"delta": {"content": 7}}]}\n\n'),
        "content or finish_reason is not a string",
    ),
    "JSON, not SSE": (http(b'{"id": "x"}', b"application/json"), "no server-sent events"),
    "closed mid-stream": (http(CHUNK, length=1000), "the remote engine's stream broke off"),
    "closed at once": (b"", "is not valid (not HTTP: server disconnected"),
}


@pytest.mark.parametrize("case", JUNK)
@pytest.mark.parametrize("output", ["text", "json"])
def test_an_engine_answering_junk_is_one_line(home: Path, case: str, output: str) -> None:
    answer, message = JUNK[case]
    with Junk(answer) as junk:
        done = run(home, "run", "--endpoint", junk.url, "--format", output, "m", "hi", timeout=60)
    assert done.code == 1, done.stderr
    assert message.lower() in done.stderr.lower(), done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and "bug in localrun" not in done.stderr


def test_show_and_bench_of_a_remote_answering_junk(home: Path) -> None:
    """``show`` asks the engine for its model; ``bench`` counts every junk stream as failed."""
    for answer, message in [
        (random.Random(8).randbytes(300), "is not valid (not HTTP"),
        (http(b'{"id": \xff}', b"application/json"), "its model is not described in JSON"),
        (http(b"[1, 2]", b"application/json"), "a model is not described as an object"),
        (http(b"hello", b"text/plain"), "a model is not described as an object"),
    ]:
        with Junk(answer) as junk:
            assert run(home, "remote", "add", "j", junk.url, "--model", "m").code == 0
            shown = run(home, "show", "j", timeout=60)
            assert shown.code == 1 and message in shown.stderr, shown.stderr
            assert len(shown.stderr.strip().splitlines()) == 1
    with Junk(http(b"data: \xff\n\n")) as junk:
        assert run(home, "remote", "add", "j", junk.url, "--model", "m").code == 0
        bench = run(home, "bench", "j", "--parallel", "2", "-n", "4", "--json", timeout=60)
    assert bench.code == 1 and "bug in localrun" not in bench.stderr
    load = json.loads(bench.stdout)["loads"][0]
    assert load["errors"] == 2 and "is not valid (not UTF-8)" in load["error"]


def test_a_port_out_of_range_is_refused_even_in_an_old_registration(home: Path) -> None:
    for url, message in [
        ("http://127.0.0.1:99999999", "has no valid port: a port is a number from 1 to 65535"),
        ("http://127.0.0.1:0", "has no valid port"),
        ("http://h:abc", "has no valid port"),
        ("http://[::1", "is not a valid URL (Invalid IPv6 URL)"),
        ("http://a b:80", "has no valid host name ('a b')"),
    ]:
        for args in (["remote", "add", "r5", url], ["run", "--endpoint", url, "m", "hi"]):
            done = run(home, *args)
            assert done.code == 2 and message in done.stderr, (args, done.stderr)
            assert len(done.stderr.strip().splitlines()) == 1
    assert json.loads(run(home, "remote", "list", "--json").stdout) == []
    # One registered before the check: refused when used, and it can still be removed.
    config = home / "config"
    config.mkdir(parents=True, exist_ok=True)
    old = {"name": "r5", "url": "http://127.0.0.1:99999999/v1", "model": "m", "api_key_env": None}
    (config / "remotes.json").write_text(json.dumps({"remotes": [old]}))
    assert json.loads(run(home, "remote", "list", "--json").stdout) == [old]
    used = run(home, "run", "r5", "hi")
    assert used.code == 2 and "has no valid port" in used.stderr, used.stderr
    assert run(home, "remote", "rm", "r5").code == 0
