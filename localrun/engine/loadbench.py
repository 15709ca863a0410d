"""Concurrent answers through any :class:`~localrun.engine.answering.Answerer`, timed here:
``localrun bench NAME --parallel 1,8,32`` on a remote engine.

Each count N starts N answers at once through an Answerer that makes N at a time (a remote
engine's streams, each read in a thread of its own; a local model's sequences, batched), each
asking for the same number of tokens; the aggregate rate is all the tokens over the time from
the first request to the last token, and TTFT is read per stream (p50 and p99). Failed
streams are counted, not hidden: a deployment that drops requests under load is sized by that
too.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

from localrun.backend import SamplingParams
from localrun.engine.answering import Answerer, Answering
from localrun.engine.types import Finished, Request, Stats
from localrun.errors import LocalrunError

PROMPT = "Write a long story about a lighthouse keeper and the ships she guides home."


@dataclass(frozen=True)
class Load:
    """One count's figures."""

    streams: int
    tokens: int  # answer tokens, all streams
    seconds: float  # from the first request to the last token
    ttft_p50_s: float
    ttft_p99_s: float
    stream_rate: float  # tokens/s of one stream, the median
    errors: int
    error: str | None = None  # the first failed stream's error message

    @property
    def aggregate(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else 0.0

    def as_dict(self) -> dict[str, float | int | str]:
        found: dict[str, float | int | str] = {
            "streams": self.streams,
            "aggregate_tokens_per_s": round(self.aggregate, 2),
            "stream_tokens_per_s": round(self.stream_rate, 2),
            "ttft_p50_s": round(self.ttft_p50_s, 4),
            "ttft_p99_s": round(self.ttft_p99_s, 4),
            "tokens": self.tokens,
            "seconds": round(self.seconds, 3),
            "errors": self.errors,
        }
        if self.error is not None:
            found["error"] = self.error
        return found


def _start(answerer: Answerer, tokens: int) -> Answering | LocalrunError:
    request = Request.of(PROMPT, sampling=SamplingParams(temperature=0.0), max_tokens=tokens)
    try:
        return answerer.start(request, keep=False)
    except LocalrunError as e:
        return e


def _finish(answering: Answering | LocalrunError) -> Stats | LocalrunError:
    if isinstance(answering, LocalrunError):
        return answering
    try:
        for event in answering:
            if isinstance(event, Finished):
                return event.stats
    except LocalrunError as e:
        return e
    return LocalrunError("the answer ended without its statistics")


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] if ordered else 0.0


def measure(
    answerer_of: Callable[[int], Answerer],
    counts: tuple[int, ...],
    tokens: int,
    say: Callable[[str], None],
) -> list[Load]:
    """The figures for each count N of concurrent answers, through ``answerer_of(N)``."""
    results = []
    for n in counts:
        answerer = answerer_of(n)
        say(f"{n} streams of {tokens} tokens on {answerer.placement}…")
        start = time.perf_counter()
        # All started before any is read: the answerer makes them together (their events
        # wait in its queues), and each one's TTFT is timed where it is made.
        started = [_start(answerer, tokens) for _ in range(n)]
        done = [_finish(answering) for answering in started]
        seconds = time.perf_counter() - start
        ok = [s for s in done if isinstance(s, Stats)]
        failed = [e for e in done if isinstance(e, LocalrunError)]
        if failed:
            say(f"{len(failed)} of {n} streams failed; the first: {failed[0].line()}")
        ttfts = [s.ttft_s for s in ok]
        rates = [s.decode_tokens_per_s for s in ok if s.decode_tokens_per_s]
        results.append(
            Load(
                streams=n,
                tokens=sum(s.completion_tokens for s in ok),
                seconds=seconds,
                ttft_p50_s=_percentile(ttfts, 0.5),
                ttft_p99_s=_percentile(ttfts, 0.99),
                stream_rate=statistics.median(rates) if rates else 0.0,
                errors=len(failed),
                error=failed[0].message if failed else None,
            )
        )
    return results
