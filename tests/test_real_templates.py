"""Real chat templates of many model families, in tiny GGUFs, through the engine.

The templates are the ones llama.cpp tests itself with (``models/templates`` in its
source); the ``real_templates`` fixture (:mod:`tests.templates`) fetches them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from localrun import engine
from localrun.backend import SamplingParams
from localrun.prompt.build import conversation_tokens
from localrun.prompt.template import Message, render
from tests.tinygguf import write_tiny_model

BOS, EOS = "<s>", "</s>"  # the tiny model's special tokens (ids 1 and 2)
SYSTEM = "SYSMARK-7"
Q1, A1, Q2, A2, Q3 = "QUESTION-ONE", "ANSWER-ONE", "QUESTION-TWO", "ANSWER-TWO", "QUESTION-THREE"
MESSAGES = [
    Message("system", SYSTEM),
    Message("user", Q1),
    Message("assistant", A1),
    Message("user", Q2),
    Message("assistant", A2),
    Message("user", Q3),
]

# Where the system prompt lands in the rendered conversation.
SYSTEM_FIRST = "first"  # before the first user message
SYSTEM_FOLDED = "folded"  # the template rejects it: folded into the first user message
SYSTEM_LAST = "last"  # the template itself puts it in the last user message


@dataclass(frozen=True)
class Case:
    family: str
    id: str
    file: str
    system: str = SYSTEM_FIRST


CASES = [
    Case("llama", "llama-3.1", "meta-llama-Llama-3.1-8B-Instruct.jinja"),
    Case("llama", "llama-3.2", "meta-llama-Llama-3.2-3B-Instruct.jinja"),
    Case("qwen", "qwen-2.5", "Qwen-Qwen2.5-7B-Instruct.jinja"),
    Case("qwen", "qwen-3", "Qwen-Qwen3-0.6B.jinja"),
    Case("gemma", "gemma-2", "google-gemma-2-2b-it.jinja", SYSTEM_FOLDED),
    Case("gemma", "gemma-4", "google-gemma-4-31B-it.jinja"),
    Case("phi", "phi-3.5", "microsoft-Phi-3.5-mini-instruct.jinja"),
    Case("mistral", "mistral-nemo", "mistralai-Mistral-Nemo-Instruct-2407.jinja", SYSTEM_LAST),
    Case("mistral", "mistral-small-3.2", "Mistral-Small-3.2-24B-Instruct-2506.jinja"),
    Case("deepseek", "deepseek-r1", "deepseek-ai-DeepSeek-R1-Distill-Qwen-32B.jinja"),
    Case("deepseek", "deepseek-v3.1", "deepseek-ai-DeepSeek-V3.1.jinja"),
    Case("granite", "granite-3.3", "ibm-granite-granite-3.3-2B-Instruct.jinja"),
    Case("smollm", "smollm-3", "HuggingFaceTB-SmolLM3-3B.jinja"),
    Case("command-r", "command-r-plus-tool-use", "CohereForAI-c4ai-command-r-plus-tool_use.jinja"),
    Case(
        "command-r", "command-r7b-tool-use", "CohereForAI-c4ai-command-r7b-12-2024-tool_use.jinja"
    ),
    Case("hermes", "hermes-3-tool-use", "NousResearch-Hermes-3-Llama-3.1-8B-tool_use.jinja"),
    Case("gpt-oss", "gpt-oss", "openai-gpt-oss-120b.jinja"),
    Case("lfm", "lfm-2.5", "LFM2.5-8B-A1B.jinja"),
    Case("kimi", "kimi-k2", "moonshotai-Kimi-K2.jinja"),
    Case("glm", "glm-4.6", "GLM-4.6.jinja"),
    # Reads variables nobody passes (functions, datetime): they must be as harmless as in
    # transformers, not "'functions' is undefined".
    Case("firefunction", "firefunction-v2", "fireworks-ai-llama-3-firefunction-v2.jinja"),
]


def test_every_case_is_a_template_llama_cpp_ships(real_templates: Path) -> None:
    """The cases name real files of the sdist (a renamed template fails here, not silently)."""
    shipped = {p.name for p in real_templates.glob("*.jinja")}
    assert len(shipped) > len(CASES)
    missing = [case.file for case in CASES if case.file not in shipped]
    assert not missing, f"not in llama.cpp's models/templates: {missing}"
    assert len({case.family for case in CASES}) >= 12


def check_rendered(text: str, case: Case) -> None:
    """The conversation is all there, in order, with a generation prompt after it."""
    turns = [Q1, A1, Q2, A2, Q3]
    for marker in [SYSTEM, *turns]:
        assert text.count(marker) == 1, f"{marker} appears {text.count(marker)} times"
    positions = [text.index(m) for m in turns]
    assert positions == sorted(positions)
    system = text.index(SYSTEM)
    if case.system == SYSTEM_LAST:
        assert text.index(A2) < system < text.index(Q3)
    else:
        assert system < text.index(Q1)
    if case.system == SYSTEM_FOLDED:
        assert f"{SYSTEM}\n\n{Q1}" in text
    assert text[text.index(Q3) + len(Q3) :].strip(), "no generation prompt after the question"


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_real_template_renders_and_runs(case: Case, real_templates: Path, tmp_path: Path) -> None:
    template = (real_templates / case.file).read_text(encoding="utf-8")
    check_rendered(render(template, MESSAGES, bos_token=BOS, eos_token=EOS), case)

    # Tool-use preambles run to ~3,000 tokens: a trained context of 8192 loads as 4096.
    path = write_tiny_model(tmp_path / "model.gguf", chat_template=template, n_ctx_train=8192)
    loaded = engine.load_model(str(path), n_threads=1)
    try:
        assert loaded.mode == engine.CHAT
        assert loaded.model.chat_template == template  # as llama.cpp read it from the file
        tokens = conversation_tokens(loaded.model, loaded.template, MESSAGES)
        bos = loaded.model.bos_token
        assert bos is not None
        assert tokens[0] == bos and tokens[1] != bos  # once, whether the template wrote it
        engine.check_fits(loaded, len(tokens))

        events = list(engine.generate_tokens(loaded, tokens, SamplingParams(seed=1), max_tokens=2))
        finished = events[-1]
        assert isinstance(finished, engine.Finished)
        assert finished.stats.prompt_tokens == len(tokens)
        assert finished.stats.completion_tokens <= 2
    finally:
        loaded.close()
