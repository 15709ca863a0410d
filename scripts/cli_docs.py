"""Write docs/cli.md from the commands' own --help; with --check, fail if it is stale.

Usage: python scripts/cli_docs.py [--check]
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

DOC = Path(__file__).resolve().parent.parent / "docs" / "cli.md"
ENV = {**os.environ, "COLUMNS": "100", "NO_COLOR": "1", "TERM": "dumb", "LINES": "50"}


def help_text(*command: str) -> str:
    args = [sys.executable, "-m", "localrun", *command, "--help"]
    out = subprocess.run(args, capture_output=True, text=True, env=ENV, check=True).stdout
    return "\n".join(line.rstrip() for line in out.strip("\n").splitlines())


def commands() -> list[str]:
    import typer.main

    from localrun.cli import app

    group = typer.main.get_command(app)
    return sorted(getattr(group, "commands", {}))


def render() -> str:
    parts = [
        "# Command-line reference",
        "",
        "Generated from `--help` by `python scripts/cli_docs.py`; CI fails when it is stale.",
        "",
        "## `localrun`",
        "",
        "```text",
        help_text(),
        "```",
    ]
    for name in commands():
        parts += ["", f"## `localrun {name}`", "", "```text", help_text(name), "```"]
    return "\n".join(parts) + "\n"


def main() -> int:
    text = render()
    if "--check" in sys.argv:
        if not DOC.exists() or DOC.read_text() != text:
            print(f"{DOC} is stale: run python scripts/cli_docs.py", file=sys.stderr)
            return 1
        return 0
    DOC.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
