"""The batching engine's scheduling, against a scripted model of N sequences: in milliseconds.

Admission (a slot and room in the cache), pausing the newest when the cache is full and its
answer going on where it stopped, the slot chosen by its kept prefix, a prefix shared between
sequences, cancelling a waiting or a running request, and the cells each one gives back. The
scripted model holds its cache as llama.cpp does (a step that does not fit is refused), and
with ``hold()`` the engine decodes only the steps a test lets it: each test knows exactly
where every request is. The numbers of a real model are tests/test_batch*.py's.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from localrun.backend import SamplingParams
from localrun.engine.batch import BatchEngine, Job, Stream, collect
from localrun.engine.sequence import Status
from localrun.engine.types import Finished, FinishReason, Stats
from localrun.errors import GenerationError
from tests.scripted import FIRST, ScriptedModel

PIECES = [f"w{i} ".encode() for i in range(120)]
SAMPLING = SamplingParams(seed=1)


def words(n: int) -> str:
    """The scripted answer's first ``n`` tokens, as text."""
    return "".join(piece.decode() for piece in PIECES[:n])


def answer(n: int) -> list[int]:
    """The scripted answer's first ``n`` tokens."""
    return [FIRST + i for i in range(n)]


def prompt(seed: int, n: int) -> list[int]:
    """``n`` prompt tokens, different for each ``seed`` from the first one on."""
    return [3 + (seed * 37 + i * 11) % 90 for i in range(n)]


def job(tokens: list[int], max_tokens: int) -> Job:
    return Job(tokens, SAMPLING, max_tokens=max_tokens)


@pytest.fixture
def model() -> Iterator[ScriptedModel]:
    yield ScriptedModel(PIECES, n_seq=2, n_ctx=256, end=False)


def engine_over(model: ScriptedModel) -> BatchEngine:
    model.hold()
    return BatchEngine(model)  # type: ignore[arg-type]


def finish(model: ScriptedModel, engine: BatchEngine, *streams: Stream) -> list[tuple[str, Stats]]:
    """Let the engine run freely; each stream's text and statistics."""
    model.go()
    return [collect(stream) for stream in streams]


def slot_of(model: ScriptedModel, tokens: list[int]) -> int:
    """The sequence whose rows first fed ``tokens``' first token at position 0."""
    return next(s for step in model.steps for t, p, s in step if p == 0 and t == tokens[0])


def fed(model: ScriptedModel, slot: int) -> list[tuple[int, int]]:
    """Every (token, position) fed to ``slot``, in order."""
    return [(t, p) for step in model.steps for t, p, s in step if s == slot]


def books_match(engine: BatchEngine, model: ScriptedModel) -> None:
    """The engine's idea of each free slot's cells is what the model's cache holds."""
    assert sorted(engine.cells.free) == list(range(model.n_seq_max))
    for slot, held in model.held.items():
        assert engine.cells.warm.get(slot, []) == held, slot


def test_requests_wait_for_a_free_slot_and_take_the_first_one_freed(
    model: ScriptedModel,
) -> None:
    engine = engine_over(model)
    try:
        first = engine.submit(job(prompt(0, 8), 1))
        model.step(0)  # it holds the engine at its first step: the others arrive together
        streams = [engine.submit(job(prompt(i, 8), 3)) for i in (1, 2, 3)]
        model.step()
        assert first.status is Status.FINISHED
        assert [s.status for s in streams] == [Status.RUNNING, Status.RUNNING, Status.WAITING]
        model.step(3)  # the first two have their three tokens: the third takes a slot
        assert [s.status for s in streams] == [Status.FINISHED, Status.FINISHED, Status.RUNNING]
        texts = [text for text, _ in finish(model, engine, first, *streams)]
        assert texts == [words(1)] + [words(3)] * 3
        assert {s for _, _, s in model.steps[-1]} == {slot_of(model, prompt(3, 8))}
        books_match(engine, model)
    finally:
        model.go()
        engine.close()


def test_a_request_waits_for_room_in_the_cache_not_only_for_a_slot() -> None:
    model = ScriptedModel(PIECES, n_seq=2, n_ctx=64, end=False)
    engine = engine_over(model)
    try:
        big = engine.submit(job(prompt(0, 40), 10))  # 41 cells at once, 50 at its end
        model.step(0)
        other = engine.submit(job(prompt(1, 30), 5))  # 31 more would not fit beside it
        model.step(3)
        assert (big.status, other.status) == (Status.RUNNING, Status.WAITING)
        (big_text, _), (other_text, stats) = finish(model, engine, big, other)
        assert (big_text, other_text) == (words(10), words(5))
        # Never in one step: the second began once the first had ended (its kept cells gave way).
        assert all(len({s for _, _, s in step}) == 1 for step in model.steps)
        assert stats.prompt_evaluated == 30 and model.refused == 0
        books_match(engine, model)
    finally:
        model.go()
        engine.close()


def test_the_newest_is_paused_when_the_cache_is_full_and_goes_on_where_it_stopped() -> None:
    model = ScriptedModel(PIECES, n_seq=2, n_ctx=64, end=False)
    engine = engine_over(model)
    try:
        older = engine.submit(job(prompt(0, 10), 40))
        model.step(0)
        newer = engine.submit(job(prompt(1, 10), 40))  # 100 cells in all: they cannot both end
        (older_text, _), (newer_text, stats) = finish(model, engine, older, newer)
        assert older.paused_at == []
        [k] = newer.paused_at
        assert 0 < k < 40
        assert model.refused >= 1
        # Its text is as if it had never stopped: no token lost or said twice.
        assert older_text == newer_text == words(40)
        assert stats.completion_tokens == 40 and stats.finish_reason is FinishReason.LENGTH
        # Paused, it read its prompt and its answer so far again, from position 0.
        slot = slot_of(model, prompt(1, 10))
        again = prompt(1, 10) + answer(k)
        feeds = fed(model, slot)
        starts = [i for i, (_, p) in enumerate(feeds) if p == 0]
        assert len(starts) == 2
        assert [t for t, _ in feeds[starts[1] : starts[1] + len(again)]] == again
        books_match(engine, model)
    finally:
        model.go()
        engine.close()


def test_a_request_goes_to_the_slot_that_keeps_its_longest_prefix(model: ScriptedModel) -> None:
    engine = engine_over(model)
    try:
        first = engine.submit(job(prompt(0, 1), 1))
        model.step(0)
        a = engine.submit(job(prompt(1, 20), 4))
        c = engine.submit(job(prompt(2, 20), 4))
        finish(model, engine, first, a, c)
        kept = {slot: list(held) for slot, held in engine.cells.warm.items()}
        slot_c = slot_of(model, prompt(2, 20))
        assert kept[slot_c] == prompt(2, 20) + answer(3)  # its last token was never fed
        model.hold()
        turn = prompt(2, 20) + answer(4) + prompt(3, 6)  # the next turn of c's conversation
        before = len(model.steps)
        following = engine.submit(job(turn, 2))
        _, stats = finish(model, engine, following)[0]
        rows = [(t, p, s) for step in model.steps[before:] for t, p, s in step]
        assert {s for _, _, s in rows} == {slot_c}
        assert rows[0][1] == 23  # the 23 tokens its slot kept are not read again
        assert stats.prompt_evaluated == len(turn) - 23
        books_match(engine, model)
    finally:
        model.go()
        engine.close()


def test_a_prefix_another_sequence_holds_is_copied_not_read_again(model: ScriptedModel) -> None:
    engine = engine_over(model)
    try:
        shared = prompt(0, 30)
        reading = engine.submit(job(shared + prompt(1, 10), 20))
        model.step(0)
        model.step()  # its prompt is in its cells now
        other = engine.submit(job(shared + prompt(2, 10), 3))
        (_, _), (text, stats) = finish(model, engine, reading, other)
        src = slot_of(model, shared)
        dst = 1 - src
        assert model.copies == [(src, dst, 30)]
        assert stats.prompt_evaluated == 10 and text == words(3)
        assert fed(model, dst)[0] == (prompt(2, 10)[0], 30)  # it read only its own part
        books_match(engine, model)
    finally:
        model.go()
        engine.close()


def test_a_short_common_prefix_is_read_not_copied(model: ScriptedModel) -> None:
    engine = engine_over(model)
    try:
        shared = prompt(0, 10)  # under 16 tokens: copying is not worth it
        reading = engine.submit(job(shared + prompt(1, 10), 20))
        model.step(0)
        model.step()
        other = engine.submit(job(shared + prompt(2, 10), 3))
        _, (_, stats) = finish(model, engine, reading, other)
        assert model.copies == [] and stats.prompt_evaluated == 20
    finally:
        model.go()
        engine.close()


def test_cancel_a_waiting_request_then_a_running_one() -> None:
    model = ScriptedModel(PIECES, n_seq=1, n_ctx=256, end=False)
    engine = engine_over(model)
    try:
        running = engine.submit(job(prompt(0, 8), 50))
        model.step(0)
        waiting = engine.submit(job(prompt(1, 8), 50))
        waiting.cancel()
        model.step()
        events = list(waiting)
        assert [type(e) for e in events] == [Finished]
        assert isinstance(events[0], Finished)
        assert events[0].stats.finish_reason is FinishReason.CANCELLED
        assert events[0].stats.completion_tokens == 0
        assert waiting.status is Status.FINISHED and running.status is Status.RUNNING
        assert model.prompts == [prompt(0, 8)]  # it never had a sampler chain, nor a slot
        running.cancel()  # the engine waits at its second step: that one is its last
        text, stats = finish(model, engine, running)[0]
        assert (text, stats.finish_reason) == (words(2), FinishReason.CANCELLED)
        # Its cells stay for a request that begins the same way; nothing else is held.
        assert engine.cells.warm == {0: prompt(0, 8) + answer(1)}
        books_match(engine, model)
    finally:
        model.go()
        engine.close()


class FailingModel(ScriptedModel):
    """Sampling fails for the request whose prompt is ``bad``."""

    def __init__(self, bad: list[int], **kwargs: object) -> None:
        super().__init__(PIECES, **kwargs)  # type: ignore[arg-type]
        self.bad = bad
        self._failing: object = None

    def new_sampler(
        self, sampling: SamplingParams, history: list[int], grammar: object = None
    ) -> object:
        chain = super().new_sampler(sampling, history, grammar)
        if history == self.bad:
            self._failing = chain
        return chain

    def sample(self, sampler: object, row: int) -> int:
        if sampler is self._failing:
            raise GenerationError("the grammar allows no token", "loosen it")
        return super().sample(sampler, row)


def test_a_failed_request_gives_back_its_cells_and_the_others_go_on() -> None:
    bad = prompt(1, 12)
    model = FailingModel(bad, n_seq=2, n_ctx=256, end=False)
    engine = engine_over(model)
    try:
        first = engine.submit(job(prompt(0, 1), 1))
        model.step(0)
        good = engine.submit(job(prompt(0, 12), 5))
        failing = engine.submit(job(bad, 5))
        model.go()
        with pytest.raises(GenerationError, match="allows no token"):
            list(failing)
        assert collect(good)[0] == words(5)
        collect(first)
        slot = slot_of(model, bad)
        assert model.held[slot] == [] and slot not in engine.cells.warm
        assert failing.status is Status.FINISHED
        books_match(engine, model)
    finally:
        model.go()
        engine.close()


@pytest.mark.parametrize(("most", "opened"), [(2, False), (0, False), (3, True)])
def test_a_thinking_budget_closes_the_trace_and_the_answer_goes_on(most: int, opened: bool) -> None:
    """After ``most`` trace tokens, the engine takes the closing marker's tokens instead of
    sampled ones (as llama.cpp's --reasoning-budget does), and then samples again."""
    from localrun.engine.budget import Budget

    pieces = [b"<think>", b"a", b"b", b"c", b"d", b"</think>", b"ok"]
    model = ScriptedModel(pieces, n_ctx=256)
    start, end = (FIRST,), (FIRST + 5,)  # "<think>" and "</think>", one token each
    if opened:  # the prompt opened the trace: the script starts inside it
        model.pieces = pieces[1:]
        end = (FIRST + 4,)
    engine = BatchEngine(model)  # type: ignore[arg-type]
    try:
        budget = Budget(most, start, end, open=opened)
        stream = engine.submit(Job(prompt(1, 4), SAMPLING, max_tokens=20, think_budget=budget))
        text, stats = collect(stream)
    finally:
        engine.close()
    trace = "abcd"[:most]
    head = f"{trace}</think>" if opened else f"<think>{trace}</think>"
    assert text.startswith(head), text
    assert text.endswith("</think>ok") and stats.finish_reason is FinishReason.STOP
