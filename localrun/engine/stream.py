"""What an answer on the engine needs around it: the fit check, the tool-call watch.

Messages become tokens in :mod:`localrun.engine.answerer`, whose ``generate`` answers a
one-shot request.

The per-request work runs in the batching engine's sequence objects
(:mod:`localrun.engine.sequence`), their text and figures in :mod:`localrun.engine.output`; this
module is their caller's side: a :class:`~localrun.engine.types.Job` submitted to the engine of
the loaded model's runner (:mod:`localrun.engine.runner`).
"""

from __future__ import annotations

from dataclasses import replace

from localrun.backend import context_size
from localrun.engine.load import LoadedModel
from localrun.engine.types import Called, Event, Finished, TextDelta, ThinkingDelta
from localrun.errors import PromptTooLongError
from localrun.prompt.thinking import Splitter
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


class TraceWatch:
    """A thinking model's answer, split as it streams: the trace's text as ThinkingDeltas,
    the answer's as TextDeltas; at the end, the trace's tokens and the time to the first
    token of the answer proper in its statistics."""

    def __init__(self, splitter: Splitter, *, needs_special: bool = False) -> None:
        self._splitter = splitter
        self.needs_special = needs_special  # its markers are special tokens
        self._thinking_tokens = 0
        self._first_answer_s = 0.0

    def _pieces(
        self, pieces: list[tuple[str, str]], delta: TextDelta
    ) -> list[Event | ThinkingDelta]:
        out: list[Event | ThinkingDelta] = []
        for kind, text in pieces:
            if kind == "thinking":
                out.append(ThinkingDelta(text, delta.tokens))
            else:
                if not self._first_answer_s and text.strip():
                    self._first_answer_s = delta.at
                out.append(replace(delta, text=text))
        return out

    def events(self, event: Event) -> list[Event | ThinkingDelta]:
        if isinstance(event, TextDelta):
            was_in_trace = self._splitter.in_trace
            out = self._pieces(self._splitter.feed(event.text), event)
            if was_in_trace or self._splitter.in_trace:
                self._thinking_tokens = event.tokens  # the end marker's tokens count too
            return out
        if not isinstance(event, Finished):
            return [event]
        stats = event.stats
        out = self._pieces(self._splitter.close(), TextDelta("", stats.completion_tokens))
        stats.thinking_tokens = min(self._thinking_tokens, stats.completion_tokens)
        stats.first_answer_s = self._first_answer_s
        return [*out, event]


def watched(
    watch: CallWatch | None, event: Event | ThinkingDelta
) -> list[Event | ThinkingDelta | Called]:
    """An event of an answer that was offered tools, as its reader gets it: text held back
    from where a call may begin; at the end, the rest of the text and the calls, then
    Finished. Without a watch, the event as it is."""
    if watch is None:
        return [event]
    if isinstance(event, TextDelta):
        return [replace(event, text=watch.feed(event.text))]
    if not isinstance(event, Finished):
        return [event]
    tail, calls = watch.finish()
    out: list[Event | ThinkingDelta | Called] = []
    if tail:
        out.append(TextDelta(tail, event.stats.completion_tokens))
    if calls:
        out.append(Called(tuple(calls)))
    return [*out, event]
