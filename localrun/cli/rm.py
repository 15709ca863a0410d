"""``localrun rm REF...``: remove models and free their space."""

from __future__ import annotations

import sys

import typer

from localrun.cli import app
from localrun.files import human_size


@app.command()
def rm(refs: list[str] = typer.Argument(..., help="Names or references of pulled models.")) -> None:
    """Remove models; files no other model uses are deleted."""
    from localrun.hub import store
    from localrun.models import recipes

    for ref in refs:
        if store.load(ref) is None and recipes.remove(ref):
            print(f"removed {ref} (its base model is kept)", file=sys.stderr)
            continue
        manifest = store.find(ref) or store.require(ref)
        freed = store.remove(manifest.name)
        print(f"removed {manifest.name} ({human_size(freed)} freed)", file=sys.stderr)
