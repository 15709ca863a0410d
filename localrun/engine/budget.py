"""A thinking budget: after so many tokens of a reasoning trace, the engine closes the trace.

As llama.cpp's ``--reasoning-budget`` does: the sequence watches its own tokens for the
trace's opening and closing markers (as token ids: ``<think>`` and ``</think>`` are one
token each in the models that write them), counts the trace's tokens, and once the budget
is spent, the next tokens it takes are the closing marker's instead of sampled ones. The
model then writes its answer after a trace it did not finish, which is what a user who set
a budget asked for.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Budget:
    """What a request asks: at most ``most`` trace tokens; the markers as token ids; whether
    the prompt already opened the trace (the template wrote ``<think>``)."""

    most: int
    start: tuple[int, ...]
    end: tuple[int, ...]
    open: bool = False


@dataclass
class Spending:
    """A sequence's trace, as its tokens come: inside it or not, tokens spent, and the
    closing marker's tokens still to force."""

    budget: Budget
    inside: bool = False
    closed: bool = False
    spent: int = 0
    forcing: list[int] = field(default_factory=list)

    @classmethod
    def of(cls, budget: Budget) -> Spending:
        spending = cls(budget, inside=budget.open)
        spending._check()
        return spending

    def forced(self) -> int | None:
        """The token to take next instead of sampling one, if the budget is spent."""
        return self.forcing.pop(0) if self.forcing else None

    def took(self, generated: list[int]) -> None:
        """The sequence took its last token (the end of ``generated``)."""
        if self.closed:
            return
        budget = self.budget
        if not self.inside:
            if _ends_with(generated, budget.start):
                self.inside = True
                self._check()
            return
        if _ends_with(generated, budget.end):
            self.inside, self.closed, self.forcing = False, True, []
            return
        if not self.forcing:
            self.spent += 1
            self._check()

    def _check(self) -> None:
        if self.inside and not self.forcing and self.spent >= self.budget.most:
            self.forcing = list(self.budget.end)


def _ends_with(tokens: list[int], tail: tuple[int, ...]) -> bool:
    return bool(tail) and len(tokens) >= len(tail) and tuple(tokens[-len(tail) :]) == tail
