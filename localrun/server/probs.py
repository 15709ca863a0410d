"""Log probabilities as the APIs ask for them and write them (engine/logprobs.py makes them).

OpenAI's chat completions and Ollama's API ask with a flag and a count (``logprobs: true,
top_logprobs: N``) and write one object a token: its text, its log probability, its bytes,
and the likeliest alternatives. OpenAI's legacy completions ask with the count alone
(``logprobs: N``) and write parallel lists.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from localrun.engine.logprobs import MAX_TOP
from localrun.engine.types import Logprobs, TokenProb
from localrun.errors import UsageError
from localrun.server import fields


def asked(body: dict[str, Any]) -> int | None:
    """``logprobs`` (a bool) and ``top_logprobs`` (0 to 20): the alternatives a token to
    report, None when not asked. A count without the flag is refused, as OpenAI does."""
    wanted = fields.get(body, "logprobs", bool, False)
    top = fields.get(body, "top_logprobs", int)
    if top is not None and not 0 <= top <= MAX_TOP:
        raise UsageError(f"'top_logprobs' must be between 0 and {MAX_TOP}, not {top}")
    if top is not None and not wanted:
        raise UsageError("'top_logprobs' needs 'logprobs': true", "send both, or neither")
    return (top or 0) if wanted else None


def asked_legacy(body: dict[str, Any]) -> int | None:
    """``/v1/completions``' ``logprobs``: a count of alternatives (0 to 20), None when absent."""
    top: int | None = fields.get(body, "logprobs", int)
    if top is not None and not 0 <= top <= MAX_TOP:
        raise UsageError(f"'logprobs' must be between 0 and {MAX_TOP}, not {top}")
    return top


def _text(piece: bytes) -> str:
    return piece.decode("utf-8", errors="replace")


def _one(prob: TokenProb) -> dict[str, Any]:
    return {"token": _text(prob.piece), "logprob": prob.logprob, "bytes": list(prob.piece)}


def entries(probs: Sequence[Logprobs]) -> list[dict[str, Any]]:
    """One object a token, with its alternatives (OpenAI's chat ``content``, Ollama's)."""
    return [_one(p.chosen) | {"top_logprobs": [_one(t) for t in p.top]} for p in probs]


def _top(p: Logprobs) -> dict[str, float]:
    return {_text(t.piece): t.logprob for t in p.top}


def legacy(probs: Sequence[Logprobs], offset: int = 0) -> dict[str, Any]:
    """The legacy completions' lists: each token, its log probability, its alternatives (a
    text-to-log-probability map), and where its text begins in the answer. A prompt's first
    token has no figure (NaN here): null, as OpenAI writes it."""
    offsets, at = [], offset
    for p in probs:
        offsets.append(at)
        at += len(_text(p.chosen.piece))
    known = [(p, math.isfinite(p.chosen.logprob)) for p in probs]
    return {
        "tokens": [_text(p.chosen.piece) for p in probs],
        "token_logprobs": [p.chosen.logprob if k else None for p, k in known],
        "top_logprobs": [_top(p) if k else None for p, k in known],
        "text_offset": offsets,
    }
