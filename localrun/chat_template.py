"""Render a model's Jinja chat template, safely.

Templates come inside downloaded files, so they are untrusted: they render in Jinja's
``ImmutableSandboxedEnvironment`` (what llama-cpp-python adopted after CVE-2024-34359),
which refuses attribute access to internals and mutation of objects.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from types import FrameType
from typing import Any

from localrun.errors import LocalrunError

RENDER_LIMIT_S = 2.0  # real templates render in milliseconds


class TemplateError(LocalrunError):
    """The chat template could not be rendered."""


class _TemplateTimeout(Exception):
    pass


@contextmanager
def _time_limit(seconds: float) -> Iterator[None]:
    """Stop a render that runs too long: the sandbox bounds one ``range`` but not nesting.

    A timer signal interrupts the template's Python code wherever it loops. Signals reach
    only the main thread, so elsewhere the render runs unbounded (the CLI renders on the
    main thread).
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def expire(signum: int, frame: FrameType | None) -> None:
        raise _TemplateTimeout

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@dataclass(frozen=True)
class Message:
    """One chat message."""

    role: str
    content: str


def render(
    template: str,
    messages: Sequence[Message],
    *,
    bos_token: str = "",
    eos_token: str = "",
    add_generation_prompt: bool = True,
) -> str:
    """Render ``messages`` with ``template``.

    A template that rejects the system role gets the system prompt folded into the
    first user message instead, as chat front ends commonly do. ``tools`` is none, as
    transformers passes it without tools; a template that fails on that (a tool-use
    template that iterates ``tools``) gets an empty list instead.
    """
    import jinja2  # imported on first use: the CLI starts faster without it

    from localrun.jinja_env import environment

    env = environment()
    try:
        compiled = env.from_string(template)
    except jinja2.TemplateSyntaxError as e:
        raise TemplateError(
            f"the model's chat template is not valid Jinja (line {e.lineno}: {e.message})",
            "override it with a Modelfile TEMPLATE, or run the file as plain completion",
        ) from None

    def attempt(msgs: Sequence[Message], tools: list[Any] | None) -> str:
        variables: dict[str, Any] = {
            "messages": [{"role": m.role, "content": m.content} for m in msgs],
            "bos_token": bos_token,
            "eos_token": eos_token,
            "add_generation_prompt": add_generation_prompt,
            # As transformers renders them: templates test `tools is none` for no tools.
            "tools": tools,
            # What templates translated from Ollama's Go templates read.
            "system": next((m.content for m in msgs if m.role == "system"), ""),
            "prompt": next((m.content for m in reversed(msgs) if m.role == "user"), ""),
            "response": "",
        }
        return compiled.render(**variables)

    try:
        with _time_limit(RENDER_LIMIT_S):
            return _render_or_fold(attempt, messages)
    except _TemplateTimeout:
        raise TemplateError(
            f"the model's chat template did not finish rendering in {RENDER_LIMIT_S:.0f} s",
            "the template loops without end: override it with a Modelfile TEMPLATE",
        ) from None


def _render_or_fold(
    attempt: Callable[[Sequence[Message], list[Any] | None], str], messages: Sequence[Message]
) -> str:
    folded = _fold_system(messages)
    variants = [messages] if folded is None else [messages, folded]
    first: Exception | None = None
    no_tools: tuple[list[Any] | None, ...] = (None, [])
    for tools in no_tools:
        for msgs in variants:
            try:
                return attempt(msgs, tools)
            except _TemplateTimeout:
                raise
            # Not only jinja2's errors: a template's own code raises TypeError and the like.
            except Exception as e:
                first = first or e
    raise TemplateError(
        f"the model's chat template failed: {first}",
        "override it with a Modelfile TEMPLATE",
    ) from None


def _fold_system(messages: Sequence[Message]) -> list[Message] | None:
    if not messages or messages[0].role != "system":
        return None
    system, rest = messages[0].content, list(messages[1:])
    for i, m in enumerate(rest):
        if m.role == "user":
            rest[i] = Message("user", f"{system}\n\n{m.content}")
            return rest
    return [Message("user", system), *rest]
