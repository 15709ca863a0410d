"""Download progress on stderr (a rich bar on a terminal, a few plain lines otherwise),
pulling a model that a command needs, and a bar over a long job's steps."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Protocol, TextIO

from localrun.files import human_size

if TYPE_CHECKING:
    from localrun.hub.pull import Reporter
    from localrun.models.resolve import Resolved


class RichReporter:
    """A live progress bar (bytes, speed, ETA) per file."""

    def __init__(self) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )

        self.console = Console(stderr=True)
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            console=self.console,
            transient=False,
        )
        self.task: Any = None

    def note(self, text: str) -> None:
        self.console.print(text)

    def start_file(self, name: str, total: int, done: int) -> None:
        self.progress.start()
        self.task = self.progress.add_task(name, total=total, completed=done)

    def advance(self, n: int) -> None:
        if self.task is not None:
            self.progress.advance(self.task, n)

    def end_file(self) -> None:
        self.progress.stop()
        self.task = None


class PlainReporter:
    """A line when a file starts, every quarter, and at most every 10 s: no redraw storm."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.name = ""
        self.total = self.done = 0
        self.next_quarter = 1
        self.last_line = 0.0

    def note(self, text: str) -> None:
        print(text, file=self.out, flush=True)

    def start_file(self, name: str, total: int, done: int) -> None:
        self.name, self.total, self.done = name, max(total, 1), done
        self.next_quarter = done * 4 // self.total + 1
        resumed = f", resuming at {human_size(done)}" if done else ""
        self.note(f"pulling {name} ({human_size(total)}{resumed})")
        self.last_line = time.monotonic()

    def advance(self, n: int) -> None:
        self.done += n
        now = time.monotonic()
        quarter = self.done * 4 // self.total
        if (quarter >= self.next_quarter and quarter < 4) or now - self.last_line >= 10:
            self.next_quarter = quarter + 1
            self.last_line = now
            self.note(f"pulling {self.name}: {self.done * 100 // self.total}%")

    def end_file(self) -> None:
        if self.done >= self.total:
            self.note(f"pulling {self.name}: 100%")


def resolve_or_pull(ref: str) -> Resolved:
    """Resolve a model, pulling it first (with progress on stderr) if it is on the Hub (or a
    registry, named by its host) only."""
    from localrun.errors import NeedsPullError
    from localrun.hub import registry_names
    from localrun.hub.pull import pull
    from localrun.models import fromregistry
    from localrun.models.resolve import resolve

    try:
        return resolve(ref)
    except NeedsPullError as e:
        if registry_names.is_registry_name(e.ref):
            fromregistry.pull(e.ref, reporter=reporter())
        else:
            pull(e.ref, reporter=reporter(), refresh=False)
        return resolve(ref)


def reporter() -> Reporter:
    """The reporter that suits stderr."""
    if sys.stderr.isatty():
        return RichReporter()
    return PlainReporter(sys.stderr)


class Advance(Protocol):
    """Moves a bar: ``done`` of ``total``, with a note after its label."""

    def __call__(self, done: int, total: int, note: str = "") -> None: ...


@contextmanager
def counting(label: str, unit: str, *, quiet: bool = False) -> Iterator[Advance]:
    """A bar over ``unit`` (tensors, windows) on a terminal's stderr; nothing elsewhere, or
    when ``quiet``."""
    if quiet or not sys.stderr.isatty():

        def still(done: int, total: int, note: str = "") -> None:
            pass

        yield still
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    with Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        unit,
        TimeRemainingColumn(),
        console=Console(stderr=True),
        transient=True,
    ) as bar:
        task = bar.add_task(label, total=None)

        def advance(done: int, total: int, note: str = "") -> None:
            bar.update(task, completed=done, total=total, description=f"{label} {note}".strip())

        yield advance
