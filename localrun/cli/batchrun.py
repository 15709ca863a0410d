"""``localrun run MODEL --batch FILE``: many requests from JSON Lines, N at a time.

Each line becomes a request on the batching engine; results come out one JSON line per
request, in input order, each as soon as it and those before it are done. A bad line gets an
error object on its own line and the others run; the exit code is then 1.
"""

from __future__ import annotations

import itertools
import json
import os
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager, nullcontext
from typing import TYPE_CHECKING, Any, BinaryIO, TypeVar

from localrun.errors import LocalrunError, NotTextError, UsageError
from localrun.files import human_size, open_regular

T = TypeVar("T")

if TYPE_CHECKING:
    from localrun import engine
    from localrun.engine.answerer import Answerer


# A line is one request: a prompt (the stdin prompt's cap is 16 MiB) and perhaps pictures
# as data URLs (20 MB each, a third more in base64). Past this, the line is refused unread.
MAX_LINE_BYTES = 64 * 1000**2
_HINT = "give a JSON Lines file (one request a line), or - for standard input"
_LINE_HINT = "see 'localrun run --help' for --batch"  # as parse_line's, for a line's own error


class BatchLines:
    """The requests of a batch file, or of stdin for ``-``: its non-blank lines, numbered.

    Opened before the model loads, so that what cannot run is refused first: a path that is
    not a regular file (a FIFO with no writer would hang, ``/dev/zero`` never ends), a file
    that is not UTF-8 text, or one with no request at all. A file is read twice, once to count
    its lines (the progress bar's total) and once as they are answered; stdin once, as it
    comes. A line longer than :data:`MAX_LINE_BYTES`, or (on stdin) not UTF-8, is that
    line's error: the others still run.
    """

    def __init__(self, source: str) -> None:
        self.source = source
        self.total: int | None = None  # stdin's is not known ahead
        self._first: tuple[int, str | LocalrunError] | None = None
        if source == "-":
            self._stdin = _numbered(sys.stdin.buffer)
            self._first = next(self._stdin, None)
            empty = self._first is None
        else:
            self.total = self._count()
            empty = self.total == 0
        if empty:
            raise UsageError(
                f"the batch file {source} holds no request: it is empty or blank", _HINT
            )

    def _count(self) -> int:
        total = 0
        with _open(self.source) as stream:
            for number, item in _numbered(stream):
                if isinstance(item, NotTextError):  # a binary file, named by mistake
                    raise UsageError(
                        f"the batch file {self.source} is not UTF-8 text (line {number})", _HINT
                    )
                total += 1
        return total

    def __iter__(self) -> Iterator[tuple[int, str | LocalrunError]]:
        if self.source == "-":
            if self._first is not None:
                yield self._first
            yield from self._stdin
            return
        with _open(self.source) as stream:
            yield from _numbered(stream)


def _open(source: str) -> BinaryIO:
    """The regular file ``source``, opened without waiting for a FIFO's writer."""
    return os.fdopen(open_regular(source, "the batch file", _HINT), "rb")


def _numbered(stream: BinaryIO) -> Iterator[tuple[int, str | LocalrunError]]:
    """(line number, text or that line's error) for each non-blank line of ``stream``."""
    number = 0
    while line := stream.readline(MAX_LINE_BYTES + 1):
        number += 1
        if len(line) > MAX_LINE_BYTES and not line.endswith(b"\n"):
            while (rest := stream.readline(1 << 20)) and not rest.endswith(b"\n"):
                pass  # the rest of the line, read in bounded pieces and dropped
            limit = human_size(MAX_LINE_BYTES)
            yield number, UsageError(f"line {number}: longer than {limit}", _LINE_HINT)
            continue
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError:
            yield number, NotTextError(f"line {number}: not UTF-8 text", _LINE_HINT)
            continue
        if text.strip():
            yield number, text


def _id_of(text: str) -> Any:
    from localrun.engine.jobs import lone_surrogate

    try:
        data = json.loads(text)
    except (ValueError, RecursionError):  # the line's own error says why
        return None
    job_id = data.get("id") if isinstance(data, dict) else None
    return None if lone_surrogate(job_id) else job_id  # stdout takes only valid text


def run_batch(model: Answerer, lines: BatchLines, opts: engine.RunOptions) -> int:
    """Answer every line of ``lines`` with ``model`` (loaded here, or a remote engine's);
    return how many lines failed. A line's own sampling fields are sent to a remote engine
    with the flags given; the others stay the engine's."""
    from localrun.engine.jobs import parse_line

    def started(number: int, text: str | LocalrunError) -> tuple[int, Any, Answer]:
        if isinstance(text, LocalrunError):
            return number, None, text
        job_id = _id_of(text)  # echoed back, even when the rest of the line is wrong
        try:
            request = parse_line(text, number, opts).request
            # Nothing of a line is worth keeping in the prompt cache: each is read once.
            answering = model.start(request, keep=False)
        except LocalrunError as e:
            return number, job_id, e
        return number, job_id, lambda: _collect(answering)

    # A few steps' worth of requests ahead of the one being written, not the whole file: a
    # line's pictures, read and made ready, hold megabytes each until answered. (On Ctrl-C
    # the caller closes the model, which stops what is under way; written lines stay.)
    ahead = _ahead((started(n, t) for n, t in lines), AHEAD_PER_SEQUENCE * model.n_seq)
    return _write_in_order(model.name, ahead, lines.total)


AHEAD_PER_SEQUENCE = 4  # requests started per sequence the model answers at once


def _ahead(items: Iterator[T], n: int) -> Iterator[T]:
    """``items``, with ``n`` of them made before each is handed on. An exception making one
    is raised once those made before it are handed on: their answers are written first."""
    made: deque[T] = deque()
    failure: Exception | None = None

    def make(count: int) -> None:
        nonlocal failure
        try:
            made.extend(itertools.islice(items, count))
        except Exception as e:  # not Ctrl-C: that stops at once
            failure = e

    make(n)
    while made:
        first = made.popleft()
        if failure is None:
            make(1)
        yield first
    if failure is not None:
        raise failure


def _collect(answering: Iterable[object]) -> tuple[str, str, engine.Stats]:
    """An answer's whole text, its trace (a thinking model's) and its statistics."""
    from localrun.engine.types import Finished, TextDelta, ThinkingDelta

    parts: list[str] = []
    trace: list[str] = []
    for event in answering:
        if isinstance(event, TextDelta):
            parts.append(event.text)
        elif isinstance(event, ThinkingDelta):
            trace.append(event.text)
        elif isinstance(event, Finished):
            stats = event.stats
            # The model was loaded once for the whole file: no line waited for it.
            stats.total_s -= stats.load_s
            stats.load_s = 0.0
            return "".join(parts), "".join(trace), stats
    raise LocalrunError("the answer ended without its statistics")


# An error, or the getter of an answer's text, trace and statistics.
Answer = LocalrunError | Callable[[], "tuple[str, str, engine.Stats]"]


def _write_in_order(
    model: str, entries: Iterable[tuple[int, Any, Answer]], total: int | None
) -> int:
    failed = 0
    progress = _Progress(total)
    with progress:
        for number, job_id, item in entries:
            if not isinstance(item, LocalrunError):
                try:
                    text, thinking, stats = item()
                except LocalrunError as e:
                    item = e
            if isinstance(item, LocalrunError):
                failed += 1
                record: dict[str, Any] = {"id": job_id, "line": number, "error": item.message}
                if item.hint:
                    record["hint"] = item.hint
                print(f"Error: {item.message}", file=sys.stderr)
            else:
                record = {
                    "id": job_id,
                    "model": model,
                    "response": text,
                    **({"thinking": thinking} if thinking else {}),
                    "finish_reason": stats.finish_reason.value,
                    "stats": stats.as_dict(),
                }
                progress.add(stats.completion_tokens)
            print(json.dumps(record, ensure_ascii=False), flush=True)
            progress.advance()
    return failed


class _Progress:
    """done/total and the aggregate tokens per second, on stderr when it is a terminal."""

    def __init__(self, total: int | None) -> None:
        self.total = total
        self.tokens = 0
        self.start = time.perf_counter()
        self._bar: Any = None
        self._task: Any = None
        self._context: AbstractContextManager[Any] = nullcontext()
        if sys.stderr.isatty() and total != 0:  # None: stdin's, counted as it comes
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

            self._bar = Progress(
                TextColumn("answering"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[rate]}"),
                console=Console(stderr=True),
                transient=True,
            )
            self._task = self._bar.add_task("batch", total=total, rate="")
            self._context = self._bar

    def __enter__(self) -> _Progress:
        self._context.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._context.__exit__(*exc)

    def add(self, tokens: int) -> None:
        self.tokens += tokens

    def advance(self) -> None:
        if self._bar is not None:
            rate = self.tokens / max(time.perf_counter() - self.start, 1e-9)
            self._bar.update(self._task, advance=1, rate=f"{rate:.1f} tok/s")
