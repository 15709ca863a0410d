"""The chat in a real terminal: ``localrun run`` driven in tmux, keys in, screen out, with
the machinery of :mod:`tests.terminal` (every wait polls the pane for a condition, with a
deadline)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.terminal import SUMMARY, TMUX, OpenPane, between, chat_args, exit_status

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(TMUX is None, reason="tmux is not installed"),
]

STATUS = re.compile(r"decode · TTFT .* tok/s · \d+ tokens · ctx \d+/\d+ · CPU")
OUTGREW = "(the conversation outgrew the context"
TOO_LONG = "Error: that message is too long for the context"
STOPPED = "(stopped: the answer so far is kept)"


def test_chat_answers_with_figures_and_slash_commands(
    terminal: OpenPane, tiny_chat_model: Path
) -> None:
    pane = terminal(*chat_args(tiny_chat_model, "--max-tokens", "24"))
    pane.wait_prompt()
    greeting = pane.screen()
    assert re.search(r"loaded in \d+\.\d\d s \(CPU; KV cache [\d.]+ [KM]B f16\)", greeting)
    assert "Type /? for help, /bye to leave." in greeting
    assert "completion mode" not in greeting  # a chat template: chat mode

    answer = pane.send("why is the sky blue")
    assert SUMMARY.search(answer), answer
    assert "TTFT" in answer and "tok/s" in answer and "prompt tokens evaluated" in answer

    params = pane.send("/show parameters")
    assert re.search(r"^  temperature\s+0\.8$", params, re.M), params
    assert "Set parameter 'temperature' to '0.1'." in pane.send("/set parameter temperature 0.1")
    params = pane.send("/show parameters")
    assert re.search(r"^  temperature\s+0\.1$", params, re.M), params

    unknown = pane.send("/frobnicate")
    assert "Unknown command '/frobnicate'. Type /help for the commands." in unknown
    assert "/save FILE, /load FILE" in pane.send("/?")

    pane.wait_prompt()
    pane.type_line("/bye")
    assert exit_status(pane.wait_exit()) == 0


def test_status_line_while_answering_and_ctrl_c(terminal: OpenPane) -> None:
    pane = terminal("run", "demo", "--seed", "1")
    prompt = pane.wait_prompt(timeout=60)  # the first run assembles the demo model
    assert "completion mode" in pane.screen()

    typed = "The history of the Roman Empire"
    pane.type_line(typed)
    # A base model runs on: the live status line is there while it writes.
    pane.wait_for(lambda s: STATUS.search(s) is not None, "the live status line")
    live = [line for line in pane.visible().splitlines() if STATUS.search(line)]
    assert len(live) <= 1, live  # one status line, redrawn in place

    pane.keys("C-c")
    screen = pane.wait_answer(prompt, typed)
    after = between(screen, prompt, f">>> {typed}")
    assert after is not None
    assert STOPPED in after
    assert not STATUS.search(after)  # the live line is gone once the answer stops
    assert "Traceback" not in screen

    pane.wait_prompt()
    pane.type_line("/bye")
    assert exit_status(pane.wait_exit()) == 0


def test_multiline_message_is_one_message(
    terminal: OpenPane, tiny_chat_model: Path, tmp_path: Path
) -> None:
    pane = terminal(*chat_args(tiny_chat_model, "--max-tokens", "8"))
    prompt = pane.wait_prompt()
    pane.type_line('"""the sky')
    more = pane.wait_last_line("...", below=prompt)
    pane.type_line("  is blue")
    pane.wait_last_line("...", below=more)
    pane.type_line('why"""')
    answer = between(pane.wait_answer(prompt, '"""the sky'), prompt, '>>> """the sky')
    assert answer is not None
    assert answer.startswith('...   is blue\n... why"""\n'), answer
    assert len(SUMMARY.findall(answer)) == 1, answer  # one message, one answer

    saved = tmp_path / "multi.json"
    assert f"Saved the conversation to {saved}." in pane.send(f"/save {saved}")
    messages = json.loads(saved.read_text())["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant"]
    assert messages[0]["content"] == "the sky\n  is blue\nwhy"

    pane.wait_prompt()
    pane.type_line("/bye")
    assert exit_status(pane.wait_exit()) == 0


def test_save_clear_load(terminal: OpenPane, tiny_chat_model: Path, tmp_path: Path) -> None:
    pane = terminal(*chat_args(tiny_chat_model, "--max-tokens", "8"))
    assert SUMMARY.search(pane.send("hello world"))
    assert SUMMARY.search(pane.send("why is the sky blue"))
    first, second = tmp_path / "chat.json", tmp_path / "again.json"
    pane.send("/set system you are terse")
    pane.send(f"/save {first}")
    data = json.loads(first.read_text())
    assert data["format"] == "localrun-chat/1"
    assert data["system"] == "you are terse"
    messages = data["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant", "user", "assistant"]
    assert messages[0]["content"] == "hello world"
    assert messages[2]["content"] == "why is the sky blue"

    assert "Cleared the conversation." in pane.send("/clear")
    pane.send(f"/save {second}")
    assert json.loads(second.read_text())["messages"] == []

    assert f"Loaded 4 messages from {first}." in pane.send(f"/load {first}")
    # The file exists now: /save asks first, and "no" keeps it as it was.
    prompt = pane.wait_prompt()
    pane.type_line(f"/save {second}")
    pane.wait_last_line(f"{second} exists. Overwrite it? [y/N]", below=prompt)
    pane.type_line("n")
    pane.wait_prompt()
    assert json.loads(second.read_text())["messages"] == []
    prompt = pane.wait_prompt()
    pane.type_line(f"/save {second}")
    pane.wait_last_line(f"{second} exists. Overwrite it? [y/N]", below=prompt)
    pane.type_line("y")
    pane.wait_prompt()
    assert json.loads(second.read_text())["messages"] == messages
    assert "you are terse" in pane.send("/show system")

    missing = tmp_path / "absent.json"
    assert f"Error: no such file: {missing}." in pane.send(f"/load {missing}")
    pane.wait_prompt()
    pane.type_line("/exit")
    assert exit_status(pane.wait_exit()) == 0


# One token each in the tiny model's vocabulary ("▁a" ... "▁z"): 80 words, 80 tokens.
WORDS = [chr(ord("a") + i % 26) for i in range(80)]


def test_context_overflow(terminal: OpenPane, tiny_chat_model: Path) -> None:
    pane = terminal(*chat_args(tiny_chat_model, "--ctx", "256"))
    pane.wait_prompt()
    assert "Set parameter 'max_tokens' to '40'." in pane.send("/set parameter max_tokens 40")
    assert re.search(r"^  context\s+256 ", pane.send("/show info"), re.M)

    long_message = " ".join(WORDS)  # about 80 tokens: two exchanges no longer fit
    for _ in range(4):
        answer = pane.send(long_message)
        assert SUMMARY.search(answer), answer  # it answers, trimmed or not
        if OUTGREW in answer:
            break
    else:
        pytest.fail(f"four long messages never outgrew a 256-token context:\n{pane.screen()}")
    assert re.search(r"the \d+ oldest messages were dropped, \d+ kept", answer), answer

    huge = " ".join(WORDS * 5)  # 400 tokens, more than the whole context
    refused = pane.send(huge)
    assert TOO_LONG in refused, refused
    assert "holds only 256" in refused.replace("\n", " ")
    assert not SUMMARY.search(refused)
    assert "Traceback" not in refused

    assert SUMMARY.search(pane.send("hello world"))  # the chat goes on
    pane.wait_prompt()
    pane.type_line("/bye")
    assert exit_status(pane.wait_exit()) == 0


def test_ctrl_d_at_the_prompt_leaves(terminal: OpenPane, tiny_chat_model: Path) -> None:
    """(Ctrl-C there clears the line instead: tests/test_chat_terminal.py.)"""
    pane = terminal("chat", str(tiny_chat_model))
    pane.wait_prompt()
    pane.keys("C-d")
    screen = pane.wait_exit()
    assert exit_status(screen) == 0
    assert "Traceback" not in screen
