"""``localrun list``: the models in the local store."""

from __future__ import annotations

import json
import sys
import time
from typing import TYPE_CHECKING

import typer

from localrun.cli import app
from localrun.cli.output import human_size, table

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
    from localrun.hub.pull import resolve_local
    from localrun.hub.refs import is_hub_ref

    return resolve_local(ref) if is_hub_ref(ref) else store.load(ref)


@app.command("list")
def list_models(
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """List pulled and created models."""
    from localrun.hub import store
    from localrun.models import recipes

    manifests = store.all_manifests()
    made = recipes.created()
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
        for r in made:
            base = _base(r.modelfile.from_)
            entries.append(
                {
                    "name": r.name,
                    "id": base.id if base else None,
                    "size": base.size if base else None,
                    "quant": base.quant if base else None,
                    "modified": r.created_at,
                    "from": r.modelfile.from_,
                }
            )
        print(json.dumps(entries, indent=2))
        return
    for m in manifests:
        if m.missing_files:
            print(
                f"Warning: {m.name} is missing its files (deleted, or removed as corrupt); "
                f"repair it with: localrun pull {m.hub_ref}",
                file=sys.stderr,
            )
    header = ("NAME", "ID", "SIZE", "QUANT", "MODIFIED")
    print(
        table(
            header,
            [
                (
                    m.name + (" (files missing)" if m.missing_files else ""),
                    m.id,
                    human_size(m.size),
                    m.quant or "-",
                    _ago(m.pulled_at),
                )
                for m in manifests
            ],
        )
    )
