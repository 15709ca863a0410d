"""Each answer token's log probability, and the likeliest alternatives at its place.

Over the whole vocabulary, from the logits as the model gave them, before any sampler
(penalties, a grammar, the first cut over the best candidates) touched them: what llama-server
reports by default and vLLM calls raw logprobs, so that a token the sampler forbade still
shows its probability, and an eval harness gets the model's own distribution. The sum of
exponentials is taken in double precision, as llama-perplexity does.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from localrun.engine.types import Logprobs, TokenProb

MAX_TOP = 20  # OpenAI's most top_logprobs (llama-server and vLLM allow more; 20 is plenty)


def of_row(logits: Sequence[float], token: int, top: int) -> tuple[float, list[tuple[int, float]]]:
    """``token``'s log probability under ``logits`` (one row), and the ``top`` likeliest
    tokens with theirs, likeliest first (equal ones by id)."""
    import numpy as np

    row: Any = np.frombuffer(logits, np.float32) if not isinstance(logits, np.ndarray) else logits  # type: ignore[call-overload]
    best = float(row.max())
    norm = best + math.log(float(np.exp(row - best).sum(dtype=np.float64)))
    found: list[tuple[int, float]] = []
    if top > 0:
        n = min(top, row.size)
        ids = np.argpartition(row, row.size - n)[row.size - n :]
        ids = ids[np.lexsort((ids, -row[ids]))]
        found = [(int(i), float(row[i]) - norm) for i in ids]
    return float(row[token]) - norm, found


def logprobs(model: Any, row: int, token: int, top: int) -> Logprobs:
    """The sampled ``token``'s entry from ``model``'s logits of ``row`` (a StepModel)."""
    chosen, alternatives = of_row(model.logits(row), token, top)

    def prob(t: int, lp: float) -> TokenProb:
        return TokenProb(t, model.piece(t, True), lp)

    return Logprobs(prob(token, chosen), tuple(prob(t, lp) for t, lp in alternatives))
