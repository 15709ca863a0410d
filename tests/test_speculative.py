"""Speculative decoding by prompt lookup: guesses checked in the step, the same text kept."""

from __future__ import annotations

from pathlib import Path
from typing import cast

import pytest

from localrun.backend import LoadOptions, SamplingParams, StepModel, load
from localrun.engine.batch import BatchEngine, Job, collect
from localrun.engine.speculative import Pace, lookup
from tests.speculation import Recorder, check_greedy_rule

GREEDY = SamplingParams(temperature=0.0, repeat_penalty=1.0)


def test_lookup_continues_the_latest_match() -> None:
    assert lookup([1, 2, 3, 4, 5, 6, 1, 2, 3], 4) == [4, 5, 6, 1]
    assert lookup([1, 2, 3, 9, 9, 2, 3], 3) == [9, 9, 2]  # 3 tokens unseen: the last 2
    assert lookup([5, 6, 7], 3) == [] and lookup([1, 2, 1, 2], 0) == []
    # A byte match across two tokens is not a match: 256 is bytes 00 01 00 00, and the tail
    # [1, 0] (01 00 00 00 00 00 00 00) occurs inside [256, 0] at byte 1 only.
    assert lookup([256, 0, 0, 7, 1, 0], 2) == []


def test_guessing_goes_on_only_while_it_gains_more_than_it_costs() -> None:
    pace = Pace(row_cost=0.5)
    pace.add(4, 4)  # 4 guesses checked (a step of 3 plain steps' cost), 3 kept and one more
    assert pace.pause() == 0  # not judged on one step
    for _ in range(8):
        pace.add(4, 4)
    assert pace.pause() == 0  # 4 tokens for 3 steps' cost
    for _ in range(40):
        pace.add(4, 1)  # none kept: 1 token for 3 steps' cost, and the recent steps weigh most
    assert pace.pause() == 16
    assert pace.pause() == 0  # judged again only after new guessing steps
    for _ in range(6):
        pace.add(2, 2)  # 2 tokens for 2: within the margin, goes on
    assert pace.pause() == 0
    for _ in range(6):
        pace.add(8, 1)
    assert pace.pause() == 32  # each pause twice the last
    # a draft model's passes count too: 2 kept of 2 pays on its own, not with a costly draft
    drafted = Pace(row_cost=0.1, draft_cost=0.6)
    for _ in range(6):
        drafted.add(2, 2)
    assert drafted.pause() == 16


def _answers(model_path: Path, prompt_text: str, speculate: int, n: int = 60) -> list[object]:
    model = load(LoadOptions(model_path, n_ctx=2048, n_threads=2))
    engine = BatchEngine(model)  # type: ignore[arg-type]
    try:
        prompt = model.tokenize(prompt_text, add_special=True, parse_special=False)
        stream = engine.submit(
            Job(prompt, GREEDY, max_tokens=n, stop_at_eog=False, speculate=speculate)
        )
        _, stats = collect(stream)
        return [stream.tokens, stats]
    finally:
        engine.close()
        model.close()


COPY = "alpha beta gamma delta epsilon zeta eta theta iota kappa " * 6


def test_checked_guesses_give_plain_decodings_tokens(
    tiny_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A drafter that knows plain decoding's answer but is wrong at every fifth token: what
    is kept, what is dropped and what the cache keeps must leave the answer as it was."""
    import localrun.engine.speculator as speculator

    plain, _ = _answers(tiny_model, COPY, 0)
    prompt_len = len(_prompt_tokens(tiny_model))

    def oracle(text: list[int], k: int) -> list[int]:
        done = len(text) - prompt_len
        guesses = list(plain[done : done + k])  # type: ignore[index]
        return [g + 1 if (done + i) % 5 == 2 else g for i, g in enumerate(guesses)]

    monkeypatch.setattr(speculator, "lookup", oracle)
    for k in (1, 2):
        answer, stats = _answers(tiny_model, COPY, k)
        assert answer == plain, k
        assert stats.accepted > 0 and stats.accepted < stats.drafted  # type: ignore[attr-defined]


def _prompt_tokens(model_path: Path) -> list[int]:
    model = load(LoadOptions(model_path, n_ctx=2048, n_threads=2))
    try:
        return model.tokenize(COPY, add_special=True, parse_special=False)
    finally:
        model.close()


@pytest.mark.e2e
def test_on_the_demo_model_guesses_are_kept_and_one_a_step_is_exact() -> None:
    from localrun.models.demo import demo_model_path

    path = demo_model_path()
    code = "".join(f"def f{i}(x):\n    return x * {i} + {i * i}\n\n" for i in range(12))
    text = f"Here is some code:\n\n{code}Here is the same code again:\n\n"
    plain, _ = _answers(path, text, 0)
    one, _ = _answers(path, text, 1)
    assert one == plain  # two rows a step: llama.cpp's one-row kernel's numbers


STORY = "Once upon a time, in a small village by the sea, there lived an old fisherman who"


@pytest.mark.e2e
@pytest.mark.parametrize("task", ["copy by lookup", "story by a draft model"])
def test_on_the_demo_model_many_guesses_keep_its_choices(
    task: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """k = 8: every token is the argmax of its own verify pass, and where the text leaves
    plain decoding's, plain decoding's top two were within 1 logit (a near-tie that the
    many-row kernel's rounding decides the other way). The draft model is the demo model
    itself, sure or not (p_min 0), and goes on guessing though that is the slower way here:
    many guesses, many rows a step."""
    monkeypatch.setattr(Pace, "pause", lambda self: 0)
    from localrun.engine.draft import Drafter
    from localrun.models.demo import demo_model_path

    code = "".join(f"def f{i}(x):\n    return x * {i} + {i * i}\n\n" for i in range(12))
    copy = f"Here is some code:\n\n{code}Here is the same code again:\n\n"
    model = load(LoadOptions(demo_model_path(), n_ctx=2048, n_threads=2))
    draft = (
        cast(StepModel, load(LoadOptions(demo_model_path(), n_ctx=2048, n_threads=2)))
        if "draft" in task
        else None
    )
    try:
        prompt = model.tokenize(STORY if draft else copy, add_special=True, parse_special=False)
        answers = []
        for k in (0, 8):
            recorder = Recorder(model)
            drafter = Drafter(draft, seq_ctx=2048, p_min=0.0) if draft and k else None
            engine = BatchEngine(recorder, drafter=drafter)
            try:
                stream = engine.submit(
                    Job(prompt, GREEDY, max_tokens=120, stop_at_eog=False, speculate=k)
                )
                _, stats = collect(stream)
            finally:
                engine.close()
            answers.append((stream.tokens, stats, recorder))
    finally:
        model.close()
        if draft:
            draft.close()
    (plain, _, plain_steps), (many, stats, recorder) = answers
    assert check_greedy_rule(recorder, many, stats.accepted) > 10
    assert stats.accepted > 0.5 * stats.completion_tokens
    gaps = [samples[0][3] for _, samples in plain_steps.steps if samples]
    first = next((i for i, (a, b) in enumerate(zip(many, plain, strict=False)) if a != b), None)
    print(
        f"{task}: first divergence at {first}"
        + (f", top-two gap {gaps[first]:.3f}" if first else "")
    )
    assert first is None or gaps[first] < 1.0


@pytest.mark.e2e
def test_the_same_greedy_request_gives_the_same_text_whatever_the_clock_says(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """How many rows a step decodes changes llama.cpp's arithmetic, so whether to guess must
    not hang on wall-clock times: once, a free-form story came out different from one run to
    the next. Here the second run's clock jumps about at random (a busy machine, as seen by
    the engine): the guessing, and so the text, must be the same."""
    import itertools
    import random
    import time

    from localrun.models.demo import demo_model_path

    model = load(LoadOptions(demo_model_path(), n_ctx=2048, n_threads=2))
    try:
        prompt = model.tokenize(STORY, add_special=True, parse_special=False)

        def answer() -> tuple[str, int, int]:
            engine = BatchEngine(model)  # type: ignore[arg-type]
            try:
                stream = engine.submit(Job(prompt, GREEDY, max_tokens=80, speculate=8))
                text, stats = collect(stream)
                return text, stats.drafted, stats.accepted
            finally:
                engine.close()

        steady = answer()
        rng = random.Random(7)
        ticks = itertools.accumulate(rng.expovariate(20.0) for _ in itertools.count())
        monkeypatch.setattr(time, "perf_counter", lambda: next(ticks))
        assert answer() == steady
        assert steady[1] > 0  # it did guess
    finally:
        model.close()
