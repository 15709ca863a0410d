"""The chat session (engine side) with a scripted model: history, retry, context, files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from localrun.backend import SamplingParams
from localrun.engine import Finished, LoadedModel, TextDelta
from localrun.engine.chat import ChatSession, Options, Trimmed
from localrun.errors import LocalrunError, PromptTooLongError, UsageError
from localrun.prompt.template import Message
from tests.scripted import ScriptedModel
from tests.tinygguf import CHATML_TEMPLATE


def session(model: ScriptedModel, **kwargs: object) -> ChatSession:
    loaded = LoadedModel(name="m", path=Path("m.gguf"), model=model, load_s=0.1)
    return ChatSession(loaded, **kwargs)  # type: ignore[arg-type]


def text_of(events: object) -> str:
    return "".join(e.text for e in events if isinstance(e, TextDelta))  # type: ignore[attr-defined]


def chat_model(**kwargs: object) -> ScriptedModel:
    return ScriptedModel([b"Hi", b" there"], chat_template=CHATML_TEMPLATE, **kwargs)  # type: ignore[arg-type]


def test_turns_accumulate_and_render_through_the_template() -> None:
    model = chat_model()
    s = session(model, system="Be brief.")
    assert text_of(s.ask("first")) == "Hi there"
    assert text_of(s.ask("second")) == "Hi there"
    assert s.messages == [
        Message("user", "first"),
        Message("assistant", "Hi there"),
        Message("user", "second"),
        Message("assistant", "Hi there"),
    ]
    prompt = bytes(t - 3 for t in model.prompts[1][1:]).decode()
    assert prompt.startswith("<|im_start|>system\nBe brief.<|im_end|>")
    assert "<|im_start|>assistant\nHi there<|im_end|>\n<|im_start|>user\nsecond" in prompt
    assert s.last_stats is not None and s.last_stats.completion_tokens == 2


def test_completion_mode_continues_the_transcript() -> None:
    model = ScriptedModel([b" blue."])
    s = session(model)
    list(s.ask("The sky is"))
    list(s.ask("Grass is"))
    assert bytes(t - 3 for t in model.prompts[1][1:]) == b"The sky is blue.\n\nGrass is"


def test_retry_replaces_the_last_answer() -> None:
    s = session(chat_model())
    list(s.ask("q"))
    list(s.retry())
    assert [m.role for m in s.messages] == ["user", "assistant"]
    s.clear()
    with pytest.raises(UsageError, match="no message"):
        s.retry()


def test_interrupted_answer_is_kept() -> None:
    s = session(ScriptedModel([b"partial", b" more"] * 20, chat_template=CHATML_TEMPLATE))
    with pytest.raises(KeyboardInterrupt):
        for event in s.ask("q"):
            if isinstance(event, TextDelta) and event.text:
                raise KeyboardInterrupt  # Ctrl-C while the answer streams
    assert s.messages == [Message("user", "q"), Message("assistant", "partial")]
    # The engine freed the sequence: the chat goes on.
    assert isinstance(list(s.ask("again"))[-1], Finished)


def test_old_turns_are_dropped_when_the_context_fills() -> None:
    # Scripted tokens are one per byte: a 256-token context holds little.
    model = ScriptedModel([b"ok"], chat_template=CHATML_TEMPLATE, n_ctx=256)
    s = session(model, system="SYS")
    for i in range(3):
        list(s.ask(f"message {i} " + "x" * 40))
    events = list(s.ask("last " + "y" * 40))
    trimmed = [e for e in events if isinstance(e, Trimmed)]
    assert trimmed and trimmed[0].dropped >= 2 and trimmed[0].dropped % 2 == 0
    assert s.messages[0].role == "user" and s.messages[-2].content.startswith("last")
    assert isinstance(events[-1], Finished)
    prompt = bytes(t - 3 for t in model.prompts[-1][1:]).decode()
    assert "SYS" in prompt  # the system prompt stays
    assert len(model.prompts[-1]) + 64 <= 256


def test_a_message_too_long_for_the_context_is_refused_and_the_chat_goes_on() -> None:
    model = ScriptedModel([b"ok"], chat_template=CHATML_TEMPLATE, n_ctx=256)
    s = session(model)
    list(s.ask("hello"))
    with pytest.raises(PromptTooLongError, match="too long for the context"):
        s.ask("z" * 600)
    assert s.messages == [Message("user", "hello"), Message("assistant", "ok")]
    assert text_of(s.ask("again")) == "ok"


def test_set_parameter_validates_and_accepts_ollama_names() -> None:
    s = session(chat_model())
    assert s.set_parameter("temperature", "0.2") == "temperature"
    assert s.set_parameter("top-k", "7") == "top_k"
    assert s.set_parameter("num_predict", "5") == "max_tokens"
    s.set_parameter("stop", "###")
    s.set_parameter("seed", "42")
    p = s.parameters()
    assert (p["temperature"], p["top_k"], p["max_tokens"], p["stop"], p["seed"]) == (
        0.2, 7, 5, ["###"], 42,
    )  # fmt: skip
    for name, value, needle in [
        ("warmth", "1", "unknown parameter"),
        ("temperature", "hot", "temperature must be a number, not 'hot'"),
        ("top_p", "1.5", "between 0 and 1"),
    ]:
        with pytest.raises(UsageError, match=needle):
            s.set_parameter(name, value)


def test_save_and_load_round_trip(tmp_path: Path) -> None:
    s = session(chat_model(), system="S", options=Options(SamplingParams(temperature=0.3)))
    list(s.ask("q1"))
    s.set_parameter("stop", "END")
    path = tmp_path / "chat.json"
    s.save(path)
    data = json.loads(path.read_text())
    assert data["format"] == "localrun-chat/1" and data["system"] == "S"
    assert data["messages"][0] == {"role": "user", "content": "q1"}
    other = session(chat_model())
    other.load(path)
    assert other.messages == s.messages and other.system == "S"
    assert other.parameters() == s.parameters()


def test_load_errors(tmp_path: Path) -> None:
    s = session(chat_model())
    with pytest.raises(LocalrunError, match="no such file"):
        s.load(tmp_path / "absent.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(LocalrunError, match="not a saved localrun chat"):
        s.load(bad)
    list(s.ask("kept"))
    assert len(s.messages) == 2  # a failed load changes nothing
