"""``localrun embed MODEL [TEXT...]``: each text's embedding as a JSON line, texts from the
arguments or standard input's lines, read many at a pass by an embedding model."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING, cast

import typer

from localrun.cli import app, options

if TYPE_CHECKING:
    from localrun.backend import StepModel
    from localrun.engine.load import LoadedModel

BLOCK = 256  # texts read from standard input before their vectors are printed


@app.command()
def embed(
    model: str = options.model(),
    texts: list[str] | None = typer.Argument(None, help="Texts; without them, stdin's lines."),
    dimensions: int | None = typer.Option(
        None, "--dimensions", min=1, help="Keep the first N values, scaled again (Matryoshka)."
    ),
    no_truncate: bool = typer.Option(
        False, "--no-truncate", help="Refuse a text longer than the context instead of cutting it."
    ),
    ctx_size: int | None = options.ctx(),
    threads: int | None = options.threads(),
) -> None:
    """Print each text's embedding, one JSON array a line, in the texts' order.

    An embedding model (nomic-embed-text, bge, Qwen3-Embedding) pools as its GGUF says; a
    generative model gives the mean of its last hidden states. Vectors have length 1.
    """
    from localrun.cli.progress import resolve_or_pull
    from localrun.errors import UsageError

    if not texts and sys.stdin.isatty():
        raise UsageError("no text to embed", "localrun embed MODEL 'text', or pipe lines in")
    path = resolve_or_pull(model).path
    loaded = _load(model, path, ctx_size, threads)
    try:
        for block in _blocks(texts):
            for vector in vectors(loaded, block, truncate=not no_truncate, dimensions=dimensions):
                print(json.dumps(vector))
    finally:
        loaded.close()


def _load(model: str, path: object, ctx_size: int | None, threads: int | None) -> LoadedModel:
    from pathlib import Path

    from localrun import engine
    from localrun.system import physical_cores

    assert isinstance(path, Path)
    return engine.load_model(
        model, n_ctx=ctx_size, n_threads=threads or physical_cores(), path=path, shared=True
    )


def _blocks(texts: list[str] | None) -> Iterator[list[str]]:
    if texts:
        yield texts
        return
    block: list[str] = []
    for line in sys.stdin:
        block.append(line.rstrip("\n"))
        if len(block) == BLOCK:
            yield block
            block = []
    if block:
        yield block


def vectors(
    loaded: LoadedModel,
    texts: list[str],
    *,
    truncate: bool = True,
    dimensions: int | None = None,
    query: str | None = None,
) -> list[list[float]]:
    """The texts' embeddings from a loaded model (with ``query``: a reranker's raw outputs
    for each text as a document), cut and scaled as the server's (localrun.server.answer)."""
    from localrun.engine.embeds import end_tokens, normalized, text_tokens
    from localrun.errors import UsageError

    model = cast("StepModel", loaded.model)  # llama.cpp's: it embeds
    pooling = model.pooling
    if query is not None and pooling != "rank":
        raise UsageError(f"{loaded.name} is not a reranker", "rerank with a model made for it")
    limit = model.n_batch if pooling is not None else model.n_ctx  # one pass
    ending = end_tokens(model)
    tokens = [text_tokens(model, t, limit, ending, truncate=truncate, query=query) for t in texts]
    if any(not t for t in tokens):
        raise UsageError("a text to embed has no tokens", "give non-empty texts")
    if pooling is not None:
        found = model.embed_batch(tokens)
    else:
        found = [model.embed(t, 0) for t in tokens]
    return found if query is not None else [normalized(v, dimensions) for v in found]
