"""A multi-turn chat with a loaded model: history, parameters, context management.

The engine side of ``localrun run``'s interactive mode; the terminal view lives in the
CLI. Each turn renders the whole conversation, and the backend reuses the KV cache
for the prefix it has already evaluated, so only the new tokens are prefilled.
"""

from __future__ import annotations

import base64
import copy
import json
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from localrun.backend import SamplingParams
from localrun.backend.llamacpp.offload import AUTO
from localrun.engine.load import LoadedModel, load_model, speculate
from localrun.engine.options import run_options
from localrun.engine.stream import ANSWER_ROOM, check_fits, generate_tokens, watched
from localrun.engine.types import Called, Event, Finished, Stats, TextDelta
from localrun.errors import LocalrunError, PromptTooLongError, UsageError
from localrun.files import write_atomic
from localrun.images import Image, image_from_base64
from localrun.models import recipes
from localrun.models.modelfile import Modelfile, coerce_parameter
from localrun.models.parameters import chat_names
from localrun.models.resolve import Settings, resolve
from localrun.prompt.build import (
    MIN_KEEP,
    Prompt,
    conversation_prompt,
    conversation_tokens,
    keep_point,
)
from localrun.prompt.template import Message
from localrun.prompt.tools import CallWatch, Tool, ToolCall, form_of, parse_tools
from localrun.system import physical_cores

if TYPE_CHECKING:
    from localrun.backend.llamacpp.rpc import Endpoint

HISTORY_FORMAT = "localrun-chat/1"
FORMATS = ("json",)  # /set format: Ollama's one named format


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


@dataclass(frozen=True)
class LoadSettings:
    """How the chat's model was loaded: what ``/set parameter num_ctx`` and ``/load NAME``
    load with again, and the threads ``/show stats`` reports."""

    n_threads: int
    n_ctx: int | None = None  # what was asked for (None: the model's default)
    gpu_layers: str | int = AUTO
    kv_type: str = "f16"
    flash_attn: str = "auto"
    repack: bool = True
    workers: tuple[Endpoint, ...] = ()

    @classmethod
    def of(cls, loaded: LoadedModel) -> LoadSettings:
        """What ``run`` loaded ``loaded`` with, as far as the loaded model tells: the
        threads its settings and this machine give (``run``'s rule without flags), its
        context and its cache type."""
        try:
            settings = resolve(loaded.name).settings
        except LocalrunError:  # a model made in a test, or a file gone since
            settings = Settings()
        try:
            threads = run_options(settings).threads
        except LocalrunError:
            threads = None
        return cls(
            n_threads=int(threads or physical_cores()),
            n_ctx=loaded.model.n_ctx,
            gpu_layers=AUTO,  # run's default: a --gpu-layers flag is not known here
            kv_type=str(getattr(loaded.model, "kv_type", "f16")),
        )


class _Target(NamedTuple):
    """What a load of the chat's model loads: the weights under a name, their settings, the
    context asked for, and how answers guess ahead (a speculative method, a draft model)."""

    name: str
    path: Path
    settings: Settings
    n_ctx: int | None
    method: str
    draft: tuple[str, Path] | None


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

    # Class-level defaults: a subclass that answers elsewhere (a remote engine) sets only
    # what it uses in its own __init__.
    changed: frozenset[str] = frozenset()  # parameters set in this chat: /save NAME keeps them
    _load_settings: LoadSettings | None = None
    _load_counted = False  # whether an answer has counted the load time yet

    def __init__(
        self,
        loaded: LoadedModel,
        *,
        system: str | None = None,
        options: Options | None = None,
        messages: list[Message] | None = None,
        load: LoadSettings | None = None,
    ) -> None:
        self.loaded = loaded
        self.system = system
        self.options = options or Options()
        self.messages: list[Message] = list(messages or [])
        self.last_stats: Stats | None = None
        self.tools: tuple[Tool, ...] = ()  # offered to the model (/tools FILE)
        self._load_settings = load

    @property
    def load_settings(self) -> LoadSettings:
        """How the model was loaded (told, else what the loaded model tells of it)."""
        if self._load_settings is None:
            self._load_settings = LoadSettings.of(self.loaded)
        return self._load_settings

    @property
    def threads(self) -> int | None:
        """The CPU threads the model runs on."""
        return self.load_settings.n_threads

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
        """The chat template in use: a Modelfile's TEMPLATE (Jinja), else the GGUF's own."""
        return self.loaded.template

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
        counts_load, self._load_counted = not self._load_counted, True
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
                        if not counts_load:
                            # The load was the first answer's wait, not this one's.
                            shown.stats.total_s -= shown.stats.load_s
                            shown.stats.load_s = 0.0
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
        if key == "max_tokens":
            self.options.max_tokens = None if number is None or number < 0 else int(number)
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
        notes = self._reload(self._now(n_ctx=parsed))
        self.changed = self.changed | {"num_ctx"}
        return notes

    def switch(self, name: str) -> list[str]:
        """Go on with the model ``name`` and its Modelfile's messages, system prompt and
        parameters (``/load NAME``, as Ollama's): the weights are loaded only if they
        differ from the ones loaded. Return what the load had to adjust."""
        resolved = resolve(name)
        settings = resolved.settings
        opts = run_options(settings)
        current = self._current_settings()
        notes: list[str] = []
        same = (
            resolved.path == self.loaded.path
            and settings.adapters == current.adapters
            and settings.projector == current.projector
        )
        asked = self.load_settings.n_ctx
        if not same or (opts.n_ctx is not None and opts.n_ctx != asked):
            draft = None
            if opts.draft is not None:
                found = resolve(opts.draft)
                draft = (opts.draft, found.path)
            target = _Target(name, resolved.path, settings, opts.n_ctx, opts.speculative, draft)
            notes = self._reload(target)
        # Either way the chat is now this model's: its name, template and conversation.
        self.loaded.name = name
        self.loaded.template_override = settings.template
        self.system = opts.system
        self.options = Options(opts.sampling, opts.max_tokens, opts.stop)
        self.messages = list(settings.messages)
        self.changed = frozenset()
        self.tools = ()  # offered to the other model's template: /tools again for this one
        return notes

    def _current_settings(self) -> Settings:
        """The loaded model's settings (its adapters, projector, template), as loaded."""
        try:
            return resolve(self.loaded.name).settings
        except LocalrunError:
            return Settings(template=self.loaded.template_override, projector=self.loaded.projector)

    def _now(self, n_ctx: int | None) -> _Target:
        """The model loaded now, as a load would load it again with a context of ``n_ctx``."""
        loaded = self.loaded
        method = "draft" if loaded.draft else "lookup" if loaded.speculate else "off"
        draft = (loaded.draft.name, loaded.draft.path) if loaded.draft else None
        return _Target(loaded.name, loaded.path, self._current_settings(), n_ctx, method, draft)

    def _reload(self, target: _Target) -> list[str]:
        """Free the model, then load ``target``; if that fails, load the one there was again
        and raise. The loaded model is changed in place: whoever loaded it closes it."""
        how = self.load_settings
        old = self.loaded
        back = self._now(how.n_ctx)
        # Freed first, as Ollama unloads before it loads: two copies may not fit.
        old.close()
        try:
            new = self._load(target)
        except LocalrunError:
            _adopt(old, self._load(back))
            raise
        _adopt(old, new)
        self._load_settings = replace(how, n_ctx=target.n_ctx)
        self._load_counted = False  # the next answer waited for this load
        return list(new.notes)

    def _load(self, target: _Target) -> LoadedModel:
        how = self.load_settings
        loaded = load_model(
            target.name,
            n_ctx=target.n_ctx,
            n_threads=how.n_threads,
            gpu_layers=how.gpu_layers,
            path=target.path,
            settings=target.settings,
            workers=how.workers,
            repack=how.repack,
            kv_type=how.kv_type,
            flash_attn=how.flash_attn,
        )
        loaded.prompt_cache = self.loaded.prompt_cache
        try:
            speculate(loaded, target.method, target.draft, n_threads=how.n_threads,
                      gpu_layers=how.gpu_layers)  # fmt: skip
        except BaseException:
            loaded.close()
            raise
        return loaded

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
        if "num_ctx" in self.changed and self.load_settings.n_ctx is not None:
            out["num_ctx"] = self.load_settings.n_ctx
        return out

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


def _adopt(old: LoadedModel, new: LoadedModel) -> None:
    """Make ``old`` the model ``new`` is: the chat's caller holds ``old`` and closes it."""
    for f in fields(LoadedModel):
        setattr(old, f.name, getattr(new, f.name))


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
