"""A multi-turn chat with a loaded model: history, parameters, context management.

The engine side of ``localrun run``'s interactive mode; the terminal view lives in the
CLI. Each turn renders the whole conversation, and the backend reuses the KV cache
for the prefix it has already evaluated, so only the new tokens are prefilled.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from localrun.backend import SamplingParams
from localrun.engine.load import LoadedModel
from localrun.engine.stream import ANSWER_ROOM, check_fits, generate_tokens, watched
from localrun.engine.types import Called, Event, Finished, Stats, TextDelta
from localrun.errors import LocalrunError, PromptTooLongError, UsageError
from localrun.files import write_atomic
from localrun.images import Image, image_from_base64
from localrun.models.modelfile import coerce_parameter
from localrun.prompt.build import (
    MIN_KEEP,
    Prompt,
    conversation_prompt,
    conversation_tokens,
    keep_point,
)
from localrun.prompt.template import Message
from localrun.prompt.tools import CallWatch, Tool, ToolCall, form_of, parse_tools

HISTORY_FORMAT = "localrun-chat/1"


@dataclass(frozen=True)
class Trimmed:
    """Old messages were dropped so the conversation fits the context."""

    dropped: int
    kept: int


ChatEvent = Event | Trimmed | Called


@dataclass
class Options:
    """Generation settings a chat can change with ``/set parameter``."""

    sampling: SamplingParams = field(default_factory=SamplingParams)
    max_tokens: int | None = None
    stop: tuple[str, ...] = ()


# /set parameter NAME VALUE: run-flag names, with Ollama's Modelfile names as aliases.
_ALIASES = {
    "temperature": "temperature",
    "top_k": "top_k",
    "top_p": "top_p",
    "min_p": "min_p",
    "repeat_penalty": "repeat_penalty",
    "repeat_last_n": "repeat_last_n",
    "seed": "seed",
    "max_tokens": "max_tokens",
    "num_predict": "max_tokens",
    "stop": "stop",
}


def parameter_names() -> list[str]:
    return sorted(_ALIASES)


class ChatSession:
    """A conversation: a system prompt, messages, and the options of the next answer."""

    def __init__(
        self,
        loaded: LoadedModel,
        *,
        system: str | None = None,
        options: Options | None = None,
        messages: list[Message] | None = None,
    ) -> None:
        self.loaded = loaded
        self.system = system
        self.options = options or Options()
        self.messages: list[Message] = list(messages or [])
        self.last_stats: Stats | None = None
        self.tools: tuple[Tool, ...] = ()  # offered to the model (/tools FILE)

    def load_tools(self, path: Path) -> int:
        """Offer the tools defined in a JSON file (a list, in the form the APIs take)."""
        if form_of(self.loaded.template) is None:
            raise UsageError(
                f"{self.loaded.name} does not take tools (or writes calls in a form "
                "localrun does not read)",
                "use a model whose chat template takes tools, such as qwen2.5 or llama3.2",
            )
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except OSError as e:
            raise UsageError(f"cannot read {path}: {e.strerror}", "give a JSON file") from None
        except ValueError as e:
            raise UsageError(f"{path} is not JSON: {e}", "give a JSON list of tools") from None
        self.tools = parse_tools(raw, str(path))
        return len(self.tools)

    # -- what the chat's view shows ----------------------------------------------------

    @property
    def name(self) -> str:
        return self.loaded.name

    @property
    def placement(self) -> str:
        return self.loaded.placement

    @property
    def n_ctx(self) -> int:
        """The context the answers share (0: not known here)."""
        return self.loaded.model.n_ctx

    @property
    def mode(self) -> str:
        return self.loaded.mode

    @property
    def template(self) -> str | None:
        return self.loaded.model.chat_template

    @property
    def vision(self) -> bool:
        """Whether the model reads images."""
        return self.loaded.model.vision

    def greeting(self) -> str:
        kv = f"; KV cache {self.loaded.kv_cache}" if self.loaded.kv_cache else ""
        vision = "; reads images: /image FILE" if self.vision else ""
        return f"{self.name} loaded in {self.loaded.load_s:.2f} s ({self.placement}{kv}{vision})"

    # -- the conversation ------------------------------------------------------------

    def _conversation(self, messages: list[Message]) -> list[Message]:
        return ([Message("system", self.system)] if self.system else []) + messages

    def _fit(self) -> tuple[Prompt, list[Message]]:
        """Tokens of the conversation, without the oldest turns if an answer would not fit."""
        n_ctx = self.loaded.model.n_ctx
        room = min(ANSWER_ROOM, n_ctx // 4)
        kept = list(self.messages)
        while True:
            try:
                prompt = conversation_prompt(
                    self.loaded.model, self.loaded.template, self._conversation(kept), self.tools
                )
            except PromptTooLongError:
                if len(kept) <= 1:
                    raise
                prompt = None  # far too long to count: drop the oldest turns
            if prompt is not None and (len(prompt.tokens) + room <= n_ctx or len(kept) <= 1):
                return prompt, kept
            # Drop the oldest exchange (a user message and the answer to it).
            del kept[: 2 if len(kept) > 2 and kept[1].role == "assistant" else 1]

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

    def _answer(self) -> Iterator[ChatEvent]:
        start = time.perf_counter()
        try:
            prompt, kept = self._fit()
            check_fits(self.loaded, prompt.cells)
        except PromptTooLongError as e:
            self.messages.pop()  # the chat goes on, without the message that cannot fit
            raise PromptTooLongError(
                f"that message is too long for the context: {e.message}", e.hint
            ) from None
        except LocalrunError:
            self.messages.pop()
            raise
        dropped = len(self.messages) - len(kept)
        self.messages = kept
        # What comes back next turn (the system prompt and the turns so far) is kept on disk.
        conversation = self._conversation(kept)
        keep = keep_point(
            self.loaded.model, self.loaded.template, conversation, prompt.tokens, tools=self.tools
        )
        return self._stream(prompt, dropped, start, keep)

    def _stream(
        self, prompt: Prompt, dropped: int, start: float, keep: int = 0
    ) -> Iterator[ChatEvent]:
        if dropped:
            yield Trimmed(dropped, len(self.messages))
        parts: list[str] = []
        form = form_of(self.loaded.template) if self.tools else None
        watch = CallWatch(form, self.tools) if form is not None else None
        calls: list[ToolCall] = []
        try:
            for event in generate_tokens(
                self.loaded,
                prompt.tokens,
                self.options.sampling,
                max_tokens=self.options.max_tokens,
                stop=self.options.stop,
                start=start,
                cache_at=keep,
                special=watch is not None,
                images=prompt.images,
            ):
                for shown in watched(watch, event):
                    if isinstance(shown, TextDelta):
                        parts.append(shown.text)
                    elif isinstance(shown, Called):
                        calls = list(shown.calls)
                    elif isinstance(shown, Finished):
                        self.last_stats = shown.stats
                    yield shown
        finally:
            # Ctrl-C keeps what was written: it is part of the conversation now.
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
        if key == "max_tokens":
            self.options.max_tokens = None if number is None or number < 0 else int(number)
        else:
            changes: dict[str, Any] = {key: number}
            self.options.sampling = replace(self.options.sampling, **changes)
        return key

    def parameters(self) -> dict[str, object]:
        """The current generation settings, by name."""
        result: dict[str, object] = {
            f.name: getattr(self.options.sampling, f.name)
            for f in fields(SamplingParams)
            if f.name != "grammar"  # --schema or --grammar, not a setting to change here
        }
        result["max_tokens"] = self.options.max_tokens
        result["stop"] = list(self.options.stop)
        return result

    # -- saving ------------------------------------------------------------------------

    def save(self, path: Path) -> None:
        """Write the conversation as JSON (atomically: a crash leaves the old file whole)."""
        data = {
            "format": HISTORY_FORMAT,
            "model": self.name,
            "system": self.system,
            "parameters": self.parameters(),
            "messages": [_saved(m) for m in self.messages],
        }
        path = path.expanduser()
        if path.is_dir():
            raise LocalrunError(f"{path} is a directory", "give a file name to save to")
        try:
            write_atomic(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")
        except OSError as e:
            raise LocalrunError(
                f"cannot save to {path}: {e.strerror}", "choose another file"
            ) from None
        self.remember()

    def remember(self) -> None:
        """Keep the conversation so far in the prompt cache: a later process that loads this
        chat reads it back instead of evaluating it again.

        The part kept is what any next question shares: the conversation as two different
        next questions would render it, up to where they differ.
        """
        if not self.messages or not self.loaded.prompt_cache:
            return
        model, template = self.loaded.model, self.loaded.template
        conversation = self._conversation(self.messages)
        try:
            one = conversation_prompt(model, template, [*conversation, Message("user", "a")])
            two = conversation_tokens(model, template, [*conversation, Message("user", "b")])
        except LocalrunError:
            return  # too long to keep whole: the next turns keep what they read
        keep = 0
        for x, y in zip(one.tokens, two, strict=False):
            if x != y:
                break
            keep += 1
        if keep >= MIN_KEEP and len(one.tokens) < self.loaded.seq_ctx:
            # Most of it is in the engine's cells already: only the rest is read, then kept.
            for _ in generate_tokens(self.loaded, one.tokens, self.options.sampling,
                                     max_tokens=1, cache_at=keep, images=one.images):  # fmt: skip
                pass

    def load(self, path: Path) -> None:
        """Replace the conversation with one saved by :meth:`save`."""
        path = path.expanduser()
        try:
            data = json.loads(path.read_text())
            messages = [_saved_message(m) for m in data["messages"]]
            system = data.get("system")
            params = data.get("parameters", {})
        except FileNotFoundError:
            raise LocalrunError(f"no such file: {path}", "give the path of a saved chat") from None
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            raise LocalrunError(
                f"{path} is not a saved localrun chat ({type(e).__name__})",
                "load a file written by /save",
            ) from None
        if not self.vision and any(m.images for m in messages):
            raise UsageError(
                f"{path} holds pictures, and this model reads no images",
                "load it in a chat with a vision model",
            )
        current, self.options = self.options, Options()
        try:  # the saved settings, checked as /set parameter checks them
            for name, value in params.items():
                if name == "stop":
                    for s in value or []:
                        self.set_parameter("stop", str(s))
                elif value is not None and name in _ALIASES:
                    self.set_parameter(name, str(value))
        except BaseException:
            self.options = current
            raise
        self.messages = messages
        self.system = system if isinstance(system, str) else None


def _saved_message(m: dict[str, Any]) -> Message:
    """A message as :meth:`ChatSession.save` wrote it (its calls as templates read them)."""
    calls = tuple(
        ToolCall(str(c["function"]["name"]), dict(c["function"]["arguments"]), str(c["id"]))
        for c in m.get("tool_calls") or ()
    )
    tool_call_id, name = m.get("tool_call_id"), m.get("name")
    images = tuple(
        image_from_base64(str(data), f"the saved chat's image {i + 1}")
        for i, data in enumerate(m.get("images") or ())
    )
    return Message(
        str(m["role"]),
        str(m["content"]),
        calls,
        str(tool_call_id) if tool_call_id is not None else None,
        str(name) if name is not None else None,
        images,
    )


def _saved(m: Message) -> dict[str, Any]:
    """A message as :meth:`ChatSession.save` writes it: its pictures in base64, as Ollama's
    API sends them."""
    out = m.as_template()
    if m.images:
        out["images"] = [base64.b64encode(image.data).decode() for image in m.images]
    return out
