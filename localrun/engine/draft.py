"""A draft model: a smaller model with the same vocabulary guesses what the model will write.

The engine thread owns it, as it owns the model. Each step, before the model's batch, the
draft reads what each guessing sequence has added since the last step (the tokens the model
kept, in one batch for all of them), then guesses one token a pass, all sequences together,
until a sequence has its ``k`` guesses or the draft is less sure of the next one than
``P_MIN``. Its guesses are its most likely tokens, so the engine's check (sample the model's
row, keep the guess while they agree) keeps exactly the model's own distribution: this is the
standard rule (accept with probability min(1, p/q), else draw from what is left) for a
draft whose distribution q puts all its weight on one token.

Its cache keeps, per sequence slot, the tokens it has read; a guess the model did not keep is
cut off at the next step, when the text it read is compared with the sequence's text.
"""

from __future__ import annotations

from localrun.backend import Model, StepModel
from localrun.errors import ModelLoadError

P_MIN = 0.5  # the draft stops guessing at a token it gives less than this probability


def check_vocabulary(model: Model, draft: Model, name: str) -> None:
    """Raise if ``draft`` (called ``name``) cannot guess for ``model``: a guess is a token
    id, so both must give every id the same text, and begin and end a text alike."""
    fix = "use a draft model of the same family, which shares the model's vocabulary"
    if draft.n_vocab != model.n_vocab:
        raise ModelLoadError(
            f"the draft model {name} has {draft.n_vocab} tokens, the model {model.n_vocab}", fix
        )
    if (draft.bos_token, draft.eos_token) != (model.bos_token, model.eos_token):
        raise ModelLoadError(
            f"the draft model {name} begins or ends a text with other tokens than the model",
            fix,
        )
    for token in range(model.n_vocab):
        if draft.token_text(token) != model.token_text(token):
            raise ModelLoadError(
                f"the draft model {name} gives token {token} another text than the model "
                f"({draft.token_text(token)!r}, not {model.token_text(token)!r})",
                fix,
            )


def common_prefix(a: list[int], b: list[int]) -> int:
    """How many tokens ``a`` and ``b`` share from their start."""
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


class Drafter:
    """The draft model and what its cache holds for each sequence slot."""

    def __init__(self, model: StepModel, *, seq_ctx: int, p_min: float = P_MIN) -> None:
        self.model = model
        self.seq_ctx = seq_ctx  # the most positions one sequence may hold
        self.p_min = p_min
        self._held: dict[int, list[int]] = {}  # slot -> the tokens its cells hold
        self.read: dict[int, int] = {}  # slot -> tokens of its text read by the last guess
        for slot in range(model.n_seq_max):
            model.forget(slot)

    def guess(self, wants: dict[int, tuple[list[int], int]]) -> dict[int, list[int]]:
        """Guesses for each slot in ``wants`` (slot -> (its text so far, the most guesses)).

        A slot whose text the draft has not read yet (a new prompt: the step's batch takes
        at most ``n_batch`` rows) reads part of it now and guesses at a later step."""
        model = self.model
        rows: list[tuple[int, int, int, bool]] = []  # (token, position, slot, logits)
        last: dict[int, int] = {}  # slot -> its row with logits
        budget = model.n_batch
        self.read = {}
        for slot, (text, k) in wants.items():
            if len(text) + k > self.seq_ctx:
                continue  # past the draft's context: no guesses
            held = self._held.setdefault(slot, [])
            n = min(common_prefix(held, text), len(text) - 1)
            if n < len(held) and not model.trim(slot, n):
                model.forget(slot)  # no suffix to drop (a recurrent draft): read it all again
                n = 0
            del held[n:]
            take = min(len(text) - n, budget)
            if take <= 0:
                break
            for i in range(take):
                rows.append((text[n + i], n + i, slot, n + i == len(text) - 1))
            held.extend(text[n : n + take])
            self.read[slot] = take
            budget -= take
            if n + take == len(text):
                last[slot] = len(rows) - 1
        if not rows or not self._decode(rows, keep=set(wants)):
            return {}
        guesses: dict[int, list[int]] = {}
        for slot, row in last.items():
            token, p = model.best(row)
            if p >= self.p_min and wants[slot][1] > 0:
                guesses[slot] = [token]
        going = [s for s in guesses if len(guesses[s]) < wants[s][1]]
        while going:
            step = [(guesses[s][-1], len(self._held[s]), s, True) for s in going]
            if not self._decode(step, keep=set(wants)):
                break
            sure = []
            for i, slot in enumerate(going):
                self._held[slot].append(guesses[slot][-1])
                token, p = model.best(i)
                if p >= self.p_min:
                    guesses[slot].append(token)
                    sure.append(slot)
            going = [s for s in sure if len(guesses[s]) < wants[s][1]]
        return guesses

    def _decode(self, rows: list[tuple[int, int, int, bool]], keep: set[int]) -> bool:
        """Decode ``rows``; when the cache is full, drop the slots not in ``keep`` and try
        once more. False (and the fed slots forgotten) if there is still no room."""
        args = [list(column) for column in zip(*rows, strict=True)]
        rc = self.model.decode_rows(*args)
        if rc == 1:
            for slot in [s for s in self._held if s not in keep]:
                self.model.forget(slot)
                del self._held[slot]
            rc = self.model.decode_rows(*args)
        if rc == 1:
            for slot in {r[2] for r in rows}:
                self.model.forget(slot)
                self._held.pop(slot, None)
            return False
        return True
