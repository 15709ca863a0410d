"""Many conversations at once: a continuous-batching engine over one llama.cpp context.

One thread owns the model's context, which holds up to N sequences in one KV cache. Other
threads :meth:`BatchEngine.submit` a :class:`~localrun.engine.types.Job` and read its events
from its :class:`~localrun.engine.sequence.Stream` (which can cancel it). Each step the
engine thread takes new and cancelled requests from its inbox; admits waiting ones while a
sequence slot and room in the cache are free (:mod:`localrun.engine.cells`); builds one batch
(the last sampled token of every decoding sequence, with its guesses,
:mod:`localrun.engine.speculator`, then chunks of the prompts being read: a long prompt does
not stall the others); decodes it once; samples each sequence with its own chain, stop
strings and limits; and releases what finished. When the cache has no room for a step, the
newest sequence is paused: its cells are dropped and it waits at the head of the queue to
read its text again, so its answer goes on where it stopped. Per-request state lives in its
:class:`~localrun.engine.sequence.Sequence`, whose status says where it is.

Over 400 lines because the engine thread's loop is one piece of state: what it admits, the
one step it builds and decodes, what it releases, and the embeddings it computes between
steps all read and change the same queues and cells; the per-request parts are already in
:mod:`.sequence`, :mod:`.cells` and :mod:`.speculator`.
"""

from __future__ import annotations

import asyncio
import itertools
import queue
import threading
import time
from collections import deque
from dataclasses import replace
from typing import Any, cast

from localrun.backend import StepModel
from localrun.engine.cells import Cells
from localrun.engine.draft import Drafter
from localrun.engine.prompt_cache import PromptCache
from localrun.engine.sequence import (
    Embedding,
    End,
    Sequence,
    Status,
    Stream,
    check_prompt,
    collect,
    image_cut,
)
from localrun.engine.speculative import ROW_COST_CPU
from localrun.engine.speculator import Speculator
from localrun.engine.types import FinishReason, Job
from localrun.errors import GenerationError, LocalrunError, PromptTooLongError, UsageError

# The engine's callers' names, kept where they have always been.
__all__ = ["BatchEngine", "Job", "Stream", "collect", "image_cut"]

Row = tuple[Sequence, int, int, bool]  # (sequence, token, position, logits)


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
        self._pooling = getattr(model, "pooling", None)  # an embedding model's (scripted: none)
        self.prompt_cache = prompt_cache if prompt_cache and prompt_cache.enabled else None
        self.n_seq = model.n_seq_max
        # The most one sequence may hold: its share of the cache (or all of it).
        self.seq_ctx = min(seq_ctx or model.n_ctx, model.n_ctx)
        self.step_tokens = min(step_tokens or model.n_batch, model.n_batch)
        if self.step_tokens < self.n_seq:
            raise UsageError(
                f"a step of {self.step_tokens} tokens cannot feed {self.n_seq} sequences",
                "use fewer parallel sequences",
            )
        # Guesses by a draft model (None: by prompt lookup), and what a guess costs.
        self.speculator = Speculator(
            model, drafter, seq_ctx=self.seq_ctx, row_cost=row_cost, draft_cost=draft_cost
        )
        self._inbox: queue.SimpleQueue[tuple[str, Sequence | Embedding | None]]
        self._inbox = queue.SimpleQueue()
        self._embeddings: deque[Embedding] = deque()
        self._waiting: deque[Sequence] = deque()  # WAITING and PAUSED, in order of admission
        self._running: list[Sequence] = []  # RUNNING
        self.cells = Cells(model, self.prompt_cache)
        self._admitted = itertools.count()
        self._thread = threading.Thread(target=self._loop, name="localrun-engine", daemon=True)
        self._thread.start()

    # -- the caller's side ------------------------------------------------------------------

    def submit(self, job: Job, *, loop: asyncio.AbstractEventLoop | None = None) -> Stream:
        """Queue ``job`` to answer; its events arrive on the returned stream. With ``loop``,
        they are handed to that event loop and the stream is read with ``async for`` there.
        The engine owns ``job.grammar`` from now on."""
        if not job.prompt:
            raise UsageError("the prompt has no tokens", "give a non-empty prompt")
        if self._pooling:
            raise UsageError(
                f"this model embeds texts ({self._pooling} pooling): it cannot chat",
                "use /api/embed, /v1/embeddings, /v1/rerank, localrun embed or rerank",
            )
        self._check_alive()
        check_prompt(job.prompt, job.images, self.model.n_vocab, self.seq_ctx)
        if job.sampling.grammar is not None and job.grammar is None:
            job = replace(job, grammar=self.compile_grammar(job.sampling.grammar))
        pace = self.speculator.pace()
        seq = Sequence.of(job, loop, keep_limit=self.cells.keep_limit, pace=pace)
        self._inbox.put(("submit", seq))
        return Stream(self._inbox, seq)

    def compile_grammar(self, grammar: str) -> object:
        """``grammar`` (GBNF) parsed by llama.cpp for a :class:`Job`, in the caller's thread:
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
        limit = self.model.n_batch if self._pooling else self.seq_ctx  # in one pass
        if len(tokens) > limit:
            raise PromptTooLongError(
                f"the text is {len(tokens)} tokens but the context holds only {limit}",
                "shorten it, or let the server truncate it (truncate: true)",
            )
        self._check_alive()
        future: asyncio.Future[Any] = loop.create_future()
        self._inbox.put(("embed", Embedding(tokens, loop, future)))
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

    # -- the engine thread: the loop and admission ------------------------------------------

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
            self._drain()

    def _drain(self) -> None:
        """What arrived after the last step is answered too: nobody waits forever."""
        while True:
            try:
                kind, item = self._inbox.get_nowait()
            except queue.Empty:
                break
            if isinstance(item, Embedding):
                item.deliver(GenerationError("this model's engine stopped"))
            elif kind == "submit" and item is not None:
                self._waiting.append(item)
        for seq in [*self._running, *self._waiting]:
            if not seq.finished:
                self._finish(seq, End(FinishReason.CANCELLED))

    def _take_inbox(self) -> bool:
        """Apply submissions and cancellations; False when the engine is to stop."""
        idle = not self._running and not self._waiting and not self._embeddings
        while True:
            try:
                kind, item = self._inbox.get(block=idle)
            except queue.Empty:
                return True
            idle = False
            if kind == "close":
                return False
            if isinstance(item, Embedding):
                self._embeddings.append(item)
                continue
            assert item is not None
            if kind == "submit":
                self._waiting.append(item)
            elif not item.finished:
                self._finish(item, End(FinishReason.CANCELLED))

    def _embed(self) -> None:
        """Compute the waiting embeddings: an embedding model's many texts a pass, a generative
        model's one by one in a free slot (its kept cells give way)."""
        while self._embeddings and self._pooling:
            jobs = [
                self._embeddings.popleft() for _ in range(min(len(self._embeddings), self.n_seq))
            ]
            try:
                found: list[Any] = self.model.embed_batch([j.tokens for j in jobs])
            except LocalrunError as e:
                found = [e] * len(jobs)
            for job, vector in zip(jobs, found, strict=True):
                job.deliver(vector)
        while self._embeddings and self.cells.free:
            job = self._embeddings[0]
            slot = self.cells.for_embedding()
            # Room for the text's cells: kept ones give way; running answers' do not, so the
            # text waits for them to end, as a request waits to be admitted.
            room = self.cells.make_room(len(job.tokens), self._running, keep=slot)
            if not room and self._running:
                return
            self._embeddings.popleft()
            try:
                result: Any = self.model.embed(job.tokens, slot)
            except LocalrunError as e:
                result = e
            job.deliver(result)

    def _admit(self) -> None:
        while self._waiting and self.cells.free:
            seq = self._waiting[0]
            slot, reused = self.cells.best_slot(seq.pending)
            # Room for what it must read (a paused one: its text so far), and a token more:
            # cells kept for later requests give way first, oldest first.
            need = len(seq.pending) - reused + 1
            if not self.cells.make_room(need, self._running, keep=slot) and self._running:
                return
            self._waiting.popleft()
            seq.status, seq.number = Status.RUNNING, next(self._admitted)
            self._running.append(seq)
            try:
                self.cells.claim(seq, slot, reused, self._running)
                if seq.sampler is None:
                    history = [t for t in seq.prompt if t >= 0] if seq.images else seq.prompt
                    grammar, seq.grammar = seq.grammar, None  # the chain owns it from now on
                    seq.sampler = self.model.new_sampler(seq.sampling, history, grammar)
            except Exception as e:  # this request cannot start: it fails, the others go on
                self._fail(seq, e if isinstance(e, LocalrunError) else LocalrunError(str(e)))

    # -- the engine thread: one step --------------------------------------------------------

    def _step(self) -> None:
        if not self._images():
            return
        now = time.perf_counter()
        guessing = self.speculator.guess(self._running, self._room())
        rows, fed = self._rows(now)
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
            self._fed(seq, n)
        self._sample_rows(rows)
        self.speculator.judge(guessing)

    def _room(self) -> int:
        """Rows and cells to spare for guesses this step: only where the cache has them, so
        that guessing never pauses another sequence (a prompt being read gets fewer rows)."""
        n = len(self._running)
        return min(self.step_tokens - n, self.model.n_ctx - self.cells.used(self._running) - n)

    def _rows(self, now: float) -> tuple[list[Row], list[tuple[Sequence, int]]]:
        """The step's batch, and how many tokens each sequence feeds in it."""
        rows: list[Row] = []
        fed: list[tuple[Sequence, int]] = []
        budget = self.step_tokens
        # Decoding sequences first: one token each keeps every answer moving.
        for seq in sorted(self._running, key=lambda s: len(s.pending) > 1):
            if budget == 0:
                break
            take = seq.chunk(budget)
            scored = seq.prompt_logprobs is not None and not seq.prompt_done
            for i in range(take):
                last = i == take - 1 and take == len(seq.pending)
                rows.append((seq, seq.pending[i], seq.cached + i, last or scored))
            if seq.drafts:
                # Guesses ride along, each row with logits: checked after the decode.
                for j, guess in enumerate(seq.drafts):
                    rows.append((seq, guess, seq.cached + 1 + j, True))
                take += len(seq.drafts)
            fed.append((seq, take))
            budget -= take
            if not seq.prompt_done and not seq.prefill_started:
                seq.prefill_started = now
        return rows, fed

    def _fed(self, seq: Sequence, n: int) -> None:
        """``n`` of the sequence's pending tokens (or a picture's positions) are in its cells."""
        del seq.pending[:n]
        seq.cached += n
        if seq.cache_at and not seq.cache_done and seq.cached == seq.cache_at:
            self.cells.keep_prefix(seq)  # just the prompt's prefix worth keeping
        if not seq.prompt_done and seq.pending:
            seq.progress()

    def _sample_rows(self, rows: list[Row]) -> None:
        """Sample every sequence whose row asked for logits (a guessing one: all its rows)."""
        checked: set[int] = set()
        for index, (seq, _, pos, wants) in enumerate(rows):
            if not wants or seq.finished or id(seq) in checked:
                continue
            if seq.scores(pos):
                seq.score(self.model, index, pos)
                continue
            seq.stats.passes += 1
            if seq.drafts:
                checked.add(id(seq))
                self.speculator.verify(seq, index, self._emit)
            else:
                self._emit(seq, index)

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
        self._fed(seq, chunk.n_pos)  # text always follows a picture: never the last chunk
        return True

    def _emit(self, seq: Sequence, row: int) -> int | None:
        """Sample the sequence's next token from ``row`` and take it into its answer. None
        when its sampling failed (a grammar that allows no token, or costs too much to
        follow): that request fails, the others go on."""
        forced = seq.spending.forced() if seq.spending else None  # a thinking budget's
        try:
            token = self.model.sample(seq.sampler, row) if forced is None else forced
        except GenerationError as e:
            self._fail(seq, e)
            return None
        end = seq.take(token, self.model, self.seq_ctx, row)
        if end is not None:
            self._finish(seq, end)
        return token

    # -- the engine thread: pause, fail, finish, and the one release ------------------------

    def _pause_newest(self) -> None:
        """No room in the cache for this step: the newest sequence waits to start again."""
        if self.cells.evict_warm(keep=-1):
            return  # cells kept for later requests were in the way: try the step again
        if len(self._running) == 1:
            self._finish(self._running[0], End(FinishReason.LENGTH))  # alone and still no room
            return
        seq = max(self._running, key=lambda s: s.number)
        seq.paused_at.append(len(seq.generated))
        if not seq.prompt_done:
            seq.prompt_probs.clear()  # read again from the start
        self._release(seq, None)
        seq.pending = seq.text()  # read again: its answer goes on after it
        seq.cached = 0
        self._waiting.appendleft(seq)

    def _fail(self, seq: Sequence, error: LocalrunError) -> None:
        """End one request with ``error``; its slot is emptied and freed."""
        self._release(seq, FinishReason.ERROR)
        seq.outbox.put(error)

    def _finish(self, seq: Sequence, end: End) -> None:
        self._release(seq, end.reason, keep=True)
        seq.end(end)

    def _release(self, seq: Sequence, reason: FinishReason | None, *, keep: bool = False) -> None:
        """The one way out of a sequence's place: off the running list or the queue, its slot
        given back (with ``keep``, its cells stay for a later request that begins alike).
        ``reason`` None: it is paused, to start again; else it has finished, and its sampler
        chain (or a grammar never handed to one) is freed."""
        if seq.status is Status.RUNNING:
            self._running.remove(seq)
        elif seq.status is not Status.FINISHED:
            self._waiting.remove(seq)
        if seq.slot is not None:
            self.cells.release(seq, keep=keep)
        if reason is None:
            seq.status = Status.PAUSED
            return
        seq.status, seq.reason = Status.FINISHED, reason
        if seq.sampler is not None:
            self.model.free_sampler(seq.sampler)
            seq.sampler = None
        if seq.grammar is not None:  # never admitted
            self.model.free_grammar(seq.grammar)
            seq.grammar = None
