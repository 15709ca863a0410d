"""The first cut over the logits picks exactly the tokens llama.cpp's own sampling picks.

On the demo model: a real 262,144-token vocabulary and real logit spreads, where the margin
that holds the chain's first top-k cut has to be found anew at every token.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from localrun.backend import LoadOptions, SamplingParams, load
from localrun.engine.batch import BatchEngine, Job

pytestmark = pytest.mark.e2e

SETTINGS = [
    SamplingParams(seed=1),  # the defaults: penalties, top-k 40, top-p 0.9, temperature 0.8
    SamplingParams(temperature=0.0),  # greedy with penalties
    SamplingParams(temperature=0.0, repeat_penalty=1.0),  # plain greedy
    SamplingParams(temperature=1.5, top_k=200, top_p=1.0, repeat_penalty=1.0, seed=7),
    SamplingParams(temperature=1.0, top_k=5, min_p=0.05, repeat_penalty=1.3, seed=3),
    # OpenAI's penalties (only lowering: the cut holds), typical and XTC after the top-k.
    SamplingParams(presence_penalty=0.8, frequency_penalty=0.4, seed=5),
    SamplingParams(temperature=1.0, typical_p=0.7, xtc_probability=0.5, xtc_threshold=0.1, seed=9),
    # A bias that lowers tokens: the cut holds one more candidate for each.
    SamplingParams(temperature=1.0, top_k=20, seed=13, logit_bias=((506, -100.0), (236764, -2.0))),
]
PROMPTS = ["The history of the city of Paris begins", "A list of fruits: apple,"]


def _answers(native: bool, monkeypatch: pytest.MonkeyPatch) -> tuple[list[list[int]], int]:
    """Each prompt's tokens under each setting, and how many native samplings were made.

    One sequence at a time: which rows share a step (and so which matrix kernel runs) would
    otherwise depend on when the engine thread picks each request up.
    """
    import llama_cpp.llama_cpp as lc  # the bindings the sampler calls

    from localrun.backend.llamacpp import model as backend
    from localrun.backend.llamacpp import sampler
    from localrun.models.demo import demo_model_path

    build = sampler.sampler_chain
    if native:
        monkeypatch.setattr(
            backend,
            "sampler_chain",
            lambda *a, **k: dataclasses.replace(build(*a, **k), first_cut=0),
        )
    else:
        monkeypatch.setattr(backend, "sampler_chain", build)
    calls = 0
    native_sample = lc.llama_sampler_sample

    def counted(*args: object) -> int:
        nonlocal calls
        calls += 1
        return int(native_sample(*args))

    monkeypatch.setattr(lc, "llama_sampler_sample", counted)
    model = load(LoadOptions(demo_model_path(), n_ctx=1024, n_threads=2))
    batch = BatchEngine(model)  # type: ignore[arg-type]
    try:
        answers = []
        for settings in SETTINGS:
            for prompt in PROMPTS:
                stream = batch.submit(
                    Job(
                        model.tokenize(prompt, add_special=True, parse_special=False),
                        settings,
                        max_tokens=40,
                        stop_at_eog=False,
                    )
                )
                list(stream)
                answers.append(stream.tokens)
        return answers, calls
    finally:
        batch.close()
        model.close()


def test_cut_samples_the_same_tokens_as_the_whole_vocabulary(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cut, cut_native_calls = _answers(native=False, monkeypatch=monkeypatch)
    whole, whole_native_calls = _answers(native=True, monkeypatch=monkeypatch)
    assert cut == whole
    assert cut_native_calls == 0  # every token went through the cut
    assert whole_native_calls == sum(len(a) for a in whole)
    assert len({tuple(a) for a in cut}) == len(cut)  # the settings really differ


def test_chain_without_a_top_k_reads_the_whole_vocabulary() -> None:
    from localrun.backend.llamacpp.sampler import sampler_chain

    def first_cut(**settings: Any) -> int:
        chain = sampler_chain(SamplingParams(**settings), [], n_vocab=1000, n_ctx=512)
        import llama_cpp.llama_cpp as lc  # the sampler loaded the bindings alone

        lc.llama_sampler_free(chain.handle)
        return chain.first_cut

    assert first_cut() == 40 + 64  # top k, plus the tokens a penalty may push down
    assert first_cut(repeat_penalty=1.0) == 40
    assert first_cut(temperature=0.0) == 1 + 64
    assert first_cut(top_k=0) == 0  # top-p over the whole distribution
    assert first_cut(repeat_last_n=-1) == 0  # penalties over the whole context
    assert first_cut(top_k=2000) == 0  # keeps the whole (1000-token) vocabulary
    # What may raise a token, or lower any token of the context, leaves no cut to trust.
    assert first_cut(presence_penalty=0.5, frequency_penalty=0.5) == 40 + 64
    assert first_cut(presence_penalty=-0.5) == 0
    assert first_cut(frequency_penalty=-0.1) == 0
    assert first_cut(typical_p=0.5, xtc_probability=0.5) == 40 + 64  # after the top-k
    assert first_cut(logit_bias=((3, -100.0), (4, -1.0))) == 40 + 64 + 2
    assert first_cut(logit_bias=((3, 100.0),)) == 0  # a token lifted from anywhere
