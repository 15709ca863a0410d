"""What goes into the engine and what comes out: requests, jobs, events and statistics."""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field

from localrun.backend import ImageChunk, SamplingParams
from localrun.engine.budget import Budget
from localrun.images import Image
from localrun.prompt.template import Message
from localrun.prompt.tools import Tool, ToolCall

CHAT = "chat"
COMPLETION = "completion"


class FinishReason(str, enum.Enum):
    """Why an answer ended."""

    STOP = "stop"  # the model ended it, or a stop string
    LENGTH = "length"  # the token limit, or a full context
    CANCELLED = "cancelled"  # the caller stopped it
    ERROR = "error"  # the backend failed

    def __str__(self) -> str:
        return self.value

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)


@dataclass(frozen=True)
class Request:
    """One conversation to answer: its messages (system, user, assistant) and how to sample."""

    messages: tuple[Message, ...]
    sampling: SamplingParams = field(default_factory=SamplingParams)
    max_tokens: int | None = None  # None: until the model stops or the context is full
    stop: tuple[str, ...] = ()
    document: str = ""  # where the last message begins with a document (piped text), that text
    tools: tuple[Tool, ...] = ()  # offered to the model, which may answer with calls
    # The sampling settings this request chose (a chat's /set, a --batch line's fields), with
    # the command's flags: a remote engine is sent only those and keeps its own defaults.
    given: frozenset[str] = frozenset()
    # An API's own: the last message's text read as it is, without the chat template
    # (Ollama's raw), tokens the answer continues (Ollama's context), which tool the model
    # must call (auto, none, required, or a tool's name), and whether to go on past the
    # model's end of text (llama-server's and vLLM's ignore_eos).
    raw: bool = False
    context: tuple[int, ...] = ()
    tool_choice: str = "auto"
    stop_at_eog: bool = True
    # A thinking model's trace: on (True, or an effort: low, medium, high), off (False), or
    # as the model does by default (None); and the most tokens its trace may take (None: no
    # bound), after which the engine closes the trace and the answer follows.
    think: bool | str | None = None
    think_budget: int | None = None
    # Each answer token's log probability, with this many of the likeliest alternatives
    # (OpenAI's logprobs and top_logprobs); None: none.
    logprobs: int | None = None
    # Fill in the middle: the last message's text is what comes before, this what comes
    # after, and the answer is what goes between (OpenAI's and Ollama's suffix).
    suffix: str | None = None
    prompt_logprobs: int | None = None  # the prompt's tokens' log probabilities (echo)
    template: str | None = None  # a request's own chat template (Jinja), over the model's

    @classmethod
    def of(
        cls,
        prompt: str,
        *,
        system: str | None = None,
        history: Sequence[Message] = (),
        sampling: SamplingParams | None = None,
        max_tokens: int | None = None,
        stop: tuple[str, ...] = (),
        document: str = "",
        images: Sequence[Image] = (),
    ) -> Request:
        """A one-shot prompt: the system prompt, earlier messages, then the user's prompt
        (which begins with ``document``, when one was piped in) with its ``images``."""
        messages = [Message("system", system)] if system else []
        messages += [*history, Message("user", prompt, images=tuple(images))]
        return cls(tuple(messages), sampling or SamplingParams(), max_tokens, stop, document)


@dataclass(frozen=True)
class Job:
    """One answer for the batching engine to write: a prompt as tokens, and how to answer.

    ``submitted`` is when the request began (``time.perf_counter()``), for its TTFT; None:
    when it is submitted. ``cache_at`` is how many of the prompt's tokens are worth keeping in
    the prompt cache on disk (a system prompt, a document); 0: none. ``speculate`` is the
    most tokens to guess and check a step (0: plain decoding). With ``special``, control
    tokens the model writes come out as their text (the markers of a tool call, such as
    ``[TOOL_CALLS]``). ``images`` are the prompt's pictures by the negative id whose runs
    stand for them in ``prompt``. ``grammar`` is ``sampling.grammar`` compiled beforehand by
    the engine's ``compile_grammar`` (the engine owns it once submitted); None: compiled at
    submission, in the caller's thread.
    """

    prompt: list[int]
    sampling: SamplingParams
    max_tokens: int | None = None
    stop: tuple[str, ...] = ()
    stop_at_eog: bool = True
    submitted: float | None = None
    cache_at: int = 0
    speculate: int = 0
    special: bool = False
    think_budget: Budget | None = None  # close a reasoning trace after so many tokens
    images: Mapping[int, ImageChunk] = field(default_factory=dict)
    grammar: object | None = None
    logprobs: int | None = None  # each token's log probability, and this many alternatives
    prompt_logprobs: int | None = None  # the same for the prompt's tokens (read whole)


@dataclass
class Stats:
    """Timings of one answer. Times in seconds; rates in tokens per second."""

    load_s: float = 0.0
    prompt_tokens: int = 0
    prompt_evaluated: int = 0
    prompt_from_disk: int = 0  # of the prompt tokens not evaluated, those read from the disk
    drafted: int = 0  # speculative decoding: tokens guessed and checked
    accepted: int = 0  # of those, the ones the model would have written
    passes: int = 0  # decode steps that gave the answer tokens (fewer than them when guessing)
    images: int = 0  # pictures in the prompt
    image_tokens: int = 0  # the embeddings they gave (in prompt_tokens as positions)
    image_encode_s: float = 0.0  # the vision encoder's time: apart from prefill_s
    prefill_s: float = 0.0
    prefill_tokens_per_s: float = 0.0
    ttft_s: float = 0.0
    completion_tokens: int = 0
    decode_s: float = 0.0
    decode_tokens_per_s: float = 0.0
    total_s: float = 0.0
    finish_reason: FinishReason = FinishReason.STOP
    # A thinking model's trace: its tokens (in completion_tokens too), and when the answer
    # proper began, after the request (TTFT is the trace's first token; 0: no answer text).
    thinking_tokens: int = 0
    first_answer_s: float = 0.0

    @property
    def acceptance(self) -> float:
        """The share of guessed tokens that were kept (0 when none was guessed)."""
        return self.accepted / self.drafted if self.drafted else 0.0

    @property
    def tokens_per_pass(self) -> float:
        """Answer tokens per decode step: 1 without speculative decoding, more with it."""
        return self.completion_tokens / self.passes if self.passes else 0.0

    def as_dict(self) -> dict[str, float | int | str]:
        """The statistics as a JSON-ready dictionary."""
        extra = {}
        if self.drafted:
            extra = {
                "acceptance_rate": round(self.acceptance, 4),
                "tokens_per_pass": round(self.tokens_per_pass, 3),
            }
        return {**asdict(self), **extra, "finish_reason": self.finish_reason.value}


@dataclass(frozen=True)
class PromptEvaluated:
    """The prompt has been prefilled (``evaluated`` excludes tokens reused from the cache)."""

    prompt_tokens: int
    evaluated: int
    seconds: float
    # Where asked (Job.prompt_logprobs): each prompt token's; the first's is NaN (nothing
    # comes before it to give it a probability).
    logprobs: tuple[Logprobs, ...] = ()


@dataclass(frozen=True)
class PrefillProgress:
    """Part of a long prompt has been read: ``done`` of the ``total`` tokens it has to
    evaluate (tokens reused from a cache count in neither), ``seconds`` after reading began;
    ``prompt_tokens`` is the whole prompt's length, cached part included.

    Sent after each chunk of the prompt but the last, which PromptEvaluated follows: a prompt
    read in one step (most of a chat's turns) sends none. Readers that do not show progress
    ignore it, like any event they do not know.
    """

    prompt_tokens: int
    done: int
    total: int
    seconds: float

    @property
    def tokens_per_s(self) -> float | None:
        """The prefill rate so far; None before there is a time to divide by."""
        return self.done / self.seconds if self.seconds > 0 else None


@dataclass(frozen=True)
class FirstToken:
    """The first token was sampled, ``ttft_s`` after the request."""

    ttft_s: float


@dataclass(frozen=True)
class TokenProb:
    """A token and its log probability: over the whole vocabulary, from the model's logits
    before any sampler touched them (as llama-server and vLLM report them)."""

    token: int
    piece: bytes  # its text (part of a UTF-8 character, it may be)
    logprob: float


@dataclass(frozen=True)
class Logprobs:
    """The token the answer took, and the likeliest ones at its place, likeliest first."""

    chosen: TokenProb
    top: tuple[TokenProb, ...] = ()


@dataclass(frozen=True)
class TextDelta:
    """A piece of the answer, ready to print (may be empty while a character is incomplete)."""

    text: str
    tokens: int = 0  # answer tokens so far
    at: float = 0.0  # when it was made, in seconds after the request (0: not known)
    logprobs: Logprobs | None = None  # the token's, when the request asked (Job.logprobs)


@dataclass(frozen=True)
class ThinkingDelta:
    """A piece of a thinking model's reasoning trace, apart from the answer (which comes in
    TextDeltas); ``tokens`` counts the answer's tokens so far, the trace's included."""

    text: str
    tokens: int = 0


@dataclass(frozen=True)
class Finished:
    """The answer is complete."""

    stats: Stats


@dataclass(frozen=True)
class Called:
    """The answer called tools (read out of its text, which was held back): just before
    it is Finished. Running them is the caller's business."""

    calls: tuple[ToolCall, ...]


Event = PrefillProgress | PromptEvaluated | FirstToken | TextDelta | Finished
