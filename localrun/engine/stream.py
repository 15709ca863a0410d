"""One answer as a stream: UTF-8 across tokens, stop strings, and honest statistics."""

from __future__ import annotations

import codecs
import time
from collections.abc import Iterator, Sequence

from localrun.backend import Prefilled, SamplingParams, context_size
from localrun.engine.load import LoadedModel
from localrun.engine.types import (
    Event,
    Finished,
    FinishReason,
    FirstToken,
    PromptEvaluated,
    Request,
    Stats,
    TextDelta,
)
from localrun.errors import PromptTooLongError
from localrun.prompt.build import conversation_tokens

# Room for an answer: what a too-long prompt's hint adds, and what a chat keeps free.
ANSWER_ROOM = 512


def check_fits(loaded: LoadedModel, n_prompt: int) -> None:
    """Refuse a prompt that leaves no room in the context for an answer."""
    n_ctx = loaded.model.n_ctx
    if n_prompt < n_ctx:
        return
    needed = context_size(n_prompt + ANSWER_ROOM, 0)
    trained = loaded.model.n_ctx_train
    if trained and needed > trained:
        hint = f"shorten the prompt: this model was trained for at most {trained} tokens"
    else:
        hint = f"raise the context, for example --ctx {needed}, or shorten the prompt"
    raise PromptTooLongError(
        f"the prompt is {n_prompt} tokens but the context holds only {n_ctx}", hint
    )


class StopMatcher:
    """Holds back text that might be the start of a stop string."""

    def __init__(self, stops: Sequence[str]) -> None:
        self.stops = [s for s in stops if s]
        self.pending = ""

    def feed(self, text: str) -> tuple[str, bool]:
        """Return the text safe to emit and whether a stop string was reached."""
        self.pending += text
        if not self.stops:
            out, self.pending = self.pending, ""
            return out, False
        cut = min((i for i in (self.pending.find(s) for s in self.stops) if i >= 0), default=-1)
        if cut >= 0:
            out, self.pending = self.pending[:cut], ""
            return out, True
        hold = 0
        for s in self.stops:
            for n in range(min(len(s) - 1, len(self.pending)), hold, -1):
                if self.pending.endswith(s[:n]):
                    hold = n
                    break
        out = self.pending[: len(self.pending) - hold]
        self.pending = self.pending[len(out) :]
        return out, False

    def flush(self) -> str:
        out, self.pending = self.pending, ""
        return out


def generate(loaded: LoadedModel, request: Request) -> Iterator[Event]:
    """Answer a one-shot ``request``: text as it is produced, the statistics last."""
    start = time.perf_counter()
    tokens = conversation_tokens(loaded.model, loaded.template, request.messages)
    check_fits(loaded, len(tokens))
    return generate_tokens(
        loaded,
        tokens,
        request.sampling,
        max_tokens=request.max_tokens,
        stop=request.stop,
        start=start,
    )


def generate_tokens(
    loaded: LoadedModel,
    tokens: list[int],
    sampling: SamplingParams,
    *,
    max_tokens: int | None = None,
    stop: Sequence[str] = (),
    start: float | None = None,
    stop_at_eog: bool = True,
) -> Iterator[Event]:
    """Generate after ``tokens``, yielding events and the statistics last.

    TTFT runs from ``start`` (the request) to the first sampled token; the decode rate is
    (sampled tokens - 1) / (time from the first to the last sampled token).
    """
    start = time.perf_counter() if start is None else start
    stats = Stats(load_s=loaded.load_s, prompt_tokens=len(tokens))
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    matcher = StopMatcher(stop)
    first_at = last_at = 0.0
    sampled = 0
    stopped_by_string = False
    stats.finish_reason = FinishReason.LENGTH  # unless the model or a stop string ends it
    events = loaded.model.generate(tokens, sampling, stop_at_eog=stop_at_eog)
    try:
        for event in events:
            if isinstance(event, Prefilled):
                stats.prompt_evaluated = event.evaluated
                stats.prefill_s = event.seconds
                yield PromptEvaluated(len(tokens), event.evaluated, event.seconds)
                continue
            last_at = time.perf_counter()
            sampled += 1
            if sampled == 1:
                first_at = last_at
                yield FirstToken(first_at - start)
            if event.end_of_generation:
                stats.finish_reason = FinishReason.STOP
                break
            stats.completion_tokens += 1
            text, stopped = matcher.feed(decoder.decode(event.piece))
            yield TextDelta(text, stats.completion_tokens)
            if stopped:
                stats.finish_reason = FinishReason.STOP
                stopped_by_string = True
                break
            if max_tokens is not None and stats.completion_tokens >= max_tokens:
                break
    finally:
        events.close()
    if not stopped_by_string:
        tail = matcher.flush() + decoder.decode(b"", final=True)
        if tail:
            yield TextDelta(tail, stats.completion_tokens)
    end = time.perf_counter()
    stats.ttft_s = (first_at - start) if sampled else 0.0
    stats.decode_s = last_at - first_at if sampled else 0.0
    if sampled > 1 and stats.decode_s > 0:
        stats.decode_tokens_per_s = (sampled - 1) / stats.decode_s
    if stats.prefill_s > 0:
        stats.prefill_tokens_per_s = stats.prompt_evaluated / stats.prefill_s
    stats.total_s = loaded.load_s + (end - start)
    yield Finished(stats)
