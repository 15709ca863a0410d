"""The live answer view: Markdown as it streams, and a status line with TTFT and tok/s.

A thinking model's trace (ThinkingDelta) is drawn dim under a "Thinking…" label while it
streams (its last lines, in the live region: a trace of thousands of tokens would not fit
the screen), then folded to one dim line, "Thought for N tokens, X.X s", once the answer
proper begins; the chat's ``/show thinking`` prints the last trace in full. Without a live
region (--nowordwrap) the trace is printed dim as it comes, then the same line. Hidden
(--hidethinking), nothing of it is drawn but the status line's "thinking" phase.

Renderables are pure functions of state (tested with capture consoles). The answer is
split into finished Markdown blocks, printed once above the live region, and the block
still growing, re-rendered with the status line a few times a second: a long answer
costs no more to draw than a short one. The Markdown keeps the model's own line breaks
(a poem's lines, code written outside a fence), as its plain text does when piped.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from types import TracebackType

from markdown_it import MarkdownIt
from markdown_it.rules_inline import StateInline
from rich.console import Console, ConsoleOptions, Group, RenderableType, RenderResult
from rich.live import Live
from rich.markdown import Markdown
from rich.segment import Segment, Segments
from rich.text import Text

from localrun import engine
from localrun.engine import Stats
from localrun.engine.chat import ChatEvent, Trimmed
from localrun.engine.types import ThinkingDelta

REFRESH_PER_SECOND = 8
# Control characters but newline and tab, C1's too (U+0080-U+009F: some terminals read
# U+009B as an escape sequence's start, as ESC [).
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def safe_text(text: str) -> str:
    """Untrusted text (a model's, a file's) as it may reach a terminal: without control
    characters, which could clear the screen, retitle the window, fake a prompt, or start an
    escape sequence that swallows what follows. Newlines and tabs stay."""
    return _CONTROL.sub("", text)


def _line_break(state: StateInline, silent: bool) -> bool:
    """markdown-it's ``newline`` rule as a terminal wants it: every line break inside a
    paragraph is a hard break, and the next line keeps its indentation.

    CommonMark joins a paragraph's lines (a soft break, which rich draws as a space) and
    drops their leading spaces: a poem became one line, and code written outside a fence
    lost its lines and its indentation. markdown-it's ``breaks`` option only changes how
    its HTML renderer draws a soft break; rich reads the tokens, so the rule is replaced.
    Trailing spaces go, as before a hard break in CommonMark.
    """
    if state.src[state.pos] != "\n":
        return False
    if not silent:
        state.pending = state.pending.rstrip(" ")
        state.push("hardbreak", "br", 0)
    state.pos += 1
    return True


# One parser for every render (rich makes a new one for each Markdown, about a sixth of the
# cost of drawing the growing block), configured as rich's own: CommonMark, tables and
# strikethrough; only the line-break rule differs. A parse keeps its state apart, so the
# live view's thread and the printing thread share it; its rule chains are compiled on
# first use, here, before either thread can race to compile them.
_PARSER = MarkdownIt().enable("strikethrough").enable("table")
_PARSER.inline.ruler.at("newline", _line_break)
_PARSER.parse("a\n*b*\n\n- c")
_DEFAULTS = Markdown("").__dict__  # rich's settings for a Markdown: theme, justify, links


class AnswerMarkdown(Markdown):
    """rich's Markdown, parsed by the shared parser that keeps the model's line breaks."""

    def __init__(self, markup: str) -> None:
        # Not rich's __init__, which would build a parser of its own: its attributes, with
        # rich's defaults, and the tokens of the shared parser (the tokens are all it reads).
        self.__dict__.update(_DEFAULTS)
        self.markup = markup
        self.parsed = _PARSER.parse(markup)


@dataclass
class AnswerState:
    """What the status line shows."""

    placement: str
    n_ctx: int
    phase: str = "prefill"
    prompt_tokens: int = 0
    prefill: engine.PrefillProgress | None = None  # how far a long prompt's reading has got
    ttft_s: float | None = None
    tokens: int = 0
    first_token_at: float = 0.0
    now: float = 0.0
    thinking_tokens: int = 0  # the trace's tokens so far

    @property
    def rate(self) -> float | None:
        elapsed = self.now - self.first_token_at
        if self.ttft_s is None or self.tokens < 2 or elapsed <= 0:
            return None
        return (self.tokens - 1) / elapsed


def status_line(state: AnswerState) -> Text:
    """One line: phase, TTFT, live tok/s, tokens, context used, where the layers run.

    While a long prompt is read, its progress and rate: seconds of prefill then show
    movement instead of a line that looks hung.
    """
    parts = [state.phase]
    if state.ttft_s is not None:
        parts.append(f"TTFT {state.ttft_s:.2f} s")
    used = state.prompt_tokens + state.tokens
    progress = state.prefill
    if state.phase in ("decode", "thinking"):
        rate = state.rate
        parts.append(f"{rate:.1f} tok/s" if rate is not None else "… tok/s")
        parts.append(f"{state.tokens} tokens")
    elif progress is not None:
        parts.append(f"{progress.done:,}/{progress.total:,} tokens")
        prefill_rate = progress.tokens_per_s
        parts.append(f"{prefill_rate:,.0f} tok/s" if prefill_rate is not None else "… tok/s")
        used = progress.prompt_tokens - progress.total + progress.done  # cached part included
    else:
        parts.append(f"{state.prompt_tokens} prompt tokens")
    if state.n_ctx:  # 0: a remote engine's, not known here
        parts.append(f"ctx {used}/{state.n_ctx}")
    parts.append(state.placement)
    return Text(" · ".join(parts), style="dim")


def summary_line(stats: Stats) -> Text:
    """After an answer: TTFT, prefill and decode rates, tokens, prompt tokens evaluated (a
    remote engine's answer has no prefill figures: they cannot be measured from outside)."""
    remote = stats.prefill_s == 0 and stats.prompt_evaluated == 0
    thought = stats.thinking_tokens > 0
    parts = [
        f"TTFT {stats.ttft_s:.2f} s",
        *([f"first answer token {stats.first_answer_s:.2f} s"] if thought else []),
        *([] if remote else [f"prefill {stats.prefill_tokens_per_s:.1f} tok/s"]),
        f"decode {stats.decode_tokens_per_s:.1f} tok/s",
        f"{stats.completion_tokens} tokens"
        + (f" ({stats.thinking_tokens} thinking)" if thought else ""),
        f"{stats.prompt_tokens} prompt tokens"
        if remote
        else f"{stats.prompt_evaluated} of {stats.prompt_tokens} prompt tokens evaluated",
    ]
    if stats.prompt_from_disk:
        parts.append(f"{stats.prompt_from_disk} from the prompt cache")
    if stats.images:
        pictures = "1 image" if stats.images == 1 else f"{stats.images} images"
        parts.append(f"{pictures} encoded in {stats.image_encode_s:.2f} s")
    if stats.drafted:
        parts.append(
            f"{stats.acceptance:.0%} of guesses kept, {stats.tokens_per_pass:.2f} tokens a pass"
        )
    return Text(" · ".join(parts), style="dim")


def split_markdown(text: str) -> tuple[str, str]:
    """Split streamed Markdown into (finished blocks, the block still growing).

    A block ends at a blank line outside a code fence; a fence stays in the growing
    part until it closes, so a code block is never cut in two.
    """
    cut = -1
    in_fence = False
    pos = 0
    for line in text.splitlines(keepends=True):
        stripped = line.lstrip()
        if stripped.startswith(("```", "~~~")):
            in_fence = not in_fence
        pos += len(line)
        if not in_fence and line.strip() == "" and line.endswith("\n") and pos < len(text):
            cut = pos
    if cut < 0:
        return "", text
    return text[:cut], text[cut:]


THINKING_LABEL = "Thinking…"


def folded_line(tokens: int, seconds: float) -> Text:
    """A finished trace, folded to one line."""
    return Text(f"Thought for {tokens} tokens, {seconds:.1f} s", style="dim")


class TraceTail:
    """The last lines of a growing trace, dim, as many as ``height``: the live region
    must stay within the screen to be redrawn in place."""

    def __init__(self, text: str, height: int) -> None:
        self.text = text
        self.height = height

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        lines = console.render_lines(Text(self.text, style="dim"), options, pad=False)
        segments: list[Segment] = []
        for line in lines[-self.height :]:
            segments.extend(line)
            segments.append(Segment.line())
        yield Segments(segments)


class AnswerView:
    """Draws one answer: finished Markdown blocks printed once, the rest live; a thinking
    model's trace before it, then folded (``thinking=False``: not drawn)."""

    def __init__(
        self,
        console: Console,
        state: AnswerState,
        *,
        markdown: bool = True,
        live: bool = True,
        thinking: bool = True,
    ) -> None:
        self.console = console
        self.state = state
        self.markdown = markdown
        self.thinking = thinking
        self.pending = ""
        self.text_parts: list[str] = []
        self.trace = ""  # the trace so far, as it may reach the terminal
        self._trace_at: float | None = None  # when the trace began; None: no trace (yet)
        self._folded = False
        self.stats: Stats | None = None
        self._blocks = 0
        self._live = (
            Live(
                self,
                console=console,
                auto_refresh=True,
                refresh_per_second=REFRESH_PER_SECOND,
                transient=True,
                vertical_overflow="visible",
            )
            if live
            else None
        )

    def __rich__(self) -> RenderableType:
        self.state.now = time.perf_counter()
        status = status_line(self.state)
        if self.thinking and self.trace.strip() and not self._folded:
            height = max(1, self.console.height - 4)  # the label, a status line that wraps
            label = Text(THINKING_LABEL, style="dim")
            return Group(label, TraceTail(self.trace.strip("\n"), height), status)
        if self.markdown and self.pending.strip():
            return Group(AnswerMarkdown(self.pending), status)
        return status

    def __enter__(self) -> AnswerView:
        if self._live is not None:
            self._live.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._live is not None:
            self._live.stop()
        self._fold()
        if self.markdown and self.pending.strip():
            self._print_block(self.pending)
        elif not self.markdown and self.text_parts and not "".join(self.text_parts).endswith("\n"):
            self.console.out("")
        self.pending = ""

    def handle(self, event: ChatEvent) -> None:
        """Take one event from the engine or the chat session."""
        state = self.state
        if isinstance(event, engine.PrefillProgress):
            state.prefill = event
        elif isinstance(event, engine.PromptEvaluated):
            state.prompt_tokens = event.prompt_tokens
            state.prefill = None
        elif isinstance(event, engine.FirstToken):
            state.phase = "decode"
            state.ttft_s = event.ttft_s
            state.first_token_at = time.perf_counter()
        elif isinstance(event, ThinkingDelta):
            self._think(event)
        elif isinstance(event, engine.TextDelta):
            state.tokens = event.tokens
            if event.text:
                self._fold()
                state.phase = "decode"
                self.text_parts.append(event.text)
                self._write(event.text)
        elif isinstance(event, engine.Finished):
            self.stats = event.stats
        elif isinstance(event, Trimmed):
            self.console.print(
                Text(
                    f"(the conversation outgrew the context: the {event.dropped} oldest "
                    f"messages were dropped, {event.kept} kept, the system prompt stays)",
                    style="yellow",
                )
            )

    def _think(self, event: ThinkingDelta) -> None:
        """A piece of the trace: in the live region, or printed as it comes without one."""
        state = self.state
        state.tokens = state.thinking_tokens = event.tokens
        if self._folded or not event.text:
            return
        state.phase = "thinking"
        if self._trace_at is None:
            self._trace_at = time.perf_counter()
            if self.thinking and self._live is None:
                self.console.print(Text(THINKING_LABEL, style="dim"))
        text = safe_text(event.text)
        if self.thinking and self._live is None:
            self.console.out(text, style="dim", end="", highlight=False)
        self.trace += text

    def _fold(self) -> None:
        """The trace ended (the answer began, or the answer ended): one line for it."""
        if self._folded or self._trace_at is None:
            return
        self._folded = True
        if not self.thinking:
            return
        if self._live is None and not self.trace.endswith("\n"):
            self.console.out("")
        seconds = time.perf_counter() - self._trace_at
        self.console.print(folded_line(self.state.thinking_tokens, seconds))

    def _write(self, text: str) -> None:
        # Model output is untrusted: escape sequences in it must not drive the terminal
        # (clear the screen, retitle the window, fake a prompt). Keep newlines and tabs.
        text = safe_text(text)
        if not self.markdown:
            self.console.out(text, end="", highlight=False)
            return
        self.pending += text
        done, self.pending = split_markdown(self.pending)
        if done.strip():
            self._print_block(done)

    def _print_block(self, text: str) -> None:
        """Print one finished block, one blank line from the block before it.

        Rendered one by one, blocks lose Markdown's spacing, and rich starts a list with
        a blank line of its own: trim the block's blank edges and space blocks evenly.
        """
        lines = self.console.render_lines(AnswerMarkdown(text.strip()), pad=False)
        while lines and not "".join(seg.text for seg in lines[0]).strip():
            lines.pop(0)
        if self._blocks:
            self.console.print()
        self._blocks += 1
        segments: list[Segment] = []
        for line in lines:
            segments.extend(line)
            segments.append(Segment.line())
        self.console.print(Segments(segments), end="")
