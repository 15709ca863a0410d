"""OpenAI's ``/v1/embeddings``: a request's texts, and the vectors as floats or base64."""

from __future__ import annotations

from typing import Any

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
