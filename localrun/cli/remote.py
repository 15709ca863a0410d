"""``localrun remote add|list|rm``: OpenAI-compatible engines used like local models."""

from __future__ import annotations

import json
import sys

import typer

from localrun.cli import app
from localrun.cli.output import table

remote_app = typer.Typer(
    help="Register remote engines (vLLM, llama-server, Ollama, localrun serve...).",
    no_args_is_help=True,
    rich_markup_mode=None,
)
app.add_typer(remote_app, name="remote")


@remote_app.command()
def add(
    name: str = typer.Argument(..., help="The name to run it by."),
    url: str = typer.Argument(..., help="The server's URL, such as http://gpu-box:8000."),
    model: str | None = typer.Option(
        None, "--model", help="The model id the server knows. [default: NAME]"
    ),
    api_key_env: str | None = typer.Option(
        None, "--api-key-env", metavar="VAR", help="The environment variable holding its key."
    ),
) -> None:
    """Register a remote engine: then 'localrun run NAME' asks it."""
    from localrun.remote import registry

    remote = registry.add(name, url, model, api_key_env)
    print(f"added {remote.name}: {remote.model} at {remote.url}", file=sys.stderr)


@remote_app.command("list")
def list_(as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """The registered remote engines."""
    from dataclasses import asdict

    from localrun.remote import registry

    found = sorted(registry.remotes().values(), key=lambda r: r.name)
    if as_json:
        print(json.dumps([asdict(r) for r in found], indent=2))
        return
    rows = [[r.name, r.model, r.url, r.api_key_env or "-"] for r in found]
    print(table(["NAME", "MODEL", "URL", "KEY FROM"], rows))


@remote_app.command()
def rm(name: str = typer.Argument(..., help="The remote's name.")) -> None:
    """Forget a remote engine (nothing on the server changes)."""
    from localrun.remote import registry

    registry.remove(name)
    print(f"removed {name}", file=sys.stderr)
