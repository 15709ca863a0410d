"""``GET /metrics`` (``serve --metrics``): the server's counters in Prometheus' text format.

Held and written by ``prometheus_client``, the reference implementation of the format (its
parser is what the tests read the page with), in a registry of each app's own: two apps in
one process (tests) never share a counter. Names follow llama-server's (``llamacpp:``) and
vLLM's (``vllm:``) where they have one, under ``localrun_``, with the model as a label.

Three sources: a middleware counts every HTTP request by route and status; each finished
answer adds its statistics (:func:`answered`, called from :mod:`.answer`); and what the
engines hold now (sequences running, requests waiting, KV cells) is read when the page is
asked for, by :class:`EngineCollector`.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable, Iterator

import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Histogram, ProcessCollector
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.requests import Request
from starlette.responses import Response

from localrun.engine.types import Stats
from localrun.server.guard import ASGIApp, Message, Receive, Scope, Send
from localrun.server.pool import ModelPool, Runner

# From a GPU's tens of milliseconds to a CPU reading a long prompt for minutes.
TTFT_BUCKETS = (0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 80, 160, 320)
# From a large model on a CPU (a few tokens a second) to a small one on a GPU (hundreds).
RATE_BUCKETS = (1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 1024, 2048)

# Each pool's metrics, for the answers that finish on it (the pool is what an answer knows).
_by_pool: weakref.WeakKeyDictionary[ModelPool, Metrics] = weakref.WeakKeyDictionary()


class Metrics:
    """One server's metrics: its registry, the counters it adds to, and the page."""

    def __init__(self, pool: ModelPool) -> None:
        # Each counter's *_created series doubles the page for nothing a scraper reads
        # (vLLM turns them off too); the switch is the library's, for the whole process.
        prometheus_client.disable_created_metrics()  # type: ignore[no-untyped-call]
        self.registry = registry = CollectorRegistry()
        model = ["model"]
        self.requests = Counter(
            "localrun_http_requests", "HTTP requests answered, by route and status.",
            ["path", "status"], registry=registry,
        )  # fmt: skip
        self.answers = Counter(
            "localrun_answers", "Answers finished, by why they ended.",
            ["model", "finish_reason"], registry=registry,
        )  # fmt: skip
        self.prompt_tokens = Counter(
            "localrun_prompt_tokens", "Prompt tokens of the answers, read from a cache or "
            "evaluated (their prompt_eval_count, usage.prompt_tokens).", model, registry=registry,
        )  # fmt: skip
        self.cached_tokens = Counter(
            "localrun_prompt_tokens_cached", "Of the prompt tokens, those not evaluated: "
            "found in the KV cache or read back from the disk's prompt cache (prompt-cache "
            "hits).", model, registry=registry,
        )  # fmt: skip
        self.disk_tokens = Counter(
            "localrun_prompt_tokens_from_disk", "Of the cached prompt tokens, those read back "
            "from the prompt cache on disk.", model, registry=registry,
        )  # fmt: skip
        self.generated_tokens = Counter(
            "localrun_generated_tokens", "Tokens generated (eval_count, "
            "usage.completion_tokens), a thinking model's trace included.", model,
            registry=registry,
        )  # fmt: skip
        self.prefill_seconds = Counter(
            "localrun_prefill_seconds", "Time spent reading prompts.", model, registry=registry
        )
        self.decode_seconds = Counter(
            "localrun_decode_seconds", "Time from each answer's first token to its last.",
            model, registry=registry,
        )  # fmt: skip
        self.drafted = Counter(
            "localrun_draft_tokens", "Speculative decoding: tokens guessed and checked.",
            model, registry=registry,
        )  # fmt: skip
        self.accepted = Counter(
            "localrun_draft_tokens_accepted", "Speculative decoding: guessed tokens kept.",
            model, registry=registry,
        )  # fmt: skip
        self.ttft = Histogram(
            "localrun_time_to_first_token_seconds", "From a request to its answer's first "
            "token (model loads not included).", model, buckets=TTFT_BUCKETS, registry=registry,
        )  # fmt: skip
        self.decode_rate = Histogram(
            "localrun_decode_tokens_per_second", "Each answer's generation rate, after its "
            "first token (answers of one token have none).", model, buckets=RATE_BUCKETS,
            registry=registry,
        )  # fmt: skip
        registry.register(EngineCollector(pool))
        ProcessCollector(registry=registry)  # the server's memory and CPU time (Linux)
        _by_pool[pool] = self

    def answered(self, model: str, stats: Stats) -> None:
        """Count a finished answer of ``model``."""
        self.answers.labels(model, stats.finish_reason.value).inc()
        self.prompt_tokens.labels(model).inc(stats.prompt_tokens)
        # prompt_evaluated is 0 when the answer ended before its prompt was read.
        if stats.prompt_evaluated:
            self.cached_tokens.labels(model).inc(stats.prompt_tokens - stats.prompt_evaluated)
        self.disk_tokens.labels(model).inc(stats.prompt_from_disk)
        self.generated_tokens.labels(model).inc(stats.completion_tokens)
        self.prefill_seconds.labels(model).inc(stats.prefill_s)
        self.decode_seconds.labels(model).inc(stats.decode_s)
        self.drafted.labels(model).inc(stats.drafted)
        self.accepted.labels(model).inc(stats.accepted)
        if stats.ttft_s > 0:  # a first token came
            self.ttft.labels(model).observe(stats.ttft_s)
        if stats.decode_tokens_per_s > 0:
            self.decode_rate.labels(model).observe(stats.decode_tokens_per_s)

    async def page(self, request: Request) -> Response:
        """``GET /metrics``: every metric now, in the text format."""
        # Here, on the event loop: the pool's runners change on it alone.
        body = prometheus_client.generate_latest(self.registry)
        return Response(body, media_type=prometheus_client.CONTENT_TYPE_LATEST)


def answered(pool: ModelPool, model: str, stats: Stats) -> None:
    """Count a finished answer on ``pool``'s server, if it serves metrics."""
    metrics = _by_pool.get(pool)
    if metrics is not None:
        metrics.answered(model, stats)


class EngineCollector(Collector):
    """What the loaded models hold when the page is asked for, model by model.

    Read from the event loop while each engine's thread runs on, without its locks (it
    holds none for others to take): lengths, and copies of its lists made in one C call
    each, which the GIL keeps whole. So a value may be a step old, never a crash. A model
    loaded twice (two contexts) is summed under its one name.
    """

    def __init__(self, pool: ModelPool) -> None:
        self.pool = pool

    def collect(self) -> Iterator[Metric]:
        families = {
            "running": GaugeMetricFamily(
                "localrun_requests_running",
                "Sequences in the model's engine: reading their prompt or generating.",
                labels=["model"],
            ),
            "waiting": GaugeMetricFamily(
                "localrun_requests_waiting",
                "Requests the model holds that run no sequence: queued for one (or paused), "
                "their prompt being tokenized, or an embedding.",
                labels=["model"],
            ),
            "parallel": GaugeMetricFamily(
                "localrun_parallel_sequences",
                "Sequences the model's engine can run at once.",
                labels=["model"],
            ),
            "cells": GaugeMetricFamily(
                "localrun_kv_cells_used",
                "KV cache cells taken: by running sequences, and kept for prompts that "
                "begin alike.",
                labels=["model"],
            ),
            "total": GaugeMetricFamily(
                "localrun_kv_cells_total", "KV cache cells (the context).", labels=["model"]
            ),
        }
        runners = self.pool.runners()
        for name, values in _by_model(runners).items():
            for key, value in values.items():
                families[key].add_metric([name], value)
        yield from families.values()
        yield GaugeMetricFamily(
            "localrun_models_loaded", "Models loaded (one a context size).", len(runners)
        )


def _by_model(runners: Iterable[Runner]) -> dict[str, dict[str, int]]:
    found: dict[str, dict[str, int]] = {}
    for runner in runners:
        now = engine_load(runner)
        into = found.setdefault(runner.name, dict.fromkeys(now, 0))
        for key, value in now.items():
            into[key] += value
    return found


def engine_load(runner: Runner) -> dict[str, int]:
    """What ``runner``'s engine holds now (see :class:`EngineCollector`)."""
    # Started with the load: asking for it never starts one (nor waits: its lock is held
    # only while an engine starts, never by the engine's thread).
    engine = runner.engine
    running = list(engine._running)  # a copy: the engine thread changes the list
    warm = list(engine.cells.warm.values())
    used = sum(s.cached + len(s.pending) for s in running) + sum(len(t) for t in warm)
    total = engine.model.n_ctx
    return {
        "running": len(running),
        "waiting": max(0, runner.active - len(running)),
        "parallel": engine.n_seq,
        "cells": min(used, total),
        "total": total,
    }


class Counted:
    """ASGI middleware counting each HTTP response by its route and status (a path that is
    no route counts as ``other``: a scanner's guesses do not grow the page)."""

    def __init__(self, app: ASGIApp, metrics: Metrics, paths: Iterable[str]) -> None:
        self.app = app
        self.metrics = metrics
        self.paths = set(paths)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 0

        async def sent(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sent)
        finally:
            if status:  # else the client left before an answer began
                self.metrics.requests.labels(self._path(scope), str(status)).inc()

    def _path(self, scope: Scope) -> str:
        route = scope.get("route")  # Starlette's router names the route it matched
        path = getattr(route, "path", None) or scope.get("path", "")
        return path if path in self.paths else "other"
