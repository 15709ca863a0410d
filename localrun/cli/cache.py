"""``localrun cache du|verify|prune``: look after the model cache."""

from __future__ import annotations

import json
import sys

import typer

from localrun.cli import app
from localrun.cli.output import table
from localrun.files import human_size

cache_app = typer.Typer(
    help="Inspect and repair the model cache.", no_args_is_help=True, rich_markup_mode=None
)
app.add_typer(cache_app, name="cache")


@cache_app.command()
def du(as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """Disk space used by each model and by the cache as a whole."""
    from localrun import paths
    from localrun.hub import store

    usage = store.disk_usage()
    if as_json:
        print(
            json.dumps(
                {
                    "cache_dir": str(paths.cache_dir()),
                    "models": [{"name": n, "size": s} for n, s in usage.models],
                    "blobs_bytes": usage.blobs_bytes,
                    "partial_bytes": usage.partial_bytes,
                    "total_bytes": usage.total_bytes,
                },
                indent=2,
            )
        )
        return
    rows = [(name, human_size(size)) for name, size in usage.models]
    rows.append(("(partial downloads)", human_size(usage.partial_bytes)))
    rows.append((f"total in {paths.cache_dir()}", human_size(usage.total_bytes)))
    print(table(("NAME", "SIZE"), rows))


@cache_app.command()
def verify() -> None:
    """Re-hash every model file; remove the corrupt ones (pull again to repair)."""
    from localrun.hub import store
    from localrun.models import demo

    result = store.verify()
    refs = {m.name: m.hub_ref for m in store.all_manifests()}
    for name, path in result.corrupt:
        print(
            f"corrupt: {name}: {path} (removed; pull it again: localrun pull {refs[name]})",
            file=sys.stderr,
        )
    for name, path in result.missing:
        print(
            f"missing: {name}: {path} (pull it again: localrun pull {refs[name]})", file=sys.stderr
        )
    demo_state = demo.verify_cached()
    if demo_state == "corrupt":
        print("corrupt: demo (removed; it is assembled again on the next run)", file=sys.stderr)
    checked = result.checked + (demo_state is not None)
    corrupt = len(result.corrupt) + (demo_state == "corrupt")
    print(
        f"checked {checked} files: {corrupt} corrupt, {len(result.missing)} missing",
        file=sys.stderr,
    )
    if corrupt or result.missing:
        raise typer.Exit(1)


@cache_app.command()
def prune() -> None:
    """Delete interrupted downloads and files no model uses."""
    from localrun.hub import store

    result = store.prune()
    print(
        f"removed {result.partial_files} partial downloads and {result.unreferenced_blobs} "
        f"unused files ({human_size(result.freed_bytes)} freed)",
        file=sys.stderr,
    )


@cache_app.command()
def prompts(
    clear: bool = typer.Option(False, "--clear", help="Remove every stored prompt."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """The prompt cache: evaluated prefixes kept on disk, read back by later runs.

    Bounded by LOCALRUN_PROMPT_CACHE_MAX (bytes, or e.g. 2G; 0 turns it off), 4 GB by
    default; the least recently used go first.
    """
    import datetime as dt

    from localrun.engine import prompt_cache

    if clear:
        count, size = prompt_cache.clear()
        print(f"removed {count} stored prompts ({human_size(size)})", file=sys.stderr)
        return
    found = prompt_cache.entries()
    total = sum(e.size for e in found)
    if as_json:
        entries = [
            {"model": e.path.parent.name, "tokens": e.n_tokens, "size": e.size,
             "last_used": e.used, "path": str(e.path)}
            for e in found
        ]  # fmt: skip
        limit = prompt_cache.max_bytes()
        print(json.dumps({"entries": entries, "total_bytes": total, "max_bytes": limit}, indent=2))
        return
    rows = [
        [e.path.parent.name[:12], str(e.n_tokens), human_size(e.size),
         dt.datetime.fromtimestamp(e.used).strftime("%Y-%m-%d %H:%M")]
        for e in found
    ]  # fmt: skip
    if rows:
        print(table(["MODEL KEY", "TOKENS", "SIZE", "LAST USED"], rows))
    print(
        f"{len(found)} stored prompts, {human_size(total)} of "
        f"{human_size(prompt_cache.max_bytes())} in {prompt_cache.root()}",
        file=sys.stderr,
    )
