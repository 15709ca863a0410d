"""OpenAI's ``n``: several answers to one prompt, read once, through the real ``openai``
client against the server's real pool and engine (the suite's tiny model in llama.cpp)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families
from starlette.applications import Starlette

from tests.inprocess import http, oai, served

T = TypeVar("T")
HI: Any = [{"role": "user", "content": "why is the sky blue"}]


async def _counter(app: Starlette, name: str) -> float:
    async with http(app) as client:
        page = (await client.get("/metrics")).text
    return sum(
        s.value for f in text_string_to_metric_families(page) for s in f.samples if s.name == name
    )


def test_n_choices_whole_read_the_prompt_once(localrun_home: Path, tiny_chat_model: Path) -> None:
    async def use(app: Starlette) -> None:
        done = await oai(app).chat.completions.create(
            model="tiny", messages=HI, n=3, max_tokens=8, temperature=1.0, seed=7,
            logprobs=True,
        )  # fmt: skip
        assert [c.index for c in done.choices] == [0, 1, 2]
        assert all(c.finish_reason == "length" and c.message.content for c in done.choices)
        assert all(len(c.logprobs.content or []) == 8 for c in done.choices if c.logprobs)
        assert len({c.message.content for c in done.choices}) > 1  # each its own seed
        assert done.usage is not None and done.usage.completion_tokens == 24
        prompt = done.usage.prompt_tokens
        # The second and third found the prompt in the first one's cells: each read only
        # its last token again (for its logits).
        cached = await _counter(app, "localrun_prompt_tokens_cached_total")
        assert cached == 2 * (prompt - 1)

    served(localrun_home, {"tiny": tiny_chat_model}, use, parallel=4, metrics=True)


def test_n_choices_streamed_by_index_with_one_usage(
    localrun_home: Path, tiny_chat_model: Path
) -> None:
    async def use(app: Starlette) -> None:
        stream = await oai(app).chat.completions.create(
            model="tiny", messages=HI, n=2, max_tokens=6, stream=True,
            stream_options={"include_usage": True},
        )  # fmt: skip
        chunks = [c async for c in stream]
        texts: dict[int, str] = {}
        finishes: dict[int, str] = {}
        for chunk in chunks:
            for choice in chunk.choices:
                texts[choice.index] = texts.get(choice.index, "") + (choice.delta.content or "")
                if choice.finish_reason:
                    finishes[choice.index] = choice.finish_reason
        assert sorted(texts) == [0, 1] and all(texts.values())
        assert finishes == {0: "length", 1: "length"}
        usage = [c.usage for c in chunks if c.usage is not None]
        assert len(usage) == 1 and usage[0].completion_tokens == 12
        assert len({c.id for c in chunks}) == 1

    served(localrun_home, {"tiny": tiny_chat_model}, use, parallel=4, metrics=True)


def test_legacy_completions_and_the_bounds(localrun_home: Path, tiny_chat_model: Path) -> None:
    async def use(app: Starlette) -> None:
        client = oai(app)
        done = await client.completions.create(model="tiny", prompt="the sky", n=2, max_tokens=4)
        assert [c.index for c in done.choices] == [0, 1]
        assert done.usage is not None and done.usage.completion_tokens == 8
        for bad in (0, 17):
            with pytest.raises(openai.BadRequestError, match="'n' must be between 1 and 16"):
                await client.chat.completions.create(model="tiny", messages=HI, n=bad, max_tokens=2)

    served(localrun_home, {"tiny": tiny_chat_model}, use, parallel=4, metrics=True)
