"""Embeddings and rerank at the edge: OpenAI's ``/v1/embeddings`` (the vectors as floats or
base64), the Jina/Cohere ``/v1/rerank`` shape llama-server and vLLM serve, and the rules both
APIs share (Ollama's ``truncate``, Matryoshka ``dimensions``)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from localrun.errors import PromptTooLongError, UsageError
from localrun.server import fields

if TYPE_CHECKING:
    from localrun.backend import Model

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


def end_tokens(model: Model) -> list[int]:
    """The special tokens the model's tokenizer puts after a text ([SEP], EOS): what is kept
    at the end of a text cut to the context. Found by tokenizing a word with and without
    them (a vocabulary's BOS may be its EOS, as Qwen's is)."""
    plain = model.tokenize("a", add_special=False, parse_special=False)
    full = model.tokenize("a", add_special=True, parse_special=False)
    for i in range(len(full) - len(plain) + 1):
        if full[i : i + len(plain)] == plain:
            return full[i + len(plain) :]
    return []


def cut(tokens: list[int], limit: int, ending: list[int] | None) -> list[int]:
    """A text's tokens cut to ``limit`` as Ollama cuts them: its first ones, then the special
    tokens the tokenizer puts at a text's end (``ending``: [SEP], EOS), so that the model still
    reads a whole input. ``ending`` None: a text too long is refused (``truncate: false``)."""
    if len(tokens) <= limit:
        return tokens
    if ending is None:
        raise PromptTooLongError(
            f"the input is {len(tokens)} tokens but the context holds only {limit}",
            "shorten it, or let the server cut it (truncate: true)",
        )
    keep = limit - len(ending) if tokens[-len(ending) :] == ending else limit
    return tokens[:keep] + tokens[len(tokens) - (limit - keep) :]


def normalized(vector: list[float], dimensions: int | None = None) -> list[float]:
    """``vector`` cut to its first ``dimensions`` (Matryoshka), then scaled to length 1, as
    llama-embedding's default ``--embd-normalize 2`` scales it."""
    if dimensions is not None and dimensions < len(vector):
        vector = vector[:dimensions]
    norm = math.sqrt(sum(x * x for x in vector))
    return [x / norm for x in vector] if norm else vector


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
    order = sorted(range(len(scores)), key=lambda i: -scores[i])[: top_n or len(scores)]
    results: list[Obj] = []
    for i in order:
        result: Obj = {"index": i, "relevance_score": scores[i]}
        if with_text:
            result["document"] = {"text": documents[i]}
        results.append(result)
    usage = {"prompt_tokens": tokens, "total_tokens": tokens}
    return {"object": "list", "model": name, "results": results, "usage": usage}
