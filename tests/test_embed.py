"""Embeddings from a generative model: what reading a long text costs in memory."""

from __future__ import annotations

from pathlib import Path
from typing import cast

import pytest

from localrun.backend import LoadOptions, load


def _rss_mb() -> float:
    status = Path("/proc/self/status").read_text()
    return int(status.split("VmRSS:")[1].split()[0]) / 1024


@pytest.mark.e2e
def test_a_long_text_to_embed_grows_memory_by_little_and_not_for_good() -> None:
    """Once, a 5,000-word text grew the server by 1 GB for as long as the model stayed loaded:
    every row was an output row, and llama.cpp kept a row of logits (262,144 of them) for each
    of the 512 a decode read, in a buffer that never shrinks."""
    from localrun.models.demo import demo_model_path

    model = load(LoadOptions(demo_model_path(), n_ctx=2048, n_threads=2))
    try:
        tokens = model.tokenize("the quiet river " * 400, add_special=True, parse_special=False)
        assert len(tokens) > 1000
        before = _rss_mb()
        vector = model.embed(tokens, 0)  # type: ignore[attr-defined]
        grown = _rss_mb() - before
        assert grown < 200, f"embedding {len(tokens)} tokens grew memory by {grown:.0f} MB"
        assert abs(sum(x * x for x in vector) - 1.0) < 1e-6  # scaled to length 1
    finally:
        model.close()


def test_a_text_to_embed_waits_for_room_a_running_answer_holds(tiny_model: Path) -> None:
    """A generative model embeds in a free slot of the cache its answers share: a text that
    needs cells a running answer holds waits for it to end (it failed as a server error)."""
    import asyncio

    from localrun.backend import SamplingParams, StepModel
    from localrun.engine.batch import BatchEngine, Job
    from localrun.engine.types import Finished

    model = cast(StepModel, load(LoadOptions(tiny_model, n_ctx=256, n_threads=1, n_seq=2)))
    engine = BatchEngine(model)
    try:
        prompt = model.tokenize("the sky is blue " * 20, add_special=True, parse_special=False)
        text = model.tokenize("a cat sat on the mat " * 25, add_special=True, parse_special=False)
        prompt, text = prompt[:120], text[:140]
        assert len(prompt) + 1 + len(text) > model.n_ctx  # not both at once
        stream = engine.submit(Job(prompt, SamplingParams(seed=1), max_tokens=20,
                                   stop_at_eog=False))  # fmt: skip
        events = iter(stream)
        next(events)  # the answer runs: its cells are taken

        async def embedded() -> list[float]:
            vector: list[float] = await engine.embed(text, asyncio.get_running_loop())
            return vector

        vector = asyncio.run(embedded())
        assert abs(sum(x * x for x in vector) - 1.0) < 1e-6
        assert sum(1 for e in events if isinstance(e, Finished)) == 1  # it ended first, whole
    finally:
        engine.close()
        model.close()
