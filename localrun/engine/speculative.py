"""Guesses for speculative decoding: tokens cheap to propose, which the model then checks.

A decode step reads all the weights for one token; checking k guessed tokens in the same
step costs about as much. When the guesses are often right, an answer advances several tokens
a step. The engine (:mod:`localrun.engine.batch`) verifies them: it samples each checked row
with the sequence's own chain, in order, and keeps a guess only when the sampled token is the
guess. For a guess made without a distribution of its own (as here), that keeps exactly the
distribution of plain decoding: the sampled token is accepted with its own probability, and
when it is not the guess it is already a draw from what is left.
"""

from __future__ import annotations

from localrun.engine.prompt_cache import token_bytes

LONGEST_NGRAM = 3  # the last 3 tokens first, then 2
WINDOW = 8192  # how far back a match is looked for


def lookup(tokens: list[int], k: int) -> list[int]:
    """Prompt lookup: what followed the most recent earlier occurrence of the text's last
    few tokens (3, else 2), at most ``k`` tokens; none if they occur nowhere before."""
    if k <= 0 or len(tokens) < 3:
        return []
    start = max(0, len(tokens) - WINDOW)
    seen = tokens[start:]
    haystack = token_bytes(seen[:-1])  # the occurrence must end before the text does
    for n in range(LONGEST_NGRAM, 1, -1):
        if len(seen) <= n:
            continue
        needle = token_bytes(seen[-n:])
        end = len(haystack)
        while (at := haystack.rfind(needle, 0, end)) >= 0:
            if at % 4 == 0:  # on a token boundary
                first = at // 4 + n
                follow = seen[first : first + k]
                if follow:
                    return follow
            end = at + len(needle) - 1
    return []
