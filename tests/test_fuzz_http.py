"""Random and hostile JSON bodies for every endpoint and field of a real ``localrun serve``.

Each request must get an answer that is not a 500 (a 500 says "our bug"), the server's log
must hold no traceback and no internal error, the server must still answer a normal request,
and its memory must stay bounded. The cases are drawn from a fixed seed, bounded in number
and in time, and sent two at a time (the server's two slots).

Values are written as JSON text, so that what a Python client cannot send is sent too: lone
surrogates (``"\\ud800"``), integers of hundreds of digits, ``NaN``, ``1e400``.
"""

from __future__ import annotations

import concurrent.futures
import json
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.served import Server, create_model, serving

SEED = 20261206
MODEL = "tiny"
MAX_CASES = 2000
TIME_BUDGET = 40.0  # seconds of cases; at least MIN_CASES run whatever the machine's load
MIN_CASES = 150
RSS_GROWTH = 300 * 1024 * 1024  # bytes the server may grow by, over the whole run


@dataclass(frozen=True)
class Raw:
    """JSON text written as it is: what json.dumps would refuse or rewrite."""

    text: str


def dump(value: Any) -> str:
    """``value`` as JSON text, with :class:`Raw` parts written as they are."""
    if isinstance(value, Raw):
        return value.text
    if isinstance(value, dict):
        return "{" + ", ".join(f"{dump(k)}: {dump(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(dump(v) for v in value) + "]"
    return json.dumps(value)


def nested(depth: int) -> Raw:
    """Objects and lists in turn, ``depth`` deep, as JSON text."""
    opens = "".join('{"a": ' if i % 2 == 0 else "[" for i in range(depth))
    closes = "".join("}" if i % 2 == 0 else "]" for i in reversed(range(depth)))
    return Raw(opens + "1" + closes)


SCALARS: list[Any] = [
    None,
    True,
    False,
    0,
    -0.0,
    1,
    -1,
    -2,
    2.5,
    0.5,
    1e308,
    -1e308,
    5e-324,
    2**31,
    2**32 - 1,
    2**53 + 1,
    2**63 - 1,
    -(2**63),
    2**64 - 1,
    Raw(str(2**64)),
    Raw("1" + "0" * 400),
    Raw("-" + "9" * 400),
    Raw("1" * 5000),  # past Python's digit limit for int()
    Raw("1e400"),
    Raw("-1e400"),
    Raw("NaN"),
    Raw("Infinity"),
    Raw("-Infinity"),
    Raw("1.0e-400"),
]
STRINGS: list[Any] = [
    "",
    " ",
    "0",
    "-1",
    "1e400",
    "nan",
    "NaN",
    "Infinity",
    "inf",
    "true",
    "null",
    "5m",
    "-5m",
    "99999999999999999999h",
    "\x00",
    "a\x00b",
    "\x1b[31mred",
    "\u202edlrow",
    "日本語",
    "\U0001f600",
    Raw('"\\ud800"'),
    Raw('"\\udfff"'),
    Raw('"a\\ud800b"'),
    Raw('"\\ud83d\\ude00"'),  # a pair: text
    Raw('"\\ud83d\\ud83d"'),
    "%s%n%x",
    "{{ 7*7 }}",
    "{% for x in range(99999999) %}x{% endfor %}",
    "../../etc/passwd",
    "/etc/passwd",
    "/proc/self/environ",
    "file:///etc/passwd",
    "http://169.254.169.254/",
    "hf.co/../../x",
    "x" * 300,
    "word " * 20_000,
    "a\nADAPTER /etc/passwd",
    '"""\nFROM /etc/passwd',
    "data:image/png;base64,!!!!",
    "json",
    "auto",
    "required",
]
CONTAINERS: list[Any] = [
    [],
    {},
    [1],
    [None],
    ["a"],
    [""],
    [Raw('"\\ud800"')],
    {"a": 1},
    {Raw('"\\ud800"'): 1},  # a key that is not text
    {"type": "function"},
    {"role": "user"},
    {"temperature": Raw("1" + "0" * 400)},
    ["x"] * 3000,
    list(range(5000)),
    nested(40),
    nested(150),
    nested(255),  # the deepest a body may be
    nested(500),
    Raw("[" * 5000 + "]" * 5000),
]
VALUES = SCALARS + STRINGS + CONTAINERS

USER = [{"role": "user", "content": "hi"}]
OPTIONS = {"num_predict": 4, "seed": 1}
# Each endpoint with a body it answers, and the fields to spoil (a.b: a field inside).
ENDPOINTS: list[tuple[str, str, dict[str, Any], list[str]]] = [
    ("POST", "/api/generate", {"model": MODEL, "prompt": "hi", "options": OPTIONS, "stream": False},
     ["model", "prompt", "system", "options", "options.temperature", "options.num_predict",
      "options.num_ctx", "options.top_k", "options.top_p", "options.seed", "options.stop",
      "options.repeat_last_n", "options.min_p", "keep_alive", "context", "raw", "format",
      "stream", "images", "suffix", "template", "name"]),
    ("POST", "/api/chat", {"model": MODEL, "messages": USER, "options": OPTIONS, "stream": False},
     ["model", "messages", "messages.0", "messages.0.role", "messages.0.content",
      "messages.0.images", "messages.0.tool_calls", "messages.0.tool_name", "tools",
      "tool_choice", "format", "options", "options.temperature", "keep_alive", "stream"]),
    ("POST", "/api/embed", {"model": MODEL, "input": ["a cat", "a dog"]},
     ["model", "input", "input.0", "truncate", "dimensions", "options", "keep_alive"]),
    ("POST", "/api/embeddings", {"model": MODEL, "prompt": "a cat"},
     ["model", "prompt", "options", "keep_alive"]),
    ("POST", "/api/show", {"model": MODEL}, ["model", "name", "verbose"]),
    ("POST", "/api/create", {"model": "fuzz-made", "from": MODEL, "stream": False},
     ["model", "from", "system", "template", "parameters", "parameters.temperature",
      "parameters.stop", "messages", "license", "modelfile", "quantize", "files", "adapters",
      "stream"]),
    ("POST", "/api/copy", {"source": MODEL, "destination": "fuzz-copy"},
     ["source", "destination"]),
    ("DELETE", "/api/delete", {"model": "fuzz-copy"}, ["model"]),
    ("POST", "/api/pull", {"model": "hf.co/no-org/no-repo", "stream": False},
     ["model", "stream", "insecure"]),
    ("POST", "/v1/chat/completions", {"model": MODEL, "messages": USER, "max_tokens": 4},
     ["model", "messages", "messages.0", "messages.0.role", "messages.0.content",
      "messages.0.tool_calls", "messages.0.tool_call_id", "messages.0.name", "max_tokens",
      "max_completion_tokens", "temperature", "top_p", "seed", "stop", "n", "stream",
      "stream_options", "stream_options.include_usage", "tools", "tool_choice",
      "response_format", "response_format.type", "logprobs", "frequency_penalty",
      "presence_penalty", "top_k", "min_p", "repeat_penalty", "repeat_last_n", "functions"]),
    ("POST", "/v1/completions", {"model": MODEL, "prompt": "hi", "max_tokens": 4},
     ["model", "prompt", "max_tokens", "temperature", "suffix", "echo", "best_of", "stream",
      "stop", "seed", "response_format"]),
    ("POST", "/v1/embeddings", {"model": MODEL, "input": "a cat"},
     ["model", "input", "encoding_format", "dimensions"]),
]  # fmt: skip
# Fields with a shape of their own (a tool call, a tool, a format), spoiled inside too.
INNER: dict[str, tuple[Any, list[str]]] = {
    "messages.0.tool_calls": (
        [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": {"a": 1}}}],
        ["0", "0.function", "0.function.name", "0.function.arguments", "0.id"],
    ),
    "tools": (
        [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
        ["0", "0.type", "0.function", "0.function.name", "0.function.parameters",
         "0.function.description"],
    ),
    "response_format": (
        {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}},
        ["type", "json_schema", "json_schema.schema", "json_schema.schema.type",
         "json_schema.schema.properties"],
    ),
    "format": ({"type": "object"}, ["type", "properties", "required", "enum", "$ref"]),
}  # fmt: skip


def spoil(body: dict[str, Any], field: str, value: Any) -> None:
    """Set ``field`` (``a.b``, ``a.0``) of ``body`` to ``value``. The containers on the way
    are copied (the values are shared between cases) or made, of the kind the next name
    asks for (``0``: a list)."""
    names = field.split(".")
    node: Any = body
    for i, name in enumerate(names):
        key: Any = name
        if isinstance(node, list):
            if not node:
                node.append(None)
            key = min(int(name), len(node) - 1)
        if i == len(names) - 1:
            node[key] = value
            return
        child = node[key] if isinstance(node, list) else node.get(key)
        if names[i + 1].isdigit():
            child = list(child) if isinstance(child, list) else []
        else:
            child = dict(child) if isinstance(child, dict) else {}
        node[key] = child
        node = child


def arguments_text(value: Any) -> Any:
    """OpenAI's tool-call arguments are JSON inside a string: a hostile value, escaped."""
    return Raw(json.dumps(dump(value)))


@dataclass
class Case:
    method: str
    path: str
    body: bytes
    what: str


def cases(rng: random.Random) -> Iterator[Case]:
    """Endless cases from ``rng``: a good body with one to three fields spoiled, now and then
    a body of random JSON, or bytes that are not JSON."""
    while True:
        roll = rng.random()
        method, path, base, names = rng.choice(ENDPOINTS)
        if roll < 0.08:
            junk = rng.choice(
                [b"", b"{", b"[1, 2", b"\xff\xfe{}", b"\xed\xa0\x80", b"null", b"[]", b'"x"',
                 b"\xef\xbb\xbf{}", b"{}" * 1000, b'{"model": "tiny", "model": 5}',
                 b'{"model": "tiny", "prompt": "\\u0000"}', b"\x00" * 100]
            )  # fmt: skip
            if path != "/api/delete":  # a junk body may name the model under test
                yield Case(method, path, junk, f"bytes {junk[:20]!r}")
            continue
        if roll < 0.15:
            value = {"model": MODEL, rng.choice(names).split(".")[0]: rng.choice(VALUES)}
            yield Case(method, path, dump(value).encode(), f"random {dump(value)[:80]}")
            continue
        body = json.loads(json.dumps(base))
        spoiled = []
        for _ in range(rng.choice((1, 1, 2, 3))):
            field = rng.choice(names)
            if field in INNER and rng.random() < 0.5:
                shape, inside = INNER[field]
                spoil(body, field, json.loads(json.dumps(shape)))
                target = f"{field}.{rng.choice(inside)}"
                value = rng.choice(VALUES)
                if path.startswith("/v1") and target.endswith("arguments"):
                    value = arguments_text(value)  # a JSON text, as OpenAI's clients send
                spoil(body, target, value)
                spoiled.append(target)
                continue
            spoil(body, field, rng.choice(VALUES))
            spoiled.append(field)
        text = dump(body)
        yield Case(method, path, text.encode(), f"{', '.join(spoiled)}: {text[:160]}")


def rss(server: Server) -> int:
    """The server's resident memory, in bytes."""
    for line in Path(f"/proc/{server.proc.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, tiny_chat_model: Path) -> Iterator[Server]:
    home = tmp_path_factory.mktemp("fuzz-http-home")
    # Answers of a few tokens unless a request asks for more: the cases are about the input.
    create_model(home, MODEL, f"FROM {tiny_chat_model}\nPARAMETER num_predict 4\n")
    # No Hub: a pull of a well-formed name fails fast, without the network.
    env = {"HF_HUB_OFFLINE": "1", "HF_ENDPOINT": "http://127.0.0.1:9"}
    with serving(home, "--parallel", "2", "--max-queue", "32", env=env) as s:
        yield s


def normal_answer(server: Server) -> None:
    r = httpx.post(
        server.url + "/api/generate",
        json={"model": MODEL, "prompt": "hello", "stream": False, "options": OPTIONS},
        timeout=60,
    )
    assert r.status_code == 200 and r.json()["eval_count"] == 4, r.text


def send(client: httpx.Client, server: Server, case: Case) -> tuple[Case, int, str]:
    r = client.request(
        case.method,
        server.url + case.path,
        content=case.body,
        headers={"Content-Type": "application/json"},
        timeout=60,
    )
    return case, r.status_code, r.text


def test_hostile_bodies_never_get_a_500(server: Server) -> None:
    normal_answer(server)  # the model loaded: memory measured from here
    before = rss(server)
    peak = before
    rng = random.Random(SEED)
    stream = cases(rng)
    start = time.monotonic()
    done: list[tuple[Case, int, str]] = []
    with httpx.Client() as client, concurrent.futures.ThreadPoolExecutor(2) as pool:
        while len(done) < MAX_CASES and (
            len(done) < MIN_CASES or time.monotonic() - start < TIME_BUDGET
        ):
            batch = [next(stream) for _ in range(20)]
            done += pool.map(lambda c: send(client, server, c), batch)
            peak = max(peak, rss(server))
            normal_answer(server)
    print(f"{len(done)} cases in {time.monotonic() - start:.1f} s; statuses:", end=" ")
    print(sorted({s: sum(1 for _, t, _ in done if t == s) for _, s, _ in done}.items()))
    bad = [
        f"{status} {case.method} {case.path} ({case.what}): {text[:200]}"
        for case, status, text in done
        if status == 500 or "internal error" in text  # what a bug answers
    ]
    assert not bad, "\n".join(bad[:20])
    statuses = {status for _, status, _ in done}
    assert 200 in statuses and 400 in statuses, statuses  # both the good and the refused
    log = server.stderr
    assert "Traceback" not in log and "internal error" not in log, log[-3000:]
    assert peak - before < RSS_GROWTH, f"the server grew from {before} to {peak} bytes"
    normal_answer(server)


def test_the_http_layer_refuses_what_is_not_a_request(server: Server) -> None:
    """Methods, paths and framing a JSON API does not take: a 4xx each, and the server goes
    on."""
    import socket

    for method, path in (
        ("GET", "/api/generate"),
        ("PUT", "/api/chat"),
        ("POST", "/api/tags"),
        ("DELETE", "/v1/models"),
        ("GET", "/v1/models/..%2F..%2Fetc%2Fpasswd"),
        ("GET", "/v1/models/%ED%A0%80"),
        ("GET", "/api/../../etc/passwd"),
        ("POST", "/nowhere"),
    ):
        r = httpx.request(method, server.url + path, content=b"{}", timeout=30)
        assert 400 <= r.status_code < 500, (method, path, r.status_code, r.text)
    for raw in (
        b"POST /api/generate HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: -1\r\n\r\n",
        b"POST /api/generate HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 99999999999999999999"
        b"\r\n\r\n",
        b"POST /api/generate HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"zz\r\n",
        b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n" + b"X-Long: " + b"a" * 70_000 + b"\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",  # a TLS hello
    ):
        with socket.create_connection(("127.0.0.1", server.port), timeout=30) as s:
            s.sendall(raw)
            s.settimeout(30)
            answer = b""
            while chunk := s.recv(65536):
                answer += chunk
                if b"\r\n\r\n" in answer:
                    break
            status = answer.split(b" ", 2)[1] if answer.startswith(b"HTTP/") else b"closed"
            assert not status.startswith(b"5"), (raw[:60], answer[:200])
    normal_answer(server)
    assert "Traceback" not in server.stderr, server.stderr[-3000:]
