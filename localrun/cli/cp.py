"""``localrun cp SRC DST``: another name for the same model."""

from __future__ import annotations

import sys

import typer

from localrun.cli import app


@app.command()
def cp(
    src: str = typer.Argument(..., help="A pulled, created, library or packaged model."),
    dst: str = typer.Argument(..., help="The new name."),
) -> None:
    """Give a model another name (no weights are copied)."""
    from localrun.models import catalog

    copied = catalog.copy(src, dst)
    print(f"copied {src} to {copied}", file=sys.stderr)
