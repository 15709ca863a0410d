"""A request's own ``template`` on Ollama's /api/generate: a Go template, translated as a
Modelfile's TEMPLATE is, reads that request's prompt instead of the model's template."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from starlette.applications import Starlette

from tests.inprocess import http, served


def test_a_go_template_reads_the_prompt(localrun_home: Path, tiny_chat_model: Path) -> None:
    ask: dict[str, Any] = {"model": "tiny", "prompt": "the sky", "stream": False,
                           "options": {"num_predict": 2}}  # fmt: skip

    async def use(app: Starlette) -> None:
        async with http(app) as client:
            go_template = "{{ .System }} Q: {{ .Prompt }} A:"
            templated = await client.post(
                "/api/generate", json={**ask, "system": "be brief", "template": go_template}
            )
            assert templated.status_code == 200, templated.text
            # The same text read as it is: the template made exactly this prompt.
            same = await client.post("/api/generate", json={
                **ask, "raw": True, "prompt": "be brief Q: the sky A:"})  # fmt: skip
            model = await client.post("/api/generate", json=ask)  # the model's ChatML
            counts = [r.json()["prompt_eval_count"] for r in (templated, same, model)]
            assert counts[0] == counts[1] != counts[2]
            raw = {**ask, "raw": True, "template": "{{ .Prompt }}"}
            both = await client.post("/api/generate", json=raw)
            assert both.status_code == 400 and "'template'" in both.json()["error"]

    served(localrun_home, {"tiny": tiny_chat_model}, use)
