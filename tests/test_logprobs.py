"""Log probabilities and penalties, checked against the raw logits of the step that sampled.

Each reported log probability is the log-softmax, over the whole vocabulary, of the logits
the model gave at that step, before any sampler touched them; recomputed here from a copy of
those logits taken as the sampler read them. The penalties are llama.cpp's: a greedy pick
under them is the best of the raw logits less each recent token's penalty. Then the real
``openai`` and ``ollama`` clients read them from a server whose pool runs the suite's tiny
model in llama.cpp.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any, TypeVar

import httpx
import numpy as np
import ollama
import openai
import pytest
from starlette.applications import Starlette

from localrun.backend import LoadOptions, SamplingParams, load
from localrun.engine.batch import BatchEngine
from localrun.engine.sequence import SCORED_ROWS
from localrun.engine.types import Job, TextDelta
from tests.inprocess import oai, served

T = TypeVar("T")


def _log_softmax(logits: Any) -> Any:
    shifted = np.asarray(logits, dtype=np.float64) - float(np.max(logits))
    return shifted - np.log(np.exp(shifted).sum())


@pytest.fixture
def model(tiny_model: Path) -> Any:
    loaded = load(LoadOptions(tiny_model, n_ctx=512, n_threads=1))
    yield loaded
    loaded.close()


def test_each_tokens_logprob_is_the_log_softmax_of_its_steps_raw_logits(
    model: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[Any] = []  # each step's logits, copied as the sampler reads them
    sample = type(model).sample

    def spy(self: Any, chain: object, row: int) -> int:
        seen.append(np.array(self.logits(row), dtype=np.float32))
        return int(sample(self, chain, row))

    monkeypatch.setattr(type(model), "sample", spy)
    engine = BatchEngine(model)
    try:
        # Sampled, with penalties: the token taken is often not the likeliest one.
        sampling = SamplingParams(temperature=1.5, top_k=8, repeat_penalty=1.3, seed=11)
        prompt = model.tokenize("the sky is", add_special=True, parse_special=False)
        job = Job(prompt, sampling, max_tokens=16, stop_at_eog=False, logprobs=4)
        stream = engine.submit(job)
        deltas = [e for e in stream if isinstance(e, TextDelta) and e.logprobs is not None]
    finally:
        engine.close()
    assert len(deltas) == len(stream.tokens) == len(seen) == 16
    for delta, token, logits in zip(deltas, stream.tokens, seen, strict=True):
        expected = _log_softmax(logits)
        probs = delta.logprobs
        assert probs is not None
        assert probs.chosen.token == token
        assert probs.chosen.piece == model.piece(token, True)
        assert probs.chosen.logprob == pytest.approx(expected[token], abs=1e-5)
        best = np.argsort(-expected, kind="stable")[:4]
        assert [t.token for t in probs.top] == [int(i) for i in best]
        assert [t.logprob for t in probs.top] == pytest.approx(list(expected[best]), abs=1e-5)
    # Not the sampler's distribution: a token drawn outside the likeliest four shows that.
    assert any(d.logprobs is not None and d.logprobs.top[0].token != t
               for d, t in zip(deltas, stream.tokens, strict=True))  # fmt: skip


@pytest.mark.parametrize(
    ("presence", "frequency"), [(1.5, 0.0), (0.0, 0.9), (0.6, 0.6), (-1.5, 0.0), (0.0, -0.8)]
)
def test_penalties_are_llama_cpps_on_the_raw_logits(
    model: Any, presence: float, frequency: float
) -> None:
    prompt = model.tokenize("the sky is blue", add_special=True, parse_special=False)
    n = len(prompt)
    assert model.decode_rows(prompt, list(range(n)), [0] * n, [False] * (n - 1) + [True]) == 0
    logits = np.array(model.logits(n - 1), dtype=np.float64)
    order = np.argsort(-logits, kind="stable")
    # The history makes the penalty decide: the best token three times (a positive penalty
    # must push it down), or a runner-up within reach (a negative one must lift it).
    lifted = int(order[1])
    history = prompt + ([int(order[0])] * 3 if presence > 0 or frequency > 0 else [lifted])
    counts = Counter(history[-64:])
    adjusted = logits.copy()
    for token, count in counts.items():
        adjusted[token] -= count * frequency + presence
    expected = int(np.argmax(adjusted))
    assert expected != int(order[0]) or presence < 0 or frequency < 0
    sampling = SamplingParams(
        temperature=0.0, repeat_penalty=1.0, presence_penalty=presence, frequency_penalty=frequency
    )
    chain = model.new_sampler(sampling, history)
    try:
        assert model.sample(chain, n - 1) == expected
    finally:
        model.free_sampler(chain)


HI: Any = [{"role": "user", "content": "why is the sky blue"}]


def test_the_openai_client_reads_them_whole_and_streamed(
    localrun_home: Path, tiny_chat_model: Path
) -> None:
    async def use(app: Starlette) -> None:
        client = oai(app)
        # Greedy without the default repeat penalty: each token is the likeliest raw one.
        plain_greedy = {"repeat_penalty": 1.0}
        whole = await client.chat.completions.create(
            model="tiny", messages=HI, max_tokens=10, temperature=0, logprobs=True,
            top_logprobs=3, extra_body=plain_greedy,
        )  # fmt: skip
        content = whole.choices[0].logprobs.content  # type: ignore[union-attr]
        assert content is not None and whole.usage is not None
        assert len(content) == whole.usage.completion_tokens == 10
        text = b"".join(bytes(e.bytes or []) for e in content).decode(errors="replace")
        assert text == whole.choices[0].message.content
        for entry in content:
            assert len(entry.top_logprobs) == 3 and entry.logprob <= 0
            assert entry.top_logprobs[0].token == entry.token  # greedy: the likeliest
            assert entry.top_logprobs[0].logprob == pytest.approx(entry.logprob)
            assert entry.top_logprobs[0].logprob >= entry.top_logprobs[1].logprob
        streamed = await client.chat.completions.create(
            model="tiny", messages=HI, max_tokens=10, temperature=0, logprobs=True,
            top_logprobs=3, stream=True, extra_body=plain_greedy,
        )  # fmt: skip
        pieces = [c async for c in streamed]
        parts = [e for c in pieces if c.choices and c.choices[0].logprobs
                 for e in c.choices[0].logprobs.content or []]  # fmt: skip
        # The same tokens; the prompt's cells now come from the first answer's, so the
        # figures may differ in the last bits of a float.
        assert [e.token for e in parts] == [e.token for e in content]
        assert [e.logprob for e in parts] == pytest.approx([e.logprob for e in content], abs=1e-4)
        plain = await client.chat.completions.create(model="tiny", messages=HI, max_tokens=3)
        assert plain.choices[0].logprobs is None
        with pytest.raises(openai.BadRequestError, match="top_logprobs"):
            await client.chat.completions.create(
                model="tiny", messages=HI, max_tokens=3, logprobs=True, top_logprobs=21
            )
        with pytest.raises(openai.BadRequestError, match="needs 'logprobs'"):
            await client.chat.completions.create(
                model="tiny", messages=HI, max_tokens=3, top_logprobs=2
            )
        # Penalties were a 400 once: now llama.cpp's penalties sampler takes them.
        await client.chat.completions.create(
            model="tiny", messages=HI, max_tokens=3, presence_penalty=1.0, frequency_penalty=-0.5
        )

    served(localrun_home, {"tiny": tiny_chat_model}, use, parallel=2)


def test_legacy_completions_give_parallel_lists(localrun_home: Path, tiny_chat_model: Path) -> None:
    async def use(app: Starlette) -> None:
        done = await oai(app).completions.create(
            model="tiny", prompt="the sky", max_tokens=8, temperature=0, logprobs=2
        )
        lists = done.choices[0].logprobs
        assert lists is not None and lists.tokens and lists.text_offset is not None
        assert len(lists.tokens) == len(lists.token_logprobs or []) == 8
        assert all(len(top) == 2 for top in lists.top_logprobs or [])
        assert lists.text_offset == [len("".join(lists.tokens[:i])) for i in range(8)]

    served(localrun_home, {"tiny": tiny_chat_model}, use, parallel=2)


def test_the_ollama_client_reads_them(localrun_home: Path, tiny_chat_model: Path) -> None:
    async def use(app: Starlette) -> None:
        client = ollama.AsyncClient(host="http://127.0.0.1", transport=httpx.ASGITransport(app=app))
        answer = await client.chat(
            model="tiny", messages=HI, logprobs=True, top_logprobs=2,
            options={"num_predict": 6, "temperature": 0},
        )  # fmt: skip
        assert answer.logprobs is not None and len(answer.logprobs) == answer.eval_count == 6
        assert all(len(e.top_logprobs or []) == 2 for e in answer.logprobs)
        streamed = await client.generate(
            model="tiny", prompt="the sky", logprobs=True, stream=True,
            options={"num_predict": 6, "temperature": 0},
        )  # fmt: skip
        entries = [e async for part in streamed for e in part.logprobs or []]
        assert len(entries) == 6 and all(e.logprob <= 0 for e in entries)

    served(localrun_home, {"tiny": tiny_chat_model}, use, parallel=2)


def test_dry_lowers_the_token_that_would_extend_a_repeat(model: Any) -> None:
    prompt = model.tokenize("the sky is blue", add_special=True, parse_special=False)
    n = len(prompt)
    assert model.decode_rows(prompt, list(range(n)), [0] * n, [False] * (n - 1) + [True]) == 0
    logits = np.array(model.logits(n - 1), dtype=np.float64)
    best, runner_up = (int(t) for t in np.argsort(-logits, kind="stable")[:2])
    # The history ends "x y", and "x y best" came before: best would repeat three tokens.
    x, y = prompt[-2:]
    history = [x, y, best, x, y]
    for multiplier, expected in ((0.0, best), (50.0, runner_up)):
        sampling = SamplingParams(temperature=0.0, repeat_penalty=1.0, dry_multiplier=multiplier)
        chain = model.new_sampler(sampling, history)
        try:
            assert model.sample(chain, n - 1) == expected
        finally:
            model.free_sampler(chain)


def test_echo_gives_the_prompts_own_figures_as_lm_eval_reads_them(
    localrun_home: Path, tiny_chat_model: Path
) -> None:
    # Longer than the rows a step scores (32): read over several steps.
    text = "the sky is blue and the world is why " * 6 + "hello"
    # The figures recomputed apart, the prompt read in the engine's chunks of rows (another
    # shape of batch takes other kernels, whose sums differ in the last bits).
    reference: Any = load(LoadOptions(tiny_chat_model, n_ctx=512, n_threads=1))
    try:
        tokens = reference.tokenize(text, add_special=True, parse_special=True)
        n = len(tokens)
        expected = []
        for start in range(0, n, SCORED_ROWS):
            rows = tokens[start : start + SCORED_ROWS]
            positions = list(range(start, start + len(rows)))
            assert reference.decode_rows(rows, positions, [0] * len(rows), [True] * len(rows)) == 0
            expected += [
                float(_log_softmax(reference.logits(i))[tokens[p + 1]])
                for i, p in enumerate(positions)
                if p + 1 < n
            ]
    finally:
        reference.close()

    async def use(app: Starlette) -> None:
        # lm-eval's loglikelihood request: echo the prompt, no answer, its figures.
        done = await oai(app).completions.create(
            model="tiny", prompt=text, echo=True, max_tokens=0, logprobs=1
        )
        choice = done.choices[0]
        assert choice.text == text and done.usage is not None
        lists = choice.logprobs
        assert lists is not None and lists.token_logprobs is not None
        assert len(lists.token_logprobs) == done.usage.prompt_tokens == n
        assert lists.token_logprobs[0] is None and (lists.top_logprobs or [])[0] is None
        assert lists.token_logprobs[1:] == pytest.approx(expected, abs=1e-5)
        # Echoed with an answer: the prompt's figures, then the answer's, one list.
        more = await oai(app).completions.create(
            model="tiny", prompt=text, echo=True, max_tokens=3, logprobs=0
        )
        assert more.choices[0].text.startswith(text)
        assert more.usage is not None
        answered = more.usage.completion_tokens
        lists = more.choices[0].logprobs
        assert lists is not None and len(lists.token_logprobs or []) == n + answered
        with pytest.raises(openai.BadRequestError, match="answered whole"):
            await oai(app).completions.create(
                model="tiny", prompt=text, echo=True, logprobs=1, max_tokens=1, stream=True
            )

    served(localrun_home, {"tiny": tiny_chat_model}, use, parallel=2)


def test_logit_bias_bans_and_forces_tokens(model: Any) -> None:
    prompt = model.tokenize("the sky is blue", add_special=True, parse_special=False)
    n = len(prompt)
    assert model.decode_rows(prompt, list(range(n)), [0] * n, [False] * (n - 1) + [True]) == 0
    order = [int(t) for t in np.argsort(-np.array(model.logits(n - 1)), kind="stable")]
    best, runner_up, least = order[0], order[1], order[-1]
    for pairs, expected in (
        ((), best),
        (((best, -100.0),), runner_up),  # banned: the next one
        (((least, 100.0),), least),  # the least likely, lifted past all
    ):
        sampling = SamplingParams(temperature=0.0, repeat_penalty=1.0, logit_bias=pairs)
        chain = model.new_sampler(sampling, prompt)
        try:
            assert model.sample(chain, n - 1) == expected
        finally:
            model.free_sampler(chain)


def test_logit_bias_on_the_api(localrun_home: Path, tiny_chat_model: Path) -> None:
    async def use(app: Starlette) -> None:
        client = oai(app)
        await client.chat.completions.create(
            model="tiny", messages=HI, max_tokens=2, logit_bias={"5": -100, "6": 3}
        )
        with pytest.raises(openai.BadRequestError, match="vocabulary has"):
            await client.chat.completions.create(
                model="tiny", messages=HI, max_tokens=2, logit_bias={"99999": 1}
            )
        with pytest.raises(openai.BadRequestError, match="'logit_bias' cannot hold"):
            await client.chat.completions.create(
                model="tiny", messages=HI, max_tokens=2, logit_bias={"5": 101}
            )

    served(localrun_home, {"tiny": tiny_chat_model}, use)
