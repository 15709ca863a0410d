"""``GET /metrics`` (``serve --metrics``), read with ``prometheus_client``'s own parser.

In-process: the app over a scripted pool (requests and answers counted as their responses
report them, the switch, the key), and a real batching engine over a scripted model (what it
holds, read while its thread is stopped mid-step). Then one real ``localrun serve --metrics``
on the suite's tiny model.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import httpx
import prometheus_client
import pytest
from prometheus_client.parser import text_string_to_metric_families

from localrun.backend import SamplingParams, StepModel
from localrun.engine.batch import BatchEngine, Job
from localrun.engine.types import Event, Finished, FirstToken, Stats, TextDelta
from localrun.server.app import create_app
from localrun.server.config import ServeConfig
from localrun.server.metrics import Metrics
from localrun.server.pool import ModelPool
from tests.fakeserve import FakeEngine, FakeLoaded, FakePool, FakeRunner, lines_of
from tests.scripted import ScriptedModel
from tests.served import create_model, serving

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parsed(text: str) -> Samples:
    """Every sample of the page, by its name and labels (the parser refuses a bad page)."""
    found: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            key = (s.name, frozenset(s.labels.items()))
            assert key not in found, f"{key} twice on the page"
            found[key] = s.value
    return found


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def answer() -> list[Event | BaseException]:
    stats = Stats(prompt_tokens=9, prompt_evaluated=4, completion_tokens=3, ttft_s=0.2,
                  decode_s=0.1, decode_tokens_per_s=20.0, total_s=0.3)  # fmt: skip
    return [FirstToken(0.2), TextDelta("a", 1), TextDelta("b", 2), TextDelta("c", 3),
            Finished(stats)]  # fmt: skip


def scripted_app(config: ServeConfig) -> Any:
    runner = FakeRunner("tiny", FakeLoaded(ScriptedModel([], n_ctx=256)), FakeEngine(answer))
    return create_app(config, FakePool(config, runner))


Call = tuple[str, str, dict[str, Any] | None]  # method, path, JSON body


async def calls(app: Any, *requests: Call) -> list[httpx.Response]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
        return [await client.request(m, path, json=body) for m, path, body in requests]


HI = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}]}


def test_the_page_counts_requests_and_answers_as_their_responses_report_them() -> None:
    whole, streamed, openai, refused, unknown, page = asyncio.run(
        calls(
            scripted_app(ServeConfig(metrics=True)),
            ("POST", "/api/chat", {**HI, "stream": False}),
            ("POST", "/api/chat", HI),
            ("POST", "/v1/chat/completions", HI),
            ("POST", "/api/chat", {"model": "tiny", "messages": "hi"}),
            ("GET", "/no/such/path", None),
            ("GET", "/metrics", None),
        )
    )
    assert [r.status_code for r in (whole, streamed, openai, refused, unknown)] == [
        200, 200, 200, 400, 404]  # fmt: skip
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/plain")
    samples = parsed(page.text)
    last = lines_of(streamed)[-1]
    usage = openai.json()["usage"]
    prompt = whole.json()["prompt_eval_count"] + last["prompt_eval_count"] + usage["prompt_tokens"]
    generated = whole.json()["eval_count"] + last["eval_count"] + usage["completion_tokens"]
    assert value(samples, "localrun_prompt_tokens_total", model="tiny") == prompt == 27
    assert value(samples, "localrun_generated_tokens_total", model="tiny") == generated == 9
    assert value(samples, "localrun_prompt_tokens_cached_total", model="tiny") == 3 * (9 - 4)
    assert value(samples, "localrun_answers_total", model="tiny", finish_reason="stop") == 3
    ttft = value(samples, "localrun_time_to_first_token_seconds_count", model="tiny")
    rate = value(samples, "localrun_decode_tokens_per_second_count", model="tiny")
    assert ttft == rate == 3
    assert value(samples, "localrun_time_to_first_token_seconds_sum", model="tiny") == (
        pytest.approx(0.6)
    )
    # Each answer's 20 tokens/s, in the bucket of 24 and not in that of 16.
    buckets = "localrun_decode_tokens_per_second_bucket"
    assert value(samples, buckets, model="tiny", le="16.0") == 0
    assert value(samples, buckets, model="tiny", le="24.0") == 3

    requests = "localrun_http_requests_total"
    assert value(samples, requests, path="/api/chat", status="200") == 2
    assert value(samples, requests, path="/api/chat", status="400") == 1
    assert value(samples, requests, path="/v1/chat/completions", status="200") == 1
    assert value(samples, requests, path="other", status="404") == 1
    # No model is held by the pool here: the engine's gauges have no series, the count is 0.
    assert value(samples, "localrun_models_loaded") == 0
    assert not any(name == "localrun_requests_running" for name, _ in samples)


def test_metrics_are_off_by_default_and_behind_the_key() -> None:
    (off,) = asyncio.run(calls(scripted_app(ServeConfig()), ("GET", "/metrics", None)))
    assert off.status_code == 404

    keyed = scripted_app(ServeConfig(metrics=True, api_key="sesame"))

    async def both() -> tuple[httpx.Response, httpx.Response]:
        transport = httpx.ASGITransport(app=keyed)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as c:
            refused = await c.get("/metrics")
            page = await c.get("/metrics", headers={"Authorization": "Bearer sesame"})
        return refused, page

    refused, page = asyncio.run(both())
    assert refused.status_code == 401 and page.status_code == 200
    # The refusal is counted, under the route it asked for.
    requests = "localrun_http_requests_total"
    assert value(parsed(page.text), requests, path="/metrics", status="401") == 1


def test_two_apps_in_one_process_count_apart() -> None:
    first, second = scripted_app(ServeConfig(metrics=True)), scripted_app(ServeConfig(metrics=True))
    body = {**HI, "stream": False}
    asyncio.run(calls(first, ("POST", "/api/chat", body), ("POST", "/api/chat", body)))
    (page,) = asyncio.run(calls(second, ("GET", "/metrics", None)))
    answers = value(parsed(page.text), "localrun_answers_total", model="tiny", finish_reason="stop")
    assert answers == 0


@pytest.mark.parametrize(("args", "on"), [([], False), (["--metrics"], True)])
def test_serve_metrics_turns_it_on(
    args: list[str], on: bool, cli: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from localrun.server import run

    given: list[ServeConfig] = []
    monkeypatch.setattr(run, "serve", lambda config, preload=(): given.append(config))
    assert cli(["serve", *args]).exit_code == 0
    assert [c.metrics for c in given] == [on]


class HeldRunner:
    """What the collector reads of a pool's runner: its name, engine and request count."""

    def __init__(self, engine: BatchEngine, active: int) -> None:
        self.name, self.engine, self.active = "scripted", engine, active


class OnePool:
    def __init__(self, runner: HeldRunner) -> None:
        self.runner = runner

    def runners(self) -> list[HeldRunner]:
        return [self.runner]


@pytest.fixture
def held() -> Iterator[tuple[ScriptedModel, BatchEngine]]:
    model = ScriptedModel([b"x"], n_ctx=256, n_seq=2, end=False)
    model.hold()
    engine = BatchEngine(cast(StepModel, model))
    try:
        yield model, engine
    finally:
        model.go()
        engine.close()
        model.close()


def test_the_engine_gauges_are_what_the_engine_holds_mid_step(
    held: tuple[ScriptedModel, BatchEngine],
) -> None:
    model, engine = held
    prompts = [[5] * 20 + [i] for i in range(3)]
    streams = [engine.submit(Job(p, SamplingParams(), max_tokens=50)) for p in prompts]
    model.step()  # one step done; the engine thread waits at its next
    metrics = Metrics(cast(ModelPool, OnePool(HeldRunner(engine, active=3))))
    samples = parsed(prometheus_client.generate_latest(metrics.registry).decode())
    # Two sequences run (its parallel), the third waits for a slot.
    assert value(samples, "localrun_requests_running", model="scripted") == 2
    assert value(samples, "localrun_requests_waiting", model="scripted") == 1
    assert value(samples, "localrun_parallel_sequences", model="scripted") == 2
    # Each running prompt's 21 cells and what it has sampled (at most a token each so far).
    used = value(samples, "localrun_kv_cells_used", model="scripted")
    assert 2 * 21 <= used <= 2 * 23
    assert value(samples, "localrun_kv_cells_total", model="scripted") == 256
    assert value(samples, "localrun_models_loaded") == 1
    model.go()
    for stream in streams:
        assert sum(1 for e in stream if isinstance(e, Finished)) == 1


def test_scraping_while_the_engine_runs_never_fails() -> None:
    """The collector reads the engine's lists as its thread changes them: admitting,
    finishing and keeping cells, hundreds of times a second."""
    # Room for the long answers to run until cancelled, however fast this thread is next
    # to the engine's (with 8,192 cells they ended first on a busy machine).
    model = ScriptedModel([b"x"], n_ctx=4_000_000, n_seq=4, end=False)
    engine = BatchEngine(cast(StepModel, model))
    try:
        metrics = Metrics(cast(ModelPool, OnePool(HeldRunner(engine, active=0))))
        # Short answers come and go; every fourth runs on until it is cancelled.
        jobs = [Job([5] * 10 + [i % 7] * (i % 5), SamplingParams(), max_tokens=3 + i % 20)
                if i % 4 else Job([6] * 12, SamplingParams())
                for i in range(40)]  # fmt: skip
        streams = [engine.submit(job) for job in jobs]
        busy = 0  # scrapes that found sequences running
        deadline = time.monotonic() + 60
        while busy < 100 and time.monotonic() < deadline:
            samples = parsed(prometheus_client.generate_latest(metrics.registry).decode())
            assert 0 <= value(samples, "localrun_kv_cells_used", model="scripted") <= 4_000_000
            running = value(samples, "localrun_requests_running", model="scripted")
            assert 0 <= running <= 4
            busy += running > 0
        assert busy == 100
        for stream in streams:
            stream.cancel()
        for stream in streams:
            assert sum(1 for e in stream if isinstance(e, Finished)) == 1
    finally:
        engine.close()
        model.close()


# -- a real server ------------------------------------------------------------------------


def ask_and_scrape(url: str) -> tuple[list[dict[str, Any]], str]:
    """Three answers (whole, streamed, OpenAI's streamed with its usage), a 400 and a 401,
    then the page: each answer's own counts, and the page's text."""
    key = {"Authorization": "Bearer sesame"}
    with httpx.Client(base_url=url, headers=key, timeout=120) as client:
        ask = {"model": "tiny", "prompt": "Say hi to the world", "options": {"num_predict": 8}}
        whole = client.post("/api/generate", json={**ask, "stream": False}).json()
        # The same prompt again, streamed: its prefix is found in the cache.
        streamed = client.post("/api/generate", json=ask)
        last = json.loads(streamed.text.splitlines()[-1])
        usage_too = {"include_usage": True}
        chat = client.post(
            "/v1/chat/completions",
            json={**HI, "max_tokens": 8, "stream": True, "stream_options": usage_too},
        )
        lines = chat.text.splitlines()
        chunks = [json.loads(line[6:]) for line in lines if line.startswith("data: {")]
        usage = chunks[-1]["usage"]
        refused = client.post("/api/chat", json={"model": "tiny", "messages": "hi"})
        assert refused.status_code == 400
        assert httpx.get(url + "/metrics").status_code == 401
        page = client.get("/metrics")
        assert page.status_code == 200
    counts = [
        {"prompt": whole["prompt_eval_count"], "generated": whole["eval_count"]},
        {"prompt": last["prompt_eval_count"], "generated": last["eval_count"]},
        {"prompt": usage["prompt_tokens"], "generated": usage["completion_tokens"]},
    ]
    return counts, page.text


@pytest.mark.slow
def test_a_real_server_counts_what_it_answered(localrun_home: Path, tiny_chat_model: Path) -> None:
    create_model(localrun_home, "tiny", f"FROM {tiny_chat_model}\nPARAMETER temperature 0\n")
    args = ("--metrics", "--api-key", "sesame", "--model", "tiny", "--threads", "2")
    with serving(localrun_home, *args) as server:
        answers, text = ask_and_scrape(server.url)
    samples = parsed(text)
    assert all(a["generated"] > 1 for a in answers)  # each has a decode rate
    prompt = sum(a["prompt"] for a in answers)
    assert value(samples, "localrun_prompt_tokens_total", model="tiny") == prompt
    generated = sum(a["generated"] for a in answers)
    assert value(samples, "localrun_generated_tokens_total", model="tiny") == generated
    assert 0 < value(samples, "localrun_prompt_tokens_cached_total", model="tiny") < prompt
    for histogram in ("localrun_time_to_first_token_seconds", "localrun_decode_tokens_per_second"):
        assert value(samples, histogram + "_count", model="tiny") == 3
    requests = "localrun_http_requests_total"
    assert value(samples, requests, path="/api/generate", status="200") == 2
    assert value(samples, requests, path="/v1/chat/completions", status="200") == 1
    assert value(samples, requests, path="/api/chat", status="400") == 1
    assert value(samples, requests, path="/metrics", status="401") == 1
    # Loaded and idle: its finished answers' cells are kept for prompts that begin alike.
    assert value(samples, "localrun_models_loaded") == 1
    assert value(samples, "localrun_kv_cells_used", model="tiny") > 0
    assert value(samples, "localrun_kv_cells_total", model="tiny") > 0
    assert value(samples, "localrun_requests_running", model="tiny") == 0
    assert value(samples, "localrun_requests_waiting", model="tiny") == 0
