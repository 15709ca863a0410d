"""``localrun library``: the ready recipes that ship with localrun."""

from __future__ import annotations

import json

import typer

from localrun.cli import app
from localrun.cli.output import table


@app.command()
def library(as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """List the bundled recipes: pull or run them by their short names."""
    from localrun.models import recipes

    entries = [
        {
            "name": r.name,
            "from": r.modelfile.from_,
            "description": r.description,
            "aliases": list(r.aliases),
            "parameters": r.modelfile.parameters,
        }
        for r in recipes.library().values()
    ]
    if as_json:
        print(json.dumps(entries, indent=2))
        return
    rows = [(str(e["name"]), str(e["description"])) for e in entries]
    print(table(("NAME", "DESCRIPTION"), rows))
