"""``localrun run MODEL --batch FILE``: many requests from JSON Lines, N at a time.

Each line becomes a request on the batching engine; results come out one JSON line per
request, in input order, each as soon as it and those before it are done. A bad line gets an
error object on its own line and the others run; the exit code is then 1.
"""

from __future__ import annotations

import itertools
import json
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager, nullcontext
from typing import IO, TYPE_CHECKING, Any, TypeVar

from localrun.errors import LocalrunError, UsageError

T = TypeVar("T")

if TYPE_CHECKING:
    from localrun import engine
    from localrun.engine.batch import Stream
    from localrun.remote.registry import Remote


def _lines(source: str) -> Iterator[tuple[int, str]]:
    """(line number, text) of each non-blank line of the file, or of stdin for ``-``."""
    stream: IO[str]
    try:
        stream = sys.stdin if source == "-" else open(source, encoding="utf-8")  # noqa: SIM115
    except OSError as e:
        raise UsageError(
            f"cannot read the batch file {source}: {e.strerror}", "check the path"
        ) from None
    try:
        for number, text in enumerate(stream, 1):
            if text.strip():
                yield number, text
    except UnicodeDecodeError:
        raise UsageError(
            f"the batch file {source} is not UTF-8 text", "give a JSON Lines file"
        ) from None
    finally:
        if stream is not sys.stdin:
            stream.close()


def _id_of(text: str) -> Any:
    try:
        data = json.loads(text)
    except ValueError:
        return None
    return data.get("id") if isinstance(data, dict) else None


def run_batch(loaded: engine.LoadedModel, source: str, opts: engine.RunOptions) -> int:
    """Answer every line of ``source``; return how many lines failed."""
    from localrun.engine.jobs import parse_line
    from localrun.prompt.build import conversation_prompt

    batch = loaded.engine()  # stopped by loaded.close(): on Ctrl-C too, written lines stay
    lines = list(_lines(source))

    def submitted(number: int, text: str) -> tuple[int, Any, Answer]:
        job_id = _id_of(text)  # echoed back, even when the rest of the line is wrong
        try:
            job = parse_line(text, number, opts)
            prompt = conversation_prompt(loaded.model, loaded.template, job.request.messages)
            request = job.request
            stream = batch.submit(
                prompt.tokens,
                request.sampling,
                max_tokens=request.max_tokens,
                stop=request.stop,
                speculate=loaded.speculate,
                images=prompt.images,
            )
            return number, job_id, _collected(stream)
        except LocalrunError as e:
            return number, job_id, e

    # A few steps' worth of requests ahead of the one being written, not the whole file: a
    # line's pictures, read and made ready, hold megabytes each until answered.
    ahead = _ahead((submitted(n, t) for n, t in lines), AHEAD_PER_SEQUENCE * loaded.n_seq)
    return _write_in_order(loaded.name, ahead, len(lines))


AHEAD_PER_SEQUENCE = 4  # requests submitted per sequence slot, ahead of the writer


def _ahead(items: Iterator[T], n: int) -> Iterator[T]:
    """``items``, with ``n`` of them made before each is handed on."""
    made: deque[T] = deque(itertools.islice(items, n))
    while made:
        first = made.popleft()
        made.extend(itertools.islice(items, 1))
        yield first


def run_remote_batch(
    remote: Remote,
    source: str,
    opts: engine.RunOptions,
    parallel: int | None,
    send: frozenset[str] = frozenset(),
) -> int:
    """Answer every line of ``source`` on a remote engine, ``parallel`` at a time (8 by
    default: its own scheduler batches them); return how many lines failed. The sampling
    settings sent are those in ``send`` (the flags given) and each line's own."""
    from concurrent.futures import ThreadPoolExecutor

    from localrun.engine.jobs import parse_line

    pool = ThreadPoolExecutor(max_workers=parallel or 8)
    entries: list[tuple[int, Any, Answer]] = []
    try:
        for number, text in _lines(source):
            job_id = _id_of(text)
            try:
                job = parse_line(text, number, opts)
            except LocalrunError as e:
                entries.append((number, job_id, e))
                continue
            own = frozenset(k for k in _SAMPLING if k in json.loads(text))
            future = pool.submit(_remote_answer, remote, job.request, send | own)
            entries.append((number, job_id, future.result))
        return _write_in_order(remote.name, entries, len(entries))
    finally:
        pool.shutdown(wait=False, cancel_futures=True)


_SAMPLING = ("temperature", "top_k", "top_p", "seed")  # a batch line's sampling fields


def _remote_answer(
    remote: Remote, request: engine.Request, send: frozenset[str]
) -> tuple[str, engine.Stats]:
    from localrun.engine.types import Finished, TextDelta
    from localrun.remote.client import generate

    parts: list[str] = []
    for event in generate(remote, request, send):
        if isinstance(event, TextDelta):
            parts.append(event.text)
        elif isinstance(event, Finished):
            return "".join(parts), event.stats
    raise LocalrunError("the remote engine's stream ended without its statistics")


Answer = LocalrunError | Callable[[], "tuple[str, engine.Stats]"]  # an error, or its getter


def _collected(item: Stream | LocalrunError) -> Answer:
    if isinstance(item, LocalrunError):
        return item
    from localrun.engine.batch import collect

    return lambda: collect(item)


def _write_in_order(model: str, entries: Iterable[tuple[int, Any, Answer]], total: int) -> int:
    failed = 0
    progress = _Progress(total)
    with progress:
        for number, job_id, item in entries:
            if not isinstance(item, LocalrunError):
                try:
                    text, stats = item()
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
                    "finish_reason": stats.finish_reason.value,
                    "stats": stats.as_dict(),
                }
                progress.add(stats.completion_tokens)
            print(json.dumps(record, ensure_ascii=False), flush=True)
            progress.advance()
    return failed


class _Progress:
    """done/total and the aggregate tokens per second, on stderr when it is a terminal."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.tokens = 0
        self.start = time.perf_counter()
        self._bar: Any = None
        self._task: Any = None
        self._context: AbstractContextManager[Any] = nullcontext()
        if sys.stderr.isatty() and total:
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
