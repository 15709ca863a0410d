"""``localrun cp SRC DST``: another name for the same model."""

from __future__ import annotations

import sys

import typer

from localrun.cli import app


@app.command()
def cp(
    src: str = typer.Argument(..., help="A pulled model."),
    dst: str = typer.Argument(..., help="The new name."),
) -> None:
    """Give a pulled model another name (no files are copied)."""
    from localrun.models.resolve import copy

    copied = copy(src, dst)
    print(f"copied {src} to {copied.name}", file=sys.stderr)
