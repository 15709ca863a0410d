"""What batching does to a sequence's numbers, on the demo model (a real quantized model).

Teacher-forced: one token sequence is fed step by step, alone and as one row among four.
From 4 rows on llama.cpp's CPU backend takes another matrix kernel, so logits move a little;
where the lone run's two best tokens are more than 1 logit apart, the greedy choice must not.
"""

from __future__ import annotations

import numpy as np
import pytest

from localrun.backend import LoadOptions, SamplingParams, StepModel, load

pytestmark = pytest.mark.e2e

STEPS = 48
TEXTS = [
    "The history of the city of Paris begins in the third century before our era, when",
    "Photosynthesis is the process by which green plants turn light into chemical energy",
    "In mathematics, a prime number is a natural number greater than one that has no",
    "The river flows through the valley towards the sea, past farms and small villages",
]


def _rows(model: object) -> list[list[int]]:
    """Each text's first STEPS tokens (the texts, said four times, are long enough)."""
    rows = [
        model.tokenize(" ".join([t] * 4), add_special=True, parse_special=False)[:STEPS]  # type: ignore[attr-defined]
        for t in TEXTS
    ]
    assert all(len(r) == STEPS for r in rows)
    return rows


def _forced(model: StepModel, rows: list[list[int]]) -> list[np.ndarray]:
    """Feed each sequence its tokens one per step; the logits of sequence 0 at every step."""
    seen = []
    for pos in range(STEPS):
        n = len(rows)
        model.decode_rows([r[pos] for r in rows], [pos] * n, list(range(n)), [True] * n)
        seen.append(np.array(model.logits(0), dtype=np.float32))
    return seen


def _lone_and_batched(n_seq: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Sequence 0's logits at every step: fed alone, and as one of ``n_seq`` rows."""
    from localrun.models.demo import demo_model_path

    path = demo_model_path()
    alone = load(LoadOptions(path, n_ctx=256, n_threads=2))
    together = load(LoadOptions(path, n_ctx=256 * n_seq, n_threads=2, n_seq=n_seq))
    try:
        rows = _rows(alone)
        return _forced(alone, rows[:1]), _forced(together, rows[:n_seq])  # type: ignore[arg-type]
    finally:
        alone.close()
        together.close()


def test_greedy_choices_in_a_batch_agree_where_the_lone_run_is_clear() -> None:
    lone, batched = _lone_and_batched(4)
    clear = 0
    differences = []
    for a, b in zip(lone, batched, strict=True):
        top2 = np.sort(a)[-2:]
        differences.append(float(np.max(np.abs(a - b))))
        if top2[1] - top2[0] > 1.0:
            clear += 1
            assert int(np.argmax(a)) == int(np.argmax(b))
    assert clear > STEPS // 4  # enough clear choices for the check to mean something
    assert max(differences) < 5.0  # the kernels differ a little, not wildly


def test_two_rows_are_exactly_the_lone_logits() -> None:
    lone, two = _lone_and_batched(2)
    assert all(np.array_equal(a, b) for a, b in zip(lone, two, strict=True))


def test_a_sliding_window_prefix_is_not_copied_once_its_source_moved_on() -> None:
    """Gemma 3 keeps only a 512-token window in most layers: a source that has gone past the
    shared part no longer holds all of it, so the newcomer reads its prompt itself."""
    from localrun.engine.batch import BatchEngine, Job, collect
    from localrun.engine.types import TextDelta
    from localrun.models.demo import demo_model_path

    model = load(LoadOptions(demo_model_path(), n_ctx=1024, n_threads=2, n_seq=2))
    batch = BatchEngine(model)  # type: ignore[arg-type]
    try:
        shared = " ".join([TEXTS[0]] * 2)
        a_prompt = model.tokenize(shared + " Then", add_special=True, parse_special=False)
        b_prompt = model.tokenize(shared + " Later", add_special=True, parse_special=False)
        greedy = SamplingParams(temperature=0)
        a = iter(batch.submit(Job(a_prompt, greedy, max_tokens=40, stop_at_eog=False)))
        next(e for e in a if isinstance(e, TextDelta))
        _, stats = collect(batch.submit(Job(b_prompt, greedy, max_tokens=4, stop_at_eog=False)))
        assert stats.prompt_evaluated == len(b_prompt)  # no copy: read whole
        list(a)
    finally:
        batch.close()
        model.close()
