"""Fill in the middle (``suffix``): the text before and after put around the model's own
prefix, suffix and middle tokens, as llama-server's infill puts them; Continue's shapes for
Ollama's /api/generate and OpenAI's /v1/completions, on a tiny model whose vocabulary has
the tokens (llama.cpp finds them by their text) and on one whose vocabulary has none."""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import openai
import pytest
from starlette.applications import Starlette

from localrun.engine.load import load_model
from localrun.engine.prompting import fill_in_prompt
from localrun.engine.types import Request
from localrun.errors import UsageError
from tests.inprocess import http, oai, served
from tests.tinygguf import write_tiny_model

T = TypeVar("T")
FIM = ("<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>")
BEFORE, AFTER = "def add(a, b):\n    return ", "\n\nprint(add(1, 2))\n"


@pytest.fixture(scope="module")
def coder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_model(tmp_path_factory.mktemp("fim") / "coder.gguf", specials=FIM)


def test_the_prompt_is_prefix_suffix_middle_around_the_texts(coder: Path) -> None:
    loaded = load_model("coder", n_ctx=512, n_threads=1, gpu_layers=0, path=coder)
    try:
        model = loaded.model
        pre, suf, mid = (model.tokenize(t, add_special=False, parse_special=True)[0] for t in FIM)
        assert model.fim_tokens == (pre, suf, mid)
        prompt = fill_in_prompt(loaded, _request(BEFORE, AFTER))
        before = model.tokenize(BEFORE, add_special=False, parse_special=False)
        after = model.tokenize(AFTER, add_special=False, parse_special=False)
        assert prompt.tokens == [model.bos_token, pre, *before, suf, *after, mid]
    finally:
        loaded.close()


def test_a_model_without_the_tokens_is_refused_in_one_line(tiny_model: Path) -> None:
    loaded = load_model("tiny", n_ctx=512, n_threads=1, gpu_layers=0, path=tiny_model)
    try:
        with pytest.raises(UsageError, match="tiny cannot fill in the middle") as caught:
            fill_in_prompt(loaded, _request(BEFORE, AFTER))
        assert "\n" not in caught.value.message
    finally:
        loaded.close()


def _request(before: str, after: str) -> Request:
    from dataclasses import replace

    return replace(Request.of(before), suffix=after)


def test_continues_shapes_on_both_apis(
    localrun_home: Path, coder: Path, tiny_chat_model: Path
) -> None:
    async def use(app: Starlette) -> None:
        async with http(app) as client:
            # Continue's autocomplete on Ollama: the text before as prompt, after as suffix.
            greedy = {"num_predict": 6, "temperature": 0}
            ask: dict[str, Any] = {"model": "coder", "prompt": BEFORE, "suffix": AFTER,
                                   "stream": False, "options": greedy}  # fmt: skip
            done = (await client.post("/api/generate", json=ask)).json()
            plain = (await client.post("/api/generate", json={**ask, "suffix": ""})).json()
            # The prompt is the three tokens and both texts (plus the BOS), not the template's.
            assert done["prompt_eval_count"] > plain["prompt_eval_count"]
            # Greedy: the tiny model's answer ends at 6 tokens or at its end of text.
            assert 0 < done["eval_count"] <= 6 and done["done_reason"] in ("length", "stop")
            refused = await client.post("/api/generate", json={**ask, "model": "plain"})
            assert refused.status_code == 400
            assert "plain cannot fill in the middle" in refused.json()["error"]
            raw = await client.post("/api/generate", json={**ask, "raw": True})
            assert raw.status_code == 400 and "'suffix'" in raw.json()["error"]
        completed = await oai(app).completions.create(
            model="coder", prompt=BEFORE, suffix=AFTER, max_tokens=5
        )
        assert completed.usage is not None
        assert completed.usage.prompt_tokens == done["prompt_eval_count"]
        with pytest.raises(openai.BadRequestError, match="cannot fill in the middle"):
            await oai(app).completions.create(
                model="plain", prompt=BEFORE, suffix=AFTER, max_tokens=5
            )

    served(localrun_home, {"coder": coder, "plain": tiny_chat_model}, use)
