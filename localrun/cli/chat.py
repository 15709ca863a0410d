"""Interactive chat: ``localrun chat MODEL``, and ``localrun run MODEL`` on a terminal."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import sys
from collections.abc import Callable, Iterator

from rich.console import Console
from rich.text import Text

from localrun import paths
from localrun.cli.chatcommands import Commands, ReadLine, is_chat_file
from localrun.cli.chatview import AnswerState, AnswerView, safe_text, summary_line
from localrun.engine import CHAT
from localrun.engine.chat import ChatEvent, ChatSession
from localrun.engine.types import Called
from localrun.errors import LocalrunError
from localrun.images import Image, read_image, split_image_paths

__all__ = [
    "ChatUI",
    "is_chat_file",
    "read_message",
    "reattach_terminal",
    "setup_history",
]

EXIT_HINT = "Use Ctrl + d or /bye to exit."


def setup_history() -> ReadLine:
    """Line editing and a history kept across runs (readline, in the data directory)."""
    try:
        import readline
    except ImportError:  # not on every platform; plain input still works
        return input
    history = paths.data_dir() / "history"
    try:
        history.parent.mkdir(parents=True, exist_ok=True)
        history.touch()  # append_history_file writes only to a file that exists
        readline.read_history_file(history)
        readline.set_history_length(1000)
    except OSError as e:
        # A read-only data directory costs the history, not the chat; say so once.
        print(
            f"Warning: the chat history will not be kept ({history}: {e.strerror})",
            file=sys.stderr,
        )
        return input

    def read(prompt: str) -> str:
        before = readline.get_current_history_length()
        line = input(prompt)
        if line.strip():
            if readline.get_current_history_length() == before:
                readline.add_history(line)  # input() adds it only when it edits on a terminal
            with contextlib.suppress(OSError):
                readline.append_history_file(1, history)
        return line

    return read


def read_message(read: ReadLine) -> str:
    """One message: a line, or several between triple quotes."""
    line = read(">>> ")
    if not line.lstrip().startswith('"""'):
        return line
    text = line.lstrip()[3:]
    if text.endswith('"""') and len(text) >= 3:
        return text[:-3]
    lines = [text] if text else []
    while True:
        more = read("... ")
        if more.rstrip().endswith('"""'):
            lines.append(more.rstrip()[:-3])
            return "\n".join(lines)
        lines.append(more)


class ChatUI(Commands):
    """The read-answer loop around a :class:`ChatSession`; its slash commands are
    :class:`~localrun.cli.chatcommands.Commands`."""

    def __init__(
        self,
        session: ChatSession,
        console: Console,
        *,
        verbose: bool = False,
        wordwrap: bool = True,
        live: bool = True,
        hidethinking: bool = False,
    ) -> None:
        self.session = session
        self.hidethinking = hidethinking  # a thinking model's trace is not drawn
        self.console = console
        self.placement = session.placement
        self.verbose = verbose
        self.wordwrap = wordwrap
        self.live = live
        self.waiting: list[Image] = []  # pictures for the next message (/image)

    # -- answers -----------------------------------------------------------------------

    @property
    def thinking_shown(self) -> bool:
        """Whether a trace is drawn: not with --hidethinking, nor after /set nothink (a
        model that thinks anyway has its trace hidden, as the note said)."""
        return not self.hidethinking and self.session.think is not False

    def answer(self, events: Callable[[], Iterator[ChatEvent]]) -> None:
        """Draw one answer; Ctrl-C stops it and keeps what was written."""
        state = AnswerState(self.placement, self.session.n_ctx)
        live = self.live and self.wordwrap
        view = AnswerView(
            self.console, state, markdown=self.wordwrap, live=live, thinking=self.thinking_shown
        )
        interrupted = False
        called: Called | None = None
        try:
            with view:
                for event in events():
                    if isinstance(event, Called):
                        called = event
                    else:
                        view.handle(event)
        except KeyboardInterrupt:
            interrupted = True
        except LocalrunError as e:
            self.error(e)
            return
        stats = view.stats or self.session.last_stats
        for call in called.calls if called else ():
            arguments = json.dumps(call.arguments, ensure_ascii=False)
            self.console.print(Text(f"Tool call: {call.name}({arguments})", style="cyan"))
        if interrupted:
            self.console.print(Text("(stopped: the answer so far is kept)", style="yellow"))
        if stats is None:
            return
        if self.verbose and not interrupted:
            self.console.print(Text(self._described(stats)))
        elif not interrupted:
            self.console.print(summary_line(stats))

    def _mode(self) -> str:
        return self.session.mode

    # -- the loop ----------------------------------------------------------------------

    def greet(self) -> None:
        self.console.print(Text(self.session.greeting(), style="dim"))
        self._completion_note()
        self.console.print(Text("Type /? for help, /bye to leave.", style="dim"))
        self.replay()

    def _completion_note(self) -> None:
        if self._mode() != CHAT:
            self.console.print(
                Text(
                    "This model has no chat template: completion mode, your text is continued "
                    "rather than answered.",
                    style="yellow",
                )
            )

    def replay(self) -> None:
        """The conversation so far, as Ollama shows a model's MESSAGEs when it starts."""
        for message in self.session.messages:
            # A saved conversation's text is as untrusted as a model's answer.
            if message.role == "user":
                self.console.print(Text(f">>> {safe_text(message.content)}"))
            elif message.role == "assistant":
                self.console.print(Text(safe_text(message.content)))
                self.console.print()

    def run(self, read: ReadLine) -> None:
        """Read messages until /bye or Ctrl-D; Ctrl-C drops the line being typed."""
        self.read = read
        hinted = False
        while True:
            try:
                text = read_message(read)
            except EOFError:
                self.console.print()
                return
            except KeyboardInterrupt:
                # As in Ollama: Ctrl-C abandons the line (or the unfinished \"\"\" message) and
                # the chat stays; leaving takes Ctrl-D or /bye, which the first Ctrl-C says.
                self.console.print()
                if not hinted:
                    self.console.print(Text(EXIT_HINT, style="dim"))
                    hinted = True
                continue
            if not text.strip():
                continue
            if text.lstrip().startswith("/"):
                if self.command(text.strip()) == "exit":
                    return
                continue
            images, self.waiting = self.waiting, []
            if self.session.vision:
                text, found = split_image_paths(text)
                try:
                    images += [read_image(path) for path in found]
                except LocalrunError as e:
                    self.error(e)
                    continue
            self.answer(functools.partial(self.session.ask, text, images))


def reattach_terminal() -> None:
    """After reading a piped prompt, read the keyboard: put the terminal on fd 0.

    Putting it on fd 0 (rather than opening a new file object) keeps readline's line
    editing, which Python enables only when stdin is fd 0 and a terminal.
    """
    fd = os.open("/dev/tty", os.O_RDONLY)
    os.dup2(fd, 0)
    os.close(fd)
    sys.stdin = open(0, closefd=False)  # noqa: SIM115 - lives as long as the process
