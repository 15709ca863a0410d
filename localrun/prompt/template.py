"""Render a model's Jinja chat template, safely.

Templates come inside downloaded files, so they are untrusted: they render in Jinja's
``ImmutableSandboxedEnvironment`` (what llama-cpp-python adopted after CVE-2024-34359),
which refuses attribute access to internals and mutation of objects, extended in
:mod:`localrun.prompt.sandbox` to bound the memory a template can ask for. A watchdog thread
bounds the time and the number of objects a render makes, in any thread.
"""

from __future__ import annotations

import ctypes
import functools
import json
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from localrun.errors import TemplateError
from localrun.images import Image
from localrun.prompt.tools import Tool, ToolCall

RENDER_LIMIT_S = 2.0  # real templates render in milliseconds
MAX_TEMPLATE_CHARS = 1_000_000  # real templates are 1-40 KB
# Objects a render may add before it is stopped (a loop making small strings): about 200 MB.
MAX_NEW_OBJECTS = 2_000_000
# The largest value (and the rendered prompt) a template may make: the messages it was given,
# twice over, and a megabyte for its own text.
BASE_VALUE_CHARS = 1_000_000


class _Stopped(BaseException):
    """Raised inside a render by the watchdog (BaseException: templates cannot catch it)."""


@dataclass
class _Watch:
    deadline: float
    objects_at_start: int
    reason: str | None = None  # why the watchdog stopped it


@dataclass
class _Watchdog:
    """One thread that stops renders that run too long or make too many objects.

    A render runs Python code (Jinja compiles templates to Python), so an exception set
    with ``PyThreadState_SetAsyncExc`` stops it at its next step in whichever thread it
    runs; a timer signal would reach only the main thread. Single C-level operations
    cannot be interrupted; :mod:`localrun.prompt.sandbox` bounds those before they start.
    """

    lock: threading.Condition = field(default_factory=threading.Condition)
    active: dict[int, _Watch] = field(default_factory=dict)
    thread: threading.Thread | None = None

    @contextmanager
    def watch(self, seconds: float) -> Iterator[_Watch]:
        tid = threading.get_ident()
        entry = _Watch(time.monotonic() + seconds, sys.getallocatedblocks())
        with self.lock:
            self.active[tid] = entry
            if self.thread is None:
                self.thread = threading.Thread(target=self._run, name="template-watchdog")
                self.thread.daemon = True
                self.thread.start()
            self.lock.notify()
        try:
            yield entry
        finally:
            self._end(tid)

    def _end(self, tid: int) -> None:
        # A stop may land while leaving, even inside this method: retry until it is
        # unregistered and no stop is pending.
        while True:
            try:
                with self.lock:
                    entry = self.active.pop(tid, None)
                    if entry is not None and entry.reason is not None:
                        _set_async_exc(tid, None)
                return
            except _Stopped:
                continue

    def _run(self) -> None:
        while True:
            with self.lock:
                while not self.active:
                    self.lock.wait()
                now = time.monotonic()
                blocks = sys.getallocatedblocks()
                for tid, entry in self.active.items():
                    if entry.reason is not None:
                        continue
                    if now > entry.deadline:
                        entry.reason = "time"
                    elif blocks - entry.objects_at_start > MAX_NEW_OBJECTS:
                        entry.reason = "memory"
                    if entry.reason is not None:
                        _set_async_exc(tid, _Stopped)
                self.lock.wait(0.01)


def _set_async_exc(tid: int, exc: type[BaseException] | None) -> None:
    obj = ctypes.py_object(exc) if exc is not None else None
    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(tid), obj)


_WATCHDOG = _Watchdog()


@dataclass(frozen=True)
class Message:
    """One chat message: an assistant's may hold tool calls, a ``tool`` one a call's result."""

    role: str
    content: str
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str | None = None  # a tool result: the call it answers
    name: str | None = None  # a tool result: the tool's name
    images: tuple[Image, ...] = ()  # pictures given with it (a vision model reads them)

    def as_template(self) -> dict[str, Any]:
        """The message as chat templates read it (keys absent when empty: templates test
        ``'tool_calls' in message``)."""
        out: dict[str, Any] = {"role": self.role, "content": self.content}
        if self.tool_calls:
            out["tool_calls"] = [c.as_template() for c in self.tool_calls]
        if self.tool_call_id is not None:
            out["tool_call_id"] = self.tool_call_id
        if self.name is not None:
            out["name"] = self.name
        return out


def render(
    template: str,
    messages: Sequence[Message],
    *,
    bos_token: str = "",
    eos_token: str = "",
    add_generation_prompt: bool = True,
    tools: Sequence[Tool] = (),
    variables: Mapping[str, Any] | None = None,
) -> str:
    """Render ``messages`` with ``template``; ``variables`` are more of the template's
    (a thinking switch such as ``enable_thinking``), never in place of the usual ones.

    A template that rejects the system role gets the system prompt folded into the
    first user message instead, as chat front ends commonly do. Without ``tools``, ``tools``
    is none, as transformers passes it; a template that fails on that (a tool-use template
    that iterates ``tools``) gets an empty list instead.
    """
    import jinja2  # imported on first use: the CLI starts faster without it

    from localrun.prompt.sandbox import Budget, TemplateTooLarge, environment, set_budget

    if len(template) > MAX_TEMPLATE_CHARS:
        raise TemplateError(
            f"the model's chat template is {len(template):,} characters long "
            f"(at most {MAX_TEMPLATE_CHARS:,})",
            "override it with a Modelfile TEMPLATE",
        )
    extra = variables
    messages = _calls_as_text(template, messages)
    offered = [t.as_template() for t in tools]
    given = sum(len(m.content) for m in messages) + len(bos_token) + len(eos_token)
    given += sum(len(json.dumps(m.as_template())) for m in messages if m.tool_calls)
    given += len(json.dumps(offered)) if offered else 0
    max_chars = BASE_VALUE_CHARS + 2 * given
    env = environment()

    def attempt(msgs: Sequence[Message], tools: list[Any] | None) -> str:
        variables: dict[str, Any] = {
            "messages": [m.as_template() for m in msgs],
            "bos_token": bos_token,
            "eos_token": eos_token,
            "add_generation_prompt": add_generation_prompt,
            # As transformers' apply_chat_template passes them: templates test `tools is none`
            # for no tools, and `documents` for retrieval; the special tokens by name.
            "tools": tools,
            "documents": None,
            "unk_token": "",
            "pad_token": "",
            # What templates translated from Ollama's Go templates read.
            "system": next((m.content for m in msgs if m.role == "system"), ""),
            "prompt": next((m.content for m in reversed(msgs) if m.role == "user"), ""),
            "response": "",
        }
        variables = {**(extra or {}), **variables}
        set_budget(Budget(max_chars, 16 * max_chars))
        # Streamed, so that the prompt's length is checked as it grows.
        parts: list[str] = []
        made = 0
        for part in compiled.generate(**variables):
            made += len(part)
            if made > max_chars:
                raise TemplateTooLarge(f"the prompt grew past {max_chars:,} characters")
            parts.append(part)
        return "".join(parts)

    try:
        with _WATCHDOG.watch(RENDER_LIMIT_S) as watch:
            try:
                compiled = _compile(env, template)
            except jinja2.TemplateSyntaxError as e:
                raise TemplateError(
                    f"the model's chat template is not valid Jinja (line {e.lineno}: {e.message})",
                    "override it with a Modelfile TEMPLATE, or run the file as plain completion",
                ) from None
            return _render_or_fold(attempt, messages, offered or None)
    except _Stopped:
        if watch.reason == "memory":
            raise TemplateError(
                "the model's chat template made too many objects while rendering",
                "override it with a Modelfile TEMPLATE",
            ) from None
        raise TemplateError(
            f"the model's chat template did not finish rendering in {RENDER_LIMIT_S:.0f} s",
            "the template loops without end: override it with a Modelfile TEMPLATE",
        ) from None
    except TemplateTooLarge as e:
        raise TemplateError(
            f"the model's chat template asked for too much memory: {e}",
            "override it with a Modelfile TEMPLATE",
        ) from None
    finally:
        set_budget(None)


@functools.lru_cache(maxsize=8)
def _compile(env: Any, template: str) -> Any:
    """Compile once per template: a chat renders the same template every turn."""
    return env.from_string(template)


def _render_or_fold(
    attempt: Callable[[Sequence[Message], list[Any] | None], str],
    messages: Sequence[Message],
    offered: list[Any] | None = None,
) -> str:
    from localrun.prompt.sandbox import TemplateTooLarge

    folded = _fold_system(messages)
    variants = [messages] if folded is None else [messages, folded]
    first: Exception | None = None
    choices: tuple[list[Any] | None, ...] = (offered,) if offered else (None, [])
    for tools in choices:
        for msgs in variants:
            try:
                return attempt(msgs, tools)
            except TemplateTooLarge:
                raise
            # Not only jinja2's errors: a template's own code raises TypeError and the like.
            except Exception as e:
                first = first or e
    raise TemplateError(
        f"the model's chat template failed: {first}",
        "override it with a Modelfile TEMPLATE",
    ) from None


def _calls_as_text(template: str, messages: Sequence[Message]) -> Sequence[Message]:
    """A template that takes tools but never renders an assistant's calls (Granite 3.3's)
    would lose them from the conversation: they go in as the text the model wrote."""
    from localrun.prompt.tools import form_of

    if "tool_calls" in template or not any(m.tool_calls for m in messages):
        return messages
    form = form_of(template)
    if form is None:
        return messages
    return [
        Message(m.role, "\n".join(p for p in (m.content, form.write(m.tool_calls)) if p))
        if m.tool_calls
        else m
        for m in messages
    ]


def _fold_system(messages: Sequence[Message]) -> list[Message] | None:
    if not messages or messages[0].role != "system":
        return None
    system, rest = messages[0].content, list(messages[1:])
    for i, m in enumerate(rest):
        if m.role == "user":
            rest[i] = Message("user", f"{system}\n\n{m.content}")
            return rest
    return [Message("user", system), *rest]
