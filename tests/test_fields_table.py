"""docs/serve.md's "Every request field" tables, row by row, against the real server in
process (a tiny model in llama.cpp, one token an answer): a field the table calls refused
gets a 400 when sent with a plausible value, one it calls used or ignored does not.

Each row's value is in this file's dicts, and each value's row is in the table: a row
added to one and not the other fails here, so the table and the server stay in step."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
from starlette.applications import Starlette

from tests.inprocess import served
from tests.tinygguf import write_tiny_model

T = TypeVar("T")
DOC = Path(__file__).resolve().parent.parent / "docs" / "serve.md"
SECTION = "## Every request field"
STATUSES = ("used", "ignored", "refused")

# A template that offers tools and can think (so `tools`, `think` and `reasoning_effort`
# are taken as they are from a model that has them), and a vocabulary with infill tokens
# (so `suffix` is).
TEMPLATE = (
    "{% if tools %}tools: {{ tools | tojson }}; call them as <tool_call>{...}</tool_call>\n"
    "{% endif %}{% for m in messages %}{{ m.role }}: {{ m.content }}\n{% endfor %}assistant:"
    "{% if enable_thinking is defined and not enable_thinking %}<think></think>{% endif %}"
)
FIM = ("<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>")
WEATHER = {
    "type": "function",
    "function": {
        "name": "weather",
        "description": "The weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}
HI = {"role": "user", "content": "hi"}
OK = {"role": "user", "content": "thanks"}
CALLED = {"function": {"name": "weather", "arguments": {"city": "Oslo"}}}
OAI_CALLED = {
    "id": "call_1",
    "type": "function",
    "function": {"name": "weather", "arguments": '{"city": "Oslo"}'},
}
OLLAMA_TURN = [
    HI,
    {"role": "assistant", "content": "", "tool_calls": [CALLED]},
    {"role": "tool", "content": "sunny", "tool_name": "weather", "tool_call_id": "call_1"},
]
OAI_TURN = [
    HI,
    {"role": "assistant", "content": None, "tool_calls": [OAI_CALLED]},
    {"role": "tool", "content": "sunny", "tool_call_id": "call_1"},
]


def _user(part: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"role": "user", "content": [part]}]


def _answered(message: dict[str, Any]) -> list[dict[str, Any]]:
    return [HI, {"role": "assistant"} | message, OK]


# Where each Ollama field goes (generate, chat, or both), and a plausible value. A
# ``messages[].`` field's value is the whole conversation that shows it.
OLLAMA: dict[str, tuple[str, Any]] = {
    "model": ("both", "tiny"),
    "prompt": ("generate", "why is the sky blue"),
    "suffix": ("generate", "\nprint(answer)\n"),
    "system": ("generate", "Answer briefly."),
    "template": ("generate", "{{ .System }} {{ .Prompt }}"),
    "context": ("generate", [1, 2, 3]),
    "raw": ("generate", True),
    "images": ("both", []),  # a picture would be refused: the tiny model does not see
    "messages": ("chat", [HI]),
    "tools": ("chat", [WEATHER]),
    "format": ("both", "json"),
    "options": ("both", {"num_predict": 1, "temperature": 0.5}),
    "stream": ("both", True),
    "keep_alive": ("both", "5m"),
    "think": ("both", True),
    "truncate": ("both", True),
    "shift": ("both", True),
    "_debug_render_only": ("both", True),
    "logprobs": ("both", True),
    "top_logprobs": ("both", 3),
    "messages[].role": ("chat", [{"role": "system", "content": "Be brief."}, HI]),
    "messages[].content": ("chat", [HI]),
    "messages[].thinking": ("chat", _answered({"content": "Hello", "thinking": "Greet."})),
    "messages[].images": ("chat", [HI | {"images": []}]),
    "messages[].tool_calls": ("chat", OLLAMA_TURN),
    "messages[].tool_name": ("chat", OLLAMA_TURN),
    "messages[].tool_call_id": ("chat", OLLAMA_TURN),
}
OPTIONS: dict[str, Any] = {
    "num_ctx": 1024, "num_predict": 1, "seed": 42, "temperature": 0.8, "top_k": 20,
    "top_p": 0.9, "min_p": 0.05, "typical_p": 0.7, "repeat_penalty": 1.2, "repeat_last_n": 33,
    "presence_penalty": 1.5, "frequency_penalty": 1.0, "stop": ["\n", "user:"], "num_keep": 5,
    "draft_num_predict": 4, "penalize_newline": True, "numa": False, "num_batch": 2,
    "num_gpu": 1, "main_gpu": 0, "use_mmap": True, "num_thread": 8,
}  # fmt: skip
CHAT: dict[str, Any] = {
    "model": "tiny",
    "messages": [HI],
    "audio": {"voice": "alloy", "format": "wav"},
    "frequency_penalty": 0.5,
    "function_call": "auto",
    "functions": [WEATHER["function"]],
    "logit_bias": {"50": 10},
    "logprobs": True,
    "max_completion_tokens": 1,
    "max_tokens": 1,
    "metadata": {"project": "docs"},
    "modalities": ["text"],
    "moderation": {"model": "omni-moderation-latest"},
    "n": 2,
    "parallel_tool_calls": False,
    "prediction": {"type": "content", "content": "The sky is blue"},
    "presence_penalty": 0.5,
    "prompt_cache_key": "docs",
    "prompt_cache_options": {"mode": "implicit"},
    "prompt_cache_retention": "24h",
    "reasoning_effort": "low",
    "response_format": {"type": "json_object"},
    "safety_identifier": "user-1",
    "seed": 1,
    "service_tier": "auto",
    "stop": ["\n"],
    "store": False,
    "stream": True,
    "stream_options": {"include_usage": True},
    "temperature": 0.7,
    "tool_choice": "auto",
    "tools": [WEATHER],
    "top_logprobs": 3,
    "top_p": 0.9,
    "user": "user-1",
    "verbosity": "low",
    "web_search_options": {},
    "messages[].role": [{"role": "developer", "content": "Be brief."}, HI],
    "messages[].content": _user({"type": "text", "text": "hi"}),
    "messages[].content[].input_audio": _user(
        {"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "wav"}}
    ),
    "messages[].content[].file": _user(
        {"type": "file", "file": {"file_data": "JVBERi0=", "filename": "a.pdf"}}
    ),
    "messages[].content[].refusal": _answered(
        {"content": [{"type": "refusal", "refusal": "I cannot."}]}
    ),
    "messages[].name": [HI | {"name": "ada"}],
    "messages[].tool_calls": OAI_TURN,
    "messages[].tool_call_id": OAI_TURN,
    "messages[].refusal": _answered({"content": None, "refusal": "I cannot."}),
    "messages[].audio": _answered({"content": "Hello", "audio": {"id": "audio_1"}}),
    "messages[].function_call": _answered(
        {"content": None, "function_call": {"name": "weather", "arguments": "{}"}}
    ),
}
COMPLETIONS: dict[str, Any] = {
    "model": "tiny", "prompt": "def add(a, b):", "best_of": 2, "echo": True,
    "frequency_penalty": 0.5, "logit_bias": {"50": 10}, "logprobs": 3, "max_tokens": 1, "n": 2,
    "presence_penalty": 0.5, "seed": 1, "stop": "\n", "stream": True,
    "stream_options": {"include_usage": True}, "suffix": "\n    return a + b\n",
    "temperature": 0.7, "top_p": 0.9, "user": "user-1",
}  # fmt: skip
# Fields that are sent with another (a count of alternatives needs the flag that asks).
WITH: dict[str, dict[str, Any]] = {"top_logprobs": {"logprobs": True}}


def _tables() -> dict[str, list[tuple[str, str]]]:
    """The section's tables by their heading: each row's field and status."""
    text = DOC.read_text(encoding="utf-8")
    assert SECTION in text, f"docs/serve.md has no '{SECTION}' section"
    section = text.split(SECTION, 1)[1].split("\n## ", 1)[0]
    tables: dict[str, list[tuple[str, str]]] = {}
    heading = ""
    for line in section.splitlines():
        if line.startswith("### "):
            heading = line[4:].strip()
        row = re.match(r"\|\s*`([^`]+)`\s*\|\s*(\w+)\s*\|", line)
        if row:
            tables.setdefault(heading, []).append((row[1], row[2]))
    return tables


def _rows(heading: str, values: dict[str, Any]) -> list[tuple[str, str]]:
    """The table's rows, checked to be the value dict's fields, each once, with a status."""
    rows = _tables().get(heading)
    assert rows, f"docs/serve.md has no table under '### {heading}'"
    fields = [field for field, _ in rows]
    assert len(set(fields)) == len(fields), f"a field is listed twice under '{heading}'"
    bad = [f"{field}: {status}" for field, status in rows if status not in STATUSES]
    assert not bad, f"statuses must be one of {STATUSES}: {bad}"
    assert sorted(fields) == sorted(values), (
        f"'{heading}' and this test's values differ: in the table only "
        f"{sorted(set(fields) - set(values))}, in the test only "
        f"{sorted(set(values) - set(fields))}"
    )
    return rows


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("fields") / "tiny.gguf"
    return write_tiny_model(path, chat_template=TEMPLATE, specials=FIM)


Sent = tuple[str, str, dict[str, Any], str]  # field, path, body, status the table gives


def _check(home: Path, model: Path, sent: list[Sent]) -> None:
    """Send each body; every answer's status must be the table's (400 for refused)."""

    async def use(app: Starlette) -> list[str]:
        wrong = []
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as http:
            for field, path, body, status in sent:
                r = await http.post(path, json=body, timeout=60)
                if r.status_code != (400 if status == "refused" else 200):
                    wrong.append(f"{path} {field} ({status}): {r.status_code} {r.text[:160]}")
        return wrong

    wrong = served(home, {"tiny": model}, use, parallel=4)
    assert not wrong, "docs/serve.md's table and the server disagree:\n" + "\n".join(wrong)


def _with(base: dict[str, Any], field: str, value: Any) -> dict[str, Any]:
    """``base`` with the field set (a ``messages[].`` field sets the conversation)."""
    if field.startswith("messages[]."):
        return base | {"messages": value}
    return base | WITH.get(field, {}) | {field: value}


def test_ollama_generate_and_chat(localrun_home: Path, model: Path) -> None:
    one = {"num_predict": 1}
    bases = {
        "generate": ("/api/generate", {"model": "tiny", "prompt": "hi", "stream": False}),
        "chat": ("/api/chat", {"model": "tiny", "messages": [HI], "stream": False}),
    }
    sent: list[Sent] = []
    for field, status in _rows("Ollama: /api/generate and /api/chat", OLLAMA):
        where, value = OLLAMA[field]
        for name, (path, base) in bases.items():
            if where in (name, "both"):
                body = _with(base | {"options": one}, field, value)
                body["options"] = body["options"] | one  # one token, whatever the value
                sent.append((field, path, body, status))
    _check(localrun_home, model, sent)


def test_ollama_options(localrun_home: Path, model: Path) -> None:
    body = {"model": "tiny", "messages": [HI], "stream": False}
    sent: list[Sent] = [
        (field, "/api/chat", body | {"options": {field: OPTIONS[field], "num_predict": 1}}, status)
        for field, status in _rows("Ollama: options", OPTIONS)
    ]
    _check(localrun_home, model, sent)


def test_openai_chat_completions(localrun_home: Path, model: Path) -> None:
    base = {"model": "tiny", "messages": [HI], "max_tokens": 1}
    sent: list[Sent] = []
    for field, status in _rows("OpenAI: /v1/chat/completions", CHAT):
        body = _with(base, field, CHAT[field])
        if field == "max_completion_tokens":
            del body["max_tokens"]
        sent.append((field, "/v1/chat/completions", body, status))
    _check(localrun_home, model, sent)


def test_openai_completions(localrun_home: Path, model: Path) -> None:
    base = {"model": "tiny", "prompt": "def add(a, b):", "max_tokens": 1}
    sent: list[Sent] = [
        (field, "/v1/completions", _with(base, field, COMPLETIONS[field]), status)
        for field, status in _rows("OpenAI: /v1/completions", COMPLETIONS)
    ]
    _check(localrun_home, model, sent)
