"""``localrun create NAME -f Modelfile``: a named model from a Modelfile."""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from localrun.cli import app
from localrun.cli.progress import resolve_or_pull
from localrun.errors import LocalrunError


@app.command()
def create(
    name: str = typer.Argument(..., help="The new model's name."),
    file: Path = typer.Option(
        Path("Modelfile"), "-f", "--file", help="The Modelfile. [default: ./Modelfile]"
    ),
) -> None:
    """Create a model from a Modelfile.

    Its FROM is pulled first if it is a Hub reference.
    """
    from localrun.models import recipes
    from localrun.remote import registry

    recipe = recipes.create(name, file)
    try:
        if registry.find(recipe.modelfile.from_) is None:  # a remote engine is a base too
            resolve_or_pull(recipe.modelfile.from_)  # the base must exist, or be pulled
        draft = recipe.modelfile.parameters.get("draft")
        if isinstance(draft, str):
            try:
                resolve_or_pull(draft)  # so must the draft model
            except LocalrunError as e:
                e.message = f"PARAMETER draft: {e.message}"  # which of the names it was
                raise
    except BaseException:
        recipes.remove(name)  # no half-made model left behind
        raise
    print(f"created {name} (FROM {recipe.modelfile.from_})", file=sys.stderr)
