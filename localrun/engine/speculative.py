"""Guesses for speculative decoding: tokens cheap to propose, which the model then checks.

A decode step reads all the weights for one token; checking k guessed tokens in the same
step costs about as much. When the guesses are often right, an answer advances several tokens
a step. The engine's :class:`~localrun.engine.speculator.Speculator` verifies them: it samples
each checked row with the sequence's own chain, in order, and keeps a guess only when the
sampled token is the guess. For a guess made without a distribution of its own (as here),
that keeps exactly the distribution of plain decoding: the sampled token is accepted with its
own probability, and when it is not the guess it is already a draw from what is left.
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


JUDGE = 6  # steps with guesses before guessing is judged: an answer's first guesses are often
# wrong (nothing to copy yet), and a pause then (16 steps, twice as long each time after)
# would miss the copying that follows
MARGIN = 0.9  # guessing pauses when it gains less than this: tokens per plain step's cost
WINDOW_STEPS = 64.0  # the gain is of about the last this many steps' worth
# What checking one guessed row adds to a step, as a share of a plain one-row step. Counted,
# never timed: how many rows a step decodes changes llama.cpp's arithmetic (from 4 rows its
# CPU kernels round differently), so a decision taken from wall-clock times gave the same
# greedy request different texts from one run to the next. Measured on the demo model on
# this CPU: prompt lookup on a copy task, timed before the count replaced the clock, kept 5.16
# tokens a pass at 2.22 times the plain rate, so a pass of about 6 rows cost 2.3 plain steps:
# 0.26 of a step a row. Another CPU will differ; this errs on neither side by much.
ROW_COST_CPU = 0.25
# Not measured here (no GPU): a GPU reads the weights once for all the rows, and a row's
# arithmetic is small beside that.
ROW_COST_GPU = 0.1


@dataclass
class Pace:
    """How much guessing gains one answer: the tokens its guessing steps gave, against what
    those steps cost in plain steps (each guessed row ``row_cost``, each of the draft model's
    passes ``draft_cost``). A plain step gives 1 token for a cost of 1; a sequence guesses
    only while guessing gives more. Counts only, so the same request decides the same way
    every time."""

    row_cost: float = ROW_COST_CPU
    draft_cost: float = 0.0  # one pass of the draft model, as a share of the model's
    gained: float = 0.0
    cost: float = 0.0
    guess_steps: int = 0  # steps with guesses since the last judgement
    losses: int = 0  # times guessing was found the slower: each pause is twice the last

    def add(self, drafted: int, tokens: int) -> None:
        """One step in which the sequence checked ``drafted`` guesses and gained ``tokens``."""
        self.gained += tokens
        self.cost += 1.0 + drafted * (self.row_cost + self.draft_cost)
        self.guess_steps += 1
        if self.cost > WINDOW_STEPS:
            self.gained, self.cost = self.gained / 2, self.cost / 2

    def pause(self) -> int:
        """Steps to decode plainly now, if guessing has gained less than plain steps would;
        else 0."""
        if self.guess_steps < JUDGE or self.cost <= 0 or self.gained >= MARGIN * self.cost:
            return 0
        self.losses += 1
        self.gained = self.cost = 0.0
        self.guess_steps = 0
        return int(min(16 * 2 ** (self.losses - 1), 1024))
