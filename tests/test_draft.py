"""Speculative decoding's correctness: the model's own text, whoever guesses.

Each verify pass is recorded as it runs: the rows it fed, and for each row the engine sampled,
the argmax of that row's logits computed here from the logits themselves. Greedy answers must
be made of those argmaxes only, each row after the first checked only because the row before
it chose the guess it holds. With sampling, the distribution of the tokens must not change.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path
from typing import Any, cast

import pytest

from localrun.backend import LoadOptions, SamplingParams, StepModel, load
from localrun.engine.batch import BatchEngine, Job, collect
from localrun.engine.draft import Drafter, check_vocabulary
from localrun.errors import ModelLoadError
from tests.speculation import Recorder, check_greedy_rule
from tests.tinygguf import write_tiny_model

GREEDY = SamplingParams(temperature=0.0, repeat_penalty=1.0)
PROMPT = "the sky is blue why hello world the sky is"


def _engine(target: Any, draft: Any | None, **drafter: Any) -> BatchEngine:
    made = Drafter(draft, seq_ctx=draft.n_ctx, **drafter) if draft is not None else None
    return BatchEngine(target, drafter=made)


def _answer(engine: BatchEngine, prompt: list[int], k: int, n: int = 48) -> tuple[list[int], Any]:
    stream = engine.submit(Job(prompt, GREEDY, max_tokens=n, stop_at_eog=False, speculate=k))
    _, stats = collect(stream)
    return stream.tokens, stats


@pytest.fixture(scope="module")
def other_tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Another tiny model with the same vocabulary: a draft that is often wrong."""
    return write_tiny_model(tmp_path_factory.mktemp("draft") / "other.gguf", seed=7)


def _load(path: Path, n_ctx: int = 1024) -> Any:
    return load(LoadOptions(path, n_ctx=n_ctx, n_threads=2))


def test_a_draft_model_keeps_the_models_own_tokens(tiny_model: Path, other_tiny: Path) -> None:
    target = _load(tiny_model)
    try:
        prompt = target.tokenize(PROMPT, add_special=True, parse_special=False)
        engine = _engine(target, None)
        try:
            plain, _ = _answer(engine, prompt, 0)
        finally:
            engine.close()
        for draft_path in (tiny_model, other_tiny):  # itself (right), another (often wrong)
            draft = _load(draft_path)
            try:
                # One guess a step: two rows, llama.cpp's one-row numbers, the same text.
                engine = _engine(target, draft, p_min=0.0)
                try:
                    one, stats = _answer(engine, prompt, 1)
                finally:
                    engine.close()
                assert one == plain
                assert stats.drafted > 0
                # Up to 6: each token is the argmax of its own verify pass.
                recorder = Recorder(target)
                engine = _engine(recorder, draft, p_min=0.0)
                try:
                    more, stats = _answer(engine, prompt, 6)
                finally:
                    engine.close()
                assert check_greedy_rule(recorder, more, stats.accepted) > 0
                assert stats.passes < stats.completion_tokens or draft_path == other_tiny
                if draft_path == tiny_model:
                    assert stats.accepted > stats.drafted // 2  # its own guesses: mostly right
            finally:
                draft.close()
    finally:
        target.close()


def test_an_unsure_draft_does_not_guess(tiny_model: Path) -> None:
    target, draft = _load(tiny_model), _load(tiny_model)
    try:
        prompt = target.tokenize(PROMPT, add_special=True, parse_special=False)
        engine = _engine(target, draft, p_min=1.01)  # never that sure
        try:
            _, stats = _answer(engine, prompt, 4, n=16)
        finally:
            engine.close()
        assert stats.drafted == 0 and stats.passes == stats.completion_tokens
    finally:
        target.close()
        draft.close()


def test_the_vocabulary_must_match(tiny_model: Path, tmp_path: Path) -> None:
    renamed = write_tiny_model(tmp_path / "renamed.gguf", renamed={"▁sky": "▁sea"})
    target, same, other = _load(tiny_model), _load(tiny_model), _load(renamed)
    try:
        check_vocabulary(target, same, "same")
        with pytest.raises(ModelLoadError, match=r"gives token \d+ another text") as e:
            check_vocabulary(target, other, "renamed")
        assert "'▁sea', not '▁sky'" in e.value.message
    finally:
        for m in (target, same, other):
            m.close()


# -- sampling: the same distribution ---------------------------------------------------------


def _chi_square(a: Counter[Any], b: Counter[Any]) -> tuple[float, int]:
    """The two-sample chi-square statistic of two count tables, and its degrees of freedom
    (outcomes seen fewer than 10 times in both together are pooled into one)."""
    keys = set(a) | set(b)
    small = [k for k in keys if a[k] + b[k] < 10]
    cells = [(a[k], b[k]) for k in keys if k not in small]
    if small:
        cells.append((sum(a[k] for k in small), sum(b[k] for k in small)))
    na, nb = sum(a.values()), sum(b.values())
    stat = 0.0
    for x, y in cells:
        total = x + y
        ex, ey = total * na / (na + nb), total * nb / (na + nb)
        stat += (x - ex) ** 2 / ex + (y - ey) ** 2 / ey
    return stat, len(cells) - 1


def _critical(df: int, z: float = 3.09) -> float:
    """The chi-square value exceeded with probability 0.001 (Wilson-Hilferty)."""
    return df * (1 - 2 / (9 * df) + z * math.sqrt(2 / (9 * df))) ** 3


def _sampled(
    engine: BatchEngine,
    prompt: list[int],
    k: int,
    n: int,
    temp: float,
    kept: list[int] | None = None,
) -> Counter[Any]:
    streams = []
    for seed in range(n):
        sampling = SamplingParams(temperature=temp, top_k=4, seed=seed, repeat_penalty=1.1)
        stream = engine.submit(Job(prompt, sampling, max_tokens=7, stop_at_eog=False, speculate=k))
        streams.append(stream)
    found: Counter[Any] = Counter()
    for stream in streams:
        _, stats = collect(stream)
        if kept is not None:
            kept.append(stats.accepted)
        # The 6th and 7th: by then the answers have guessed a few steps (from the 2nd token).
        found[tuple(stream.tokens[5:])] += 1
    return found


@pytest.mark.slow
def test_sampling_keeps_the_distribution(tiny_model: Path) -> None:
    """400 answers each way, the draft guessing the most likely tokens: the joint
    distribution of the guessed positions is the same (and a changed one is told apart)."""
    # Loaded with several sequences: the engine's steps (as the runner casts it too).
    target = cast(StepModel, load(LoadOptions(tiny_model, n_ctx=8 * 64, n_threads=2, n_seq=8)))
    draft = cast(StepModel, load(LoadOptions(tiny_model, n_ctx=8 * 64, n_threads=2, n_seq=8)))
    try:
        prompt = target.tokenize(PROMPT, add_special=True, parse_special=False)
        engine = BatchEngine(target)
        try:
            plain = _sampled(engine, prompt, 0, 400, 1.0)
            cooler = _sampled(engine, prompt, 0, 400, 0.5)
        finally:
            engine.close()
        engine = BatchEngine(target, drafter=Drafter(draft, seq_ctx=64, p_min=0.0))
        try:
            kept: list[int] = []
            guessed = _sampled(engine, prompt, 2, 400, 1.0, kept)
        finally:
            engine.close()
    finally:
        target.close()
        draft.close()
    # guesses were checked, some kept and some not (at most 6 of an answer's 7 tokens)
    assert 50 < sum(kept) < 400 * 6 * 0.8
    stat, df = _chi_square(plain, guessed)
    assert stat < _critical(df), (stat, df, plain, guessed)
    # The test can tell another distribution: the same model at temperature 0.5.
    other, df2 = _chi_square(plain, cooler)
    assert other > _critical(df2), (other, df2)


# -- every path that generates text -------------------------------------------------------


def _json_run(home: Path, *args: str) -> dict[str, Any]:
    from tests.proc import run

    done = run(home, "run", *args, "--format", "json", "--temperature", "0", "hello")
    assert done.code == 0, done.stderr
    return json.loads(done.stdout)  # type: ignore[no-any-return]


@pytest.mark.slow
def test_run_and_a_modelfile_guess_with_a_draft_model(
    localrun_home: Path, tiny_model: Path
) -> None:
    from tests.served import create_model

    answer = _json_run(
        localrun_home, str(tiny_model), "--draft", str(tiny_model), "--max-tokens", "30"
    )
    stats = answer["stats"]
    assert stats["drafted"] > 0 and 0 < stats["accepted"] <= stats["drafted"]
    assert stats["passes"] < stats["completion_tokens"]
    assert stats["tokens_per_pass"] == round(stats["completion_tokens"] / stats["passes"], 3)
    assert stats["acceptance_rate"] == round(stats["accepted"] / stats["drafted"], 4)
    off = _json_run(localrun_home, str(tiny_model), "--max-tokens", "30")["stats"]
    assert off["drafted"] == 0 and "acceptance_rate" not in off
    # The same from a Modelfile; --speculative off on the command line wins over it.
    create_model(localrun_home, "guesser", f"FROM {tiny_model}\nPARAMETER draft {tiny_model}\n")
    assert _json_run(localrun_home, "guesser", "--max-tokens", "30")["stats"]["drafted"] > 0
    quiet = _json_run(localrun_home, "guesser", "--max-tokens", "30", "--speculative", "off")
    assert quiet["stats"]["drafted"] == 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--speculative", "draft"], "needs the draft model"),
        (["--speculative", "sometimes"], "--speculative cannot be 'sometimes'"),
        (["--draft", "no-such-model"], "no-such-model"),
    ],
)
def test_speculative_flags_that_cannot_work(
    localrun_home: Path, tiny_model: Path, args: list[str], message: str
) -> None:
    from tests.proc import run

    done = run(localrun_home, "run", str(tiny_model), *args, "hello")
    assert done.code != 0 and message in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr


def test_a_draft_with_another_vocabulary_is_refused(localrun_home: Path, tiny_model: Path) -> None:
    from tests.proc import run

    other = write_tiny_model(localrun_home.parent / "renamed.gguf", renamed={"▁why": "▁how"})
    done = run(localrun_home, "run", str(tiny_model), "--draft", str(other), "hello")
    assert done.code == 1
    assert "gives token" in done.stderr and "'▁how', not '▁why'" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_batch_guesses_for_every_request(localrun_home: Path, tiny_model: Path) -> None:
    from tests.proc import run

    file = localrun_home.parent / "in.jsonl"
    lines = [{"prompt": p, "max_tokens": 24, "temperature": 0} for p in ("hello", "the sky") * 2]
    file.write_text("".join(json.dumps(line) + "\n" for line in lines))
    done = run(
        localrun_home, "run", str(tiny_model), "--batch", str(file), "--parallel", "2",
        "--draft", str(tiny_model),
    )  # fmt: skip
    assert done.code == 0, done.stderr
    out = [json.loads(line) for line in done.stdout.splitlines()]
    assert len(out) == 4 and all(o["stats"]["drafted"] > 0 for o in out)


@pytest.mark.slow
def test_serve_guesses_and_says_so_in_the_usage(localrun_home: Path, tiny_model: Path) -> None:
    import openai

    from tests.served import create_model, serving

    create_model(localrun_home, "tiny", f"FROM {tiny_model}\n")
    other = write_tiny_model(localrun_home.parent / "renamed.gguf", renamed={"▁why": "▁how"})
    create_model(localrun_home, "other", f"FROM {other}\n")
    with serving(localrun_home, "--draft", "tiny", "--model", "tiny") as server:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="none")
        done = client.completions.create(model="tiny", prompt="hello", max_tokens=30, temperature=0)
        # A model the server-wide draft cannot guess for answers without it, and says why.
        alone = client.completions.create(model="other", prompt="hello", max_tokens=5)
        log = server.stderr
    details = done.usage.completion_tokens_details if done.usage else None
    assert details is not None and details.accepted_prediction_tokens
    assert details.rejected_prediction_tokens is not None
    assert alone.usage is not None and alone.usage.completion_tokens_details is None
    assert "other: answering without speculative decoding" in log and "another text" in log
