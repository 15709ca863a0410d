"""``localrun rm REF...``: remove models and free their space."""

from __future__ import annotations

import sys

import typer

from localrun.cli import app
from localrun.files import human_size


@app.command()
def rm(refs: list[str] = typer.Argument(..., help="Names of pulled or created models.")) -> None:
    """Remove models; files no other model uses are deleted."""
    from localrun.models import catalog

    for ref in refs:
        name, freed = catalog.remove(ref)
        kept = "its base model is kept" if freed is None else f"{human_size(freed)} freed"
        print(f"removed {name} ({kept})", file=sys.stderr)
