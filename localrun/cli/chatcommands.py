"""The chat's slash commands (``/set``, ``/show``, ``/save``, ``/load``...): what each one does.

:class:`Commands` is the part of the chat loop (:class:`~localrun.cli.chat.ChatUI`) that
answers a line starting with ``/``; the loop reads the lines and draws the answers.
"""

from __future__ import annotations

import contextlib
import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from pathlib import Path

from rich.console import Console
from rich.text import Text

from localrun.cli.chatview import safe_text
from localrun.cli.output import format_figures
from localrun.engine import Stats
from localrun.engine.chat import ChatEvent, ChatSession
from localrun.errors import LocalrunError, NoVisionError, UsageError
from localrun.images import Image, read_image
from localrun.prompt.thinking import EFFORTS

HELP = """Commands:
  /set parameter NAME VALUE   change a generation setting (see /show parameters)
  /set parameter num_ctx N    load the model again with a context of N tokens (the
                              conversation is kept)
  /set system TEXT            set the system prompt
  /set format json            answer in JSON (a JSON object); /set noformat: free text
  /set verbose | quiet        full statistics after each answer, or one summary line
  /set think | nothink        a thinking model reasons first, or not; /set think low,
                              medium or high: how much
  /set wordwrap | nowordwrap  answers as Markdown, wrapped; or raw text as it comes
  /show info | parameters | system | template | modelfile | stats
  /show thinking, /thinking   the last answer's reasoning, in full (it is folded to one line)
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

ReadLine = Callable[[str], str]


class Commands(ABC):
    """The slash commands of a chat, over the loop's session, console and settings."""

    read: ReadLine = input  # how the loop reads a line; questions (overwrite?) use it too
    session: ChatSession
    console: Console
    verbose: bool
    wordwrap: bool
    live: bool
    waiting: list[Image]  # pictures for the next message (/image)
    hidethinking: bool = False  # run's --hidethinking: the answers' views draw no trace

    @abstractmethod
    def answer(self, events: Callable[[], Iterator[ChatEvent]]) -> None:
        """Draw one answer (/retry)."""

    @abstractmethod
    def replay(self) -> None:
        """Show the conversation so far (/load NAME)."""

    @abstractmethod
    def _completion_note(self) -> None:
        """Say whether the model only continues text (/load NAME)."""

    def error(self, e: LocalrunError) -> None:
        hint = f" Hint: {e.hint}" if e.hint else ""
        self.console.print(Text(f"Error: {e.message.rstrip('.')}.{hint}", style="red"))

    def _described(self, stats: Stats) -> str:
        """The full statistics of an answer, as --verbose prints them."""
        return format_figures(self.session.model.described(stats, self.session.threads))

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
            elif name == "/thinking":
                self._show("thinking")
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
        elif what in ("think", "nothink") and len(args) <= 2:
            self._think(what, args[1].lower() if len(args) == 2 else None)
        elif what in ("verbose", "quiet") and len(args) == 1:
            self.verbose = what == "verbose"
            self.console.print(f"Set '{what}' mode.")
        elif what in ("wordwrap", "nowordwrap") and len(args) == 1:
            self.wordwrap = what == "wordwrap"
            self.console.print(f"Set '{what}' mode.")
        else:
            self.console.print(
                "Usage: /set parameter NAME VALUE, /set system TEXT, /set format json, "
                "/set noformat, /set think \\[low|medium|high], /set nothink, /set verbose, "
                "/set quiet, /set wordwrap, /set nowordwrap",
                highlight=False,
            )

    def _think(self, what: str, effort: str | None) -> None:
        """/set think [EFFORT], /set nothink: the next answers' trace, as Ollama's chat."""
        if what == "nothink" and effort is not None:
            raise UsageError("/set nothink takes no value", "/set nothink")
        if effort is not None and effort not in EFFORTS:
            raise UsageError(f"/set think cannot be '{effort}'", "/set think low, medium or high")
        self.session.think = False if what == "nothink" else (effort or True)
        said = f"Set '{what}' mode"
        self.console.print(f"{said}." if effort is None else f"{said} ({effort} effort).")
        note = _thinking_note(self.session)
        if note is not None:
            self.console.print(Text(note, style="yellow"), highlight=False)

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
            if session.think is not None:
                think = str(session.think).lower()
                self.console.print(f"  {'think':<15} {think}", highlight=False)
        elif what == "thinking":
            if not session.last_thinking.strip():
                self.console.print("No reasoning in the last answer.")
            else:
                trace = safe_text(session.last_thinking.strip("\n"))
                self.console.print(Text(trace, style="dim"), highlight=False)
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
                "Usage: /show info | parameters | system | template | modelfile | stats | thinking",
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


def _thinking_note(session: ChatSession) -> str | None:
    """The note for a model loaded here that cannot stop thinking (a remote engine's model
    is not known here: none)."""
    from localrun.engine.answerer import LocalAnswerer
    from localrun.engine.prompting import thinking_note

    model = session.model
    if not isinstance(model, LocalAnswerer):
        return None
    return thinking_note(model.loaded, session.think)


def is_chat_file(target: str) -> bool:
    """Whether /save and /load name a JSON file (a path, or a name ending in .json) rather
    than a model."""
    return "/" in target or os.sep in target or target.lower().endswith(".json")
