"""Embeddings and rerank at the edge: OpenAI's ``/v1/embeddings`` (the vectors as floats or
base64) and the Jina/Cohere ``/v1/rerank`` shape llama-server and vLLM serve. The rules the
command line shares (Ollama's ``truncate``, the scaling, the order) are
:mod:`localrun.engine.embeds`'."""

from __future__ import annotations

from typing import Any

from localrun.engine.embeds import ranked
from localrun.errors import UsageError
from localrun.server import fields

Obj = dict[str, Any]


def embedding_request(body: dict[str, Any]) -> tuple[str, list[str], str]:
    """``/v1/embeddings``' model, texts and encoding (float or base64)."""
    name = fields.model_name(body)
    texts = fields.texts(
        body.get("input"),
        "input",
        allow_empty=False,
        hint="token arrays are not supported: send the text",
    )
    encoding = fields.get(body, "encoding_format", str, "float")
    if encoding not in ("float", "base64"):
        raise UsageError(f"'encoding_format' cannot be {encoding!r}", "use float or base64")
    return name, texts, encoding


def embeddings(name: str, vectors: list[list[float]], encoding: str, tokens: int) -> Obj:
    """``/v1/embeddings``' answer."""
    data = [
        {"object": "embedding", "index": i, "embedding": _encoded(v, encoding)}
        for i, v in enumerate(vectors)
    ]
    usage = {"prompt_tokens": tokens, "total_tokens": tokens}
    return {"object": "list", "data": data, "model": name, "usage": usage}


def _encoded(vector: list[float], encoding: str) -> list[float] | str:
    """A vector as floats, or as base64 of its little-endian float32s (what the openai
    client asks for by default)."""
    if encoding == "float":
        return vector
    import array
    import base64
    import sys

    floats = array.array("f", vector)
    if sys.byteorder != "little":
        floats.byteswap()
    return base64.b64encode(floats.tobytes()).decode()


def rerank_request(body: dict[str, Any]) -> tuple[str, str, list[str], int | None, bool]:
    """``/v1/rerank``'s model, query, documents, top_n and return_documents."""
    name = fields.model_name(body)
    query = fields.get(body, "query", str, "")
    if not query:
        raise UsageError("'query' is required", "send the text to rank the documents by")
    raw = body.get("documents")
    if isinstance(raw, list):  # Cohere's and Jina's documents may be {"text": ...} objects
        raw = [d.get("text") if isinstance(d, dict) else d for d in raw]
    documents = fields.texts(raw, "documents", allow_empty=False)
    top_n = fields.get(body, "top_n", int)
    if top_n is not None and top_n < 1:
        raise UsageError("'top_n' must be at least 1")
    return name, query, documents, top_n, fields.get(body, "return_documents", bool, True)


def reranked(
    name: str, documents: list[str], scores: list[float], top_n: int | None, with_text: bool,
    tokens: int,
) -> Obj:  # fmt: skip
    """``/v1/rerank``'s answer: the documents by relevance, most relevant first."""
    results: list[Obj] = []
    for i in ranked(scores, top_n):
        result: Obj = {"index": i, "relevance_score": scores[i]}
        if with_text:
            result["document"] = {"text": documents[i]}
        results.append(result)
    usage = {"prompt_tokens": tokens, "total_tokens": tokens}
    return {"object": "list", "model": name, "results": results, "usage": usage}
