"""The chat view's renderables and loop, rendered into capture consoles (exact text)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from rich.console import Console

from localrun.cli.chat import ChatUI, read_message
from localrun.cli.chatview import AnswerState, AnswerView, split_markdown, status_line, summary_line
from localrun.engine import FirstToken, LoadedModel, PromptEvaluated, Stats, TextDelta
from localrun.engine.chat import ChatSession
from tests.scripted import ScriptedModel
from tests.tinygguf import CHATML_TEMPLATE


def console() -> Console:
    return Console(width=120, record=True, color_system=None, force_terminal=False)


def exported(c: Console) -> str:
    """What the console showed, without the padding Markdown adds (centred titles too)."""
    return "\n".join(line.strip() for line in c.export_text().splitlines()) + "\n"


def test_status_line_during_prefill_and_decode() -> None:
    state = AnswerState("CPU", 4096, prompt_tokens=30)
    assert status_line(state).plain == "prefill · 30 prompt tokens · ctx 30/4096 · CPU"
    state.phase, state.ttft_s, state.tokens = "decode", 0.123, 11
    state.first_token_at, state.now = 10.0, 10.5
    assert status_line(state).plain == (
        "decode · TTFT 0.12 s · 20.0 tok/s · 11 tokens · ctx 41/4096 · CPU"
    )


def test_summary_line() -> None:
    stats = Stats(
        prompt_tokens=255,
        prompt_evaluated=36,
        prefill_tokens_per_s=200.7,
        ttft_s=0.19,
        completion_tokens=20,
        decode_tokens_per_s=44.5,
    )
    assert summary_line(stats).plain == (
        "TTFT 0.19 s · prefill 200.7 tok/s · decode 44.5 tok/s · 20 tokens · "
        "36 of 255 prompt tokens evaluated"
    )
    stats.drafted, stats.accepted, stats.passes = 16, 12, 8
    assert summary_line(stats).plain.endswith(
        "36 of 255 prompt tokens evaluated · 75% of guesses kept, 2.50 tokens a pass"
    )


@pytest.mark.parametrize(
    ("text", "done", "rest"),
    [
        ("para one\n\npara two", "para one\n\n", "para two"),
        ("no break yet", "", "no break yet"),
        ("a\n\n```py\nx = 1\n\ny = 2\n", "a\n\n", "```py\nx = 1\n\ny = 2\n"),
        ("```\ncode\n```\n\nafter", "```\ncode\n```\n\n", "after"),
        ("one\n\ntwo\n\n", "one\n\n", "two\n\n"),
    ],
)
def test_split_keeps_growing_block_and_open_fences(text: str, done: str, rest: str) -> None:
    assert split_markdown(text) == (done, rest)


def test_answer_view_prints_markdown_once() -> None:
    c = console()
    view = AnswerView(c, AnswerState("CPU", 256), live=False)
    with view:
        view.handle(PromptEvaluated(5, 5, 0.01))
        view.handle(FirstToken(0.02))
        for i, piece in enumerate(["# Title\n\n", "Some **bold", "** text.\n\n", "- item"]):
            view.handle(TextDelta(piece, i + 1))
    assert exported(c) == "Title\n\nSome bold text.\n\n• item\n"
    assert view.state.phase == "decode" and view.state.tokens == 4


def test_answer_view_without_wordwrap_streams_raw_text() -> None:
    c = console()
    view = AnswerView(c, AnswerState("CPU", 256), markdown=False, live=False)
    with view:
        view.handle(TextDelta("# not a title", 1))
    assert c.export_text() == "# not a title\n"


def ui_for(model: ScriptedModel) -> tuple[ChatUI, Console]:
    loaded = LoadedModel(name="tiny", path=Path("tiny.gguf"), model=model, load_s=0.25)
    c = console()
    return ChatUI(ChatSession(loaded), c, live=False), c


def script(*lines: str) -> object:
    feed: Iterator[str] = iter(lines)

    def read(prompt: str) -> str:
        try:
            line = next(feed)
        except StopIteration:
            raise EOFError from None
        print(prompt + line)
        return line

    return read


def test_chat_transcript(capsys: pytest.CaptureFixture[str]) -> None:
    ui, c = ui_for(ScriptedModel([b"Hello", b"!"], chat_template=CHATML_TEMPLATE))
    ui.greet()
    ui.run(script("hi", "/set parameter temperature 0.5", "/nope", "/bye", "never read"))  # type: ignore[arg-type]
    lines = exported(c).splitlines()
    assert lines[0] == "tiny loaded in 0.25 s (CPU)"
    assert lines[1] == "Type /? for help, /bye to leave."
    assert lines[2] == "Hello!"
    assert lines[3].startswith("TTFT ") and lines[3].endswith(
        "2 tokens · 53 of 53 prompt tokens evaluated"
    )
    assert lines[4:] == [
        "Set parameter 'temperature' to '0.5'.",
        "Unknown command '/nope'. Type /help for the commands.",
    ]
    assert ui.session.options.sampling.temperature == 0.5
    assert "never read" not in capsys.readouterr().out


def test_completion_mode_is_announced() -> None:
    ui, c = ui_for(ScriptedModel([b"."]))
    ui.greet()
    assert "no chat template: completion mode" in c.export_text()


def test_errors_in_commands_do_not_end_the_chat(tmp_path: Path) -> None:
    ui, c = ui_for(ScriptedModel([b"ok"], chat_template=CHATML_TEMPLATE))
    ui.run(script("/load " + str(tmp_path / "none.json"), "/set parameter top_p 9", "q"))  # type: ignore[arg-type]
    text = c.export_text()
    assert "Error: no such file" in text
    assert "Error: top_p must be between 0 and 1" in text
    assert ui.session.messages[-1].content == "ok"


def test_ctrl_d_and_ctrl_c_at_the_prompt_end_the_loop() -> None:
    for exc in (EOFError, KeyboardInterrupt):
        ui, c = ui_for(ScriptedModel([b"ok"]))
        calls: list[str] = []

        def read(prompt: str, exc: type[BaseException] = exc, calls: list[str] = calls) -> str:
            calls.append(prompt)
            if len(calls) > 1:  # the loop went on: fail now rather than spin for ever
                raise AssertionError(f"the chat read again after {exc.__name__}")
            raise exc

        ui.run(read)  # returns, neither raising nor reading again
        assert calls == [">>> "]
        assert ui.session.messages == []
        assert c.export_text() == "\n"  # only the line that ends the prompt


def test_multi_line_message() -> None:
    read = script('"""first', "second", 'third"""')
    assert read_message(read) == "first\nsecond\nthird"  # type: ignore[arg-type]
    assert read_message(script('"""one line"""')) == "one line"  # type: ignore[arg-type]


def test_control_characters_from_the_model_never_reach_the_terminal() -> None:
    for markdown in (True, False):
        c = Console(width=120, record=True, force_terminal=True, color_system=None)
        view = AnswerView(c, AnswerState("CPU", 256), markdown=markdown, live=False)
        with view:
            view.handle(TextDelta("hi \x1b]0;pwned\x07 and \x1b[2J cleared\ttab\x00\n", 1))
        out = c.export_text()
        assert "\x1b" not in out and "\x07" not in out and "\x00" not in out
        assert "hi ]0;pwned and [2J cleared" in out
