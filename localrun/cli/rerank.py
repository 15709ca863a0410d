"""``localrun rerank MODEL QUERY < docs``: standard input's lines ranked by a reranker (rank
pooling: bge-reranker, Qwen3-Reranker), most relevant first, as JSON lines."""

from __future__ import annotations

import json
import sys

import typer

from localrun.cli import app, options


@app.command()
def rerank(
    model: str = options.model("A reranker, as for run."),
    query: str = typer.Argument(..., help="The text to rank the documents by."),
    top_n: int | None = typer.Option(None, "--top-n", min=1, help="Print only the N best."),
    ctx_size: int | None = options.ctx(),
    threads: int | None = options.threads(),
) -> None:
    """Rank the documents on standard input (one a line) by relevance to QUERY.

    Prints one JSON object a line, most relevant first: index (the line's, from 0),
    relevance_score (the reranker's raw score) and document, as /v1/rerank answers.
    """
    from localrun.cli.embed import _load, vectors
    from localrun.cli.progress import resolve_or_pull
    from localrun.engine.embeds import ranked
    from localrun.errors import UsageError

    if sys.stdin.isatty():
        raise UsageError(
            "no documents to rank", "pipe them in, one a line: localrun rerank M Q < docs"
        )
    documents = [line.rstrip("\n") for line in sys.stdin if line.strip()]
    if not documents:
        raise UsageError("no documents to rank: standard input is empty", "pipe one a line")
    loaded = _load(model, resolve_or_pull(model).path, ctx_size, threads)
    try:
        scores = [v[0] for v in vectors(loaded, documents, query=query)]
    finally:
        loaded.close()
    for i in ranked(scores, top_n):
        line = {"index": i, "relevance_score": scores[i], "document": documents[i]}
        print(json.dumps(line, ensure_ascii=False))
