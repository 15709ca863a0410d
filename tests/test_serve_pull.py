"""``POST /api/pull`` through a real server, from the test Hub on 127.0.0.1."""

from __future__ import annotations

from pathlib import Path

import ollama
import pytest

from tests.hub import FakeHub
from tests.served import serving


def test_pull_streams_progress_then_the_model_answers(
    hub: FakeHub, tiny_bytes: bytes, tmp_path: Path
) -> None:
    hub.add_repo("org/tiny", {"tiny-Q4_K_M.gguf": tiny_bytes})
    with serving(tmp_path / "home") as s:  # inherits HF_ENDPOINT: the test Hub
        client = ollama.Client(host=s.url)
        updates = list(client.pull("hf.co/org/tiny", stream=True))
        assert updates[0].status == "pulling manifest" and updates[-1].status == "success"
        files = [u for u in updates if u.digest == "tiny-Q4_K_M.gguf"]
        assert files and files[-1].completed == files[-1].total == len(tiny_bytes)
        assert "hf.co/org/tiny" in [m.model for m in client.list().models]
        answer = client.generate(model="hf.co/org/tiny", prompt="hi", options={"num_predict": 3})
        assert answer.eval_count == 3
        assert client.pull("hf.co/org/tiny").status == "success"  # again: up to date
        with pytest.raises(ollama.ResponseError) as e:
            client.pull("hf.co/org/missing")
        assert e.value.status_code >= 400 and "org/missing" in e.value.error
