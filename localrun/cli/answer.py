"""One answer on its way out: streamed as plain text, shown live on a terminal, or one JSON
object; the --verbose figures after it on stderr.

A thinking model's trace: on a terminal, the live view draws it dim, then folds it to one
line (:mod:`.chatview`). Piped, stdout carries the answer alone, so that what reads it gets
the answer whatever the model; the trace goes to stderr, dim, only when stderr is a terminal
(someone watching), and nowhere otherwise. ``--format json`` puts it in a ``"thinking"``
field beside ``"response"`` (left out when there was none). ``--hidethinking`` hides it
everywhere but there.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterable
from dataclasses import replace
from typing import TYPE_CHECKING, TextIO

from localrun.cli.options import OutputFormat
from localrun.errors import GenerationError

if TYPE_CHECKING:
    from localrun import engine
    from localrun.cli.runflags import Show
    from localrun.engine.answerer import Answerer, ChatEvent
    from localrun.images import Image
    from localrun.prompt.grammar import Constraint

Described = Callable[["engine.Stats"], str]  # the --verbose block of an answer


def answer(
    model: Answerer,
    name: str,
    text: str,
    images: list[Image],
    document: str,
    opts: engine.RunOptions,
    show: Show,
    constraint: Constraint | None,
) -> None:
    """Answer ``text`` with ``model``, loaded here or a remote engine (``document``: the
    piped part of the text)."""
    from localrun.cli.output import format_figures

    events = model.start(_request(text, opts, images, document))
    described: Described | None = None
    if show.verbose:
        described = lambda stats: format_figures(model.described(stats, model.threads))  # noqa: E731
    if opts.think is False:  # asked for none: a trace the model writes anyway is not shown
        show = replace(show, hidethinking=True)
    mode = model.mode if model.loads_here else "remote"
    done = _shown(
        events, show, name=name, mode=mode, placement=model.placement,
        n_ctx=model.n_ctx, described=described,
    )  # fmt: skip
    if constraint is not None and done is not None:
        _check_complete(done, constraint)


class Stream:
    """Writes the answer to stdout as it comes, remembering whether the line is open."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.line_open = False

    def write(self, text: str) -> None:
        self.out.write(text)
        self.out.flush()
        self.line_open = not text.endswith("\n")

    def end_line(self) -> None:
        if self.line_open:
            self.write("\n")


def _request(
    text: str, opts: engine.RunOptions, images: list[Image], document: str = ""
) -> engine.Request:
    """The engine's request for one prompt, with the run's settings."""
    from localrun import engine

    request = engine.Request.of(
        text,
        system=opts.system,
        history=opts.history,
        sampling=opts.sampling,
        max_tokens=opts.max_tokens,
        stop=opts.stop,
        document=document,
        images=images,
    )
    return replace(request, think=opts.think, think_budget=opts.think_budget)


def _shown(
    events: Iterable[ChatEvent],
    show: Show,
    *,
    name: str,
    mode: str,
    placement: str,
    n_ctx: int,
    described: Described | None,
) -> engine.Stats | None:
    """Show an answer as the flags ask; its statistics (None if the live view had none)."""
    if show.format is OutputFormat.json:
        return _json(events, name, mode, described)
    thinking = not show.hidethinking
    if sys.stdout.isatty():
        return _live(events, placement, n_ctx, described, show.wordwrap, thinking)
    return _plain(events, described, thinking and sys.stderr.isatty())


def _check_complete(stats: engine.Stats, constraint: Constraint) -> None:
    """An answer cut off before its grammar was done is not passed off as complete."""
    from localrun.engine import FinishReason

    if stats.finish_reason is FinishReason.LENGTH:
        kind = "JSON" if constraint.json else "text for the grammar"
        raise GenerationError(
            f"the answer reached its token limit before its {kind} was complete "
            f"({stats.completion_tokens} tokens)",
            "raise --max-tokens (or --ctx), or ask for a shorter answer",
        )


def _plain(
    events: Iterable[ChatEvent], described: Described | None, trace_to_stderr: bool = False
) -> engine.Stats:
    """The answer to stdout as it comes; the trace, if asked, dim to stderr (a terminal)."""
    from localrun import engine
    from localrun.engine.types import ThinkingDelta

    stream = Stream(sys.stdout)
    trace = _Trace() if trace_to_stderr else None
    try:
        for event in events:
            if isinstance(event, ThinkingDelta) and trace is not None:
                trace.write(event.text)
            elif isinstance(event, engine.TextDelta) and event.text:
                if trace is not None:
                    trace.end()
                stream.write(event.text)
            elif isinstance(event, engine.Finished):
                stats = event.stats
    finally:
        if trace is not None:
            trace.end()
        stream.end_line()
    if described is not None:
        print(described(stats), file=sys.stderr)
    return stats


class _Trace:
    """A piped answer's trace on stderr (a terminal): dim, under the live view's label,
    ended by a blank line before the answer."""

    def __init__(self) -> None:
        from rich.console import Console

        self.console = Console(stderr=True)
        self.open = False
        self.done = False
        self.line_open = False

    def write(self, text: str) -> None:
        from rich.text import Text

        from localrun.cli.chatview import THINKING_LABEL, safe_text

        if self.done or not text:
            return
        if not self.open:
            self.console.print(Text(THINKING_LABEL, style="dim"))
            self.open = True
        text = safe_text(text)
        self.console.out(text, style="dim", end="", highlight=False)
        self.line_open = not text.endswith("\n")

    def end(self) -> None:
        if self.open and not self.done:
            self.console.out("\n" if self.line_open else "")
        self.done = True


def _live(
    events: Iterable[ChatEvent],
    placement: str,
    n_ctx: int,
    described: Described | None,
    wordwrap: bool,
    thinking: bool = True,
) -> engine.Stats | None:
    from rich.console import Console

    from localrun.cli.chatview import AnswerState, AnswerView

    state = AnswerState(placement, n_ctx)
    view = AnswerView(Console(), state, markdown=wordwrap, live=wordwrap, thinking=thinking)
    with view:
        for event in events:
            view.handle(event)
    if described is not None and view.stats is not None:
        print(described(view.stats), file=sys.stderr)
    return view.stats


def _json(
    events: Iterable[ChatEvent], model: str, mode: str, described: Described | None
) -> engine.Stats:
    from localrun import engine
    from localrun.engine.types import ThinkingDelta

    answer: list[str] = []
    trace: list[str] = []
    for event in events:
        if isinstance(event, engine.TextDelta):
            answer.append(event.text)
        elif isinstance(event, ThinkingDelta):
            trace.append(event.text)
        elif isinstance(event, engine.Finished):
            stats = event.stats
    result: dict[str, object] = {"model": model, "mode": mode, "response": "".join(answer)}
    if trace:
        result["thinking"] = "".join(trace)
    result["stats"] = stats.as_dict()
    print(json.dumps(result, ensure_ascii=False))
    if described is not None:
        print(described(stats), file=sys.stderr)
    return stats
