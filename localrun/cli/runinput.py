"""What ``localrun run`` answers: the prompt from piped stdin and the arguments, and the
picture files the arguments name."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, TextIO

from localrun.errors import UsageError

if TYPE_CHECKING:
    from localrun.images import Image

MAX_STDIN_BYTES = 16 * 1024 * 1024  # 4M tokens or so: more than any context holds


def piped_part(text: str, args: list[str]) -> str:
    """The piped document at the start of a prompt that :func:`read_prompt` joined."""
    joined = " ".join(args)
    if joined.strip() and text.endswith("\n\n" + joined):
        return text[: -len(joined) - 2]
    return ""


def read_prompt(args: list[str], stdin: TextIO) -> str:
    """The prompt: piped stdin first, then the arguments (as Ollama and llm do).

    A prompt of only white space, from either, is no prompt.
    """
    parts = []
    if not stdin.isatty():
        text = _read_stdin(stdin)
        if text.strip():
            parts.append(text.rstrip("\n"))
    joined = " ".join(args)
    if joined.strip():
        parts.append(joined)
    if parts:
        return "\n\n".join(parts)
    raise UsageError(
        "no prompt: the arguments and standard input are empty or only white space",
        "localrun run MODEL 'your question', or pipe text in",
    )


def _read_stdin(stdin: TextIO) -> str:
    """Piped text, at most MAX_STDIN_BYTES; bytes that are not UTF-8 replaced, with a warning."""
    if hasattr(stdin, "buffer"):
        data = stdin.buffer.read(MAX_STDIN_BYTES + 1)
    else:
        data = stdin.read(MAX_STDIN_BYTES + 1).encode()
    if len(data) > MAX_STDIN_BYTES:
        raise UsageError(
            f"standard input is over {MAX_STDIN_BYTES // 2**20} MiB: more text than any "
            "model's context holds",
            "pass a shorter text, or split it and ask about each part",
        )
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        text = data.decode("utf-8", errors="replace")
        print(
            "Warning: standard input is not valid UTF-8; invalid bytes were replaced by U+FFFD",
            file=sys.stderr,
        )
        return text


def prompt_images(text: str | None, args: list[str]) -> tuple[str | None, list[Image]]:
    """The prompt without the picture files its arguments name, and those pictures (piped
    text is a document: its words stay words)."""
    if text is None or not args:
        return text, []
    joined = " ".join(args)
    from localrun.images import read_image, split_image_paths

    cleaned, paths = split_image_paths(joined)
    if not paths:
        return text, []
    head = text[: len(text) - len(joined)]
    return (head + cleaned).strip() if cleaned else head.rstrip(), [read_image(p) for p in paths]
