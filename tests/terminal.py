"""Real terminals for the tests: a private tmux server, panes typed into and read back as text.

The chat's tests (``test_tui``, ``test_chat_terminal``) start the installed command in a fresh
tmux session (a private server socket for the test run, a fixed 120x40 window), type with
``send-keys`` and read the screen with ``capture-pane``; the chat view's tests
(``test_chatview``, ``test_prefill_progress``) run one command in a :class:`Terminal` of their
own. Nothing sleeps: every wait polls the pane until a condition holds, with a deadline, and a
timeout fails with what the pane showed.
"""

from __future__ import annotations

import contextlib
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
BIN = Path(sys.executable).parent
WIDTH, HEIGHT = 120, 40
TIMEOUT = 30.0  # for any one wait; the waits normally end in well under a second

# The chat's summary after an answer.
SUMMARY = re.compile(
    r"TTFT \d+\.\d\d s · prefill [\d.]+ tok/s · decode [\d.]+ tok/s · \d+ tokens · "
    r"\d+ of \d+ prompt tokens evaluated"
)


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
    """A tmux server for the session (skips where tmux is not installed)."""
    if TMUX is None:
        pytest.skip("tmux is not installed")
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


class Terminal:
    """One command in a pane of a fixed size on a tmux server of its own; its exit status goes
    to a file when it ends, and the pane is read back as text, polled with a deadline."""

    def __init__(self, work: Path, width: int = 100, height: int = 40) -> None:
        self.work, self.width, self.height = work, width, height
        self.server = Tmux(work)
        self.done = work / "exit-status"

    def start(self, cmd: list[str], env: dict[str, str]) -> None:
        """Run ``cmd`` with only ``env`` (and PATH, TERM, a UTF-8 locale); its exit status
        goes to a file when it ends."""
        env = {
            "HOME": str(self.work),
            "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '/usr/bin:/bin')}",
            "TERM": "xterm-256color",
            "LC_ALL": "C.UTF-8",
            "LANG": "C.UTF-8",
            **env,
        }
        script = f"{shlex.join(cmd)}; echo $? >{shlex.quote(str(self.done))}"
        command = ["env", "-i", *(f"{k}={v}" for k, v in env.items()), "bash", "--norc", "-c"]
        size = ["-x", str(self.width), "-y", str(self.height)]
        self.server("new-session", "-d", "-s", "view", *size, *command, script)

    def screen(self) -> str:
        """The pane, scrollback included (wrapped lines as the terminal shows them), trailing
        spaces cut."""
        text = self.server("capture-pane", "-p", "-S", "-", "-t", "view:0.0")
        return "\n".join(line.rstrip() for line in text.splitlines()).strip("\n")

    def wait_exit(self, timeout: float, watch: Callable[[str], None] = lambda s: None) -> int:
        """Poll until the command ended (``watch`` sees every screen meanwhile); its status."""
        deadline = time.monotonic() + timeout
        while not (self.done.exists() and self.done.read_text().strip()):
            screen = self.screen()
            watch(screen)
            if time.monotonic() > deadline:
                pytest.fail(f"the command did not end in {timeout:.0f} s; the pane:\n{screen}")
            time.sleep(0.05)  # a poll interval, not a wait for something to happen
        return int(self.done.read_text())


@contextlib.contextmanager
def open_terminal(work: Path) -> Iterator[Terminal]:
    """A terminal in ``work``, its tmux server killed at the end (skips without tmux)."""
    if TMUX is None:
        pytest.skip("tmux is not installed")
    term = Terminal(work)
    try:
        yield term
    finally:
        term.server.kill()
