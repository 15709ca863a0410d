"""``localrun perplexity MODEL FILE``: how well a model predicts a text (lower is better)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import typer

from localrun.cli import app
from localrun.cli.run import gpu_layers_value, parse_gpu_layers

DEFAULT_CTX = 512  # the window llama-perplexity is usually run with (-c 512)


@app.command()
def perplexity(
    model: str = typer.Argument(..., help="A model, as for run."),
    file: Path = typer.Argument(..., help="A text file (UTF-8)."),
    ctx_size: int = typer.Option(
        DEFAULT_CTX, "--ctx", min=8, help="Window size in tokens (each scores its second half)."
    ),
    compare: str | None = typer.Option(
        None, "--compare", metavar="OTHER", help="Also OTHER on the same text, and the ratio."
    ),
    windows: int | None = typer.Option(
        None, "--windows", min=1, help="At most this many windows (default: the whole text)."
    ),
    threads: int | None = typer.Option(
        None, "--threads", min=1, max=512, help="CPU threads (default: the physical cores)."
    ),
    gpu_layers: str | None = typer.Option(
        None, "--gpu-layers", callback=parse_gpu_layers, help="auto, all or N. [default: auto]"
    ),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Measure a model's perplexity over a text, as llama-perplexity does.

    Windows of --ctx tokens, each scoring its second half; lower is better. With --compare,
    two models (a quantization and its source, say) on the same text.
    """
    from localrun import engine
    from localrun.cli.progress import resolve_or_pull
    from localrun.engine.perplexity import perplexity as measure
    from localrun.errors import UsageError
    from localrun.system import physical_cores

    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        reason = getattr(e, "strerror", None) or "not UTF-8 text"
        raise UsageError(f"cannot read {file}: {reason}", "give a UTF-8 text file") from None
    names = [model] + ([compare] if compare is not None else [])
    paths = [resolve_or_pull(name).path for name in names]  # pulled before the clock starts
    results = []
    for name, path in zip(names, paths, strict=True):
        loaded = engine.load_model(
            name,
            n_ctx=ctx_size,
            n_threads=threads or physical_cores(),
            gpu_layers=gpu_layers_value(gpu_layers) or "auto",
            path=path,
        )
        try:
            with _bar(name, as_json) as advance:
                results.append(measure(loaded, text, ctx_size, max_windows=windows,
                                       progress=advance))  # fmt: skip
        finally:
            loaded.close()
    if as_json:
        data: Any = results[0].as_dict() if len(results) == 1 else {
            "results": [r.as_dict() for r in results],
            "ratio": results[1].ppl / results[0].ppl,
        }  # fmt: skip
        print(json.dumps(data, indent=2))
        return
    for r in results:
        print(
            f"{r.model}: PPL = {r.ppl:.4f} +/- {r.error:.4f} ({r.scored} tokens scored in "
            f"{r.windows} windows of {r.n_ctx}; {r.tokens_per_s:.1f} tok/s)"
        )
    if len(results) == 2:
        a, b = results
        print(f"{b.model} / {a.model}: {b.ppl / a.ppl:.4f} ({(b.ppl / a.ppl - 1) * 100:+.2f}%)")


class _bar:
    """A progress bar over the windows on a terminal's stderr, with the running estimate."""

    def __init__(self, name: str, quiet: bool) -> None:
        self.name = name
        self.show = sys.stderr.isatty() and not quiet
        self.progress: Any = None

    def __enter__(self) -> Any:
        if not self.show:
            return lambda done, total, ppl: None
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

        self.progress = Progress(
            "[progress.description]{task.description}",
            BarColumn(),
            MofNCompleteColumn(),
            "windows",
            TimeRemainingColumn(),
            console=Console(stderr=True),
            transient=True,
        )
        self.progress.__enter__()
        task = self.progress.add_task(self.name, total=None)

        def advance(done: int, total: int, ppl: float) -> None:
            self.progress.update(
                task, completed=done, total=total, description=f"{self.name} PPL {ppl:.3f}"
            )

        return advance

    def __exit__(self, *exc: object) -> None:
        if self.progress is not None:
            self.progress.__exit__(None, None, None)
