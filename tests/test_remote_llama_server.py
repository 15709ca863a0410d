"""A remote engine that is not localrun: llama.cpp's own ``llama-server``, on 127.0.0.1.

Built once from the pinned llama-cpp-python sdist's llama.cpp (as the benchmarks build it),
kept under ``~/.cache/localrun-tests`` so that a fresh clone does not build it again, and run
on the demo model. The client side is the real CLI: ``run --endpoint``, a registered remote's
one-shot answer, ``--batch``, ``bench`` and ``show``.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.proc import run
from tests.served import free_port

TOOLS = Path.home() / ".cache" / "localrun-tests"


@pytest.fixture(scope="module")
def llama_server() -> Iterator[str]:
    """The URL of a llama-server serving the demo model (2 sequences at once)."""
    if shutil.which("cmake") is None:
        reason = "cmake is needed to build llama.cpp's llama-server"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    from benchmarks.llama_tools import build_tool
    from localrun.models.demo import demo_model_path

    binary = build_tool("llama-server", cache=TOOLS)
    port = free_port()
    version = importlib.metadata.version("llama-cpp-python")
    server = subprocess.Popen(
        [str(binary), "-m", str(demo_model_path()), "--host", "127.0.0.1", "--port", str(port),
         "-c", "4096", "-np", "2", "-t", "2", "--alias", "gemma"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "LD_LIBRARY_PATH": str(binary.parent)},
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            assert server.poll() is None, f"llama-server {version} exited {server.returncode}"
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(url + "/health", timeout=5).status_code == 200:
                    break
            assert time.monotonic() < deadline, "llama-server did not get ready in 180 s"
            time.sleep(0.2)
        yield url
    finally:
        server.terminate()
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


@pytest.fixture
def home(localrun_home: Path) -> Path:
    return localrun_home


def test_llama_server_answers_run_endpoint_with_statistics(home: Path, llama_server: str) -> None:
    done = run(home, "run", "--endpoint", llama_server, "gemma", "--format", "json",
               "--max-tokens", "16", "--temperature", "0", "Why is the sky blue?")  # fmt: skip
    assert done.code == 0, done.stderr
    answer = json.loads(done.stdout)
    stats = answer["stats"]
    assert answer["mode"] == "remote" and answer["response"].strip()
    assert stats["completion_tokens"] == 16 and stats["finish_reason"] == "length"
    assert stats["prompt_tokens"] > 0 and stats["ttft_s"] > 0 and stats["decode_tokens_per_s"] > 0
    # Greedy is greedy: the same answer twice.
    again = run(home, "run", "--endpoint", llama_server, "gemma", "--format", "json",
                "--max-tokens", "16", "--temperature", "0", "Why is the sky blue?")  # fmt: skip
    assert json.loads(again.stdout)["response"] == answer["response"]


def test_llama_server_as_a_registered_remote(home: Path, llama_server: str) -> None:
    assert run(home, "remote", "add", "ls", llama_server, "--model", "gemma").code == 0
    shown = run(home, "show", "ls", "--json")
    assert shown.code == 0, shown.stderr
    assert json.loads(shown.stdout)["id"] == "gemma"
    jobs = home / "jobs.jsonl"
    lines = [{"prompt": f"Count to {n}.", "max_tokens": 8, "temperature": 0} for n in (3, 4, 5)]
    jobs.write_text("".join(json.dumps(line) + "\n" for line in lines))
    batch = run(home, "run", "ls", "--batch", str(jobs), "--parallel", "2")
    assert batch.code == 0, batch.stderr
    results = [json.loads(line) for line in batch.stdout.splitlines()]
    assert len(results) == 3 and all(r["stats"]["completion_tokens"] == 8 for r in results)
    bench = run(home, "bench", "ls", "--parallel", "1,2", "-n", "8", "--json", timeout=300)
    assert bench.code == 0, bench.stderr
    rows = json.loads(bench.stdout)["loads"]
    assert [r["streams"] for r in rows] == [1, 2] and all(r["errors"] == 0 for r in rows)
    assert all(r["aggregate_tokens_per_s"] > 0 for r in rows)
