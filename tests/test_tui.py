"""The chat in a real terminal: ``localrun run`` driven in tmux, keys in, screen out.

Each test starts the installed command in a fresh tmux session (a private server socket
for the test run, a fixed 120x40 window), types with ``send-keys`` and reads the screen
with ``capture-pane``. Nothing sleeps: every wait polls the pane until a condition holds,
with a deadline, and a timeout fails with what the pane showed.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

TMUX = shutil.which("tmux")
pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(TMUX is None, reason="tmux is not installed"),
]

BIN = Path(sys.executable).parent
WIDTH, HEIGHT = 120, 40
TIMEOUT = 30.0  # for any one wait; the waits normally end in well under a second

SUMMARY = re.compile(
    r"TTFT \d+\.\d\d s · prefill [\d.]+ tok/s · decode [\d.]+ tok/s · \d+ tokens · "
    r"\d+ of \d+ prompt tokens evaluated"
)
STATUS = re.compile(r"decode · TTFT .* tok/s · \d+ tokens · ctx \d+/\d+ · CPU")
OUTGREW = "(the conversation outgrew the context"
TOO_LONG = "Error: that message is too long for the context"
STOPPED = "(stopped: the answer so far is kept)"


class Tmux:
    """A tmux server of our own: its own socket, no user configuration."""

    def __init__(self, workdir: Path) -> None:
        assert TMUX is not None
        self.conf = workdir / "tmux.conf"
        # remain-on-exit keeps a pane readable after localrun and the shell are gone;
        # exit-empty off keeps the server up between tests (a new session racing the
        # shutdown of a server left without sessions fails with "server exited unexpectedly").
        self.conf.write_text(
            "set -g exit-empty off\n"
            "set -g remain-on-exit on\n"
            "set -g history-limit 50000\n"
            "set -g status off\n"
        )
        label = f"localrun-test-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.base = [TMUX, "-u", "-L", label]
        # Where tmux puts the socket for -L (kill-server leaves the file behind).
        tmpdir = os.environ.get("TMUX_TMPDIR") or "/tmp"
        self.socket = Path(tmpdir) / f"tmux-{os.getuid()}" / label
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("TMUX")}
        self.env["LC_ALL"] = "C.UTF-8"

    def __call__(self, *args: str) -> str:
        proc = subprocess.run(
            [*self.base, "-f", str(self.conf), *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"tmux {' '.join(args)}: {proc.stderr.strip()}")
        return proc.stdout

    def kill(self) -> None:
        subprocess.run(
            [*self.base, "kill-server"], env=self.env, capture_output=True, check=False, timeout=10
        )
        self.socket.unlink(missing_ok=True)


class Pane:
    """One terminal running one command, read back as text."""

    def __init__(self, tmux: Tmux, name: str) -> None:
        self.tmux = tmux
        self.target = f"{name}:0.0"

    def screen(self) -> str:
        """The whole pane, scrollback included, wrapped lines joined, trailing space cut."""
        text = self.tmux("capture-pane", "-p", "-J", "-S", "-", "-t", self.target)
        return "\n".join(line.rstrip() for line in text.splitlines()).strip("\n")

    def visible(self) -> str:
        """Only what is on the screen now (no scrollback)."""
        return self.tmux("capture-pane", "-p", "-t", self.target)

    def wait_for(
        self, predicate: Callable[[str], bool], what: str, timeout: float = TIMEOUT
    ) -> str:
        """Poll the pane until ``predicate(screen)`` holds; fail with the pane if it never does."""
        deadline = time.monotonic() + timeout
        while True:
            screen = self.screen()
            if predicate(screen):
                return screen
            ended = re.search(r"^EXIT=\d+$", screen, re.M) is not None and what != "EXIT="
            if ended or time.monotonic() > deadline:
                why = "localrun ended" if ended else f"timed out after {timeout:.0f} s"
                shown = re.sub(r"\n{3,}", "\n\n", screen)
                pytest.fail(f"{why} while waiting for {what}; the pane:\n{shown}")
            time.sleep(0.05)  # a poll interval, not a wait for something to happen

    def keys(self, *keys: str) -> None:
        """Named keys, such as ``C-c`` or ``Enter``."""
        self.tmux("send-keys", "-t", self.target, *keys)

    def type_line(self, text: str) -> None:
        self.tmux("send-keys", "-t", self.target, "-l", text)
        self.keys("Enter")

    def wait_last_line(self, line: str, below: int = -1, timeout: float = TIMEOUT) -> int:
        """Wait for ``line`` as the last line, below line number ``below``; return its number."""
        screen = self.wait_for(
            lambda s: s.splitlines()[-1:] == [line] and s.count("\n") > below,
            f"{line!r} on the last line",
            timeout,
        )
        return screen.count("\n")

    def wait_prompt(self, timeout: float = TIMEOUT) -> int:
        """Wait for an empty `>>> ` prompt on the last line; return its line number."""
        return self.wait_last_line(">>>", timeout=timeout)

    def wait_answer(self, prompt: int, typed: str, timeout: float = TIMEOUT) -> str:
        """After ``typed`` was entered at the prompt on line ``prompt``: wait for its echo
        and then a new empty prompt below it; return what was printed in between."""
        echo = f">>> {typed[:60]}".rstrip()
        return self.wait_for(
            lambda s: between(s, prompt, echo) is not None,
            f"the answer to {typed[:60]!r} and a new prompt",
            timeout,
        )

    def send(self, text: str, timeout: float = TIMEOUT) -> str:
        """Type a line at the prompt; return what was printed before the next prompt."""
        prompt = self.wait_prompt()
        self.type_line(text)
        screen = self.wait_answer(prompt, text, timeout)
        output = between(screen, prompt, f">>> {text[:60]}".rstrip())
        assert output is not None
        return output

    def wait_exit(self, timeout: float = TIMEOUT) -> str:
        return self.wait_for(lambda s: re.search(r"^EXIT=\d+$", s, re.M) is not None, "EXIT=")


def between(screen: str, prompt: int, echo: str) -> str | None:
    """The lines after the first line from ``prompt`` on that starts with ``echo``, up to an
    empty `>>> ` prompt on the last line; None while there is no such prompt yet.

    Looking for the echo, not just any new prompt, keeps a prompt that readline redraws
    on a new line from passing for the end of the answer.
    """
    lines = screen.splitlines()
    typed = next((i for i in range(prompt, len(lines)) if lines[i].startswith(echo)), None)
    if typed is None or typed == len(lines) - 1 or lines[-1] != ">>>":
        return None
    return "\n".join(lines[typed + 1 : -1])


def exit_status(screen: str) -> int:
    match = re.search(r"^EXIT=(\d+)$", screen, re.M)
    assert match, screen
    return int(match.group(1))


@pytest.fixture(scope="session")
def tui_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One localrun home for the session, so the demo model is assembled once."""
    return tmp_path_factory.mktemp("tui-home")


@pytest.fixture(scope="session")
def tmux(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tmux]:
    server = Tmux(tmp_path_factory.mktemp("tmux"))
    yield server
    server.kill()


OpenPane = Callable[..., Pane]


@pytest.fixture
def terminal(tmux: Tmux, tui_home: Path, tmp_path: Path) -> Iterator[OpenPane]:
    """Start ``localrun ARGS`` in a new tmux session; it prints EXIT=<status> when it ends."""
    names: list[str] = []

    def start(*args: str) -> Pane:
        name = f"t{uuid.uuid4().hex[:10]}"
        names.append(name)
        script = f"{shlex.join(['localrun', *args])}; echo EXIT=$?"
        env = {
            "HOME": str(tmp_path),
            "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '/usr/bin:/bin')}",
            "TERM": "xterm-256color",
            "LC_ALL": "C.UTF-8",
            "LANG": "C.UTF-8",
            "INPUTRC": "/dev/null",
            "LOCALRUN_HOME": str(tui_home),
        }
        # env -i: no COLUMNS, NO_COLOR, LOCALRUN_DEBUG... from the test runner's environment.
        # bash, not sh: dash dies of the Ctrl-C that localrun catches, taking the pane with it.
        command = ["env", "-i", *(f"{k}={v}" for k, v in env.items())]
        command += ["bash", "--noprofile", "--norc", "-c", script]
        tmux("new-session", "-d", "-s", name, "-x", str(WIDTH), "-y", str(HEIGHT), *command)
        return Pane(tmux, name)

    yield start
    for name in names:
        with contextlib.suppress(RuntimeError):  # already gone
            tmux("kill-session", "-t", name)


def chat_args(model: Path, *more: str) -> list[str]:
    return ["run", str(model), "--seed", "1", *more]


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
