"""What an answer on the engine needs around it: the fit check, the tool-call watch.

Messages become tokens in :mod:`localrun.engine.answerer`, whose ``generate`` answers a
one-shot request.

The per-request work runs in the batching engine's sequence objects
(:mod:`localrun.engine.sequence`), their text and figures in :mod:`localrun.engine.output`; this
module is their caller's side: a :class:`~localrun.engine.types.Job` submitted to the engine of
the loaded model's runner (:mod:`localrun.engine.runner`).
"""

from __future__ import annotations

from localrun.backend import context_size
from localrun.engine.load import LoadedModel
from localrun.engine.types import Called, Event, Finished, TextDelta
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
