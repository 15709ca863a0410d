"""What the speculative-decoding tests share: a model that records each verify pass, and the
check that greedy answers are made of the model's own choices only."""

from __future__ import annotations

from typing import Any

import numpy as np


class Recorder:
    """A model that writes down each step it decodes and each row sampled after it."""

    def __init__(self, model: Any) -> None:
        self._model = model
        # Per step: the tokens fed, and per sampled row (row, token, argmax, top-two gap).
        self.steps: list[tuple[list[int], list[tuple[int, int, int, float]]]] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._model, name)

    def decode_rows(self, tokens: list[int], *args: Any) -> int:
        rc = int(self._model.decode_rows(tokens, *args))
        if rc == 0:
            self.steps.append((list(tokens), []))
        return rc

    def sample(self, chain: object, row: int) -> int:
        logits = np.array(self._model.logits(row), dtype=np.float32)
        second, first = np.partition(logits, -2)[-2:]
        token = int(self._model.sample(chain, row))
        self.steps[-1][1].append((row, token, int(logits.argmax()), float(first - second)))
        return token


def check_greedy_rule(recorder: Recorder, answer: list[int], accepted: int) -> int:
    """Assert that every answer token is its verify pass's argmax and that a row was checked
    only after its guess was chosen; return how many passes checked guesses."""
    emitted: list[int] = []
    kept = guessing = 0
    for fed, samples in recorder.steps:
        for i, (row, token, best, _) in enumerate(samples):
            assert token == best, "a token that was not the model's own choice"
            emitted.append(token)
            if i + 1 < len(samples):
                assert samples[i + 1][0] == row + 1
                assert fed[row + 1] == token, "a row checked after a guess that was not kept"
                kept += 1
        if samples and len(fed) > samples[0][0] + 1:
            guessing += 1
    assert emitted == answer
    assert kept == accepted
    return guessing
