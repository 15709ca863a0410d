"""``localrun list``: the models here, as the catalog has them."""

from __future__ import annotations

import json
import sys
import time

import typer

from localrun.cli import app
from localrun.cli.output import table
from localrun.files import human_size


def _ago(when: float) -> str:
    seconds = max(0, int(time.time() - when))
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= size:
            n = seconds // size
            return f"{n} {unit}{'s' if n > 1 else ''} ago"
    return "just now"


# What stops a model that cannot run, by its kind, as the table marks it.
_marks = {"pulled": " (files missing)", "created": " (base missing)"}


@app.command("list")
def list_models(
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """List the models here (pulled, created, packaged) and registered remote engines."""
    from localrun.models import catalog
    from localrun.remote import registry

    models = catalog.entries()
    remotes = sorted(registry.remotes().values(), key=lambda r: r.name)
    if as_json:
        entries: list[dict[str, object]] = [
            {
                "name": e.name,
                "source": e.source,
                "id": e.id,
                "size": e.size,
                "quant": e.quant,
                "modified": e.modified,
                "path": str(e.path) if e.path else None,
                **({"from": e.parent} if e.source == catalog.CREATED else {}),
                **(
                    {"repo": m.repo, "commit": m.commit, "missing_files": m.missing_files}
                    if (m := e.manifest) is not None
                    else {}
                ),
                **({"problem": e.problem} if e.problem else {}),
            }
            for e in models
        ]
        entries += [{"name": r.name, "remote": r.url, "model": r.model} for r in remotes]
        print(json.dumps(entries, indent=2))
        return
    for e in models:
        if e.problem:
            print(f"Warning: {e.name} {e.problem}", file=sys.stderr)
    rows = [
        (
            e.name + (_marks.get(e.source, " (cannot run)") if e.problem else ""),
            e.id,
            human_size(e.size) if e.size else "-",
            e.quant or "-",
            _ago(e.modified),
        )
        for e in models
    ]
    # Remote engines: the model they serve is theirs, and so are its figures.
    rows += [(r.name, "remote", "-", "-", f"{r.model} at {r.url}") for r in remotes]
    print(table(("NAME", "ID", "SIZE", "QUANT", "MODIFIED"), sorted(rows)))
