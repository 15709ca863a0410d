"""The chat's Ctrl-C and Ollama's commands in a real terminal (issue 30): ``localrun chat``
driven in tmux, with the machinery of :mod:`tests.terminal` (every wait polls the pane
for a condition, with a deadline)."""

from __future__ import annotations

import json
import re
import uuid
from pathlib import Path

import pytest

from tests.terminal import SUMMARY, OpenPane, Pane, chat_args, exit_status

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


def test_save_name_makes_a_model_that_runs_and_is_listed(
    terminal: OpenPane, tiny_chat_model: Path
) -> None:
    name = f"chat-{uuid.uuid4().hex[:8]}"  # the home is shared by the session's tests
    pane = terminal(*chat_args(tiny_chat_model, "--max-tokens", "6"))
    pane.send("/set system You are terse.")
    pane.send("/set parameter temperature 0.2")
    assert SUMMARY.search(pane.send("hello there"))
    assert SUMMARY.search(pane.send("and again"))
    assert f"Created new model '{name}' with 4 messages" in pane.send(f"/save {name}")
    leave(pane)

    listing = terminal("list")
    assert exit_status(listing.wait_exit()) == 0
    assert re.search(rf"^{name}\s", listing.screen(), re.M)

    shown = terminal("show", name, "--modelfile")
    modelfile = shown.wait_exit()
    assert f"FROM {tiny_chat_model}" in modelfile
    assert re.search(r'^SYSTEM "?You are terse\."?$', modelfile, re.M), modelfile
    assert "PARAMETER temperature 0.2" in modelfile
    for said in ("hello there", "and again"):
        assert re.search(rf'^MESSAGE user "?{said}"?$', modelfile, re.M), modelfile

    # The saved model starts with its conversation, shown, and goes on from it.
    again = terminal("chat", name, "--max-tokens", "6")
    screen = again.wait_for(lambda s: s.splitlines()[-1:] == [">>>"], "the prompt")
    assert ">>> hello there" in screen and ">>> and again" in screen
    assert "You are terse." in again.send("/show system")
    assert re.search(r"^  temperature\s+0\.2$", again.send("/show parameters"), re.M)
    answer = again.send("one more")
    assert SUMMARY.search(answer), answer
    # Four messages before it, in the prompt: only the new ones were evaluated, or all.
    leave(again)


def test_load_name_switches_model_and_conversation(
    terminal: OpenPane, tiny_chat_model: Path
) -> None:
    name = f"chat-{uuid.uuid4().hex[:8]}"
    pane = terminal(*chat_args(tiny_chat_model, "--max-tokens", "6"))
    assert SUMMARY.search(pane.send("remember this"))
    pane.send(f"/save {name}")
    assert "Cleared the conversation." in pane.send("/clear")
    loaded = pane.send(f"/load {name}")
    assert f"Loaded model '{name}' with 2 messages." in loaded
    assert ">>> remember this" in loaded
    info = pane.send("/show info")
    assert re.search(rf"^  model\s+{name}$", info, re.M)
    assert SUMMARY.search(pane.send("what was it"))
    # Saved over itself (asked first): still runs, now with four messages.
    prompt = pane.wait_prompt()
    pane.type_line(f"/save {name}")
    pane.wait_last_line(f"A model called '{name}' exists. Overwrite it? [y/N]", below=prompt)
    pane.type_line("y")
    pane.wait_prompt()
    assert f"Loaded model '{name}' with 4 messages." in pane.send(f"/load {name}")
    error = pane.send("/load no-such-model")
    assert "Error: unknown model 'no-such-model'" in error.replace("\n", " ")
    assert SUMMARY.search(pane.send("still here"))
    leave(pane)


def test_num_ctx_loads_the_model_again_and_keeps_the_chat(
    terminal: OpenPane, tiny_chat_model: Path, tmp_path: Path
) -> None:
    pane = terminal(
        *chat_args(tiny_chat_model, "--max-tokens", "6", "--ctx", "256", "--threads", "1")
    )
    assert re.search(r"^  context\s+256 ", pane.send("/show info"), re.M)
    assert SUMMARY.search(pane.send("before the change"))
    said = " ".join(pane.send("/set parameter num_ctx 1024").split())
    assert "Set parameter 'num_ctx' to '1024': the model was loaded again" in said
    assert "with a context of 1024 tokens; the conversation is kept." in said
    assert re.search(r"^  context\s+1024 ", pane.send("/show info"), re.M)
    assert SUMMARY.search(pane.send("after the change"))
    saved = tmp_path / "sized.json"
    pane.send(f"/save {saved}")
    contents = [m["content"] for m in json.loads(saved.read_text())["messages"]]
    assert contents[0] == "before the change" and contents[2] == "after the change"
    # The load counts in the first answer after it, and threads are named: run's, kept by the
    # reload (not the default).
    stats = pane.send("/show stats")
    assert re.search(r"^threads:\s+1$", stats, re.M), stats
    assert re.search(r"^load time:\s+\d+\.\d{3} s$", stats, re.M), stats
    assert SUMMARY.search(pane.send("once more"))
    stats = pane.send("/show stats")
    assert re.search(r"^load time:\s+- \(loaded for an earlier answer\)$", stats, re.M), stats
    leave(pane)


def test_format_json_wordwrap_and_show_modelfile(terminal: OpenPane, tiny_chat_model: Path) -> None:
    pane = terminal(*chat_args(tiny_chat_model, "--max-tokens", "12"))
    modelfile = pane.send("/show modelfile")
    assert f"FROM {tiny_chat_model}" in modelfile and "TEMPLATE" in modelfile
    assert "Set format to 'json' mode." in pane.send("/set format json")
    answer = pane.send("give me json")
    assert answer.lstrip().startswith("{"), answer  # the grammar allows only an object
    assert "Disabled format." in pane.send("/set noformat")
    assert "Set 'nowordwrap' mode." in pane.send("/set nowordwrap")
    assert SUMMARY.search(pane.send("plain text now"))
    assert "Set 'wordwrap' mode." in pane.send("/set wordwrap")
    verbose = pane.send("/set verbose")
    assert "Set 'verbose' mode." in verbose
    figures = pane.send("one with figures")
    assert re.search(r"^threads:\s+\d+$", figures, re.M), figures
    assert "Set 'quiet' mode." in pane.send("/set quiet")
    leave(pane)
