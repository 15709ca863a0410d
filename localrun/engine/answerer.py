"""A model loaded here as an Answerer (:mod:`localrun.engine.answering`): LocalAnswerer.

It answers on the model's batching engine, as one request among N. This module is also the
one place where a local answer's messages become prompt tokens: the conversation (with its
pictures and the tools offered), the oldest turns left out when it does not fit, and the part
worth keeping in the prompt cache.
"""

from __future__ import annotations

import asyncio
import time
import weakref
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import replace

from localrun.backend import SamplingParams
from localrun.engine.answering import Answerer, Answering, ChatEvent, Trimmed
from localrun.engine.batch import BatchEngine
from localrun.engine.load import LoadedModel
from localrun.engine.prompting import (
    check_tools,
    fill_in_prompt,
    fitted,
    messages_prompt,
    offered,
    raw_prompt,
    trace_budget,
    trace_watch,
    turns,
)
from localrun.engine.reload import (
    LoadSettings,
    Switched,
    current_settings,
    now,
    reload,
    target_of,
    with_draft,
)
from localrun.engine.runner import runner_of
from localrun.engine.sequence import Stream
from localrun.engine.stream import TraceWatch, check_fits, watched
from localrun.engine.types import Event, Finished, Job, Request, Stats
from localrun.errors import LocalrunError, UsageError
from localrun.prompt.build import (
    MIN_KEEP,
    Prompt,
    conversation_prompt,
    conversation_tokens,
    keep_point,
)
from localrun.prompt.template import Message
from localrun.prompt.tools import CallWatch

# The interface, where the callers that hold a LocalAnswerer look for it too.
__all__ = [
    "Answerer",
    "Answering",
    "ChatEvent",
    "LocalAnswerer",
    "Trimmed",
    "generate",
    "generate_tokens",
]


class _Local:
    """A local answer: the engine's stream, read through its trace's split (a thinking
    model's) and its tool-call watch."""

    def __init__(
        self,
        loaded: LoadedModel,
        job: Job,
        watch: CallWatch | None,
        dropped: Trimmed | None,
        loop: asyncio.AbstractEventLoop | None = None,
        load_s: float = 0.0,
        engine: BatchEngine | None = None,
        trace: TraceWatch | None = None,
    ) -> None:
        self._loaded = loaded
        self._load_s = load_s  # counted in the answer's statistics
        engine = runner_of(loaded).engine if engine is None else engine
        self._stream = engine.submit(job, loop=loop)
        self._prompt = job.prompt
        self._watch = watch
        self._trace = trace
        self._dropped = dropped
        # Submitted now, so that answers started together are made together (a --batch file);
        # an answer dropped unread (a Ctrl-C before its first event) is cancelled when it goes.
        self._done = [False]
        weakref.finalize(self, _cancel_unless_done, self._stream, self._done)

    def _shown(self, event: Event) -> list[ChatEvent]:
        if isinstance(event, Finished):
            self._done[0] = True
            event.stats.load_s = self._load_s
            event.stats.total_s += self._load_s
        split = [event] if self._trace is None else self._trace.events(event)
        return [shown for piece in split for shown in watched(self._watch, piece)]

    def __iter__(self) -> Iterator[ChatEvent]:
        if self._dropped is not None:
            yield self._dropped
        try:
            for event in self._stream:
                yield from self._shown(event)
        finally:
            if not self._done[0]:
                self._stream.cancel()  # the reader stopped (Ctrl-C): the sequence is freed

    async def __aiter__(self) -> AsyncIterator[ChatEvent]:
        if self._dropped is not None:
            yield self._dropped
        try:
            async for event in self._stream:
                for shown in self._shown(event):
                    yield shown
        finally:
            if not self._done[0]:
                self._stream.cancel()  # the client left: the sequence is freed

    def cancel(self) -> None:
        self._stream.cancel()

    def context(self) -> tuple[int, ...] | None:
        """The prompt's tokens and the answer's (None with pictures: their ids are this
        process's own)."""
        if min(self._prompt, default=0) < 0:  # a picture's run of ids
            return None
        return (*self._prompt, *self._stream.tokens)


class LocalAnswerer:
    """Answers with a model loaded here, as one request among N on its batching engine."""

    loads_here = True

    def __init__(
        self, loaded: LoadedModel, load: LoadSettings | None = None, *, counts_load: bool = True
    ) -> None:
        self.loaded = loaded
        self._how = load  # how it was loaded: how /load and num_ctx load again
        # Whether its answers count the model's load (a server counts a request's wait).
        self._counts_load = counts_load

    @property
    def engine(self) -> BatchEngine:
        """The batching engine it answers on (its model's runner's)."""
        return runner_of(self.loaded).engine

    @property
    def load_settings(self) -> LoadSettings:
        """How the model was loaded (told, else what the loaded model tells of it)."""
        if self._how is None:
            self._how = LoadSettings.of(self.loaded)
        return self._how

    @property
    def threads(self) -> int | None:
        return self.load_settings.n_threads

    @property
    def asked_ctx(self) -> int | None:
        return self.load_settings.n_ctx

    def reload(self, n_ctx: int) -> list[str]:
        how = self.load_settings
        notes = reload(self.loaded, how, now(self.loaded, n_ctx))
        self._how = replace(how, n_ctx=n_ctx)
        return notes

    def switch(self, name: str) -> Switched:
        """The weights are loaded only if they differ from the ones loaded (or the
        Modelfile asks for another context)."""
        target, opts, settings = target_of(name)
        current = current_settings(self.loaded)
        same = (
            target.path == self.loaded.path
            and settings.adapters == current.adapters
            and settings.projector == current.projector
        )
        how = self.load_settings
        reloaded = not same or (opts.n_ctx is not None and opts.n_ctx != how.n_ctx)
        notes: list[str] = []
        if reloaded:
            target = with_draft(target, opts)
            notes = reload(self.loaded, how, target)
            self._how = replace(how, n_ctx=target.n_ctx)
        self.loaded.name = name
        self.loaded.template_override = settings.template
        return Switched(reloaded, notes, opts, settings)

    # -- what the views show -------------------------------------------------------------

    @property
    def name(self) -> str:
        return self.loaded.name

    @property
    def placement(self) -> str:
        return self.loaded.placement

    @property
    def n_ctx(self) -> int:
        return self.loaded.model.n_ctx

    @property
    def mode(self) -> str:
        return self.loaded.mode

    @property
    def template(self) -> str | None:
        return self.loaded.template

    @property
    def vision(self) -> bool:
        return self.loaded.model.vision

    @property
    def n_seq(self) -> int:
        return self.loaded.n_seq

    @property
    def load_s(self) -> float:
        return self.loaded.load_s

    def greeting(self) -> str:
        loaded = self.loaded
        kv = f"; KV cache {loaded.kv_cache}" if loaded.kv_cache else ""
        vision = "; reads images: /image FILE" if self.vision else ""
        return f"{self.name} loaded in {loaded.load_s:.2f} s ({self.placement}{kv}{vision})"

    def about(self) -> list[tuple[str, str]]:
        from localrun.gguf.reader import file_type_name

        loaded = self.loaded
        meta = loaded.model.metadata
        file_type = meta.get("general.file_type")
        quant = file_type_name(int(file_type)) if file_type else "?"
        return [
            ("model", loaded.name),
            ("path", str(loaded.path)),
            ("architecture", str(meta.get("general.architecture", "?"))),
            ("quantization", quant or "?"),
            ("context", f"{loaded.model.n_ctx} (trained {loaded.model.n_ctx_train})"),
            ("mode", loaded.mode),
            ("layers", loaded.plan.describe()),
            *([("projector", str(loaded.projector))] if loaded.projector else []),
        ]

    def described(self, stats: Stats, threads: int | None) -> list[tuple[str, str]]:
        from localrun.engine.figures import local_figures

        return local_figures(stats, self.loaded, threads)

    def check_tools(self) -> None:
        check_tools(self.loaded)

    # -- answering -----------------------------------------------------------------------

    def start(
        self,
        request: Request,
        *,
        started: float | None = None,
        trim: bool = False,
        keep: bool = True,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> _Local:
        started = time.perf_counter() if started is None else started
        _check_bias(self.loaded, request.sampling)
        # A request's own template (Ollama's, translated as a Modelfile's) reads its prompt.
        loaded = self.loaded
        if request.template is not None:
            loaded = replace(loaded, template_override=request.template)
        tools, watch, required = offered(loaded, request)
        sampling = request.sampling
        if required is not None:
            if sampling.grammar is not None:
                raise UsageError(
                    "a required tool call and a response format cannot go together",
                    "drop one of them",
                )
            sampling = replace(sampling, grammar=required)
        request = replace(request, tools=tools)
        messages: Sequence[Message] = request.messages
        dropped = None
        if request.suffix:
            prompt = fill_in_prompt(loaded, request)
        elif request.raw:
            prompt = raw_prompt(loaded, request)
        elif trim:
            prompt, messages = fitted(loaded, messages, request)
            if len(messages) < len(request.messages):
                dropped = Trimmed(len(request.messages) - len(messages), turns(messages))
        else:
            prompt = messages_prompt(loaded, messages, request)
        if request.context:
            prompt = Prompt([*request.context, *prompt.tokens], prompt.images)
        check_fits(self.loaded, prompt.cells)
        # The prompt is read in chunks that end where its lasting part does, cache or not: the
        # numbers of a cold run, a warm run and a run without the cache are then the same.
        kept = 0
        if keep and not (request.raw or request.suffix or request.context):
            kept = keep_point(loaded.model, loaded.template, messages, prompt.tokens,
                              request.document, tools)  # fmt: skip
        job = Job(
            prompt.tokens,
            sampling,
            max_tokens=request.max_tokens,
            stop=request.stop,
            stop_at_eog=request.stop_at_eog,
            submitted=started,
            cache_at=kept,
            speculate=self.loaded.speculate,
            special=watch is not None,
            images=prompt.images,
            think_budget=trace_budget(loaded, request, prompt),
            logprobs=request.logprobs,
            prompt_logprobs=request.prompt_logprobs,
        )
        load_s = self.loaded.load_s if self._counts_load else 0.0
        trace = trace_watch(loaded, request, prompt)
        if trace is not None and trace.needs_special:
            job = replace(job, special=True)  # its markers are special tokens: shown, then cut
        return _Local(self.loaded, job, watch, dropped, loop, load_s, self.engine, trace)

    def remember(self, conversation: Sequence[Message], sampling: SamplingParams) -> None:
        """Keep the conversation so far in the prompt cache: a later process that loads it
        reads it back instead of evaluating it again.

        The part kept is what any next question shares: the conversation as two different
        next questions would render it, up to where they differ.
        """
        loaded = self.loaded
        if not conversation or not loaded.prompt_cache:
            return
        model, template = loaded.model, loaded.template
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
        if keep >= MIN_KEEP and len(one.tokens) < loaded.seq_ctx:
            # Most of it is in the engine's cells already: only the rest is read, then kept.
            job = Job(one.tokens, sampling, max_tokens=1, cache_at=keep, images=one.images)
            for _ in _Local(loaded, job, None, None, load_s=loaded.load_s):
                pass


def _cancel_unless_done(stream: Stream, done: list[bool]) -> None:
    if not done[0]:
        stream.cancel()


def generate(loaded: LoadedModel, request: Request) -> Iterator[ChatEvent]:
    """Answer a one-shot ``request`` with a model loaded here: text as it is produced, the
    statistics last."""
    return iter(LocalAnswerer(loaded).start(request))


def generate_tokens(
    loaded: LoadedModel,
    tokens: list[int],
    sampling: SamplingParams,
    *,
    max_tokens: int | None = None,
    stop: Sequence[str] = (),
    start: float | None = None,
    stop_at_eog: bool = True,
    cache_at: int = 0,
) -> Iterator[ChatEvent]:
    """Generate after ``tokens`` (no messages: a benchmark's prompt) as one request among N,
    the statistics last; TTFT runs from ``start``. If the caller stops reading, the request
    is cancelled and its sequence freed."""
    job = Job(tokens, sampling, max_tokens=max_tokens, stop=tuple(stop), stop_at_eog=stop_at_eog,
              submitted=start, cache_at=cache_at, speculate=loaded.speculate)  # fmt: skip
    return iter(_Local(loaded, job, None, None, load_s=loaded.load_s))


def _check_bias(loaded: LoadedModel, sampling: SamplingParams) -> None:
    """A logit bias names tokens of this model's vocabulary (llama.cpp would read past it)."""
    n_vocab = loaded.model.n_vocab
    outside = [token for token, _ in sampling.logit_bias if token >= n_vocab]
    if outside:
        raise UsageError(
            f"logit_bias names token {outside[0]}, but {loaded.name}'s vocabulary has "
            f"{n_vocab} tokens",
            f"give token ids below {n_vocab} (localrun tokenize {loaded.name} TEXT lists them)",
        )
