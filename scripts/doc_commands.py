"""List the commands and requests that README.md and docs/*.md show, for the test that runs them.

A command is a line of a fenced ``sh``, ``bash`` or ``console`` block (a line ending in ``\\``
goes on on the next; comments are left out); a request is a whole ``python`` block. The
generated docs/cli.md holds only ``text`` blocks. tests/test_docs_commands.py runs each, or
names why not.

Usage: python scripts/doc_commands.py [--json]
"""

from __future__ import annotations

import json
import re
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHELL = ("sh", "bash", "console")
PYTHON = ("python",)
_FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```", re.S | re.M)


@dataclass(frozen=True)
class DocCommand:
    """One command (a shell line) or request (a Python block) as a doc shows it."""

    file: str  # relative to the repository, e.g. docs/serve.md
    line: int  # the line it starts on
    lang: str  # "sh" or "python"
    text: str  # the command without its comment, or the whole Python block

    @property
    def where(self) -> str:
        return f"{self.file}:{self.line}"


def doc_files(root: Path = ROOT) -> list[Path]:
    """README.md and docs/*.md, in a fixed order."""
    return [root / "README.md", *sorted((root / "docs").glob("*.md"))]


def commands(root: Path = ROOT) -> list[DocCommand]:
    """Every command and request in the docs, in order."""
    found: list[DocCommand] = []
    for path in doc_files(root):
        text = path.read_text()
        name = path.relative_to(root).as_posix()
        for block in _FENCE.finditer(text):
            lang, body = block.group(1), block.group(2)
            first = text.count("\n", 0, block.start(2)) + 1
            if lang in PYTHON:
                found.append(DocCommand(name, first, "python", body))
            elif lang in SHELL:
                found += [DocCommand(name, first + n, "sh", c) for n, c in shell_lines(body)]
    return found


def shell_lines(body: str) -> list[tuple[int, str]]:
    """A shell block's commands, each with its line's offset in the block: continuation lines
    joined, comments and blank lines left out."""
    out: list[tuple[int, str]] = []
    pending: list[str] = []
    start = 0
    for n, raw in enumerate(body.splitlines()):
        if not pending:
            start = n
        line = strip_comment(raw).rstrip()
        if line.endswith("\\"):
            pending.append(line[:-1].strip())
            continue
        pending.append(line.strip())
        command = " ".join(p for p in pending if p)
        pending = []
        if command:
            out.append((start, command))
    return out


def strip_comment(line: str) -> str:
    """``line`` without a ``#`` comment (one at the start, or after a space, outside quotes)."""
    quote = ""
    for i, c in enumerate(line):
        if quote:
            if c == quote:
                quote = ""
            elif c == "\\" and quote == '"':
                continue
        elif c in "'\"":
            quote = c
        elif c == "#" and (i == 0 or line[i - 1] in " \t"):
            return line[:i]
    return line


def main() -> int:
    found = commands()
    if "--json" in sys.argv:
        print(json.dumps([asdict(c) for c in found], indent=1))
        return 0
    for c in found:
        shown = c.text if c.lang == "sh" else f"<python block, {c.text.count(chr(10))} lines>"
        print(f"{c.where}: {shown}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
