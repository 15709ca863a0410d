"""The server's safety defaults, against a real ``localrun serve`` on 127.0.0.1."""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import ollama
import openai
import pytest

from localrun.server.config import host_and_port, is_loopback
from localrun.server.fields import keep_alive
from tests.served import LOCALRUN, Background, Server, create_model, free_port, serving

KEY = "s3cret-key"


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory, tiny_chat_model: Path) -> Path:
    home = tmp_path_factory.mktemp("guard-home")
    create_model(home, "tiny", f"FROM {tiny_chat_model}\n")
    return home


@pytest.fixture(scope="module")
def server(home: Path) -> Iterator[Server]:
    with serving(home, "--max-body", "4096", "--allow-origin", "http://good.example") as s:
        yield s


def test_a_host_header_naming_another_server_is_refused(server: Server) -> None:
    # DNS rebinding: a page at attacker.example resolves its name to 127.0.0.1.
    r = httpx.get(server.url + "/api/tags", headers={"Host": "attacker.example"})
    assert r.status_code == 403 and "attacker.example" in r.json()["error"]
    for host in ("localhost", f"127.0.0.1:{server.port}", f"localhost:{server.port}"):
        assert httpx.get(server.url + "/api/tags", headers={"Host": host}).status_code == 200


def test_allow_host_extends_the_list(home: Path) -> None:
    with serving(home, "--allow-host", "my.box") as s:
        assert httpx.get(s.url + "/", headers={"Host": "my.box:80"}).status_code == 200
        assert httpx.get(s.url + "/", headers={"Host": "other.box"}).status_code == 403


def test_browser_origins_are_refused_unless_allowed(server: Server) -> None:
    r = httpx.post(
        server.url + "/api/generate",
        json={"model": "tiny", "prompt": "x"},
        headers={"Origin": "https://evil.example"},
    )
    assert r.status_code == 403 and "--allow-origin" in r.json()["error"]
    preflight = httpx.options(
        server.url + "/api/chat",
        headers={"Origin": "http://good.example", "Access-Control-Request-Method": "POST"},
    )
    assert preflight.status_code == 200
    assert preflight.headers["access-control-allow-origin"] == "http://good.example"
    r = httpx.get(server.url + "/api/tags", headers={"Origin": "http://good.example"})
    assert r.status_code == 200
    assert r.headers["access-control-allow-origin"] == "http://good.example"


def test_a_body_over_the_limit_is_413(server: Server) -> None:
    big = {"model": "tiny", "prompt": "x" * 10_000}
    r = httpx.post(server.url + "/api/generate", json=big)
    assert r.status_code == 413 and "--max-body" in r.json()["error"]

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted as it arrives
        yield b'{"model": "tiny", "prompt": "'
        for _ in range(20):
            yield b"x" * 1000
        yield b'"}'

    r = httpx.post(server.url + "/api/generate", content=chunks())
    assert r.status_code == 413
    r = httpx.post(server.url + "/v1/completions", json=big)
    assert r.status_code == 413 and r.json()["error"]["message"]
    assert httpx.get(server.url + "/").status_code == 200  # and the server goes on


def test_an_api_key_is_needed_by_every_request(home: Path) -> None:
    with serving(home, env={"LOCALRUN_API_KEY": KEY}) as s:
        r = httpx.get(s.url + "/api/tags")
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
        wrong = httpx.get(s.url + "/api/tags", headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401
        assert ollama.Client(host=s.url, headers={"Authorization": f"Bearer {KEY}"}).list()
        oai = openai.OpenAI(base_url=s.url + "/v1", api_key=KEY, max_retries=0)
        assert "tiny" in [m.id for m in oai.models.list()]  # with the key, the list comes
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=s.url + "/v1", api_key="wrong", max_retries=0).models.list()


def _serve_fails(home: Path, *args: str, env: dict[str, str] | None = None) -> str:
    full_env = {**os.environ, "LOCALRUN_HOME": str(home), **(env or {})}
    full_env.pop("LOCALRUN_API_KEY", None)
    proc = subprocess.run(
        [LOCALRUN, "serve", *args], capture_output=True, text=True, env=full_env, timeout=120
    )
    assert proc.returncode != 0
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr, proc.stderr
    return proc.stderr


def test_a_public_address_without_a_key_refuses_to_start(home: Path) -> None:
    # Nothing is bound: the check comes first.
    err = _serve_fails(home, "--host", "0.0.0.0", "--port", str(free_port()))
    assert "--api-key" in err and "0.0.0.0" in err


def test_host_takes_localrun_hosts_forms(home: Path) -> None:
    """``--host 127.0.0.1:PORT`` (as one types OLLAMA_HOST) listens there, on loopback: it was
    once read as a host named "127.0.0.1:PORT", not loopback, and refused without a key."""
    err = _serve_fails(home, "--host", "0.0.0.0:8080")
    assert "serving on 0.0.0.0 would" in err
    port = free_port()
    server = Background(home, "serve", "--host", f"127.0.0.1:{port}")
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and server.proc.poll() is None:
            with contextlib.suppress(httpx.HTTPError):
                assert httpx.get(f"http://127.0.0.1:{port}/api/version", timeout=5).is_success
                break
            time.sleep(0.1)
        else:
            raise AssertionError(f"serve did not answer on {port}: {server.stderr}")
    finally:
        server.stop()


def test_a_port_in_use_and_a_bad_host_are_one_line(server: Server, home: Path) -> None:
    err = _serve_fails(home, "--port", str(server.port))
    assert f"port {server.port}" in err and "in use" in err
    err = _serve_fails(home, "--host", "no-such-host.invalid", "--api-key", KEY)
    assert "no-such-host.invalid" in err


def test_a_missing_model_to_preload_is_one_line(home: Path) -> None:
    err = _serve_fails(home, "--port", str(free_port()), "--model", "no-such-model")
    assert "no-such-model" in err and "localrun pull" in err


def test_keep_alive_durations() -> None:
    assert keep_alive("5m") == 300 and keep_alive("1h30m") == 5400 and keep_alive("10s") == 10
    assert keep_alive(0) == 0 and keep_alive("-1") == -1 and keep_alive("2.5") == 2.5
    assert keep_alive(None) is None and keep_alive("500ms") == 0.5
    for bad in ("soon", "5x", True, "m"):
        with pytest.raises(Exception, match="keep_alive"):
            keep_alive(bad)


def test_hosts_and_addresses() -> None:
    assert host_and_port(None) == ("127.0.0.1", 11434)
    assert host_and_port("0.0.0.0:8080") == ("0.0.0.0", 8080)
    assert host_and_port("http://example.com:99/") == ("example.com", 99)
    assert host_and_port("[::1]:7") == ("::1", 7)
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.2")


def test_model_management_is_off_past_loopback_unless_allowed() -> None:
    """In-process (tests bind 127.0.0.1 only): the app as a 0.0.0.0 server would run it."""
    import asyncio

    from localrun.server.app import create_app
    from localrun.server.config import ServeConfig

    async def calls(config: ServeConfig) -> list[int]:
        transport = httpx.ASGITransport(app=create_app(config))
        auth = {"Authorization": f"Bearer {KEY}", "Host": "0.0.0.0"}
        async with httpx.AsyncClient(transport=transport, base_url="http://0.0.0.0") as c:
            return [
                (await c.post("/api/pull", json={"model": "hf.co/a/b"}, headers=auth)).status_code,
                (
                    await c.post(
                        "/api/copy", json={"source": "a", "destination": "b"}, headers=auth
                    )
                ).status_code,
                (
                    await c.request("DELETE", "/api/delete", json={"model": "a"}, headers=auth)
                ).status_code,
                (
                    await c.post("/api/create", json={"model": "a", "from": "b"}, headers=auth)
                ).status_code,
            ]

    public = ServeConfig(host="0.0.0.0", api_key=KEY)
    assert asyncio.run(calls(public)) == [403, 403, 403, 403]
    allowed = ServeConfig(host="0.0.0.0", api_key=KEY, allow_admin=True)
    assert 403 not in asyncio.run(calls(allowed))


def test_a_bug_is_a_500_with_one_line_and_the_server_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    import asyncio

    from localrun.server.app import create_app
    from localrun.server.config import ServeConfig
    from localrun.server.pool import ModelPool

    class Broken(ModelPool):
        async def acquire(self, name: str, num_ctx: int | None) -> object:  # type: ignore[override]
            raise RuntimeError("a bug")

    config = ServeConfig()

    async def calls() -> list[httpx.Response]:
        app = create_app(config, Broken(config))
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as c:
            body = {"model": "any", "prompt": "x"}
            return [await c.post("/api/generate", json=body), await c.get("/api/version")]

    broken, fine = asyncio.run(calls())
    assert broken.status_code == 500 and "internal error: a bug" in broken.json()["error"]
    assert fine.status_code == 200
    assert "Traceback" not in caplog.text and "a bug" in caplog.text


def test_a_request_head_that_never_ends_is_cut_off() -> None:
    """A client that sends a header line a second and never ends them (slowloris) held its
    connection for ever: uvicorn has no timer on a request's head. Here, uvicorn as localrun
    configures it, with a head deadline short enough for a test."""
    import asyncio
    import socket
    import threading
    import time
    from typing import Any

    import uvicorn

    from localrun.server.config import ServeConfig
    from localrun.server.run import bind, uvicorn_config

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        await asyncio.sleep(1.0)  # an answer slower than the head deadline: never cut
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    config = ServeConfig(port=free_port())
    sock = bind(config)
    server = uvicorn.Server(uvicorn_config(app, head_timeout=0.5))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.05)
        url = f"http://127.0.0.1:{config.port}"
        with httpx.Client() as c:  # one kept-alive connection, two answers slower than 0.5 s
            assert c.get(url + "/").text == "ok" and c.get(url + "/").text == "ok"
        with socket.create_connection(("127.0.0.1", config.port), timeout=10) as s:
            s.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n")
            start = time.monotonic()
            closed = False
            for i in range(100):  # a header line every 0.1 s, never the blank line
                try:
                    s.sendall(b"X-Slow-%d: 1\r\n" % i)
                except OSError:
                    closed = True
                    break
                s.settimeout(0.1)
                try:
                    if s.recv(100) == b"":
                        closed = True
                        break
                except TimeoutError:
                    continue
            assert closed and time.monotonic() - start < 5, "the head that never ends was kept"
        with socket.create_connection(("127.0.0.1", config.port), timeout=10) as s:
            s.settimeout(10)  # a connection that sends nothing at all is closed too
            assert s.recv(100) == b""
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()
