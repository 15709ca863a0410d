"""``localrun bench MODEL``: prefill and decode speed, like llama-bench."""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING

import typer

from localrun.cli import app, options
from localrun.cli.output import table
from localrun.system import physical_cores

if TYPE_CHECKING:
    from localrun.remote.registry import Remote


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
    model: str = options.model(),
    prefill: str = typer.Option("512", "-p", "--prefill", help="Prompt sizes, e.g. 128,512."),
    decode: str = typer.Option("128", "-n", "--decode", help="Tokens to generate, e.g. 128."),
    repetitions: int = typer.Option(5, "-r", "--repetitions", min=1, max=1000, help="Repetitions."),
    threads: int | None = options.threads(),
    ctx_size: int | None = options.ctx(),
    gpu_layers: str | None = options.gpu_layers(),
    as_json: bool = options.as_json("Print one JSON object."),
    parallel: str | None = typer.Option(
        None,
        "--parallel",
        help="Sequences at once, e.g. 1,2,4,8: aggregate tokens/s through the batching engine "
        "(a remote engine: concurrent streams, up to 256).",
    ),
    endpoint: str | None = options.endpoint("Measure MODEL on this OpenAI-compatible server."),
    kv_type: str = options.kv_type("The KV cache's type: f16, q8_0, q4_0.", default="f16"),
    flash_attn: str = options.flash_attn("Flash attention: auto, on, off.", default="auto"),
    rpc: str | None = options.rpc(
        "Split the model's layers with these RPC workers ('localrun worker'), as run does."
    ),
) -> None:
    """Measure prefill and decode speed.

    Prefill and decode tokens/s, TTFT and load time, as mean and standard deviation.
    """
    from localrun.cli.progress import resolve_or_pull
    from localrun.cli.target import remote_named
    from localrun.engine.bench import BenchConfig, run, run_parallel
    from localrun.engine.workers import parse_endpoints

    remote = remote_named(model, endpoint)
    if remote is not None and rpc:
        raise typer.BadParameter("--rpc is for local models: a remote engine has its own devices")
    if remote is not None:
        _bench_remote(remote, parallel, decode, as_json)
        return
    sizes = _sizes(parallel) if parallel is not None else ()
    if parallel is not None and (not sizes or any(not 1 <= n <= 64 for n in sizes)):
        raise typer.BadParameter("--parallel takes sequence counts from 1 to 64, e.g. 1,4,8")

    from localrun.engine.options import check_kv

    check_kv(kv_type, flash_attn)
    resolve_or_pull(model)  # a Hub model is pulled before the clock starts
    config = BenchConfig(
        model=model,
        prefill=_sizes(prefill),
        decode=_sizes(decode),
        repetitions=repetitions,
        threads=threads or physical_cores(),
        n_ctx=ctx_size,
        gpu_layers=options.gpu_layers_value(gpu_layers) or "auto",
        workers=parse_endpoints(rpc) if rpc else (),
        kv_type=kv_type,
        flash_attn=flash_attn,
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


def _bench_remote(remote: Remote, parallel: str | None, decode: str, as_json: bool) -> None:
    """Concurrent streams against a remote engine: what a deployment serves under load."""
    import openai  # noqa: F401 - imported before the clock starts, not in the first stream

    from localrun.engine.loadbench import measure
    from localrun.remote.answerer import RemoteAnswerer

    counts = _sizes(parallel) if parallel is not None else (1,)
    if not counts or any(not 1 <= n <= 256 for n in counts):
        raise typer.BadParameter("--parallel takes stream counts from 1 to 256, e.g. 1,8,32")
    tokens = _sizes(decode)
    if len(tokens) != 1 or tokens[0] < 1:
        raise typer.BadParameter("-n takes one token count for a remote engine")
    show = sys.stderr.isatty() and not as_json
    say = (lambda s: print(s, file=sys.stderr)) if show else lambda s: None
    loads = measure(lambda n: RemoteAnswerer(remote, parallel=n), counts, tokens[0], say)
    if as_json:
        data = {"model": remote.name, "url": remote.url, "loads": [x.as_dict() for x in loads]}
        print(json.dumps(data, indent=2))
    else:
        header = ("streams", "aggregate t/s", "t/s a stream", "TTFT p50 s", "TTFT p99 s", "errors")
        rows = [
            (
                str(x.streams),
                f"{x.aggregate:.1f}",
                f"{x.stream_rate:.1f}",
                f"{x.ttft_p50_s:.3f}",
                f"{x.ttft_p99_s:.3f}",
                str(x.errors),
            )
            for x in loads
        ]
        print(table(header, rows))
    if any(x.errors for x in loads):
        raise typer.Exit(1)
