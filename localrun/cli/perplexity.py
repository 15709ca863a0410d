"""``localrun perplexity MODEL FILE``: how well a model predicts a text (lower is better)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer

from localrun.cli import app, options

DEFAULT_CTX = 512  # the window llama-perplexity is usually run with (-c 512)
# The usual texts are a few MB (wikitext-2's test split is 1.3 MB); the whole text is
# tokenized at once, about a quarter of a million tokens a MB, so the cap bounds that too.
MAX_TEXT_BYTES = 100 * 1000**2


@app.command()
def perplexity(
    model: str = options.model(),
    file: Path = typer.Argument(..., help="A text file (UTF-8)."),
    ctx_size: int = options.ctx(
        "Window size in tokens (each scores its second half).", default=DEFAULT_CTX, least=8
    ),
    compare: str | None = typer.Option(
        None, "--compare", metavar="OTHER", help="Also OTHER on the same text, and the ratio."
    ),
    windows: int | None = typer.Option(
        None, "--windows", min=1, help="At most this many windows (default: the whole text)."
    ),
    threads: int | None = options.threads(),
    gpu_layers: str | None = options.gpu_layers(),
    as_json: bool = options.as_json(),
) -> None:
    """Measure a model's perplexity over a text, as llama-perplexity does.

    Windows of --ctx tokens, each scoring its second half; lower is better. With --compare,
    two models (a quantization and its source, say) on the same text.
    """
    from localrun import engine
    from localrun.cli.progress import counting, resolve_or_pull
    from localrun.engine.perplexity import perplexity as measure
    from localrun.errors import UsageError
    from localrun.files import read_capped
    from localrun.system import physical_cores

    hint = "give a UTF-8 text file"
    try:
        text = read_capped(file, MAX_TEXT_BYTES, "the text file", hint).decode("utf-8")
    except UnicodeDecodeError:
        raise UsageError(f"cannot read {file}: not UTF-8 text", hint) from None
    if not text.strip():
        raise UsageError(f"the text file {file} is {'blank' if text else 'empty'}", hint)
    names = [model] + ([compare] if compare is not None else [])
    paths = [resolve_or_pull(name).path for name in names]  # pulled before the clock starts
    results = []
    for name, path in zip(names, paths, strict=True):
        loaded = engine.load_model(
            name,
            n_ctx=ctx_size,
            n_threads=threads or physical_cores(),
            gpu_layers=options.gpu_layers_value(gpu_layers) or "auto",
            path=path,
        )
        try:
            with counting(name, "windows", quiet=as_json) as advance:
                results.append(measure(
                    loaded, text, ctx_size, max_windows=windows,
                    progress=lambda done, total, ppl: advance(done, total, f"PPL {ppl:.3f}"),
                ))  # fmt: skip
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
