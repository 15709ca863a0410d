"""``localrun create NAME -f Modelfile``: a named model from a Modelfile."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from localrun.cli import app, options
from localrun.cli.progress import resolve_or_pull
from localrun.cli.quantize import TYPE_HELP
from localrun.errors import LocalrunError, UsageError

if TYPE_CHECKING:
    from localrun.models.recipes import Recipe


@app.command()
def create(
    name: str = typer.Argument(..., help="The new model's name."),
    file: Path = typer.Option(
        Path("Modelfile"), "-f", "--file", help="The Modelfile. [default: ./Modelfile]"
    ),
    quantize: str | None = typer.Option(
        None, "--quantize", "-q", metavar="TYPE", help="Quantize FROM's weights: " + TYPE_HELP
    ),
    imatrix: Path | None = typer.Option(
        None, "--imatrix", help="With --quantize: an importance matrix (llama-imatrix's)."
    ),
    threads: int | None = options.threads("With --quantize: CPU threads."),
    allow_requantize: bool = typer.Option(
        False, "--allow-requantize", help="With --quantize: from a file as coarse, or coarser."
    ),
) -> None:
    """Create a model from a Modelfile.

    Its FROM is pulled first if it is a Hub reference. With --quantize, the model gets its own
    quantized copy of FROM's weights (removed with it by 'localrun rm').
    """
    from localrun.models import recipes
    from localrun.remote import registry

    if quantize is None and (imatrix is not None or allow_requantize or threads is not None):
        raise UsageError(
            "--imatrix, --threads and --allow-requantize go with --quantize",
            "add --quantize TYPE",
        )
    recipe = recipes.create(name, file)
    try:
        remote = registry.find(recipe.modelfile.from_) is not None  # a remote is a base too
        if remote and quantize is not None:
            raise UsageError(
                "a model FROM a remote engine has no weights here to quantize",
                "drop --quantize, or create it FROM a local model",
            )
        if not remote:
            base = resolve_or_pull(recipe.modelfile.from_)  # it must exist, or be pulled
            if quantize is not None:
                recipe = _quantized(recipe, base.path, quantize, imatrix, threads,
                                    allow_requantize)  # fmt: skip
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


def _quantized(
    recipe: Recipe,
    base: Path,
    type_name: str,
    imatrix: Path | None,
    threads: int | None,
    allow_requantize: bool,
) -> Recipe:
    """``recipe`` with its own copy of ``base`` quantized to ``type_name``."""
    from localrun.backend.llamacpp.quantize import file_type
    from localrun.cli.quantize import quantize_shown
    from localrun.models import recipes

    target = recipes.quantized_path(recipe.name, file_type(type_name)[0])
    quantize_shown(
        base, target, type_name, imatrix=imatrix, threads=threads, allow_requantize=allow_requantize
    )
    return recipes.set_weights(recipe, target)
