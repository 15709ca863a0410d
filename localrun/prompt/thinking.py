"""Thinking models: the reasoning trace a model writes before its answer.

A thinking model's chat template shows the form of its trace, in how it renders an earlier
assistant turn's reasoning back and in how its generation prompt opens or closes a trace:

- ``think``: ``<think>...</think>``: Qwen3 and QwQ, DeepSeek R1 and V3.1, SmolLM3, GLM 4.6,
  Nemotron, MiniCPM, Laguna and others;
- ``granite``: Granite 3.3: ``<think>...</think><response>...</response>``;
- ``mistral``: ``[THINK]...[/THINK]``: Magistral and Ministral 3 Reasoning;
- ``harmony``: gpt-oss: messages on channels, ``<|channel|>analysis<|message|>...<|end|>``
  the trace and the ``final`` channel the answer;
- ``seed``: ByteDance Seed-OSS: ``<seed:think>...</seed:think>``;
- ``minimax``: MiniMax M3: ``<mm:think>...</mm:think>``;
- ``command``: Command R7B: ``<|START_THINKING|>...<|END_THINKING|>``, then the answer in
  ``<|START_RESPONSE|>...<|END_RESPONSE|>``;
- ``gemma4``: Gemma 4: ``<|channel>thought ...<channel|>``.

Not read here (their templates show no marker pair a stream can be split on): Apriel's
plain-text "[BEGIN FINAL RESPONSE]", Solar Open's ``<|think|>`` (its end is the turn's own
``<|end|>``), Kimi K3 and Hunyuan 3, whose templates render reasoning through macros.

Nothing here loads a model: the engine asks :func:`switches` for the template variables
that turn thinking on or off, :func:`opens_in_prompt` whether the rendered prompt already
opened a trace, and reads the answer's text through a :class:`Splitter`.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import Any

from localrun.errors import UsageError

THINKING = "thinking"
CONTENT = "content"
EFFORTS = ("low", "medium", "high")  # gpt-oss's levels, and the ones Ollama's API takes


@dataclass(frozen=True)
class ThinkForm:
    """How one family's trace is written in its output."""

    name: str
    start: str  # opens a trace in the output
    end: str  # closes it
    needs_special: bool  # the markers are control tokens: shown only with special rendering


# needs_special: Qwen3's and DeepSeek R1's tokenizer_config.json list <think> as an added
# token with "special": false, so its text shows in plain detokenizing; the same is assumed,
# unchecked, for [THINK], <seed:think> and <mm:think>, whose templates give no evidence either
# way. gpt-oss's <|channel|> and friends are control tokens (the harmony format says so);
# Command R7B's <|START_THINKING|> and Gemma 4's <|channel> are taken to be, unchecked, from
# their shape, like their families' other control tokens. A control token not rendered
# vanishes from the text, and the trace could not be told from the answer.
THINK = ThinkForm("think", "<think>", "</think>", needs_special=False)
GRANITE = ThinkForm("granite", "<think>", "</think>", needs_special=False)
MISTRAL = ThinkForm("mistral", "[THINK]", "[/THINK]", needs_special=False)
HARMONY = ThinkForm("harmony", "<|channel|>analysis<|message|>", "<|end|>", needs_special=True)
SEED = ThinkForm("seed", "<seed:think>", "</seed:think>", needs_special=False)
MINIMAX = ThinkForm("minimax", "<mm:think>", "</mm:think>", needs_special=False)
COMMAND = ThinkForm("command", "<|START_THINKING|>", "<|END_THINKING|>", needs_special=True)
GEMMA4 = ThinkForm("gemma4", "<|channel>thought", "<channel|>", needs_special=True)

# What each form's template text shows, tried in order: the first match is the form. Granite
# 3.3 asks for its trace in prose ("Write your thoughts between <think></think> and write your
# response between <response></response>"), so it is told before the plain <think> form.
_SIGNS: tuple[tuple[ThinkForm, tuple[str, ...]], ...] = (
    (HARMONY, ("<|channel|>", "<|message|>")),
    (MISTRAL, ("[THINK]",)),
    (SEED, ("<seed:think>",)),
    (MINIMAX, ("<mm:think>",)),
    (COMMAND, ("<|START_THINKING|>",)),
    (GEMMA4, ("<|channel>thought",)),
    (GRANITE, ("<think></think>", "<response></response>")),
    (THINK, ("</think>",)),
)

# Markers dropped from the answer proper: the wrapper some families put around it.
_ANSWER_WRAPPERS = {
    "granite": ("<response>", "</response>"),
    "command": ("<|START_RESPONSE|>", "<|END_RESPONSE|>"),
}

# Harmony's tokens (https://cookbook.openai.com/articles/openai-harmony).
_H_START, _H_CHANNEL, _H_MESSAGE = "<|start|>", "<|channel|>", "<|message|>"
_H_ENDS = ("<|end|>", "<|return|>", "<|call|>")
_H_CHANNEL_NAME = re.compile(r"<\|channel\|>\s*([A-Za-z_]+)")

# llama.cpp's copies of QwQ's, DeepSeek R1 Distill Qwen's and Command R7B's templates close
# the trace they open unless `enable_thinking` is true: with it undefined (as transformers
# renders) the model would not think at all. llama.cpp always passes it (true unless asked
# otherwise), so the model's own default, a trace, needs it set.
_OFF_UNLESS_GIVEN = re.compile(r"\{%-?\s*if\s+not\s+enable_thinking\s*-?%\}")


@functools.lru_cache(maxsize=16)
def form_of(template: str | None) -> ThinkForm | None:
    """The thinking form ``template`` shows, or None for a template without thinking (asked
    several times an answer, of the same few templates: kept)."""
    if not template:
        return None
    for form, signs in _SIGNS:
        if all(s in template for s in signs):
            return form
    return None


@functools.lru_cache(maxsize=16)
def _reads(template: str) -> frozenset[str]:
    """The variables ``template`` reads from its context (jinja2's own analysis)."""
    import jinja2
    import jinja2.meta

    from localrun.prompt.sandbox import environment

    try:
        return frozenset(jinja2.meta.find_undeclared_variables(environment().parse(template)))
    except jinja2.TemplateSyntaxError:  # render() reports it; here, any word may be a variable
        return frozenset(re.findall(r"\w+", template))


def _effort(template: str, think: bool | str) -> str:
    """The effort level ``think`` asks of a template that reads ``reasoning_effort``."""
    if think is True:  # the template's own default: gpt-oss's sets "medium" when undefined
        found = re.search(r"set\s+reasoning_effort\s*=\s*[\"'](\w+)[\"']", template)
        return found.group(1) if found else "medium"
    if think is False:  # gpt-oss cannot stop thinking: the least it does is "low"
        return EFFORTS[0]
    return think


# The variables templates read to turn thinking on and off, with the values for on and off,
# the first one a template reads being its switch.
_SWITCHES: tuple[tuple[str, Any, Any], ...] = (
    ("enable_thinking", True, False),  # Qwen3, SmolLM3, GLM, DeepSeek V3.1, Gemma 4, most
    ("thinking", True, False),  # Granite 3.3
    ("thinking_mode", "enabled", "disabled"),  # MiniMax M3
    ("thinking_budget", -1, 0),  # Seed-OSS: -1 is its own default, no limit
    ("reasoning", True, False),  # Cohere2MoE's template
)


def switches(form: ThinkForm, template: str, think: bool | str | None) -> dict[str, Any]:
    """The template variables that turn thinking on (True, or an effort: "low", "medium",
    "high"), off (False), or leave it at the model's default (None), for render().

    Only variables the template reads are given (see ``_SWITCHES``), and
    ``reasoning_effort`` (gpt-oss). An effort asked of a template without levels is
    thinking on. A template without any of them gets none: its model always thinks.
    """
    if isinstance(think, str) and think not in EFFORTS:
        raise UsageError(
            f"thinking effort {think!r} is not one of {', '.join(EFFORTS)}",
            "give true, false, or one of low, medium, high",
        )
    reads = _reads(template)
    if think is None:
        if "enable_thinking" in reads and _OFF_UNLESS_GIVEN.search(template):
            return {"enable_thinking": True}
        return {}
    on = think is not False
    out: dict[str, Any] = {}
    for name, yes, no in _SWITCHES:
        if name in reads:
            out[name] = yes if on else no
            break
    if "reasoning_effort" in reads and (on or not out):
        out["reasoning_effort"] = _effort(template, think)
    return out


def can_switch_off(form: ThinkForm, template: str) -> bool:
    """Whether the template has a switch that turns thinking off (gpt-oss's efforts do not:
    its least is "low"; DeepSeek R1 Distill Llama's template always opens a trace)."""
    reads = _reads(template)
    return any(name in reads for name, _, _ in _SWITCHES)


def opens_in_prompt(form: ThinkForm, prompt: str) -> bool:
    """Whether the rendered prompt ends inside a trace, so the output starts in one.

    Only the prompt's very end counts (DeepSeek R1's "<｜Assistant｜><think>\\n"): a trace
    closed at once (Qwen3's "<think>\\n\\n</think>\\n\\n" with thinking off) is not open, and
    a marker a user quoted earlier in the conversation opens nothing.
    """
    return prompt.rstrip().endswith(form.start)


def strip_trace(form: ThinkForm, text: str) -> str:
    """An assistant message's text without its trace (an old turn stored with one)."""
    splitter = Splitter(form)
    pieces = splitter.feed(text) + splitter.close()
    return "".join(t for kind, t in pieces if kind == CONTENT)


def _held(buffer: str, markers: tuple[str, ...]) -> int:
    """How many characters at the end of ``buffer`` may be the start of a marker."""
    longest = 0
    for m in markers:
        for n in range(min(len(m) - 1, len(buffer)), longest, -1):
            if buffer.endswith(m[:n]):
                longest = n
                break
    return longest


def _first(buffer: str, markers: tuple[str, ...]) -> tuple[int, str] | None:
    """The earliest whole marker in ``buffer`` (the longest where two start together)."""
    best: tuple[int, str] | None = None
    for m in markers:
        i = buffer.find(m)
        if i >= 0 and (best is None or i < best[0] or (i == best[0] and len(m) > len(best[1]))):
            best = (i, m)
    return best


class Splitter:
    """Splits streamed output text into the trace and the answer, as it comes.

    Text that may be the start of a marker is held back until the next feed decides it.
    Markers never reach either kind. Whitespace is dropped at the answer's start (models
    write "</think>\\n\\n"), and at a trace's start and end (templates render reasoning back
    stripped). A trace opens only before the answer has begun; a trace start seen inside a
    trace (a model repeating the ``<think>`` its prompt opened) is dropped; an end marker
    outside any trace is dropped too (a trace the prompt opened unseen), its text already
    given as answer.

    gpt-oss (harmony): the message headers (``<|start|>assistant``, ``<|channel|>...``,
    ``to=functions.name``, ``<|constrain|>json``, up to ``<|message|>``) and the message
    ends (``<|end|>``, ``<|return|>``, ``<|call|>``) are dropped. The ``analysis`` channel is
    the trace; every other channel is answer: ``final``, and ``commentary``, where gpt-oss
    writes tool calls' arguments and preambles: its text stays as content so a tool-call
    reader sees it, but without its header, so the tool's name is not in it.
    """

    def __init__(self, form: ThinkForm, *, in_trace: bool = False) -> None:
        self._form = form
        self._harmony = form.name == "harmony"
        self._mode = THINKING if in_trace else CONTENT  # or "header" (harmony's)
        self._closed = False
        self._buffer = ""
        self._header = ""
        self._ws = ""  # a trace's trailing whitespace, held until more trace comes
        self._strip = True  # drop whitespace until the current part's first text
        self._answered = False  # some of the answer proper was given
        wrappers = _ANSWER_WRAPPERS.get(form.name, ())
        if self._harmony:
            body = (_H_START, _H_CHANNEL, *_H_ENDS)
            self._markers = {CONTENT: body, THINKING: body, "header": (_H_MESSAGE,)}
        else:
            self._markers = {
                CONTENT: (form.start, form.end, *wrappers),
                THINKING: (form.end, form.start),
                # Once the answer has begun a trace cannot: models open theirs first, and an
                # answer about the markup may quote "<think>", which would otherwise swallow
                # the rest of the answer as trace.
                "answer": (form.end, *wrappers),
            }

    @property
    def in_trace(self) -> bool:
        """Whether the text now coming is trace."""
        return self._mode == THINKING

    @property
    def trace_closed(self) -> bool:
        """A trace was seen and has ended: the answer proper has begun or may begin."""
        return self._closed

    def feed(self, text: str) -> list[tuple[str, str]]:
        """The pieces of ``text`` that are decided: ("thinking" | "content", text)."""
        self._buffer += text
        out: list[tuple[str, str]] = []
        self._run(out, final=False)
        return out

    def close(self) -> list[tuple[str, str]]:
        """What was held back, at the answer's end: an unterminated trace (cut by the
        length limit) stays trace; an unfinished harmony header is dropped."""
        out: list[tuple[str, str]] = []
        self._run(out, final=True)
        self._ws = ""
        self._header = ""
        return out

    def _run(self, out: list[tuple[str, str]], *, final: bool) -> None:
        while True:
            markers = self._looking_for()
            found = _first(self._buffer, markers)
            if found is None:
                keep = 0 if final else _held(self._buffer, markers)
                cut = len(self._buffer) - keep
                self._emit(out, self._buffer[:cut])
                self._buffer = self._buffer[cut:]
                return
            at, marker = found
            self._emit(out, self._buffer[:at])
            self._buffer = self._buffer[at + len(marker) :]
            if marker not in self._looking_for():  # the text before it began the answer
                self._emit(out, marker)
            elif self._harmony:
                self._harmony_marker(marker)
            else:
                self._marker(marker)

    def _looking_for(self) -> tuple[str, ...]:
        answering = self._answered and not self._harmony and self._mode == CONTENT
        return self._markers["answer" if answering else self._mode]

    def _marker(self, marker: str) -> None:
        if self._mode == CONTENT and marker == self._form.start:
            self._open()
        elif self._mode == THINKING and marker == self._form.end:
            self._end_trace()
        elif marker == self._form.end:  # no trace open: the marker alone is dropped
            self._strip = not self._answered

    def _harmony_marker(self, marker: str) -> None:
        if self._mode == "header":  # <|message|>: the header says where the text goes
            channel = _H_CHANNEL_NAME.search(self._header)
            self._header = ""
            if channel is not None and channel.group(1) == "analysis":
                self._open()
            else:
                self._mode = CONTENT
                self._strip = True
            return
        if self._mode == THINKING:
            self._end_trace()
        if marker in (_H_START, _H_CHANNEL):
            self._mode = "header"
            self._header = marker

    def _open(self) -> None:
        self._mode = THINKING
        self._closed = False
        self._strip = True

    def _end_trace(self) -> None:
        self._mode = CONTENT
        self._closed = True
        self._ws = ""
        self._strip = True

    def _emit(self, out: list[tuple[str, str]], text: str) -> None:
        if not text:
            return
        if self._mode == "header":
            self._header += text
            return
        if self._strip:
            text = text.lstrip()
            if not text:
                return
            self._strip = False
        if self._mode == THINKING:
            body = text.rstrip()
            if not body:
                self._ws += text
                return
            text, self._ws = self._ws + body, text[len(body) :]
        self._answered = self._answered or self._mode == CONTENT
        if out and out[-1][0] == self._mode:
            out[-1] = (self._mode, out[-1][1] + text)
        else:
            out.append((self._mode, text))
