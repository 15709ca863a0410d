"""Embeddings from a generative model: what reading a long text costs in memory."""

from __future__ import annotations

from pathlib import Path

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
