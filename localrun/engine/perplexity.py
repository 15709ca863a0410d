"""Perplexity over a text, computed as llama.cpp's ``llama-perplexity`` computes it.

The text is tokenized whole (with the model's BOS), cut into windows of the context size;
each window starts afresh (an empty KV cache, its first token replaced by BOS when the model
adds one) and scores only its second half, so that every scored token has at least half a
window of context: ``-log p(token | the window before it)`` for each, averaged over all
windows; perplexity is ``exp`` of that mean. The ``±`` is llama-perplexity's too: the standard
error of the mean, carried through ``exp``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import cast

from localrun.backend import StepModel
from localrun.engine.load import LoadedModel
from localrun.errors import UsageError


@dataclass(frozen=True)
class Perplexity:
    """A model's perplexity over a text."""

    model: str
    ppl: float
    error: float  # the standard error, as llama-perplexity gives it
    n_ctx: int
    windows: int
    tokens: int  # of the whole text
    scored: int  # tokens whose probability counted
    seconds: float  # evaluating and scoring (the load apart)
    tokens_per_s: float  # tokens evaluated a second

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def perplexity(
    loaded: LoadedModel,
    text: str,
    n_ctx: int,
    *,
    max_windows: int | None = None,
    progress: Callable[[int, int, float], None] | None = None,
) -> Perplexity:
    """``loaded``'s perplexity over ``text`` in windows of ``n_ctx`` tokens (its context must
    hold one); ``progress(done, windows, ppl so far)`` after each window."""
    model = cast(StepModel, loaded.model)
    tokens = model.tokenize(text, add_special=True, parse_special=False)
    if len(tokens) < 2 * n_ctx:
        raise UsageError(
            f"the text is {_tokens(len(tokens))}: perplexity in windows of {n_ctx} needs at "
            f"least {2 * n_ctx}",
            "give a longer text, or a smaller --ctx",
        )
    if model.n_ctx < n_ctx:
        raise UsageError(
            f"the model's context holds {model.n_ctx} tokens, not {n_ctx}", "use a smaller --ctx"
        )
    bos = model.bos_token
    adds_bos = bool(model.tokenize("", add_special=True, parse_special=False))
    windows = len(tokens) // n_ctx
    if max_windows is not None:
        windows = min(windows, max_windows)
    first = n_ctx // 2
    nll = nll2 = 0.0
    count = 0
    start = time.perf_counter()
    for w in range(windows):
        window = tokens[w * n_ctx : (w + 1) * n_ctx]
        if adds_bos and bos is not None:
            window[0] = bos
        model.forget(0)
        for at in range(0, n_ctx, model.n_batch):
            part = window[at : at + model.n_batch]
            positions = list(range(at, at + len(part)))
            model.decode_rows(part, positions, [0] * len(part), [p >= first for p in positions])
            # Each scored position's logits predict the next token. They are the first of the
            # part's output rows (the window's last position has logits, and nothing to score).
            scored = [p for p in positions if first <= p < n_ctx - 1]
            if scored:
                logps = model.target_log_probs([window[p + 1] for p in scored])
                for lp in logps:
                    nll -= lp
                    nll2 += lp * lp
                count += len(scored)
        if progress is not None:
            progress(w + 1, windows, math.exp(nll / count))
    model.forget(0)
    seconds = time.perf_counter() - start
    mean = nll / count
    variance = nll2 / count - mean * mean
    error = math.sqrt(variance / (count - 1)) if variance > 0 and count > 1 else 0.0
    ppl = math.exp(mean)
    return Perplexity(
        model=loaded.name,
        ppl=ppl,
        error=ppl * error,
        n_ctx=n_ctx,
        windows=windows,
        tokens=len(tokens),
        scored=count,
        seconds=seconds,
        tokens_per_s=windows * n_ctx / seconds if seconds > 0 else 0.0,
    )


def _tokens(n: int) -> str:
    return "1 token" if n == 1 else f"{n:,} tokens"
