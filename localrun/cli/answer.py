"""One answer on its way out: streamed as plain text, shown live on a terminal, or one JSON
object; the --verbose figures after it on stderr."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, TextIO

from localrun.cli.options import OutputFormat
from localrun.errors import GenerationError

if TYPE_CHECKING:
    from localrun import engine
    from localrun.cli.runflags import Show
    from localrun.cli.runload import Local
    from localrun.images import Image
    from localrun.prompt.grammar import Constraint
    from localrun.remote.registry import Remote

Described = Callable[["engine.Stats"], str]  # the --verbose block of an answer


def answer_local(
    local: Local,
    name: str,
    text: str,
    images: list[Image],
    document: str,
    opts: engine.RunOptions,
    show: Show,
    constraint: Constraint | None,
) -> None:
    """Answer ``text`` with a model loaded here (``document``: the piped part of it)."""
    from localrun import engine
    from localrun.cli.output import format_stats

    loaded = local.loaded
    events = engine.generate(loaded, _request(text, opts, images, document))
    described = (lambda stats: format_stats(stats, loaded, local.threads)) if show.verbose else None
    done = _shown(
        events, show, name=name, mode=loaded.mode, placement=loaded.placement,
        n_ctx=loaded.model.n_ctx, described=described,
    )  # fmt: skip
    if constraint is not None and done is not None:
        _check_complete(done, constraint)


def answer_remote(
    remote: Remote,
    text: str,
    images: list[Image],
    opts: engine.RunOptions,
    send: frozenset[str],
    show: Show,
    constraint: Constraint | None,
) -> None:
    """Answer ``text`` with a remote engine, sending it only the sampler settings ``send``
    names."""
    from localrun.cli.output import format_remote_stats
    from localrun.remote.client import generate

    events = generate(remote, _request(text, opts, images), send)
    done = _shown(
        events, show, name=remote.name, mode="remote", placement=f"remote {remote.url}",
        n_ctx=0, described=format_remote_stats if show.verbose else None,
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

    return engine.Request.of(
        text,
        system=opts.system,
        history=opts.history,
        sampling=opts.sampling,
        max_tokens=opts.max_tokens,
        stop=opts.stop,
        document=document,
        images=images,
    )


def _shown(
    events: Iterator[engine.Event],
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
    if sys.stdout.isatty():
        return _live(events, placement, n_ctx, described, show.wordwrap)
    return _plain(events, described)


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


def _plain(events: Iterator[engine.Event], described: Described | None) -> engine.Stats:
    from localrun import engine

    stream = Stream(sys.stdout)
    try:
        for event in events:
            if isinstance(event, engine.TextDelta) and event.text:
                stream.write(event.text)
            elif isinstance(event, engine.Finished):
                stats = event.stats
    finally:
        stream.end_line()
    if described is not None:
        print(described(stats), file=sys.stderr)
    return stats


def _live(
    events: Iterator[engine.Event],
    placement: str,
    n_ctx: int,
    described: Described | None,
    wordwrap: bool,
) -> engine.Stats | None:
    from rich.console import Console

    from localrun.cli.chatview import AnswerState, AnswerView

    state = AnswerState(placement, n_ctx)
    view = AnswerView(Console(), state, markdown=wordwrap, live=wordwrap)
    with view:
        for event in events:
            view.handle(event)
    if described is not None and view.stats is not None:
        print(described(view.stats), file=sys.stderr)
    return view.stats


def _json(
    events: Iterator[engine.Event], model: str, mode: str, described: Described | None
) -> engine.Stats:
    from localrun import engine

    answer: list[str] = []
    for event in events:
        if isinstance(event, engine.TextDelta):
            answer.append(event.text)
        elif isinstance(event, engine.Finished):
            stats = event.stats
    result = {"model": model, "mode": mode, "response": "".join(answer), "stats": stats.as_dict()}
    print(json.dumps(result, ensure_ascii=False))
    if described is not None:
        print(described(stats), file=sys.stderr)
    return stats
