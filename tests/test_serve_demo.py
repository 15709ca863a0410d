"""``localrun serve`` on the demo model: many users at once, and a full queue.

The demo model decodes at tens of tokens a second here, so requests overlap for real.
"""

from __future__ import annotations

import concurrent.futures
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import ollama
import pytest

from tests.served import Server, serving, wait_for

pytestmark = pytest.mark.e2e

# Counting: every next token wins by a wide margin. Requests that join the engine at different
# steps see batches of other sizes, and from 4 rows llama.cpp's CPU kernels round differently
# (logits move by up to ~3): a prompt with close calls could then branch (docs/performance.md).
PROMPT = "1, 2, 3, 4, 5, 6, 7, 8,"
TOKENS = 24


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("serve-demo-home")


@pytest.fixture(scope="module")
def server(home: Path) -> Iterator[Server]:
    with serving(home, "--parallel", "8", "--threads", "2", "--model", "demo") as s:
        yield s


def _answer(server: Server) -> str:
    r = ollama.Client(host=server.url).generate(
        model="demo", prompt=PROMPT, options={"num_predict": TOKENS, "seed": 1, "temperature": 0}
    )
    assert r.eval_count == TOKENS and r.response is not None
    return r.response


def _streamed(server: Server) -> tuple[str, float, float]:
    """One streamed answer: its text, and when its first and last chunks came."""
    parts, first = [], 0.0
    for part in ollama.Client(host=server.url).generate(
        model="demo", prompt=PROMPT, stream=True,
        options={"num_predict": TOKENS, "seed": 1, "temperature": 0},
    ):  # fmt: skip
        first = first or time.monotonic()
        parts.append(part.response or "")
    return "".join(parts), first, time.monotonic()


def test_eight_concurrent_streams_share_one_engine(server: Server) -> None:
    """Eight answers at once are decoded together: every one has begun before any ends (an
    order, not a speed: the machine's load cannot make it flaky), and each is the text one
    answer alone gives."""
    alone = _answer(server)  # also warms: the prompt's cells are kept for later users
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        done = list(pool.map(lambda _: _streamed(server), range(8)))
    texts = [text for text, _, _ in done]
    assert len(set(texts)) == 1 and texts[0] == alone, texts
    last_start = max(first for _, first, _ in done)
    first_end = min(end for _, _, end in done)
    assert last_start < first_end, "an answer ended before another began: not decoded together"


def test_a_burst_past_the_queue_gets_503_with_retry_after(home: Path) -> None:
    with serving(home, "--parallel", "1", "--max-queue", "1", "--threads", "2") as s:
        body = {"model": "demo", "prompt": "Once", "options": {"num_predict": 400, "seed": 1}}
        with httpx.stream("POST", s.url + "/api/generate", json=body, timeout=120) as first:
            lines = first.iter_lines()  # kept: dropping the iterator closes the connection
            next(lines)  # running
            with httpx.stream("POST", s.url + "/api/generate", json=body, timeout=120) as queued:
                # The second waits in the queue: it holds the one place there.
                wait_for(
                    lambda: httpx.get(s.url + "/api/ps").json()["models"][0]["active"] == 2,
                    what="the second request's arrival",
                )
                third = httpx.post(s.url + "/api/generate", json=body, timeout=60)
                assert third.status_code == 503
                assert int(third.headers["retry-after"]) >= 1
                assert "Retry-After" in third.json()["error"]
                assert queued.status_code == 200


def test_a_client_that_disconnects_frees_its_sequence(server: Server) -> None:
    body = {"model": "demo", "prompt": "Tell a long story:", "options": {"num_predict": 2000}}

    def active() -> int:
        return int(httpx.get(server.url + "/api/ps").json()["models"][0]["active"])

    with httpx.stream("POST", server.url + "/api/generate", json=body, timeout=120) as r:
        lines = r.iter_lines()
        next(lines)
        next(lines)
        assert active() == 1
        # Leaving the block closes the connection mid-answer.
    wait_for(lambda: active() == 0, what="the disconnected request's release")


def test_a_non_streaming_client_that_disconnects_is_cancelled_too(server: Server) -> None:
    # Greedy, the demo model counts on to the token limit (a story could end in 3 s, and did
    # on a faster CPU): 2,000 tokens take far longer than the client waits.
    body = {
        "model": "demo",
        "prompt": "1, 2, 3, 4, 5, 6, 7, 8,",
        "stream": False,
        "options": {"num_predict": 2000, "temperature": 0},
    }
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(server.url + "/api/generate", json=body, timeout=3)
    wait_for(
        lambda: httpx.get(server.url + "/api/ps").json()["models"][0]["active"] == 0,
        what="the abandoned request's cancellation",
    )


def test_a_model_that_is_answering_is_not_unloaded_for_another(
    home: Path, tiny_chat_model: Path
) -> None:
    """With room for one model, a request for another waits for the first to finish (here,
    to be cancelled: an answer of 1,000 tokens outlasts the check on any CPU; one of 120
    ended within its 2 s on an idle one)."""
    import threading

    from tests.served import create_model

    create_model(home, "tiny", f"FROM {tiny_chat_model}\n")
    with serving(home, "--max-loaded", "1", "--parallel", "2", "--threads", "2") as s:
        client = ollama.Client(host=s.url)
        body = {"model": "demo", "prompt": "Once", "options": {"num_predict": 1000, "seed": 1}}
        other: list[str] = []
        with httpx.stream("POST", s.url + "/api/generate", json=body, timeout=120) as first:
            lines = first.iter_lines()
            next(lines)  # demo is answering
            waiter = threading.Thread(
                target=lambda: other.append(
                    client.generate(model="tiny", prompt="x", options={"num_predict": 2}).response
                    or ""
                )
            )
            waiter.start()
            waiter.join(2.0)
            assert waiter.is_alive() and not other  # tiny waits: demo is busy
            (demo,) = client.ps().models
            assert demo.model == "demo"
        # Leaving the stream cancels demo's answer: its model is free to give way.
        waiter.join(60)
        assert other and [m.model for m in client.ps().models] == ["tiny"]  # LRU gave way
