"""The continuous-batching engine on a real tiny model: many sequences, one context."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from localrun import backend, engine
from localrun.backend import SamplingParams, StepModel
from localrun.engine.batch import BatchEngine, Job, collect
from localrun.engine.types import Finished, FinishReason, TextDelta
from localrun.errors import LocalrunError, PromptTooLongError

GREEDY = SamplingParams(temperature=0.0, repeat_penalty=1.0)
PROMPTS = ["the sky is", "why is the", "hello world", "blue sky blue", "a b c d e", "is it"]


@pytest.fixture
def loaded(tiny_model: Path) -> engine.LoadedModel:
    # 4 sequences of 256 tokens: one cache of 1024 cells.
    return engine.load_model(str(tiny_model), n_threads=1, gpu_layers=0, n_seq=4, n_ctx=256)


def step_model(loaded: engine.LoadedModel) -> StepModel:
    model = loaded.model
    assert hasattr(model, "decode_rows")  # the llama.cpp model offers the step API
    return model  # type: ignore[return-value]


def tokens_of(loaded: engine.LoadedModel, text: str) -> list[int]:
    return loaded.model.tokenize(text, add_special=True, parse_special=False)


def run_all(
    loaded: engine.LoadedModel, prompts: list[str], max_tokens: int = 24, **kw: object
) -> list[tuple[str, object]]:
    batch = BatchEngine(step_model(loaded), **kw)  # type: ignore[arg-type]
    try:
        streams = [
            batch.submit(
                Job(tokens_of(loaded, p), GREEDY, max_tokens=max_tokens, stop_at_eog=False)
            )
            for p in prompts
        ]
        return [collect(s) for s in streams]
    finally:
        batch.close()


def test_many_requests_share_the_context_and_all_finish(loaded: engine.LoadedModel) -> None:
    try:
        results = run_all(loaded, PROMPTS * 2)  # 12 requests, 4 sequences at a time
    finally:
        loaded.close()
    assert len(results) == 12
    for text, stats in results:
        assert text
        assert stats.completion_tokens == 24  # type: ignore[attr-defined]
        assert stats.finish_reason == FinishReason.LENGTH  # type: ignore[attr-defined]
    # The same prompt, greedy, gives the same text whichever round it ran in.
    assert [t for t, _ in results[:6]] == [t for t, _ in results[6:]]


def test_a_request_that_cannot_start_fails_alone(
    loaded: engine.LoadedModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A request whose sampler cannot be made gets the error; the engine and the other
    requests go on (once, such a request was lost and its reader waited forever)."""
    model = step_model(loaded)
    made = model.new_sampler

    def new_sampler(
        sampling: SamplingParams, history: list[int], grammar: object | None = None
    ) -> object:
        if sampling.seed == 13:
            raise ValueError("no chain for seed 13")
        return made(sampling, history, grammar)

    monkeypatch.setattr(model, "new_sampler", new_sampler)
    batch = BatchEngine(model)
    try:
        prompt = tokens_of(loaded, "the sky is")
        bad = batch.submit(Job(prompt, SamplingParams(seed=13), max_tokens=4))
        good = batch.submit(Job(prompt, GREEDY, max_tokens=4, stop_at_eog=False))
        with pytest.raises(LocalrunError, match="no chain for seed 13"):
            collect(bad)
        assert collect(good)[1].completion_tokens == 4
        assert batch.alive
    finally:
        batch.close()


def test_two_rows_give_the_lone_text(tiny_model: Path) -> None:
    """llama.cpp's kernels give a sequence's logits exactly at 1 and 2 rows."""
    alone = engine.load_model(str(tiny_model), n_threads=1, gpu_layers=0, n_seq=1, n_ctx=512)
    pair = engine.load_model(str(tiny_model), n_threads=1, gpu_layers=0, n_seq=2, n_ctx=512)
    try:
        lone = [run_all(alone, [p])[0][0] for p in PROMPTS[:2]]
        together = [t for t, _ in run_all(pair, PROMPTS[:2])]
    finally:
        alone.close()
        pair.close()
    assert together == lone


def test_a_request_does_not_depend_on_its_neighbours(loaded: engine.LoadedModel) -> None:
    """Same prompt, same batch size, other neighbours: the same text."""
    try:
        first = run_all(loaded, [PROMPTS[0], PROMPTS[1], PROMPTS[2], PROMPTS[3]])
        second = run_all(loaded, [PROMPTS[0], PROMPTS[4], PROMPTS[5], PROMPTS[4]])
    finally:
        loaded.close()
    assert first[0][0] == second[0][0]


def test_cancel_frees_the_sequence_at_the_next_step(loaded: engine.LoadedModel) -> None:
    batch = BatchEngine(step_model(loaded))
    try:
        long = batch.submit(Job(tokens_of(loaded, "the sky"), GREEDY, max_tokens=5000))
        events = iter(long)
        first_text = next(e for e in events if isinstance(e, TextDelta))
        assert first_text is not None
        long.cancel()
        rest = list(events)
        finished = rest[-1]
        assert isinstance(finished, Finished)
        assert finished.stats.finish_reason == FinishReason.CANCELLED
        assert finished.stats.completion_tokens < 5000
        # Four more requests fit: the cancelled one's slot is free again.
        more = [batch.submit(Job(tokens_of(loaded, p), GREEDY, max_tokens=4)) for p in PROMPTS[:4]]
        assert all(collect(s)[1].completion_tokens == 4 for s in more)
    finally:
        batch.close()
        loaded.close()


def test_cancel_from_another_thread_while_waiting(loaded: engine.LoadedModel) -> None:
    batch = BatchEngine(step_model(loaded))
    try:
        busy = [
            batch.submit(Job(tokens_of(loaded, p), GREEDY, max_tokens=200)) for p in PROMPTS[:4]
        ]
        queued = batch.submit(Job(tokens_of(loaded, "hello"), GREEDY, max_tokens=200))
        threading.Thread(target=queued.cancel).start()
        _, stats = collect(queued)
        assert stats.finish_reason == FinishReason.CANCELLED
        for s in busy:
            s.cancel()
            assert collect(s)[1].finish_reason in (FinishReason.CANCELLED, FinishReason.LENGTH)
    finally:
        batch.close()
        loaded.close()


def test_a_full_cache_pauses_and_resumes_without_losing_text(tiny_model: Path) -> None:
    """4 answers of 150 tokens cannot all fit 256 cells: some wait, none is cut or garbled.

    Which tokens a paused answer goes on with may differ from an unpaused run: reading its
    text again is a many-row prefill, and more rows take another kernel (docs/performance.md).
    What must hold: every answer reaches its length, and its text is exactly its tokens.
    """
    # Straight from the backend: 4 sequences in 256 cells, fewer than they need.
    small = backend.load(backend.LoadOptions(tiny_model, n_ctx=256, n_threads=1, n_seq=4))
    model: StepModel = small  # type: ignore[assignment]
    try:
        batch = BatchEngine(model)
        streams = [
            batch.submit(
                Job(
                    model.tokenize(p, add_special=True, parse_special=False),
                    GREEDY,
                    max_tokens=150,
                    stop_at_eog=False,
                )
            )
            for p in PROMPTS[:4]
        ]
        results = [collect(s) for s in streams]
        batch.close()
        assert any(s.paused_at for s in streams), "the cache never filled: nothing was tested"
        for stream, (text, stats) in zip(streams, results, strict=True):
            assert stats.completion_tokens == 150 and len(stream.tokens) == 150
            assert stats.finish_reason == FinishReason.LENGTH
            whole = b"".join(model.piece(t) for t in stream.tokens)
            assert text == whole.decode("utf-8", errors="replace")  # nothing lost or repeated
    finally:
        small.close()


def test_a_prompt_longer_than_the_context_is_refused_at_once(tiny_model: Path) -> None:
    small = engine.load_model(str(tiny_model), n_threads=1, gpu_layers=0, n_seq=2, n_ctx=256)
    batch = BatchEngine(step_model(small), seq_ctx=small.seq_ctx)
    try:
        with pytest.raises(PromptTooLongError):
            batch.submit(Job(tokens_of(small, "a " * 400), GREEDY))
    finally:
        batch.close()
        small.close()


def test_a_prompt_that_starts_like_a_finished_one_reads_only_the_rest(
    loaded: engine.LoadedModel,
) -> None:
    """A finished request's cells stay in its slot: the next turn of a chat reads its new part."""
    batch = BatchEngine(step_model(loaded))
    try:
        first_prompt = tokens_of(loaded, "the sky is blue and")
        first = batch.submit(Job(first_prompt, GREEDY, max_tokens=6, stop_at_eog=False))
        _, stats = collect(first)
        assert stats.prompt_evaluated == len(first_prompt)
        # The next turn: the whole conversation so far, then new text.
        follow = first_prompt + first.tokens + tokens_of(loaded, "why")[1:]
        second = batch.submit(Job(follow, GREEDY, max_tokens=4, stop_at_eog=False))
        _, stats = collect(second)
        # Everything but the answer's last token (sampled, never read back) and the new text.
        assert stats.prompt_evaluated == len(follow) - (len(first_prompt) + 5)
        assert stats.completion_tokens == 4
        # A different prompt shares only the BOS token: it reads (almost) everything.
        other = tokens_of(loaded, "hello world")
        _, stats = collect(batch.submit(Job(other, GREEDY, max_tokens=2)))
        assert stats.prompt_evaluated >= len(other) - 1
    finally:
        batch.close()
        loaded.close()


SHARED = "the sky is blue " * 15  # a long common start, as a system prompt or a document


def test_a_request_copies_a_prefix_another_sequence_holds(loaded: engine.LoadedModel) -> None:
    """While A still answers, B (same beginning) copies A's cells instead of reading them."""
    batch = BatchEngine(step_model(loaded))
    try:
        a_prompt = tokens_of(loaded, SHARED + "why")
        b_prompt = tokens_of(loaded, SHARED + "hello world")
        common = next(i for i, (x, y) in enumerate(zip(a_prompt, b_prompt, strict=False)) if x != y)
        assert common > 40
        a = batch.submit(Job(a_prompt, GREEDY, max_tokens=60, stop_at_eog=False))
        events = iter(a)
        next(e for e in events if isinstance(e, TextDelta))  # A has read its prompt
        b = batch.submit(Job(b_prompt, GREEDY, max_tokens=8, stop_at_eog=False))
        _, b_stats = collect(b)
        assert b_stats.prompt_evaluated == len(b_prompt) - common
        assert b_stats.completion_tokens == 8
        assert list(events)[-1].stats.completion_tokens == 60  # type: ignore[union-attr]
    finally:
        batch.close()
        loaded.close()
