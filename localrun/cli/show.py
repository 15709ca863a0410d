"""``localrun show REF``: what a model is, from its GGUF header."""

from __future__ import annotations

import json

import typer

from localrun.cli import app
from localrun.cli.output import human_size, table
from localrun.inspect import model_facts


def _count(n: int) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.2f}{unit}"
    return str(n)


@app.command()
def show(
    ref: str = typer.Argument(..., help="A pulled model, a Hub reference, 'demo' or a path."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Show a model's architecture, size, quantization and where it is."""
    facts = model_facts(ref)
    if as_json:
        print(json.dumps(facts.as_dict(), indent=2))
        return
    rows = [
        ("architecture", facts.architecture),
        ("parameters", _count(facts.parameters)),
        ("quantization", facts.quantization or "-"),
        ("context length", str(facts.context_length or "-")),
        ("embedding length", str(facts.embedding_length or "-")),
        ("layers", str(facts.layers or "-")),
        ("chat template", "yes" if facts.chat_template else "no (completion mode)"),
        ("license", facts.license or "-"),
        ("path", facts.path),
        ("size", human_size(facts.size)),
        ("sha256", facts.sha256),
    ]
    print(f"Model {facts.name}")
    print("  " + table(("", ""), rows).replace("\n", "\n  ").lstrip())
