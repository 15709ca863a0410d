"""One answer on the engine, as tokens: the fit check, generate_tokens(), the tool-call watch.

Messages become tokens in :mod:`localrun.engine.answerer`, whose ``generate`` answers a
one-shot request.

The per-request work runs in the batching engine's sequence objects
(:mod:`localrun.engine.sequence`), their text and figures in :mod:`localrun.engine.output`; this
module is their caller's side: a :class:`~localrun.engine.types.Job` submitted to the engine of
the loaded model's runner (:mod:`localrun.engine.runner`).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence

from localrun.backend import ImageChunk, SamplingParams, context_size
from localrun.engine.load import LoadedModel
from localrun.engine.runner import runner_of
from localrun.engine.types import Called, Event, Finished, Job, TextDelta
from localrun.errors import PromptTooLongError
from localrun.prompt.tools import CallWatch

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


def generate_tokens(
    loaded: LoadedModel,
    tokens: list[int],
    sampling: SamplingParams,
    *,
    max_tokens: int | None = None,
    stop: Sequence[str] = (),
    start: float | None = None,
    stop_at_eog: bool = True,
    cache_at: int = 0,
    special: bool = False,
    images: Mapping[int, ImageChunk] | None = None,
) -> Iterator[Event]:
    """Generate after ``tokens`` on the model's batching engine, yielding events and the
    statistics last: ``run`` and the chat are one request among N, like any other.

    TTFT runs from ``start`` (the request) to the first sampled token; the decode rate is
    (sampled tokens - 1) / (time from the first to the last sampled token). If the caller
    stops reading (Ctrl-C), the request is cancelled and its sequence freed.
    """
    job = Job(
        tokens,
        sampling,
        max_tokens=max_tokens,
        stop=tuple(stop),
        stop_at_eog=stop_at_eog,
        submitted=start,
        cache_at=cache_at,
        speculate=loaded.speculate,
        special=special,
        images=images or {},
    )
    stream = runner_of(loaded).engine.submit(job)
    finished = False
    try:
        for event in stream:
            if isinstance(event, Finished):
                finished = True
                event.stats.load_s = loaded.load_s
                event.stats.total_s += loaded.load_s
            yield event
    finally:
        if not finished:
            stream.cancel()


def watched(watch: CallWatch | None, event: Event) -> list[Event | Called]:
    """An event of an answer that was offered tools, as its reader gets it: text held back
    from where a call may begin; at the end, the rest of the text and the calls, then
    Finished. Without a watch, the event as it is."""
    if watch is None:
        return [event]
    if isinstance(event, TextDelta):
        return [TextDelta(watch.feed(event.text), event.tokens)]
    if not isinstance(event, Finished):
        return [event]
    tail, calls = watch.finish()
    out: list[Event | Called] = []
    if tail:
        out.append(TextDelta(tail, event.stats.completion_tokens))
    if calls:
        out.append(Called(tuple(calls)))
    return [*out, event]
