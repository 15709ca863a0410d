"""Speculative decoding's one seam in the batching engine: guess before a step, verify after.

Before a step, :meth:`Speculator.guess` gives each decoding sequence that speculates its
guesses (:func:`~localrun.engine.speculative.lookup` in its own text, or a draft model's,
:mod:`localrun.engine.draft`), within the rows and cells the step has to spare; they ride
along in the step's batch. After it, :meth:`Speculator.verify` samples the sequence's rows in
order with its own chain and keeps a guess only while the sampled token is the guess, and
:meth:`Speculator.judge` weighs what guessing gained each sequence
(:class:`~localrun.engine.speculative.Pace`).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import cast

from localrun.backend import StepModel
from localrun.engine.draft import Drafter
from localrun.engine.sequence import Sequence
from localrun.engine.speculative import ROW_COST_CPU, Pace, lookup

# A sequence that guessed this step: it, its answer's length before, and how many it checks.
Guessing = tuple[Sequence, int, int]
# Sample a sequence's row and take the token into its answer; None: its sampling failed
# (the request has failed, the others go on).
Emit = Callable[[Sequence, int], int | None]


class Speculator:
    """Guesses before a step and their check after it, for the sequences that speculate.

    The guesses come from ``drafter`` (a draft model) or, without one, by prompt lookup.
    ``row_cost`` and ``draft_cost`` are what a guess costs in plain steps (a checked row, a
    pass of the draft model): each sequence's :class:`Pace` weighs its gain against them.
    """

    def __init__(
        self,
        model: StepModel,
        drafter: Drafter | None,
        *,
        seq_ctx: int,
        row_cost: float = ROW_COST_CPU,
        draft_cost: float = 0.0,
    ) -> None:
        self.model = model
        self.drafter = drafter
        self.seq_ctx = seq_ctx
        self.row_cost, self.draft_cost = row_cost, draft_cost

    def pace(self) -> Pace:
        """A new request's pace, at this engine's costs."""
        return Pace(self.row_cost, self.draft_cost)

    def guess(self, running: list[Sequence], room: int) -> list[Guessing]:
        """This step's guesses (in each sequence's ``drafts``) for the decoding sequences
        that speculate, within their limits and ``room`` (rows and cells the cache has to
        spare: guessing never pauses another sequence). Returned: the sequences that asked
        for guesses and got some, to judge after the step (not one whose draft first read
        more than a step's worth of its text: that step says nothing of guessing's pace)."""
        asked: dict[int, bool] = {}
        wants: dict[int, tuple[list[int], int]] = {}
        by_slot: dict[int, Sequence] = {}
        for seq in running:
            if not (seq.speculate and seq.prompt_done and len(seq.pending) == 1) or room <= 0:
                continue
            if seq.quiet:
                seq.quiet -= 1
                continue
            k = min(seq.k, room, self.seq_ctx - seq.cached - 2)
            if seq.max_tokens is not None:
                k = min(k, seq.max_tokens - seq.stats.completion_tokens - 1)
            if k <= 0:
                continue
            asked[id(seq)] = True
            if self.drafter is None:
                seq.drafts = lookup(seq.text(), k)
                room -= len(seq.drafts)
            else:
                assert seq.slot is not None
                wants[seq.slot], by_slot[seq.slot] = (seq.text(), k), seq
                room -= k
        if wants:
            assert self.drafter is not None
            for slot, drafts in self.drafter.guess(wants).items():
                by_slot[slot].drafts = drafts
            for slot, read in self.drafter.read.items():
                if read > by_slot[slot].speculate + 1:
                    asked[id(by_slot[slot])] = False
        return [
            (seq, seq.stats.completion_tokens, len(seq.drafts))
            for seq in running
            if asked.get(id(seq)) and seq.drafts
        ]

    def verify(self, seq: Sequence, row: int, emit: Emit) -> None:
        """Sample the rows of a sequence that guessed (from ``row``), in order, with its own
        chain: each token is emitted as plain decoding would have, and a guess is kept only
        while the sampled token is the guess. The cells of the guesses that were not are
        dropped."""
        drafts, seq.drafts = seq.drafts, []
        start = seq.cached - 1 - len(drafts)  # where the step's first row went
        accepted = 0
        for i in range(len(drafts) + 1):
            seq.cached = start + 1 + i  # the cells that hold tokens of the answer
            token = emit(seq, row + i)
            if token is None:
                return
            if seq.finished:
                break
            if i < len(drafts) and token == drafts[i]:
                seq.pending.pop()  # its cell is in the cache already
                accepted += 1
                continue
            break
        self._adapt(seq, len(drafts), accepted)
        if seq.finished:
            return
        slot = cast(int, seq.slot)
        if not self.model.trim(slot, seq.cached):
            self.model.forget(slot)  # cannot drop a suffix: read it all again
            seq.cached, seq.pending = 0, seq.text()

    def judge(self, guessing: list[Guessing]) -> None:
        """After the step: each sequence that guessed weighs what guessing gained it."""
        for seq, before, drafted in guessing:
            seq.pace.add(drafted, seq.stats.completion_tokens - before)
            if not seq.quiet:
                seq.quiet = seq.pace.pause()  # guessing gains too little: plain decoding a while

    @staticmethod
    def _adapt(seq: Sequence, drafted: int, accepted: int) -> None:
        stats = seq.stats
        stats.drafted += drafted
        stats.accepted += accepted
        # All kept: guess more next time (up to the most); else only a little past what was.
        seq.k = min(seq.speculate, 2 * seq.k) if accepted == drafted else accepted + 1
        seq.recent.append((drafted, accepted))
        tried = sum(d for d, _ in seq.recent)
        if tried >= 16 and sum(a for _, a in seq.recent) < 0.25 * tried:
            seq.quiet, seq.recent = 48, deque(maxlen=8)  # seldom right: plain decoding a while
