"""``localrun run``'s flags checked together, before any model is loaded: what cannot go
together is refused, the batch file and the prompt are read, and the mode is decided."""

from __future__ import annotations

import enum
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING

from localrun.cli.options import OutputFormat
from localrun.errors import UsageError

if TYPE_CHECKING:
    from localrun.cli.batchrun import BatchLines
    from localrun.cli.runflags import RunFlags
    from localrun.prompt.grammar import Constraint


class Mode(enum.Enum):
    ONCE = "once"  # answer the prompt, then end
    CHAT = "chat"  # answer the prompt if there is one, then chat
    BATCH = "batch"  # answer a file's requests, one JSON line each


@dataclass(frozen=True)
class Plan:
    """The flags, checked together: what run does, with what it read to decide."""

    mode: Mode
    text: str | None  # the prompt; None: a chat that starts with what is typed, or a batch
    piped: bool  # stdin is not a terminal
    constraint: Constraint | None  # --schema's or --grammar's
    lines: BatchLines | None  # --batch's file, read far enough to know it can run


def check(flags: RunFlags) -> Plan:
    """Refuse what cannot go together, and read the prompt, before any model is loaded."""
    from localrun.cli.runinput import read_prompt

    ask = flags.ask
    constraint = _constraint(flags.sample.schema, flags.sample.grammar)
    if ask.parallel is not None and ask.batch is None:
        raise UsageError("--parallel goes with --batch", "localrun run MODEL --batch FILE")
    lines = _batch_lines(flags) if ask.batch is not None else None
    piped = not sys.stdin.isatty()
    mode = _mode(flags, piped)
    if mode is Mode.CHAT and (flags.show.format is OutputFormat.json or not sys.stdout.isatty()):
        raise UsageError(
            "interactive chat needs a terminal on stdout and --format text",
            "give a prompt for a one-shot answer, or run it in a terminal",
        )
    text = None
    if mode is Mode.ONCE or (mode is Mode.CHAT and (ask.words or piped)):
        text = read_prompt(ask.words, sys.stdin)
    return Plan(mode, text, piped, constraint, lines)


def _mode(flags: RunFlags, piped: bool) -> Mode:
    """A batch; a chat when asked for, or when there is no prompt on a terminal; else once."""
    ask = flags.ask
    if ask.batch is not None:
        return Mode.BATCH
    if ask.interactive or flags.chat_command or (not ask.words and not piped):
        return Mode.CHAT
    return Mode.ONCE


def _batch_lines(flags: RunFlags) -> BatchLines:
    """--batch's file, refused now (before the load) if it cannot run."""
    ask = flags.ask
    if ask.words or ask.interactive or flags.chat_command or flags.show.format is OutputFormat.json:
        raise UsageError(
            "--batch takes its prompts from the file, and writes JSON lines",
            "drop the prompt, -i and --format with --batch",
        )
    if ask.images:
        raise UsageError(
            "--image goes with a prompt, not with --batch",
            'give each line of the batch file its own "images": [FILE, ...]',
        )
    if ask.batch == "-" and sys.stdin.isatty():
        raise UsageError("--batch - reads standard input, which is a terminal", "pipe a file in")
    from localrun.cli.batchrun import BatchLines

    assert ask.batch is not None
    return BatchLines(ask.batch)


def _constraint(schema: str | None, grammar: str | None) -> Constraint | None:
    """The answer's constraint from --schema or --grammar (one of them), checked now."""
    from localrun.prompt import grammar as grammars

    if schema is not None and grammar is not None:
        raise UsageError("--schema and --grammar cannot go together", "give one of them")
    if schema is not None:
        return grammars.schema_argument(schema)
    if grammar is not None:
        return grammars.grammar_argument(grammar)
    return None
