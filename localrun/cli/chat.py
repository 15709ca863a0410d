"""Interactive chat: ``localrun chat MODEL``, and ``localrun run MODEL`` on a terminal."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

from rich.console import Console
from rich.text import Text

from localrun import paths
from localrun.cli.chatview import AnswerState, AnswerView, summary_line
from localrun.cli.output import format_figures
from localrun.engine import CHAT, Stats
from localrun.engine.chat import ChatEvent, ChatSession
from localrun.engine.types import Called
from localrun.errors import LocalrunError, NoVisionError, UsageError
from localrun.images import Image, read_image, split_image_paths

HELP = """Commands:
  /set parameter NAME VALUE   change a generation setting (see /show parameters)
  /set parameter num_ctx N    load the model again with a context of N tokens (the
                              conversation is kept)
  /set system TEXT            set the system prompt
  /set format json            answer in JSON (a JSON object); /set noformat: free text
  /set verbose | quiet        full statistics after each answer, or one summary line
  /set wordwrap | nowordwrap  answers as Markdown, wrapped; or raw text as it comes
  /show info | parameters | system | template | modelfile | stats
  /save NAME                  save the conversation as a model (localrun run NAME goes
                              on from it; localrun list shows it)
  /load NAME                  switch to a model, and its messages, system and parameters
  /save FILE, /load FILE      write or read the conversation as JSON (a FILE has a / in it
                              or ends in .json)
  /tools FILE                 offer the model the tools in a JSON file (its calls are shown)
  /image FILE                 a picture for the next message (vision models; paths in a
                              message are read too)
  /retry                      answer the last message again
  /clear                      forget the conversation (the system prompt stays)
  /bye, /exit                 leave (Ctrl-D too; Ctrl-C clears the line, or stops an answer)
Start and end a message with \"\"\" to write several lines."""

EXIT_HINT = "Use Ctrl + d or /bye to exit."

ReadLine = Callable[[str], str]


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


class ChatUI:
    """The read-answer loop around a :class:`ChatSession`."""

    read: ReadLine = input  # how the loop reads a line; questions (overwrite?) use it too

    def __init__(
        self,
        session: ChatSession,
        console: Console,
        *,
        verbose: bool = False,
        wordwrap: bool = True,
        live: bool = True,
    ) -> None:
        self.session = session
        self.console = console
        self.placement = session.placement
        self.verbose = verbose
        self.wordwrap = wordwrap
        self.live = live
        self.waiting: list[Image] = []  # pictures for the next message (/image)

    # -- answers -----------------------------------------------------------------------

    def answer(self, events: Callable[[], Iterator[ChatEvent]]) -> None:
        """Draw one answer; Ctrl-C stops it and keeps what was written."""
        state = AnswerState(self.placement, self.session.n_ctx)
        view = AnswerView(
            self.console, state, markdown=self.wordwrap, live=self.live and self.wordwrap
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

    def error(self, e: LocalrunError) -> None:
        hint = f" Hint: {e.hint}" if e.hint else ""
        self.console.print(Text(f"Error: {e.message.rstrip('.')}.{hint}", style="red"))

    def _mode(self) -> str:
        return self.session.mode

    def _described(self, stats: Stats) -> str:
        """The full statistics of an answer, as --verbose prints them."""
        return format_figures(self.session.model.described(stats, self.session.threads))

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
            if message.role == "user":
                self.console.print(Text(f">>> {message.content}"))
            elif message.role == "assistant":
                self.console.print(Text(message.content))
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

    # -- slash commands ----------------------------------------------------------------

    def command(self, line: str) -> str | None:
        """Run a slash command; return "exit" to leave."""
        words = line.split(maxsplit=3)
        name, args = words[0].lower(), words[1:]
        try:
            if name in ("/bye", "/exit", "/quit"):
                return "exit"
            if name in ("/help", "/?"):
                self.console.print(HELP, highlight=False, markup=False)
            elif name == "/clear":
                self.session.clear()
                self.console.print("Cleared the conversation.")
            elif name == "/retry":
                self.answer(self.session.retry)
            elif name == "/set":
                self._set(line, args)
            elif name == "/show":
                self._show(args[0].lower() if args else "")
            elif name in ("/save", "/load"):
                self._file(name, line)
            elif name == "/image":
                self._image(line)
            elif name == "/tools" and len(args) == 1:
                count = self.session.load_tools(Path(args[0]).expanduser())
                tools = "1 tool" if count == 1 else f"{count} tools"
                self.console.print(f"Offering {tools}: calls are shown, not run.")
            else:
                self.console.print(f"Unknown command '{name}'. Type /help for the commands.")
        except LocalrunError as e:
            self.error(e)
        return None

    def _image(self, line: str) -> None:
        parts = line.split(maxsplit=1)
        if len(parts) < 2:
            self.console.print("Usage: /image FILE")
            return
        if not self.session.vision:
            raise NoVisionError(hint="chat with a vision model")
        name = parts[1].strip().strip("'\"")
        self.waiting.append(read_image(name.replace("\\ ", " ")))
        count = len(self.waiting)
        pictures = "1 image waits" if count == 1 else f"{count} images wait"
        self.console.print(f"Added {name}: {pictures} for your next message.", highlight=False)

    def _set(self, line: str, args: list[str]) -> None:
        what = args[0].lower() if args else ""
        if what == "parameter" and len(args) == 3 and args[1].lower() == "num_ctx":
            self._resize(args[2])
        elif what == "parameter" and len(args) == 3:
            name = self.session.set_parameter(args[1], args[2])
            self.console.print(f"Set parameter '{name}' to '{args[2]}'.")
        elif what == "system" and len(args) >= 2:
            self.session.system = line.split(maxsplit=2)[2]
            self.console.print("Set system message.")
        elif what == "format" and len(args) == 2:
            self.session.set_format(args[1])
            self.console.print(f"Set format to '{args[1].lower()}' mode.")
        elif what == "noformat" and len(args) == 1:
            self.session.set_format(None)
            self.console.print("Disabled format.")
        elif what in ("verbose", "quiet") and len(args) == 1:
            self.verbose = what == "verbose"
            self.console.print(f"Set '{what}' mode.")
        elif what in ("wordwrap", "nowordwrap") and len(args) == 1:
            self.wordwrap = what == "wordwrap"
            self.console.print(f"Set '{what}' mode.")
        else:
            self.console.print(
                "Usage: /set parameter NAME VALUE, /set system TEXT, /set format json, "
                "/set noformat, /set verbose, /set quiet, /set wordwrap, /set nowordwrap",
                highlight=False,
            )

    def _resize(self, value: str) -> None:
        """/set parameter num_ctx N: the model loaded again, the conversation kept."""
        self._local("/set parameter num_ctx")
        with self._busy(f"Loading {self.session.name} again with a context of {value} tokens…"):
            notes = self.session.resize(value)
        for note in notes:
            self.console.print(Text(note, style="yellow"))
        seconds = self.session.model.load_s
        self.console.print(
            f"Set parameter 'num_ctx' to '{value}': the model was loaded again in "
            f"{seconds:.2f} s, with a context of {self.session.n_ctx} tokens; the conversation "
            "is kept.",
            highlight=False,
        )

    def _busy(self, what: str) -> contextlib.AbstractContextManager[object]:
        """A spinner while the model loads, on a terminal."""
        if not self.live or not self.console.is_terminal:
            return contextlib.nullcontext()
        return self.console.status(what)

    def _local(self, command: str) -> None:
        """Refuse ``command`` in a chat with a remote engine: it loads the model here."""
        if not self.session.model.loads_here:
            raise UsageError(
                f"{command} loads a model here; the remote engine loads its own",
                "run a local model for it",
            )

    def _show(self, what: str) -> None:
        session = self.session
        if what == "info":
            for key, value in session.model.about():
                self.console.print(f"  {key:<13} {value}", highlight=False)
        elif what == "parameters":
            for name, setting in session.parameters().items():
                self.console.print(f"  {name:<15} {setting}", highlight=False)
        elif what == "system":
            self.console.print(session.system or "(no system prompt)", highlight=False)
        elif what == "template":
            template = session.template
            self.console.print(
                template or "(none: the model has no chat template, completion mode)",
                highlight=False,
                markup=False,
            )
        elif what == "modelfile":
            from localrun.models.facts import modelfile_of

            text = modelfile_of(session.name).to_text()
            self.console.print(text, highlight=False, markup=False, end="")
        elif what == "stats":
            if session.last_stats is None:
                self.console.print("No answer yet.")
            else:
                self.console.print(self._described(session.last_stats), highlight=False)
        else:
            self.console.print(
                "Usage: /show info | parameters | system | template | modelfile | stats",
                highlight=False,
            )

    def _file(self, name: str, line: str) -> None:
        parts = line.split(maxsplit=1)
        if len(parts) < 2:
            self.console.print(f"Usage: {name} NAME, or {name} FILE")
            return
        target = parts[1].strip()
        if not is_chat_file(target):
            if name == "/save":
                self._save_model(target)
            else:
                self._load_model(target)
            return
        path = Path(target)
        if name == "/save":
            if path.expanduser().exists() and not self._confirm(f"{path} exists. Overwrite it?"):
                self.console.print("Not saved.")
                return
            self.session.save(path)
            self.console.print(f"Saved the conversation to {path}.")
        else:
            self.session.load(path)
            n = len(self.session.messages)
            self.console.print(f"Loaded {n} messages from {path}.")

    def _save_model(self, name: str) -> None:
        """/save NAME: the conversation as a created model, as Ollama's /save makes one."""
        from localrun.models import recipes

        if not self.session.model.loads_here:
            raise UsageError(
                "/save NAME makes a model here FROM the one in use; a remote engine's is not one",
                "keep the conversation in a file: /save chat.json",
            )

        found = recipes.find(name)
        if (
            found is not None
            and found.source == "created"
            and not self._confirm(f"A model called '{name}' exists. Overwrite it?")
        ):
            self.console.print("Not saved.")
            return
        saved = self.session.save_model(name)
        count = "1 message" if saved.messages == 1 else f"{saved.messages} messages"
        self.console.print(
            f"Created new model '{name}' with {count}: localrun run {name} goes on from here.",
            highlight=False,
        )
        if saved.left_out:
            self.console.print(
                Text(
                    f"({saved.left_out} pictures or tool results are not in it: a Modelfile "
                    "holds only text; /save FILE.json keeps them)",
                    style="yellow",
                )
            )

    def _load_model(self, name: str) -> None:
        """/load NAME: go on with that model and its conversation, as Ollama's /load does."""
        self._local("/load NAME")
        with self._busy(f"Loading {name}…"):
            notes = self.session.switch(name)
        for note in notes:
            self.console.print(Text(note, style="yellow"), highlight=False)
        n = len(self.session.messages)
        count = "1 message" if n == 1 else f"{n} messages"
        self.console.print(f"Loaded model '{name}' with {count}.", highlight=False)
        self._completion_note()
        self.replay()

    def _confirm(self, question: str) -> bool:
        try:
            answer = self.read(f"{question} [y/N] ")
        except (EOFError, KeyboardInterrupt):
            self.console.print()
            return False
        return answer.strip().lower() in ("y", "yes")


def is_chat_file(target: str) -> bool:
    """Whether /save and /load name a JSON file (a path, or a name ending in .json) rather
    than a model."""
    return "/" in target or os.sep in target or target.lower().endswith(".json")


def reattach_terminal() -> None:
    """After reading a piped prompt, read the keyboard: put the terminal on fd 0.

    Putting it on fd 0 (rather than opening a new file object) keeps readline's line
    editing, which Python enables only when stdin is fd 0 and a terminal.
    """
    fd = os.open("/dev/tty", os.O_RDONLY)
    os.dup2(fd, 0)
    os.close(fd)
    sys.stdin = open(0, closefd=False)  # noqa: SIM115 - lives as long as the process
