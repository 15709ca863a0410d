"""A multi-turn chat with any model: history, parameters, context management.

The engine side of ``localrun run``'s interactive mode; the terminal view lives in the
CLI. The session holds the conversation and the settings of the next answer; the model
answering is an :class:`~localrun.engine.answerer.Answerer`, loaded here or a remote
engine, and the session never asks which. Each turn sends the whole conversation, and the
engine reuses the KV cache for the prefix it has already evaluated, so only the new tokens
are prefilled.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from localrun.backend import SamplingParams
from localrun.engine.answerer import Answerer, ChatEvent, Trimmed
from localrun.engine.history import read_history, write_history
from localrun.engine.reload import LoadSettings
from localrun.engine.types import Called, Finished, Request, Stats, TextDelta, ThinkingDelta
from localrun.errors import LocalrunError, PromptTooLongError, UsageError
from localrun.images import Image
from localrun.models import recipes
from localrun.models.modelfile import Modelfile, coerce_parameter
from localrun.models.parameters import chat_names
from localrun.prompt.template import Message
from localrun.prompt.tools import Tool, ToolCall, tools_file

__all__ = ["ChatEvent", "ChatSession", "LoadSettings", "Options", "Saved", "Trimmed"]

FORMATS = ("json",)  # /set format: Ollama's one named format


@dataclass
class Options:
    """Generation settings a chat can change with ``/set parameter``."""

    sampling: SamplingParams = field(default_factory=SamplingParams)
    max_tokens: int | None = None
    stop: tuple[str, ...] = ()
    think_budget: int | None = None  # the most tokens a thinking model's trace may take


@dataclass(frozen=True)
class Saved:
    """What ``/save NAME`` made: the created model, and what its Modelfile could not hold."""

    recipe: recipes.Recipe
    messages: int  # MESSAGE lines written
    left_out: int  # tool results and pictures: a Modelfile has no place for them


# /set parameter NAME VALUE: run-flag names, with Ollama's Modelfile names as aliases.
_ALIASES = chat_names()


def parameter_names() -> list[str]:
    return sorted(_ALIASES)


class ChatSession:
    """A conversation: a system prompt, messages, and the options of the next answer."""

    def __init__(
        self,
        model: Answerer,
        *,
        system: str | None = None,
        options: Options | None = None,
        messages: list[Message] | None = None,
    ) -> None:
        self.model = model
        self.system = system
        self.options = options or Options()
        self.messages: list[Message] = list(messages or [])
        self.last_stats: Stats | None = None
        self.tools: tuple[Tool, ...] = ()  # offered to the model (/tools FILE)
        self.changed: frozenset[str] = frozenset()  # parameters set here: /save NAME keeps them
        self._load_counted = False  # whether an answer has counted the load time yet
        # A thinking model's trace: as run's --think and /set think ask (None: the model's
        # default); the last answer's, kept apart from the history for /show thinking.
        self.think: bool | str | None = None
        self.last_thinking = ""

    @property
    def threads(self) -> int | None:
        """The CPU threads the model runs on (None: not known here)."""
        return self.model.threads

    def load_tools(self, path: Path) -> int:
        """Offer the tools defined in a JSON file (a list, in the form the APIs take)."""
        self.model.check_tools()
        self.tools = tools_file(path)
        return len(self.tools)

    # -- what the chat's view shows ----------------------------------------------------

    @property
    def name(self) -> str:
        return self.model.name

    @property
    def placement(self) -> str:
        return self.model.placement

    @property
    def n_ctx(self) -> int:
        """The context the answers share (0: not known here)."""
        return self.model.n_ctx

    @property
    def mode(self) -> str:
        return self.model.mode

    @property
    def template(self) -> str | None:
        """The chat template in use: a Modelfile's TEMPLATE (Jinja), else the GGUF's own."""
        return self.model.template

    @property
    def vision(self) -> bool:
        """Whether the model reads images."""
        return self.model.vision

    def greeting(self) -> str:
        return self.model.greeting()

    # -- the conversation ------------------------------------------------------------

    def _conversation(self, messages: list[Message]) -> list[Message]:
        return ([Message("system", self.system)] if self.system else []) + messages

    def ask(self, text: str, images: Sequence[Image] = ()) -> Iterator[ChatEvent]:
        """Add a user message (with ``images``, for a vision model) and answer it; the answer
        joins the history, even if cut short."""
        self.messages.append(Message("user", text, images=tuple(images)))
        return self._answer()

    def retry(self) -> Iterator[ChatEvent]:
        """Answer the last user message again."""
        if self.messages and self.messages[-1].role == "assistant":
            self.messages.pop()
        if not self.messages or self.messages[-1].role != "user":
            raise UsageError("there is no message to answer again", "ask something first")
        return self._answer()

    def _request(self) -> Request:
        return Request(
            tuple(self._conversation(self.messages)),
            self.options.sampling,
            self.options.max_tokens,
            self.options.stop,
            tools=self.tools,
            given=self.changed,
            think=self.think,
            think_budget=self.options.think_budget,
        )

    def _answer(self) -> Iterator[ChatEvent]:
        """Start the answer now (a message that cannot be answered is taken back at once),
        and hand its events on as it comes."""
        start = time.perf_counter()
        try:
            answering = self.model.start(self._request(), started=start, trim=True)
        except PromptTooLongError as e:
            self.messages.pop()  # the chat goes on, without the message that cannot fit
            raise PromptTooLongError(
                f"that message is too long for the context: {e.message}", e.hint
            ) from None
        except LocalrunError:
            self.messages.pop()
            raise
        return self._stream(answering)

    def _stream(self, answering: Iterable[ChatEvent]) -> Iterator[ChatEvent]:
        parts: list[str] = []
        trace: list[str] = []  # the history keeps the answer proper only, as Ollama's does
        calls: list[ToolCall] = []
        refused = False
        counts_load, self._load_counted = not self._load_counted, True
        try:
            for event in answering:
                if isinstance(event, Trimmed):
                    # The oldest turns after the system prompt went: a system message that
                    # opens the conversation itself (a Modelfile's MESSAGE) stays, as it was sent.
                    first = 1 if not self.system and self.messages[:1] and \
                        self.messages[0].role == "system" else 0  # fmt: skip
                    del self.messages[first : first + event.dropped]
                elif isinstance(event, TextDelta):
                    parts.append(event.text)
                elif isinstance(event, ThinkingDelta):
                    trace.append(event.text)
                elif isinstance(event, Called):
                    calls = list(event.calls)
                elif isinstance(event, Finished):
                    if not counts_load:
                        # The load was the first answer's wait, not this one's.
                        event.stats.total_s -= event.stats.load_s
                        event.stats.load_s = 0.0
                    self.last_stats = event.stats
                yield event
        except LocalrunError:
            if not parts:  # not answered at all (an engine refused it): the question goes too
                self.messages.pop()
                refused = True
            raise
        finally:
            self.last_thinking = "".join(trace)
            if not refused:  # Ctrl-C keeps what was written: it is part of the conversation
                self.messages.append(Message("assistant", "".join(parts), tuple(calls)))

    def clear(self) -> None:
        """Forget the messages (the system prompt stays)."""
        self.messages.clear()

    # -- settings ----------------------------------------------------------------------

    def set_parameter(self, name: str, value: str) -> str:
        """Change one generation setting; return its canonical name."""
        key = _ALIASES.get(name.lower().replace("-", "_"))
        if key is None:
            raise UsageError(
                f"unknown parameter '{name}'",
                "parameters: " + ", ".join(parameter_names()),
            )
        if key == "stop":
            self.options.stop = (*self.options.stop, value)
            self.changed = self.changed | {key}
            return key
        number: float | int | None = None
        if not (key == "seed" and value.lower() in ("random", "none", "-1")):
            # The same types and ranges as a Modelfile's PARAMETER (max_tokens: num_predict).
            try:
                parsed = coerce_parameter("num_predict" if key == "max_tokens" else key, value)
                assert not isinstance(parsed, str)  # the chat's settings are all numbers
                number = parsed
            except ValueError as e:
                message = str(e).replace("num_predict", "max_tokens")
                raise UsageError(message, f"/set parameter {key} N") from None
        if key in ("max_tokens", "think_budget"):
            whole = None if number is None or number < 0 else int(number)
            setattr(self.options, key, whole)
        else:
            changes: dict[str, Any] = {key: number}
            self.options.sampling = replace(self.options.sampling, **changes)
        self.changed = self.changed | {key}
        return key

    def parameters(self) -> dict[str, object]:
        """The current generation settings, by name."""
        result: dict[str, object] = {
            f.name: getattr(self.options.sampling, f.name)
            for f in fields(SamplingParams)
            if f.name != "grammar"  # --schema or --grammar, not a setting to change here
        }
        result["max_tokens"] = self.options.max_tokens
        result["think_budget"] = self.options.think_budget
        result["stop"] = list(self.options.stop)
        return result

    def set_format(self, name: str | None) -> None:
        """Hold the answers to a format (``json``: a JSON object, as Ollama's ``format``
        asks for), or free them again (None)."""
        from localrun.prompt import grammar

        if name is None:
            self.options.sampling = replace(self.options.sampling, grammar=None, schema=None)
        elif name.lower() in FORMATS:
            constraint = grammar.json_value(object_only=True)  # the server's "json", too
            self.options.sampling = constraint.apply(self.options.sampling)
        else:
            raise UsageError(f"unknown format '{name}'", "/set format json, or /set noformat")

    # -- loading again -----------------------------------------------------------------

    def resize(self, n_ctx: str | int) -> list[str]:
        """Load the model again with a context of ``n_ctx`` tokens (``/set parameter
        num_ctx``); the conversation stays. Return what the load had to adjust."""
        try:  # the range a Modelfile's num_ctx has
            parsed = coerce_parameter("num_ctx", str(n_ctx))
        except ValueError as e:
            raise UsageError(str(e), "/set parameter num_ctx N, such as 8192") from None
        assert isinstance(parsed, int)
        notes = self.model.reload(parsed)
        self._load_counted = False  # the next answer waited for this load
        self.changed = self.changed | {"num_ctx"}
        return notes

    def switch(self, name: str) -> list[str]:
        """Go on with the model ``name`` and its Modelfile's messages, system prompt and
        parameters (``/load NAME``, as Ollama's): the weights are loaded only if they
        differ from the ones loaded. Return what the load had to adjust."""
        switched = self.model.switch(name)
        if switched.reloaded:
            self._load_counted = False  # the next answer waited for this load
        # Either way the chat is now this model's: its name, template and conversation.
        opts = switched.opts
        self.system = opts.system
        self.options = Options(opts.sampling, opts.max_tokens, opts.stop, opts.think_budget)
        self.messages = list(switched.settings.messages)
        self.changed = frozenset()
        self.tools = ()  # offered to the other model's template: /tools again for this one
        return switched.notes

    # -- saving ------------------------------------------------------------------------

    def save_model(self, name: str) -> Saved:
        """Save the conversation as the created model ``name`` (``/save NAME``, as Ollama's):
        ``FROM`` this model, with the chat's system prompt, the parameters set in it and a
        ``MESSAGE`` per message. An existing created model of that name is replaced."""
        recipes.check_new_name(name)
        existing = recipes.find(name)
        if existing is not None and existing.source != "created":
            existing = None
        if existing is not None and name == self.name:
            # Saved over itself: FROM itself would be a loop, so the new one takes what
            # the old one was made of, and keeps its own quantized weights.
            mf = copy.deepcopy(existing.modelfile)
        else:
            mf = Modelfile(from_=self.name)
        mf.parameters.update(self._changed_parameters())
        if "stop" in self.changed:
            mf.stop = list(self.options.stop)
        if self.system is not None:
            mf.system = self.system
        mf.messages = []
        left_out = 0
        for m in self.messages:
            if m.role not in ("system", "user", "assistant"):
                left_out += 1  # a tool's result: a MESSAGE has no tool role
                continue
            left_out += len(m.images)
            mf.messages.append((m.role, m.content))
        recipe = recipes.record(name, mf, Path.cwd())  # replaces the old record, if any
        if existing is not None and existing.weights is not None:
            if name == self.name:
                recipe = recipes.set_weights(recipe, Path(existing.weights))
            else:
                # The old model's own quantized weights belonged to it alone (as
                # recipes.remove deletes them); removed only now that the new one is saved.
                Path(existing.weights).unlink(missing_ok=True)
        self.remember()
        return Saved(recipe, len(mf.messages), left_out)

    def _changed_parameters(self) -> dict[str, float | int | str]:
        """The parameters set in this chat, under their Modelfile names."""
        out: dict[str, float | int | str] = {}
        current = self.parameters()
        for key in sorted(self.changed - {"stop", "num_ctx"}):
            value = current[key]
            name = "num_predict" if key == "max_tokens" else key
            # A random seed and no token limit are -1 in a Modelfile, as in Ollama's.
            out[name] = value if isinstance(value, int | float | str) else -1
        if "num_ctx" in self.changed and self.model.asked_ctx is not None:
            out["num_ctx"] = self.model.asked_ctx
        return out

    def save(self, path: Path) -> None:
        """Write the conversation as JSON (atomically: a crash leaves the old file whole)."""
        write_history(path, self.name, self.system, self.parameters(), self.messages)
        self.remember()

    def remember(self) -> None:
        """Keep the conversation so far where the model keeps prompts (the prompt cache of a
        model loaded here): a later process that loads this chat reads it back instead of
        evaluating it again."""
        if self.messages:
            self.model.remember(self._conversation(self.messages), self.options.sampling)

    def load(self, path: Path) -> None:
        """Replace the conversation with one saved by :meth:`save`."""
        saved = read_history(path)
        if not self.vision and any(m.images for m in saved.messages):
            raise UsageError(
                f"{path.expanduser()} holds pictures, and this model reads no images",
                "load it in a chat with a vision model",
            )
        current, self.options = self.options, Options()
        try:  # the saved settings, checked as /set parameter checks them
            for name, value in saved.parameters.items():
                if name == "stop":
                    for s in value or []:
                        self.set_parameter("stop", str(s))
                elif value is not None and name in _ALIASES:
                    self.set_parameter(name, str(value))
        except BaseException:
            self.options = current
            raise
        self.messages = saved.messages
        self.system = saved.system
