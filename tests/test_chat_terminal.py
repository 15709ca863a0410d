"""The chat's Ctrl-C and Ollama's commands in a real terminal (issue 30): ``localrun chat``
driven in tmux, with the machinery of :mod:`tests.test_tui` (every wait polls the pane
for a condition, with a deadline)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests import test_tui
from tests.test_tui import SUMMARY, OpenPane, Pane, chat_args, exit_status

# test_tui's fixtures: a tmux server, a localrun home for the session, a terminal.
terminal, tmux, tui_home = test_tui.terminal, test_tui.tmux, test_tui.tui_home

pytestmark = pytest.mark.e2e

HINT = "Use Ctrl + d or /bye to exit."


def leave(pane: Pane) -> None:
    """Ctrl-D at an empty prompt: the chat ends, exit status 0."""
    pane.wait_prompt()
    pane.keys("C-d")
    screen = pane.wait_exit()
    assert exit_status(screen) == 0
    assert "Traceback" not in screen


def test_ctrl_c_at_the_prompt_clears_the_line_and_the_chat_goes_on(
    terminal: OpenPane, tiny_chat_model: Path, tmp_path: Path
) -> None:
    pane = terminal(*chat_args(tiny_chat_model, "--max-tokens", "8"))
    assert SUMMARY.search(pane.send("hello world"))
    prompt = pane.wait_prompt()
    pane.tmux("send-keys", "-t", pane.target, "-l", "half a thought")
    pane.wait_for(lambda s: s.splitlines()[-1] == ">>> half a thought", "the typed text")
    pane.keys("C-c")
    # A fresh, empty prompt below, with the hint; the chat did not end.
    screen = pane.wait_for(
        lambda s: s.count("\n") > prompt + 1 and s.splitlines()[-1] == ">>>", "a fresh prompt"
    )
    assert HINT in screen
    assert not re.search(r"^EXIT=", screen, re.M)

    # The half line was not sent; the next message is answered with the history intact.
    assert SUMMARY.search(pane.send("why is the sky blue"))
    saved = tmp_path / "after-ctrl-c.json"
    pane.send(f"/save {saved}")
    messages = json.loads(saved.read_text())["messages"]
    assert [m["content"] for m in messages if m["role"] == "user"] == [
        "hello world",
        "why is the sky blue",
    ]

    prompt = pane.wait_prompt()
    pane.keys("C-c")  # the hint is said once
    pane.wait_for(lambda s: s.count("\n") > prompt and s.splitlines()[-1] == ">>>", "a prompt")
    assert pane.screen().count(HINT) == 1
    leave(pane)


def test_ctrl_c_in_a_multi_line_message_abandons_it(
    terminal: OpenPane, tiny_chat_model: Path, tmp_path: Path
) -> None:
    pane = terminal(*chat_args(tiny_chat_model, "--max-tokens", "8"))
    prompt = pane.wait_prompt()
    pane.type_line('"""the first line')
    more = pane.wait_last_line("...", below=prompt)
    pane.tmux("send-keys", "-t", pane.target, "-l", "and half of the second")
    pane.keys("C-c")
    pane.wait_for(
        lambda s: s.count("\n") > more and s.splitlines()[-1] == ">>>", "a fresh >>> prompt"
    )
    assert SUMMARY.search(pane.send("a new message"))
    saved = tmp_path / "multi.json"
    pane.send(f"/save {saved}")
    messages = json.loads(saved.read_text())["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant"]
    assert messages[0]["content"] == "a new message"
    leave(pane)


def test_ctrl_c_during_an_answer_stops_it_and_keeps_the_chat(terminal: OpenPane) -> None:
    pane = terminal("chat", "demo", "--seed", "1")
    prompt = pane.wait_prompt(timeout=60)  # the first run may assemble the demo model
    typed = "The history of the Roman Empire"
    pane.type_line(typed)
    pane.wait_for(lambda s: "decode · TTFT" in s, "the answer to start")
    pane.keys("C-c")
    screen = pane.wait_answer(prompt, typed)
    assert "(stopped: the answer so far is kept)" in screen
    assert HINT not in screen  # stopping an answer is not Ctrl-C at the prompt
    answer = pane.send("/set parameter num_predict 4")
    assert "Set parameter 'max_tokens' to '4'." in answer
    assert re.search(r"\d+ tokens", pane.send("and then"))
    leave(pane)
