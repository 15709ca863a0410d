"""Many conversations at once: a continuous-batching engine over one llama.cpp context.

One thread owns the model's context, which holds up to N sequences in one KV cache. Other
threads :meth:`BatchEngine.submit` requests and read each one's events from its
:class:`Stream`; :meth:`Stream.cancel` stops one at any moment. Each step the engine thread

1. takes new and cancelled requests from its inbox;
2. admits waiting requests while a sequence slot and room in the cache are free;
3. builds one batch: the last sampled token of every decoding sequence, then chunks of the
   prompts still being read, up to the batch's size (chunked prefill: a long prompt does not
   stall the others);
4. decodes it once, and samples each sequence whose row asked for logits with its own
   sampler chain (its seed, penalties), its own stop strings and token limit;
5. retires what finished and frees its slot.

When the cache has no room for a step, the newest sequence is paused: its cells are dropped
and it waits at the head of the queue to read its prompt and answer so far again, so its text
goes on where it stopped. Per-request state lives in :class:`_Sequence`, nowhere else.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import queue
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, cast

from localrun.backend import ImageChunk, SamplingParams, StepModel, cells, image_counts
from localrun.engine.draft import Drafter, common_prefix
from localrun.engine.output import TextOut, timed
from localrun.engine.prompt_cache import MIN_TOKENS as MIN_KEEP
from localrun.engine.prompt_cache import PromptCache
from localrun.engine.speculative import ROW_COST_CPU, Pace, lookup
from localrun.engine.types import (
    Event,
    Finished,
    FinishReason,
    FirstToken,
    PrefillProgress,
    PromptEvaluated,
    Stats,
    TextDelta,
)
from localrun.errors import GenerationError, LocalrunError, PromptTooLongError, UsageError

# A prefix shorter than this is not worth copying from another sequence.
MIN_SHARED = 16


@dataclass(eq=False)
class _Embedding:
    """A text to embed, and where its answer goes."""

    tokens: list[int]
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[Any]

    def deliver(self, result: Any) -> None:
        def settle() -> None:
            if self.future.done():
                return  # the caller gave up
            if isinstance(result, BaseException):
                self.future.set_exception(result)
            else:
                self.future.set_result(result)

        with contextlib.suppress(RuntimeError):  # the loop is closed
            self.loop.call_soon_threadsafe(settle)


class _LoopOutbox:
    """A request's events handed from the engine thread to an asyncio event loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.queue: asyncio.Queue[Event | BaseException] = asyncio.Queue()

    def put(self, item: Event | BaseException) -> None:
        # A closed loop (the server stopped) has nobody left to read the answer.
        with contextlib.suppress(RuntimeError):
            self.loop.call_soon_threadsafe(self.queue.put_nowait, item)


@dataclass(eq=False)  # one object per request: compared by identity
class _Sequence:
    """One request inside the engine: everything about it, in one object."""

    prompt: list[int]
    sampling: SamplingParams
    max_tokens: int | None
    stop: tuple[str, ...]
    stop_at_eog: bool
    outbox: queue.SimpleQueue[Event | BaseException] | _LoopOutbox
    submitted: float = field(default_factory=time.perf_counter)
    number: int = 0  # admission order: the newest is paused first
    slot: int | None = None  # the sequence id in the KV cache while it runs
    cached: int = 0  # positions of this sequence in the cache
    pending: list[int] = field(default_factory=list)  # tokens to feed, in order
    generated: list[int] = field(default_factory=list)
    paused_at: list[int] = field(default_factory=list)  # answer tokens when it was paused
    sampler: object | None = None
    grammar: object | None = None  # compiled before admission; the sampler chain takes it
    prefill_started: float = 0.0
    first_at: float = 0.0
    last_at: float = 0.0
    prompt_done: bool = False
    reused: int = 0  # prompt tokens found in the cache, not read again
    speculate: int = 0  # the most tokens to guess and check a step (0: plain decoding)
    k: int = 0  # how many to guess next: grows while guesses are kept, shrinks when not
    drafts: list[int] = field(default_factory=list)  # this step's guesses, being checked
    quiet: int = 0  # steps left without guessing (its guesses were seldom right)
    recent: deque[tuple[int, int]] = field(default_factory=lambda: deque(maxlen=8))
    pace: Pace = field(default_factory=Pace)  # its speed with guesses and without
    cache_at: int = 0  # prompt tokens worth keeping on disk (a system prompt, a document)
    special: bool = False  # show control tokens' text (a tool call's markers)
    images: dict[int, ImageChunk] = field(default_factory=dict)  # its pictures, by their id
    cache_done: bool = False  # cache_at was reached (and the state saved, if it was not)
    finished: bool = False
    out: TextOut = field(init=False)  # its text: UTF-8 across tokens, held at stop strings
    stats: Stats = field(default_factory=Stats)

    def __post_init__(self) -> None:
        self.pending = list(self.prompt)
        self.out = TextOut(self.stop)
        self.stats.prompt_tokens = len(self.prompt)
        for chunk, n in image_counts(self.prompt, self.images):  # a picture may come twice
            self.stats.images += n
            self.stats.image_tokens += n * chunk.n_tokens

    def text(self) -> list[int]:
        """Its tokens: the prompt, then the answer so far."""
        return self.prompt + self.generated

    def held(self) -> list[int]:
        """The tokens whose cells its slot holds."""
        return self.text()[: self.cached]


class Stream:
    """The events of one request, as they come: iterate it (``async for`` when it was
    submitted with an event loop); cancel it from any thread."""

    def __init__(self, engine: BatchEngine, seq: _Sequence) -> None:
        self._engine = engine
        self._seq = seq

    def __iter__(self) -> Iterator[Event]:
        outbox = self._seq.outbox
        assert isinstance(outbox, queue.SimpleQueue), "submitted with a loop: use async for"
        while True:
            item = outbox.get()
            if isinstance(item, BaseException):
                raise item
            yield item
            if isinstance(item, Finished):
                return

    async def __aiter__(self) -> AsyncIterator[Event]:
        outbox = self._seq.outbox
        assert isinstance(outbox, _LoopOutbox), "submitted without a loop: use for"
        while True:
            item = await outbox.queue.get()
            if isinstance(item, BaseException):
                raise item
            yield item
            if isinstance(item, Finished):
                return

    @property
    def tokens(self) -> list[int]:
        """The answer's tokens so far (complete once the stream has ended)."""
        return list(self._seq.generated)

    @property
    def paused_at(self) -> list[int]:
        """How many answer tokens there were each time the request was paused for room."""
        return list(self._seq.paused_at)

    def cancel(self) -> None:
        """Stop the request; its sequence is freed at the next step (its stream then ends)."""
        self._engine._inbox.put(("cancel", self._seq))


class BatchEngine:
    """The engine thread and its queue, over a model that holds ``n_seq_max`` sequences."""

    def __init__(
        self,
        model: StepModel,
        *,
        step_tokens: int | None = None,
        seq_ctx: int | None = None,
        prompt_cache: PromptCache | None = None,
        drafter: Drafter | None = None,
        row_cost: float = ROW_COST_CPU,
        draft_cost: float = 0.0,
    ) -> None:
        self.model = model
        self.drafter = drafter  # guesses by a draft model; None: by prompt lookup
        # What a guess costs, in plain steps: a checked row, and a pass of the draft model.
        self.row_cost, self.draft_cost = row_cost, draft_cost
        self.prompt_cache = prompt_cache if prompt_cache and prompt_cache.enabled else None
        # A model with sliding-window layers keeps its prefixes no longer than the window:
        # llama.cpp saves such a sequence without the cells the window has passed, and what
        # it reads back then answers differently (logits off by up to 1.2 after one step on
        # the demo model, measured); within the window, what it reads back is exact.
        self._keep_limit = int(str(model.layout().get("n_swa", 0) or 0)) or None
        self.n_seq = model.n_seq_max
        # The most one sequence may hold: its share of the cache (or all of it).
        self.seq_ctx = min(seq_ctx or model.n_ctx, model.n_ctx)
        self.step_tokens = min(step_tokens or model.n_batch, model.n_batch)
        if self.step_tokens < self.n_seq:
            raise UsageError(
                f"a step of {self.step_tokens} tokens cannot feed {self.n_seq} sequences",
                "use fewer parallel sequences",
            )
        self._inbox: queue.SimpleQueue[tuple[str, _Sequence | _Embedding | None]]
        self._inbox = queue.SimpleQueue()
        self._embeddings: deque[_Embedding] = deque()
        self._waiting: deque[_Sequence] = deque()
        self._running: list[_Sequence] = []
        self._free = list(range(self.n_seq))
        # What each free slot still holds in the cache (a finished request's prompt and
        # answer): the next request that starts with the same tokens reads only the rest.
        self._warm: dict[int, list[int]] = {}
        for slot in self._free:
            model.forget(slot)  # what an earlier engine left is not this one's to know
        self._admitted = itertools.count()
        self._thread = threading.Thread(target=self._loop, name="localrun-engine", daemon=True)
        self._thread.start()

    # -- the caller's side ------------------------------------------------------------------

    def submit(
        self,
        prompt: list[int],
        sampling: SamplingParams,
        *,
        max_tokens: int | None = None,
        stop: tuple[str, ...] = (),
        stop_at_eog: bool = True,
        submitted: float | None = None,
        loop: asyncio.AbstractEventLoop | None = None,
        cache_at: int = 0,
        speculate: int = 0,
        special: bool = False,
        images: Mapping[int, ImageChunk] | None = None,
        grammar: object | None = None,
    ) -> Stream:
        """Queue a prompt (as tokens) to answer; its events arrive on the returned stream.

        ``submitted`` is when the request began (``time.perf_counter()``), for its TTFT; now
        if not given. With ``loop``, the events are handed to that event loop and the stream
        is read with ``async for`` there. ``cache_at`` is how many of the prompt's tokens are
        worth keeping in the prompt cache on disk (a system prompt, a document); 0: none.
        With ``special``, control tokens the model writes come out as their text (the
        markers of a tool call, such as ``[TOOL_CALLS]``). ``images`` are the prompt's
        pictures by the negative id whose runs stand for them in ``prompt``. ``grammar`` is
        ``sampling.grammar`` from :meth:`compile_grammar` (the engine owns it from now on);
        without it, the grammar is compiled here, in the caller's thread.
        """
        if not prompt:
            raise UsageError("the prompt has no tokens", "give a non-empty prompt")
        self._check_alive()
        n_vocab = self.model.n_vocab
        images = dict(images or {})
        if max(prompt) >= n_vocab or (min(prompt) < 0 and not set(images) >= _ids(prompt)):
            raise UsageError(
                f"the prompt has token ids outside this model's vocabulary (0-{n_vocab - 1})",
                "send text, or token ids this model gave",
            )
        if prompt[-1] < 0:
            raise UsageError("the prompt ends with an image", "add text after the image")
        if (n := cells(prompt, images)) >= self.seq_ctx:
            raise PromptTooLongError(
                f"the prompt is {n} tokens but the context holds only {self.seq_ctx}",
                "shorten the prompt, or raise the context with --ctx",
            )
        if sampling.grammar is not None and grammar is None:
            grammar = self.compile_grammar(sampling.grammar)
        outbox: queue.SimpleQueue[Event | BaseException] | _LoopOutbox
        outbox = _LoopOutbox(loop) if loop is not None else queue.SimpleQueue()
        seq = _Sequence(prompt, sampling, max_tokens, stop, stop_at_eog, outbox, images=images)
        seq.grammar = grammar
        if self._keep_limit is not None:
            cache_at = min(cache_at, self._keep_limit)
        cache_at = image_cut(prompt, cache_at)
        seq.cache_at = cache_at if MIN_KEEP <= cache_at < len(prompt) else 0
        # Guesses come from text (the prompt's, or a draft model's that sees no pictures).
        seq.speculate = seq.k = max(0, speculate) if not images else 0
        seq.special = special
        seq.pace = Pace(self.row_cost, self.draft_cost)
        if submitted is not None:
            seq.submitted = submitted
        self._inbox.put(("submit", seq))
        return Stream(self, seq)

    def compile_grammar(self, grammar: str) -> object:
        """``grammar`` (GBNF) parsed by llama.cpp for :meth:`submit`, in the caller's thread:
        off the engine thread, so that a large grammar never stalls the other answers. A
        UsageError says why llama.cpp cannot use it."""
        return self.model.compile_grammar(grammar)

    def free_grammar(self, grammar: object) -> None:
        """Free a grammar from :meth:`compile_grammar` that was never submitted."""
        self.model.free_grammar(grammar)

    def embed(self, tokens: list[int], loop: asyncio.AbstractEventLoop) -> asyncio.Future[Any]:
        """The embedding of ``tokens``, computed by the engine thread between two steps in a
        free sequence slot; a future of ``loop`` (a list of floats)."""
        if not tokens:
            raise UsageError("the text to embed has no tokens", "give a non-empty text")
        if len(tokens) > self.seq_ctx:
            raise PromptTooLongError(
                f"the text is {len(tokens)} tokens but the context holds only {self.seq_ctx}",
                "shorten it, or let the server truncate it (truncate: true)",
            )
        self._check_alive()
        future: asyncio.Future[Any] = loop.create_future()
        self._inbox.put(("embed", _Embedding(tokens, loop, future)))
        return future

    @property
    def alive(self) -> bool:
        """Whether the engine thread still runs (a failed step stops it)."""
        return self._thread.is_alive()

    def _check_alive(self) -> None:
        if not self._thread.is_alive():
            raise GenerationError(
                "this model's engine stopped after an error", "load the model again"
            )

    def close(self) -> None:
        """Stop the engine thread (requests still running end as cancelled), and wait for the
        prompt cache's writes."""
        if self._thread.is_alive():
            self._inbox.put(("close", None))
            self._thread.join()
        if self.prompt_cache is not None:
            self.prompt_cache.close()

    # -- the engine thread ------------------------------------------------------------------

    def _loop(self) -> None:
        try:
            while self._take_inbox():
                self._embed()
                self._admit()
                self._step()
        except BaseException as e:  # a failed step fails every request, not the process
            error = e if isinstance(e, LocalrunError) else LocalrunError(str(e))
            for seq in [*self._running, *self._waiting]:
                seq.outbox.put(error)
            for job in self._embeddings:
                job.deliver(error)
        finally:
            # What arrived after the last step is answered too: nobody waits forever.
            while True:
                try:
                    kind, item = self._inbox.get_nowait()
                except queue.Empty:
                    break
                if isinstance(item, _Embedding):
                    item.deliver(GenerationError("this model's engine stopped"))
                elif kind == "submit" and item is not None:
                    self._waiting.append(item)
            for seq in [*self._running, *self._waiting]:
                if not seq.finished:
                    self._finish(seq, FinishReason.CANCELLED)

    def _take_inbox(self) -> bool:
        """Apply submissions and cancellations; False when the engine is to stop."""
        idle = not self._running and not self._waiting and not self._embeddings
        while True:
            try:
                kind, seq = self._inbox.get(block=idle)
            except queue.Empty:
                return True
            idle = False
            if kind == "close":
                return False
            if isinstance(seq, _Embedding):
                self._embeddings.append(seq)
                continue
            assert seq is not None
            if kind == "submit":
                self._waiting.append(seq)
            elif not seq.finished:
                if seq in self._waiting:
                    self._waiting.remove(seq)
                self._finish(seq, FinishReason.CANCELLED)

    def _embed(self) -> None:
        """Compute the waiting embeddings in a free slot (its kept cells give way)."""
        while self._embeddings and self._free:
            job = self._embeddings.popleft()
            slot = self._free[-1]
            self._warm.pop(slot, None)
            try:
                result: Any = self.model.embed(job.tokens, slot)
            except LocalrunError as e:
                result = e
            job.deliver(result)

    def _used(self) -> int:
        running = sum(s.cached + len(s.pending) for s in self._running)
        return running + sum(len(t) for t in self._warm.values())

    def _admit(self) -> None:
        while self._waiting and self._free:
            seq = self._waiting[0]
            slot, reused = self._best_slot(seq.pending)
            # Room for what it must read (a paused one: its text so far), and a token more:
            # cells kept for later requests give way first, oldest first.
            need = len(seq.pending) - reused + 1
            while self._used() + need > self.model.n_ctx and self._evict_warm(keep=slot):
                pass
            if self._running and self._used() + need > self.model.n_ctx:
                return
            self._waiting.popleft()
            self._free.remove(slot)
            seq.slot = slot
            seq.number = next(self._admitted)
            try:
                self._take_prefix(seq, slot, reused)
                self._share_prefix(seq, slot)
                self._restore(seq, slot)
                if seq.sampler is None:
                    history = [t for t in seq.prompt if t >= 0] if seq.images else seq.prompt
                    seq.sampler = self.model.new_sampler(seq.sampling, history, seq.grammar)
                    seq.grammar = None
            except Exception as e:  # this request cannot start: it fails, the others go on
                self.model.forget(slot)
                self._free.append(slot)
                seq.slot, seq.finished = None, True
                seq.outbox.put(e if isinstance(e, LocalrunError) else LocalrunError(str(e)))
                continue
            self._running.append(seq)

    def _best_slot(self, tokens: list[int]) -> tuple[int, int]:
        """The free slot whose kept cells share the longest prefix with ``tokens``."""
        best, best_len = self._free[0], -1
        for slot in self._free:
            n = common_prefix(self._warm.get(slot, []), tokens)
            if n > best_len:
                best, best_len = slot, n
        # The last token is read again: its logits are what the first answer token needs.
        return best, image_cut(tokens, max(0, min(best_len, len(tokens) - 1)))

    def _take_prefix(self, seq: _Sequence, slot: int, reused: int) -> None:
        kept = self._warm.pop(slot, [])
        if reused < len(kept) and not self.model.trim(slot, reused):
            reused = 0  # a sliding-window cache cannot always drop a suffix: read it all
            self.model.forget(slot)
        elif not reused and kept:
            self.model.forget(slot)
        seq.cached = reused
        del seq.pending[:reused]
        if not seq.prompt_done:
            seq.reused = reused

    def _share_prefix(self, seq: _Sequence, slot: int) -> None:
        """Copy a longer shared prefix from another sequence's cells, if one holds it.

        Requests that begin alike (a system prompt, a document) then read their common part
        once: ``llama_memory_seq_cp`` shares the cells instead of evaluating them again.
        """
        tokens = seq.text()
        best_src, best_n, src_len = -1, seq.cached, 0
        sources = [(s.slot, s.held()) for s in self._running]
        sources += [(s, kept) for s, kept in self._warm.items() if s != slot]
        for src, held in sources:
            if src is None or src == slot:
                continue
            # The last token is read again for its logits.
            n = image_cut(tokens, min(common_prefix(held, tokens), len(tokens) - 1))
            if n > best_n + MIN_SHARED:
                best_src, best_n, src_len = src, n, len(held)
        if best_src < 0:
            return
        self.model.forget(slot)
        if not self.model.copy_prefix(best_src, slot, best_n, src_len):
            seq.cached, seq.pending = 0, list(tokens)  # nothing kept: read it all
            if not seq.prompt_done:
                seq.reused = 0
            return
        seq.cached = best_n
        seq.pending = list(tokens[best_n:])
        if not seq.prompt_done:
            seq.reused = best_n

    def _restore(self, seq: _Sequence, slot: int) -> None:
        """Put back a prefix of the prompt from the disk cache, if it holds a longer one than
        the cells found in memory."""
        if self.prompt_cache is None or seq.prompt_done or seq.generated:
            return
        found = self.prompt_cache.lookup(seq.prompt, longest=self._keep_limit, images=_digests(seq))
        if found is None or found[0] <= seq.cached + MIN_SHARED:
            return
        n, state = found
        if not self.model.set_seq_state(slot, state):
            seq.cached, seq.pending, seq.reused = 0, list(seq.prompt), 0  # the slot was emptied
            return
        seq.cached, seq.reused = n, n
        seq.pending = list(seq.prompt[n:])
        seq.stats.prompt_from_disk = n
        if seq.cache_at <= n:
            seq.cache_done = True  # stored already

    def _keep_prefix(self, seq: _Sequence) -> None:
        """The prompt's worth-keeping prefix has just been read: store its cells."""
        seq.cache_done = True
        prefix = seq.prompt[: seq.cache_at]
        digests = _digests(seq)
        if self.prompt_cache is None or self.prompt_cache.has(prefix, digests):
            return
        # A copy of the cells now (a few ms); the writer thread stores it.
        self.prompt_cache.save(prefix, self.model.seq_state(cast(int, seq.slot)), digests)

    def _evict_warm(self, keep: int) -> bool:
        """Drop the cells of one free slot other than ``keep``; False if there is none."""
        for slot in list(self._warm):
            if slot != keep:
                self.model.forget(slot)
                del self._warm[slot]
                return True
        return False

    def _images(self) -> bool:
        """Evaluate the image that comes next in one prompt being read: one a step (an
        image's embeddings cannot share a batch with tokens, and an encoder takes long), so
        that the other answers go on between pictures. False when the cache had no room (the
        newest sequence was paused)."""
        seq = next((s for s in self._running if s.pending and s.pending[0] < 0), None)
        if seq is None:
            return True
        chunk = seq.images[seq.pending[0]]
        if not seq.prefill_started:
            seq.prefill_started = time.perf_counter()
        try:
            cost = self.model.eval_image(chunk, cast(int, seq.slot), seq.cached)
        except LocalrunError as e:  # this picture fails its request, not the others
            self._fail(seq, e)
            return True
        seq.stats.image_encode_s += cost.encode_s
        if not cost.ok:
            if cost.lost:  # its cells are gone: it reads its text again
                seq.cached, seq.pending = 0, seq.text()
            self._pause_newest()
            return False
        del seq.pending[: chunk.n_pos]
        seq.cached += chunk.n_pos
        if seq.cache_at and not seq.cache_done and seq.cached == seq.cache_at:
            self._keep_prefix(seq)
        if not seq.prompt_done:  # text always follows a picture: this was not the last chunk
            self._progress(seq)
        return True

    def _step(self) -> None:
        if not self._images():
            return
        rows: list[tuple[_Sequence, int, int, bool]] = []  # (sequence, token, position, logits)
        fed: list[tuple[_Sequence, int]] = []  # (sequence, tokens it feeds this step)
        budget = self.step_tokens
        now = time.perf_counter()
        asked = self._guess()
        # The answers that guessed, how many tokens each had, and how many guesses it checks.
        guessing = [
            (seq, seq.stats.completion_tokens, len(seq.drafts))
            for seq in self._running
            if asked.get(id(seq)) and seq.drafts
        ]
        # Decoding sequences first: one token each keeps every answer moving.
        for seq in sorted(self._running, key=lambda s: len(s.pending) > 1):
            if budget == 0:
                break
            take = min(len(seq.pending), budget)
            if seq.images:
                take = min(take, next((i for i, t in enumerate(seq.pending) if t < 0), take))
            if seq.cache_at and not seq.cache_done and seq.cached < seq.cache_at:
                # A chunk ends where the prefix to keep does, so that its cells can be copied.
                take = min(take, seq.cache_at - seq.cached)
            for i in range(take):
                last = i == take - 1 and take == len(seq.pending)
                rows.append((seq, seq.pending[i], seq.cached + i, last))
            if seq.drafts:
                # Guesses ride along, each row with logits: checked after the decode.
                for j, guess in enumerate(seq.drafts):
                    rows.append((seq, guess, seq.cached + 1 + j, True))
                take += len(seq.drafts)
            fed.append((seq, take))
            budget -= take
            if not seq.prompt_done and not seq.prefill_started:
                seq.prefill_started = now
        if not rows:
            return
        rc = self.model.decode_rows(
            [r[1] for r in rows], [r[2] for r in rows], [cast(int, r[0].slot) for r in rows],
            [r[3] for r in rows],
        )  # fmt: skip
        if rc == 1:
            for seq, _ in fed:
                seq.drafts = []  # not decoded: nothing to check
            self._pause_newest()
            return
        for seq, n in fed:
            del seq.pending[:n]
            seq.cached += n
            if seq.cache_at and not seq.cache_done and seq.cached == seq.cache_at:
                self._keep_prefix(seq)
            if not seq.prompt_done and seq.pending:
                self._progress(seq)
        checked: set[int] = set()
        for index, (seq, _, _, wants) in enumerate(rows):
            if not wants or seq.finished or id(seq) in checked:
                continue
            seq.stats.passes += 1
            if seq.drafts:
                checked.add(id(seq))
                self._verify(seq, index)
            elif (token := self._sample(seq, index)) is not None:
                self._sampled(seq, token)
        for seq, before, drafted in guessing:
            seq.pace.add(drafted, seq.stats.completion_tokens - before)
            if not seq.quiet:
                seq.quiet = seq.pace.pause()  # guessing gains too little: plain decoding a while

    def _progress(self, seq: _Sequence) -> None:
        """A chunk of the prompt was read and more follows: say how far reading has got, so
        that a long prompt's seconds of prefill show movement. The last chunk sends none
        (PromptEvaluated follows it), so a prompt read in one step costs nothing here."""
        seconds = time.perf_counter() - seq.prefill_started - seq.stats.image_encode_s
        total = len(seq.prompt) - seq.reused
        done = min(max(0, seq.cached - seq.reused), total)
        seq.outbox.put(PrefillProgress(len(seq.prompt), done, total, max(0.0, seconds)))

    def _sample(self, seq: _Sequence, row: int) -> int | None:
        """The sequence's next token from ``row``; None when its sampling failed (a grammar
        that allows no token, or costs too much to follow): that request fails, the others
        go on."""
        try:
            return self.model.sample(seq.sampler, row)
        except GenerationError as e:
            self._fail(seq, e)
            return None

    def _guess(self) -> dict[int, bool | None]:
        """This step's guesses for the sequences that speculate, within their limits: by the
        draft model (all in one go) or by prompt lookup. Returned: for each sequence that
        decodes and speculates (by ``id``), whether it asked for guesses this step (None: it
        did, but the draft first read more than a step's worth of its text)."""
        # Guesses take rows and cells for a step: only where the cache has them to spare, so
        # that guessing never pauses another sequence (a prompt being read gets fewer rows).
        room = min(
            self.step_tokens - len(self._running),
            self.model.n_ctx - self._used() - len(self._running),
        )
        asked: dict[int, bool | None] = {}
        wants: dict[int, tuple[list[int], int]] = {}
        by_slot: dict[int, _Sequence] = {}
        for seq in self._running:
            if not (seq.speculate and seq.prompt_done and len(seq.pending) == 1):
                continue
            asked[id(seq)] = False
            if room <= 0:
                continue
            if seq.quiet:
                seq.quiet -= 1
                continue
            k = min(seq.k, room, self.seq_ctx - seq.cached - 2)
            if seq.max_tokens is not None:
                k = min(k, seq.max_tokens - seq.stats.completion_tokens - 1)
            if k <= 0:
                continue
            asked[id(seq)] = True
            if self.drafter is None:
                seq.drafts = lookup(seq.text(), k)
                room -= len(seq.drafts)
            else:
                slot = cast(int, seq.slot)
                wants[slot], by_slot[slot] = (seq.text(), k), seq
                room -= k
        if wants:
            assert self.drafter is not None
            for slot, drafts in self.drafter.guess(wants).items():
                by_slot[slot].drafts = drafts
            for slot, read in self.drafter.read.items():
                if read > by_slot[slot].speculate + 1:
                    asked[id(by_slot[slot])] = None
        return asked

    def _verify(self, seq: _Sequence, index: int) -> None:
        """Sample the rows of a sequence that guessed, in order, with its own chain: each
        token is emitted as plain decoding would have, and a guess is kept only while the
        sampled token is the guess. The cells of the guesses that were not are dropped."""
        drafts, seq.drafts = seq.drafts, []
        start = seq.cached - 1 - len(drafts)  # where the step's first row went
        accepted = 0
        for i in range(len(drafts) + 1):
            seq.cached = start + 1 + i  # the cells that hold tokens of the answer
            token = self._sample(seq, index + i)
            if token is None:
                return
            self._sampled(seq, token)
            if seq.finished:
                break
            if i < len(drafts) and token == drafts[i]:
                seq.pending.pop()  # its cell is in the cache already
                accepted += 1
                continue
            break
        stats = seq.stats
        stats.drafted += len(drafts)
        stats.accepted += accepted
        # All kept: guess more next time (up to the most); else only a little past what was.
        seq.k = min(seq.speculate, 2 * seq.k) if accepted == len(drafts) else accepted + 1
        seq.recent.append((len(drafts), accepted))
        tried = sum(d for d, _ in seq.recent)
        if tried >= 16 and sum(a for _, a in seq.recent) < 0.25 * tried:
            seq.quiet, seq.recent = 48, deque(maxlen=8)  # seldom right: plain decoding a while
        if not seq.finished and not self.model.trim(cast(int, seq.slot), seq.cached):
            self.model.forget(cast(int, seq.slot))  # cannot drop a suffix: read it all again
            seq.cached, seq.pending = 0, seq.text()

    def _sampled(self, seq: _Sequence, token: int) -> None:
        now = time.perf_counter()
        stats = seq.stats
        if not seq.prompt_done:
            seq.prompt_done = True
            stats.prompt_evaluated = len(seq.prompt) - seq.reused
            # Encoding pictures is the vision encoder's time, counted apart.
            stats.prefill_s = max(0.0, now - seq.prefill_started - stats.image_encode_s)
            seq.outbox.put(
                PromptEvaluated(len(seq.prompt), stats.prompt_evaluated, stats.prefill_s)
            )
        if not seq.first_at:
            seq.first_at = now
            seq.outbox.put(FirstToken(now - seq.submitted))
        seq.last_at = now
        sampled = len(seq.generated) + 1
        if seq.max_tokens == 0:  # the prompt read, and no token asked for (as Ollama's)
            self._finish(seq, FinishReason.LENGTH)
            return
        if seq.stop_at_eog and self.model.is_end(token):
            self._finish(seq, FinishReason.STOP, sampled=sampled)
            return
        seq.generated.append(token)
        stats.completion_tokens += 1
        piece = self.model.piece(token, True) if seq.special else self.model.piece(token)
        text, stopped = seq.out.feed(piece)
        seq.outbox.put(TextDelta(text, stats.completion_tokens))
        if stopped:
            self._finish(seq, FinishReason.STOP, flush=False)
        elif seq.max_tokens is not None and stats.completion_tokens >= seq.max_tokens:
            self._finish(seq, FinishReason.LENGTH)
        elif seq.cached >= self.seq_ctx:
            # Its share of the context is full: the token sampled from the last cell ends it.
            self._finish(seq, FinishReason.LENGTH)
        else:
            seq.pending.append(token)

    def _pause_newest(self) -> None:
        """No room in the cache for this step: the newest sequence waits to start again."""
        if self._evict_warm(keep=-1):
            return  # cells kept for later requests were in the way: try the step again
        if len(self._running) == 1:
            self._finish(self._running[0], FinishReason.LENGTH)  # alone and still no room
            return
        seq = max(self._running, key=lambda s: s.number)
        seq.paused_at.append(len(seq.generated))
        self._running.remove(seq)
        self.model.forget(cast(int, seq.slot))
        self._free.append(cast(int, seq.slot))
        seq.slot = None
        seq.pending = seq.text()  # read again: its answer goes on after it
        seq.cached = 0
        self._waiting.appendleft(seq)

    def _fail(self, seq: _Sequence, error: LocalrunError) -> None:
        """End one running request with ``error``; its slot is emptied and freed."""
        seq.finished = True
        self._running.remove(seq)
        slot = cast(int, seq.slot)
        self.model.forget(slot)
        self._free.append(slot)
        seq.slot = None
        if seq.sampler is not None:
            self.model.free_sampler(seq.sampler)
            seq.sampler = None
        seq.outbox.put(error)

    def _finish(
        self, seq: _Sequence, reason: FinishReason, *, sampled: int = 0, flush: bool = True
    ) -> None:
        seq.finished = True
        if seq in self._running:
            self._running.remove(seq)
        if seq.slot is not None:
            # Its cells stay for a later request that starts the same way (a chat's next turn),
            # without the cells of guesses that were not kept.
            if not seq.speculate or self.model.trim(seq.slot, seq.cached):
                self._warm[seq.slot] = seq.held()
            else:
                self.model.forget(seq.slot)
            self._free.append(seq.slot)
            seq.slot = None
        if seq.sampler is not None:
            self.model.free_sampler(seq.sampler)
            seq.sampler = None
        if seq.grammar is not None:  # never admitted
            self.model.free_grammar(seq.grammar)
            seq.grammar = None
        if flush:
            tail = seq.out.flush()
            if tail:
                seq.outbox.put(TextDelta(tail, seq.stats.completion_tokens))
        stats = seq.stats
        stats.finish_reason = reason
        timed(stats, start=seq.submitted, first=seq.first_at, last=seq.last_at,
              sampled=sampled or len(seq.generated), end=time.perf_counter())  # fmt: skip
        seq.outbox.put(Finished(stats))


def collect(stream: Stream) -> tuple[str, Stats]:
    """Read a stream to its end: the whole text and the statistics."""
    parts: list[str] = []
    stats: Any = None
    for event in stream:
        if isinstance(event, TextDelta):
            parts.append(event.text)
        elif isinstance(event, Finished):
            stats = event.stats
    return "".join(parts), stats


def image_cut(tokens: list[int], n: int) -> int:
    """``n``, or less so as not to cut an image's run of ids in two: a prefix of ``tokens``
    can be kept, copied or read back only whole pictures at a time."""
    while 0 < n < len(tokens) and tokens[n] < 0 and tokens[n - 1] == tokens[n]:
        n -= 1
    return n


def _ids(tokens: list[int]) -> set[int]:
    return {t for t in tokens if t < 0}


def _digests(seq: _Sequence) -> dict[int, str]:
    """The digest of each of the sequence's pictures, by its id: the prompt cache's keys
    hold them (an id alone is 31 bits of the digest)."""
    return {token: chunk.digest for token, chunk in seq.images.items()}
