"""The chat view's renderables and loop, rendered into capture consoles (exact text); at
the end, the view in a real terminal (tmux)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from rich.console import Console

from localrun.cli.chat import ChatUI, read_message
from localrun.cli.chatview import AnswerState, AnswerView, split_markdown, status_line, summary_line
from localrun.engine import FirstToken, LoadedModel, PromptEvaluated, Stats, TextDelta
from localrun.engine.answerer import LocalAnswerer
from localrun.engine.chat import ChatSession
from localrun.engine.types import PrefillProgress
from tests.scripted import ScriptedModel
from tests.terminal import open_terminal
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


def test_status_line_shows_a_long_prompts_progress_and_rate() -> None:
    state = AnswerState("CPU", 4096)
    assert status_line(state).plain == "prefill · 0 prompt tokens · ctx 0/4096 · CPU"
    state.prefill = PrefillProgress(prompt_tokens=1600, done=512, total=1600, seconds=1.0)
    assert status_line(state).plain == "prefill · 512/1,600 tokens · 512 tok/s · ctx 512/4096 · CPU"
    # A chat's later turn: 400 tokens were in the cache already; ctx counts them.
    state.prefill = PrefillProgress(prompt_tokens=2000, done=1024, total=1600, seconds=2.0)
    assert status_line(state).plain == (
        "prefill · 1,024/1,600 tokens · 512 tok/s · ctx 1424/4096 · CPU"
    )
    state.prefill = PrefillProgress(prompt_tokens=1600, done=512, total=1600, seconds=0.0)
    assert "512/1,600 tokens · … tok/s" in status_line(state).plain


def test_answer_view_takes_prefill_progress_until_the_prompt_is_read() -> None:
    view = AnswerView(console(), AnswerState("CPU", 4096), live=False)
    with view:
        for done in (512, 1024, 1536):
            view.handle(PrefillProgress(1600, done, 1600, done / 500))
            assert status_line(view.state).plain.startswith(f"prefill · {done:,}/1,600 tokens")
        view.handle(PromptEvaluated(1600, 1600, 3.3))
        assert status_line(view.state).plain == (
            "prefill · 1600 prompt tokens · ctx 1600/4096 · CPU"
        )
        view.handle(FirstToken(3.4))
        assert status_line(view.state).plain.startswith("decode · TTFT 3.40 s")


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


def streamed(text: str, width: int = 60, piece: int = 7) -> str:
    """``text`` drawn by an answer view on a console of ``width`` columns, fed in pieces of
    ``piece`` characters as a model writes it; trailing spaces cut, indentation kept."""
    c = Console(width=width, record=True, color_system=None, force_terminal=False)
    view = AnswerView(c, AnswerState("CPU", 4096), live=False)
    with view:
        for i in range(0, len(text), piece):
            view.handle(TextDelta(text[i : i + piece], i + 1))
    return "\n".join(line.rstrip() for line in c.export_text().splitlines()) + "\n"


def test_a_poem_keeps_its_lines() -> None:
    poem = "Roses are red,\nViolets are blue,\nSugar is sweet,\nAnd so are you.\n"
    assert streamed(poem) == poem


def test_code_outside_a_fence_keeps_its_lines_and_indentation() -> None:
    code = (
        "def fib(n):\n"
        "    if n == 0:\n"
        "        return 0\n"
        "    elif n == 1:  \n"  # trailing spaces go, as before any hard break
        "        return 1\n"
        "    return fib(n - 1) + fib(n - 2)\n"
    )
    assert streamed(code) == code.replace(":  \n", ":\n")


def test_markdown_still_renders_with_line_breaks_kept() -> None:
    text = (
        "# Fibonacci\n\n"
        "It is **simple**:\nadd the two before.\n\n"
        "- one\n- two\n  and more\n\n"
        "```python\nx = 1\n    y = 2\n```\n\n"
        "A long line that is wrapped by the console because it is longer than sixty columns.\n"
    )
    shown = streamed(text)
    assert "**" not in shown and "#" not in shown and "```" not in shown
    lines = [line.strip() for line in shown.splitlines()]
    assert lines[0] == "Fibonacci"  # a heading (centred), its marker gone
    assert "It is simple:" in lines and "add the two before." in lines  # bold, two lines
    assert "• one" in lines and "• two" in lines and "and more" in lines
    assert " x = 1" in shown.splitlines() and "     y = 2" in shown.splitlines()  # the fence
    assert "A long line that is wrapped by the console because it is" in lines
    assert "longer than sixty columns." in lines  # a long line still wraps at the width


def test_answer_view_without_wordwrap_streams_raw_text() -> None:
    c = console()
    view = AnswerView(c, AnswerState("CPU", 256), markdown=False, live=False)
    with view:
        view.handle(TextDelta("# not a title", 1))
    assert c.export_text() == "# not a title\n"


def ui_for(model: ScriptedModel) -> tuple[ChatUI, Console]:
    loaded = LoadedModel(name="tiny", path=Path("tiny.gguf"), model=model, load_s=0.25)
    c = console()
    return ChatUI(ChatSession(LocalAnswerer(loaded)), c, live=False), c


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


def test_ctrl_d_at_the_prompt_ends_the_loop() -> None:
    """(Ctrl-C there clears the line and the chat goes on: tests/test_chat.py.)"""
    ui, c = ui_for(ScriptedModel([b"ok"]))
    calls: list[str] = []

    def read(prompt: str) -> str:
        calls.append(prompt)
        if len(calls) > 1:  # the loop went on: fail now rather than spin for ever
            raise AssertionError("the chat read again after Ctrl-D")
        raise EOFError

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


def test_a_replayed_conversation_reaches_the_terminal_without_control_characters() -> None:
    """/load NAME shows the conversation again: a saved answer's escape sequences (the tiny
    model writes random bytes) must not reach the terminal either, 8-bit ones included."""
    from localrun.prompt.template import Message

    ui, c = ui_for(ScriptedModel([b"x"]))
    hostile = "a\x1bPq swallowed? \x9b2J b\x90c\x07"
    ui.session.messages = [Message("user", hostile), Message("assistant", hostile)]
    ui.replay()
    out = c.export_text()
    assert not any(ch in out for ch in "\x1b\x9b\x90\x07")
    assert out.count("aPq swallowed? 2J bc") == 2


# -- in a real terminal -------------------------------------------------------------------

# An answer streamed into the live view, as ``localrun run`` draws one on a terminal.
STREAM_SCRIPT = """
import sys, time
from rich.console import Console
from localrun.cli.chatview import AnswerState, AnswerView
from localrun.engine import FirstToken, TextDelta

text = open(sys.argv[1]).read()
view = AnswerView(Console(), AnswerState("CPU", 4096))
with view:
    view.handle(FirstToken(0.1))
    for i in range(0, len(text), 5):
        view.handle(TextDelta(text[i : i + 5], i + 1))
        time.sleep(0.005)  # a model's pace, so that the live region is redrawn as it grows
"""


@pytest.mark.e2e
def test_line_breaks_in_a_real_terminal(tmp_path: Path) -> None:
    answer = tmp_path / "answer.md"
    answer.write_text(
        "Roses are red,\nViolets are blue,\nSugar is sweet,\nAnd so are you.\n\n"
        "def fact(n):\n    if n == 0:\n        return 1\n    return n * fact(n - 1)\n\n"
        "## Notes\n\nThis is **bold**, and a list:\n\n- one\n- two\n"
    )
    with open_terminal(tmp_path) as terminal:
        terminal.start([sys.executable, "-c", STREAM_SCRIPT, str(answer)], {})
        assert terminal.wait_exit(timeout=60) == 0, terminal.screen()
        lines = terminal.screen().splitlines()
    for line in (
        "Roses are red,",
        "Violets are blue,",
        "Sugar is sweet,",
        "And so are you.",
        "def fact(n):",
        "    if n == 0:",
        "        return 1",
        "    return n * fact(n - 1)",
        "This is bold, and a list:",
    ):
        assert lines.count(line) == 1, (line, lines)  # once: the live region left no copy
    assert any(line.strip() == "Notes" for line in lines)
    assert [line.strip() for line in lines if "•" in line] == ["• one", "• two"]
    shown = "\n".join(lines)
    assert "**" not in shown and "#" not in shown and "prefill" not in shown
