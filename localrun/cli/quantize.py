"""``localrun quantize IN OUT TYPE``: a GGUF written at fewer bits a weight."""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from localrun.cli import app, options

TYPE_HELP = "Q4_K_M, Q5_K_M, Q8_0, IQ4_XS... (llama.cpp's names; a wrong one lists them)"


def quantize_shown(
    source: Path,
    target: Path,
    type_name: str,
    *,
    imatrix: Path | None,
    threads: int | None,
    allow_requantize: bool,
) -> None:
    """Quantize ``source`` into ``target`` with a progress bar over its tensors, then say
    what was written, and from what (``quantize`` and ``create --quantize``)."""
    from localrun.cli.progress import counting
    from localrun.engine.quantize import quantize as run_quantize
    from localrun.files import human_size
    from localrun.system import physical_cores

    with counting(type_name.upper(), "tensors") as advance:
        done = run_quantize(
            source, target, type_name, threads=threads or physical_cores(),
            allow_requantize=allow_requantize, imatrix=imatrix, progress=advance,
        )  # fmt: skip
    line = (
        f"wrote {done.path} ({done.type}, {human_size(done.size_after)}, "
        f"{done.bpw_after:.2f} bits a weight; from {done.source_type or 'its source'}, "
        f"{human_size(done.size_before)}, {done.bpw_before:.2f})"
    )
    if done.requantized:
        line += (
            f"\nnote: requantized from {done.source_type}: quantizing the model's F16 or F32 "
            "file loses less"
        )
    print(line, file=sys.stderr)


@app.command()
def quantize(
    source: str = typer.Argument(..., metavar="IN", help="A GGUF file or a model's name."),
    target: Path = typer.Argument(..., metavar="OUT", help="The GGUF file to write."),
    type_name: str = typer.Argument(..., metavar="TYPE", help=TYPE_HELP),
    imatrix: Path | None = typer.Option(
        None, "--imatrix", help="An importance matrix (llama-imatrix's): better low-bit types."
    ),
    threads: int | None = options.threads(),
    allow_requantize: bool = typer.Option(
        False,
        "--allow-requantize",
        help="Quantize a file that is already quantized as coarsely as TYPE, or more.",
    ),
) -> None:
    """Write a model quantized to fewer bits a weight (llama.cpp's quantizer).

    Smaller and faster, at some cost in quality: 'localrun perplexity' measures it.
    """
    from localrun.cli.progress import resolve_or_pull
    from localrun.errors import UsageError

    path = Path(source).expanduser()
    if not path.is_file():
        path = resolve_or_pull(source).path
    out = target.expanduser()
    if out.exists() and out.resolve() == path.resolve():
        raise UsageError("OUT is IN", "write the quantized model to another file")
    if out.is_dir():
        raise UsageError(f"{out} is a directory", "give OUT as a file name, such as m.gguf")
    if out.exists():
        raise UsageError(f"{out} exists already", "remove it first, or give another OUT")
    quantize_shown(
        path, out, type_name, imatrix=imatrix, threads=threads, allow_requantize=allow_requantize
    )
