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

from dataclasses import dataclass

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


PROBE = 4  # answer tokens decoded plainly first: the pace that guessing must beat
JUDGE = 3  # steps with guesses before guessing is judged against it (where it loses, it
# loses by far: a few steps tell, and each trial costs what its steps lose)
MARGIN = 0.9  # guessing pauses when it is slower than this share of the plain pace
WINDOW_TOKENS = 64  # the pace is of about the last this many tokens each way


@dataclass
class Pace:
    """How fast one answer comes with guesses and without, from its own decode steps.

    Guesses can be often right and still not pay: a draft model whose pass costs half the
    model's, or many rows a step on a backend where they cost much more than one. So the
    engine times its steps, and a sequence guesses only while that is the faster way.
    """

    plain_s: float = 0.0
    plain_n: float = 0.0
    guess_s: float = 0.0
    guess_n: float = 0.0
    guess_steps: int = 0  # steps with guesses since the last judgement
    losses: int = 0  # times guessing was found the slower: each pause is twice the last

    def add(self, guessed: bool, seconds: float, tokens: int) -> None:
        """One decode step: its time, and the answer tokens it gave this sequence."""
        if guessed:
            self.guess_s, self.guess_n = self.guess_s + seconds, self.guess_n + tokens
            self.guess_steps += 1
            if self.guess_n > WINDOW_TOKENS:
                self.guess_s, self.guess_n = self.guess_s / 2, self.guess_n / 2
        else:
            self.plain_s, self.plain_n = self.plain_s + seconds, self.plain_n + tokens
            if self.plain_n > WINDOW_TOKENS:
                self.plain_s, self.plain_n = self.plain_s / 2, self.plain_n / 2

    @property
    def probing(self) -> bool:
        """Whether the plain pace is still being measured (guessing waits for it)."""
        return self.plain_n < PROBE

    def pause(self) -> int:
        """Steps to decode plainly now, if guessing has been measurably slower; else 0."""
        if self.guess_steps < JUDGE or self.plain_n < PROBE or self.guess_s <= 0:
            return 0
        if self.guess_n / self.guess_s >= MARGIN * self.plain_n / max(self.plain_s, 1e-9):
            return 0
        self.losses += 1
        self.guess_s = self.guess_n = 0.0
        self.guess_steps = 0
        return int(min(64 * 2 ** (self.losses - 1), 1024))
