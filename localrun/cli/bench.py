"""``localrun bench MODEL``: prefill and decode speed, like llama-bench."""

from __future__ import annotations

import json
import sys

import typer

from localrun.cli import app
from localrun.cli.output import table
from localrun.cli.run import gpu_layers_value, parse_gpu_layers
from localrun.system import physical_cores


def _sizes(value: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(v) for v in value.split(",") if v.strip())
    except ValueError:
        raise typer.BadParameter(f"'{value}' is not a comma-separated list of numbers") from None
    if any(n < 0 or n > 10_000_000 for n in sizes):
        raise typer.BadParameter("token counts must be between 0 and 10000000")
    return sizes


@app.command()
def bench(
    model: str = typer.Argument(..., help="A model, as for run."),
    prefill: str = typer.Option("512", "-p", "--prefill", help="Prompt sizes, e.g. 128,512."),
    decode: str = typer.Option("128", "-n", "--decode", help="Tokens to generate, e.g. 128."),
    repetitions: int = typer.Option(5, "-r", "--repetitions", min=1, max=1000, help="Repetitions."),
    threads: int | None = typer.Option(
        None, "--threads", min=1, max=512, help="CPU threads (default: the physical cores)."
    ),
    ctx_size: int | None = typer.Option(None, "--ctx", min=1, help="Context size in tokens."),
    gpu_layers: str | None = typer.Option(
        None, "--gpu-layers", callback=parse_gpu_layers, help="auto, all or N. [default: auto]"
    ),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
    parallel: str | None = typer.Option(
        None,
        "--parallel",
        help="Sequences at once, e.g. 1,2,4,8: aggregate tokens/s through the batching engine.",
    ),
) -> None:
    """Measure prefill and decode speed.

    Prefill and decode tokens/s, TTFT and load time, as mean and standard deviation.
    """
    from localrun.cli.progress import resolve_or_pull
    from localrun.engine.bench import BenchConfig, run, run_parallel

    sizes = _sizes(parallel) if parallel is not None else ()
    if parallel is not None and (not sizes or any(not 1 <= n <= 64 for n in sizes)):
        raise typer.BadParameter("--parallel takes sequence counts from 1 to 64, e.g. 1,4,8")

    resolve_or_pull(model)  # a Hub model is pulled before the clock starts
    config = BenchConfig(
        model=model,
        prefill=_sizes(prefill),
        decode=_sizes(decode),
        repetitions=repetitions,
        threads=threads or physical_cores(),
        n_ctx=ctx_size,
        gpu_layers=gpu_layers_value(gpu_layers) or "auto",
    )
    show = sys.stderr.isatty() and not as_json
    say = (lambda s: print(s, file=sys.stderr)) if show else lambda s: None
    result = run_parallel(config, sizes, say) if sizes else run(config, progress=say)
    if as_json:
        print(json.dumps(result.as_dict(), indent=2))
        return
    rows = [
        (
            model,
            result.placement,
            str(config.threads),
            m.test,
            f"{m.mean:.2f} ± {m.stdev:.2f}",
            f"{sum(m.ttft_s) / len(m.ttft_s):.3f}",
            f"{sum(m.load_s) / len(m.load_s):.3f}",
        )
        for m in result.measures
    ]
    header = ("model", "layers", "threads", "test", "t/s", "TTFT s", "load s")
    if sys.stdout.isatty():
        from rich.console import Console
        from rich.table import Table

        t = Table(*header)
        for row in rows:
            t.add_row(*row)
        Console().print(t)
    else:
        print(table(header, rows))
