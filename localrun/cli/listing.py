"""``localrun list``: the models in the local store."""

from __future__ import annotations

import json
import sys
import time
from typing import TYPE_CHECKING

import typer

from localrun.cli import app
from localrun.cli.output import table
from localrun.files import human_size

if TYPE_CHECKING:
    from localrun.hub import store


def _ago(when: float) -> str:
    seconds = max(0, int(time.time() - when))
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= size:
            n = seconds // size
            return f"{n} {unit}{'s' if n > 1 else ''} ago"
    return "just now"


def _base(ref: str) -> store.Manifest | None:
    """The pulled model a created one stands on, if it is a pulled one."""
    from localrun.hub import store

    return store.find(ref)


@app.command("list")
def list_models(
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """List pulled and created models, and registered remote engines."""
    from localrun.hub import store
    from localrun.models import recipes
    from localrun.remote import registry

    manifests = store.all_manifests()
    made = [(r, _base(r.modelfile.from_)) for r in recipes.created()]
    remotes = sorted(registry.remotes().values(), key=lambda r: r.name)
    if as_json:
        entries = [
            {
                "name": m.name,
                "id": m.id,
                "size": m.size,
                "quant": m.quant,
                "modified": m.pulled_at,
                "repo": m.repo,
                "commit": m.commit,
                "path": str(m.model_path),
                "missing_files": m.missing_files,
            }
            for m in manifests
        ]
        entries += [
            {
                "name": r.name,
                "id": base.id if base else None,
                "size": base.size if base else None,
                "quant": base.quant if base else None,
                "modified": r.created_at,
                "from": r.modelfile.from_,
            }
            for r, base in made
        ]
        entries += [{"name": r.name, "remote": r.url, "model": r.model} for r in remotes]
        print(json.dumps(entries, indent=2))
        return
    for m in manifests:
        if m.missing_files:
            print(
                f"Warning: {m.name} is missing its files (deleted, or removed as corrupt); "
                f"repair it with: localrun pull {m.hub_ref}",
                file=sys.stderr,
            )
    rows = [
        (
            m.name + (" (files missing)" if m.missing_files else ""),
            m.id,
            human_size(m.size),
            m.quant or "-",
            _ago(m.pulled_at),
        )
        for m in manifests
    ]
    # Created models, with their base's figures when the base is pulled.
    rows += [
        (
            r.name,
            base.id if base else "-",
            human_size(base.size) if base else "-",
            (base.quant or "-") if base else "-",
            _ago(r.created_at),
        )
        for r, base in made
    ]
    # Remote engines: the model they serve is theirs, and so are its figures.
    rows += [(r.name, "remote", "-", "-", f"{r.model} at {r.url}") for r in remotes]
    print(table(("NAME", "ID", "SIZE", "QUANT", "MODIFIED"), sorted(rows)))
