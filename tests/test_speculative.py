"""Speculative decoding by prompt lookup: guesses checked in the step, the same text kept."""

from __future__ import annotations

from pathlib import Path

import pytest

from localrun.backend import LoadOptions, SamplingParams, load
from localrun.engine.batch import BatchEngine, collect
from localrun.engine.speculative import Pace, lookup
from tests.test_draft import Recorder, check_greedy_rule

GREEDY = SamplingParams(temperature=0.0, repeat_penalty=1.0)


def test_lookup_continues_the_latest_match() -> None:
    assert lookup([1, 2, 3, 4, 5, 6, 1, 2, 3], 4) == [4, 5, 6, 1]
    assert lookup([1, 2, 3, 9, 9, 2, 3], 3) == [9, 9, 2]  # 3 tokens unseen: the last 2
    assert lookup([5, 6, 7], 3) == [] and lookup([1, 2, 1, 2], 0) == []
    # A byte match across two tokens is not a match: 256 is bytes 00 01 00 00, and the tail
    # [1, 0] (01 00 00 00 00 00 00 00) occurs inside [256, 0] at byte 1 only.
    assert lookup([256, 0, 0, 7, 1, 0], 2) == []


def test_guessing_goes_on_only_while_it_is_the_faster_way() -> None:
    pace = Pace()
    for _ in range(4):
        assert pace.probing
        pace.add(False, 0.030, 1)  # plain: 33 tokens/s
    assert not pace.probing
    pace.add(True, 0.050, 3)  # 60 tokens/s
    assert pace.pause() == 0  # not judged on one step
    for _ in range(8):
        pace.add(True, 0.050, 3)
    assert pace.pause() == 0
    for _ in range(40):
        pace.add(True, 0.060, 1)  # now 17 tokens/s: slower, and the recent steps weigh most
    assert pace.pause() == 64
    assert pace.pause() == 0  # judged again only after new guessing steps
    for _ in range(3):
        pace.add(True, 0.032, 1)  # 31 tokens/s: within the margin (0.9 x 33), goes on
    assert pace.pause() == 0
    for _ in range(3):
        pace.add(True, 0.080, 1)
    assert pace.pause() == 128  # each pause twice the last


def _answers(model_path: Path, prompt_text: str, speculate: int, n: int = 60) -> list[object]:
    model = load(LoadOptions(model_path, n_ctx=2048, n_threads=2))
    engine = BatchEngine(model)  # type: ignore[arg-type]
    try:
        prompt = model.tokenize(prompt_text, add_special=True, parse_special=False)
        stream = engine.submit(prompt, GREEDY, max_tokens=n, stop_at_eog=False, speculate=speculate)
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
    import localrun.engine.batch as batch

    plain, _ = _answers(tiny_model, COPY, 0)
    prompt_len = len(_prompt_tokens(tiny_model))

    def oracle(text: list[int], k: int) -> list[int]:
        done = len(text) - prompt_len
        guesses = list(plain[done : done + k])  # type: ignore[index]
        return [g + 1 if (done + i) % 5 == 2 else g for i, g in enumerate(guesses)]

    monkeypatch.setattr(batch, "lookup", oracle)
    for k in (1, 2):
        answer, stats = _answers(tiny_model, COPY, k)
        assert answer == plain, k
        assert stats.accepted > 0 and stats.accepted < stats.drafted  # type: ignore[attr-defined]


def _prompt_tokens(model_path: Path) -> list[int]:
    model = load(LoadOptions(model_path, n_ctx=2048, n_threads=2))
    try:
        return model.tokenize(COPY, add_special=True, parse_special=False)  # type: ignore[no-any-return]
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
        load(LoadOptions(demo_model_path(), n_ctx=2048, n_threads=2)) if "draft" in task else None
    )
    try:
        prompt = model.tokenize(STORY if draft else copy, add_special=True, parse_special=False)
        answers = []
        for k in (0, 8):
            recorder = Recorder(model)
            drafter = Drafter(draft, seq_ctx=2048, p_min=0.0) if draft and k else None
            engine = BatchEngine(recorder, drafter=drafter)  # type: ignore[arg-type]
            try:
                stream = engine.submit(
                    prompt, GREEDY, max_tokens=120, stop_at_eog=False, speculate=k
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
