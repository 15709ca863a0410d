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
    outdated: bool = typer.Option(
        False,
        "--outdated",
        help="Ask each pulled model's source (the Hub, a registry) whether it has a newer "
        "version; nothing is downloaded (pull --all does).",
    ),
) -> None:
    """List the models here (pulled, created, packaged) and registered remote engines."""
    from localrun.models import catalog
    from localrun.models.updates import sources
    from localrun.remote import registry

    if outdated:
        _outdated(as_json)
        return
    models = catalog.entries()
    pulled = {s.name: s for s in sources()}
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
                **(
                    {"pulled_from": s.ref, "revision": s.revision, "pulled_at": s.pulled_at}
                    if (s := pulled.get(e.name)) is not None
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


def _outdated(as_json: bool) -> None:
    """The pulled models whose source has a newer version (and those it could not ask)."""
    from localrun.models.updates import check, sources

    checks = [check(s) for s in sources()]
    if as_json:
        print(json.dumps([{"name": c.source.name, "from": c.source.ref,
                           "revision": c.source.revision, "latest": c.latest,
                           "pulled_at": c.source.pulled_at, "outdated": c.outdated,
                           "problem": c.problem} for c in checks], indent=2))  # fmt: skip
        return
    shown = [c for c in checks if c.outdated or c.problem]
    for c in shown:
        if c.problem:
            print(f"Warning: {c.source.name}: cannot ask its source: {c.problem}", file=sys.stderr)
    rows = [
        (c.source.name, c.source.ref, c.source.short_revision, _ago(c.source.pulled_at),
         _short(c.latest) if c.latest else "?")
        for c in shown if c.outdated
    ]  # fmt: skip
    if rows:
        print(table(("NAME", "FROM", "HERE", "PULLED", "LATEST"), rows))
        print("bring them up to date with: localrun pull --all", file=sys.stderr)
    elif not any(c.problem for c in checks):
        print(f"all {len(checks)} pulled models are up to date", file=sys.stderr)


def _short(revision: str) -> str:
    prefix = "sha256:" if revision.startswith("sha256:") else ""
    return prefix + revision.removeprefix("sha256:")[:12]
