"""The KV cache's bookkeeping for the batching engine: sequence slots and what their cells hold.

A free slot may still hold a finished request's prompt and answer (its warm cells): the next
request that begins with the same tokens goes to the slot that holds the longest such prefix
and reads only the rest. A longer prefix held by another slot (a system prompt, a document
shared by requests at once) is copied cell by cell instead of read again; one kept on disk
(:mod:`localrun.engine.prompt_cache`) is read back. Warm cells give way, oldest first, when a
running sequence needs the room.
"""

from __future__ import annotations

from collections.abc import Iterable

from localrun.backend import StepModel
from localrun.engine.draft import common_prefix
from localrun.engine.prompt_cache import PromptCache
from localrun.engine.sequence import Sequence, image_cut

# A prefix shorter than this is not worth copying from another sequence.
MIN_SHARED = 16


class Cells:
    """The sequence slots of one model's context, and the cells each holds."""

    def __init__(self, model: StepModel, prompt_cache: PromptCache | None) -> None:
        self.model = model
        self.prompt_cache = prompt_cache
        # A model with sliding-window layers keeps its prefixes no longer than the window:
        # llama.cpp saves such a sequence without the cells the window has passed, and what
        # it reads back then answers differently (logits off by up to 1.2 after one step on
        # the demo model, measured); within the window, what it reads back is exact.
        self.keep_limit = int(str(model.layout().get("n_swa", 0) or 0)) or None
        self.free = list(range(model.n_seq_max))
        # What each free slot still holds in the cache (a finished request's prompt and
        # answer): the next request that starts with the same tokens reads only the rest.
        self.warm: dict[int, list[int]] = {}
        for slot in self.free:
            model.forget(slot)  # what an earlier engine left is not this one's to know

    def used(self, running: Iterable[Sequence]) -> int:
        """Cells taken: by the running sequences (with what they are about to feed), and
        kept warm in free slots."""
        taken = sum(s.cached + len(s.pending) for s in running)
        return taken + sum(len(t) for t in self.warm.values())

    def make_room(self, need: int, running: list[Sequence], keep: int) -> bool:
        """Drop warm cells (not ``keep``'s) until ``need`` more cells fit; whether they do."""
        n_ctx = self.model.n_ctx
        while self.used(running) + need > n_ctx and self.evict_warm(keep):
            pass
        return self.used(running) + need <= n_ctx

    def best_slot(self, tokens: list[int]) -> tuple[int, int]:
        """The free slot whose kept cells share the longest prefix with ``tokens``, and how
        many of its cells can be reused."""
        best, best_len = self.free[0], -1
        for slot in self.free:
            n = common_prefix(self.warm.get(slot, []), tokens)
            if n > best_len:
                best, best_len = slot, n
        # The last token is read again: its logits are what the first answer token needs.
        return best, image_cut(tokens, max(0, min(best_len, len(tokens) - 1)))

    def claim(self, seq: Sequence, slot: int, reused: int, running: list[Sequence]) -> None:
        """Give ``slot`` to ``seq``, with the longest prefix of its text found: in the slot's
        own cells (``reused`` of them), another sequence's, or on disk."""
        self.free.remove(slot)
        seq.slot = slot
        if seq.prompt_logprobs is not None and not seq.prompt_done:
            self._take_prefix(seq, slot, 0)  # a scored prompt is read whole: each row's logits
            return
        self._take_prefix(seq, slot, reused)
        self._share_prefix(seq, slot, running)
        self._restore(seq, slot)

    def release(self, seq: Sequence, *, keep: bool) -> None:
        """Free ``seq``'s slot. With ``keep``, its cells stay for a later request that starts
        the same way (a chat's next turn), without the cells of guesses that were not kept."""
        slot = seq.slot
        assert slot is not None
        if keep and (not seq.speculate or self.model.trim(slot, seq.cached)):
            self.warm[slot] = seq.held()
        else:
            self.model.forget(slot)
        self.free.append(slot)
        seq.slot = None

    def for_embedding(self) -> int:
        """A free slot for an embedding (its kept cells give way); it stays free."""
        slot = self.free[-1]
        self.warm.pop(slot, None)
        return slot

    def evict_warm(self, keep: int) -> bool:
        """Drop the cells of one free slot other than ``keep``; False if there is none."""
        for slot in list(self.warm):
            if slot != keep:
                self.model.forget(slot)
                del self.warm[slot]
                return True
        return False

    def keep_prefix(self, seq: Sequence) -> None:
        """The prompt's worth-keeping prefix has just been read: store its cells."""
        seq.cache_done = True
        prefix = seq.prompt[: seq.cache_at]
        digests = seq.digests()
        if self.prompt_cache is None or self.prompt_cache.has(prefix, digests):
            return
        # A copy of the cells now (a few ms); the writer thread stores it.
        assert seq.slot is not None
        self.prompt_cache.save(prefix, self.model.seq_state(seq.slot), digests)

    def _take_prefix(self, seq: Sequence, slot: int, reused: int) -> None:
        kept = self.warm.pop(slot, [])
        if reused < len(kept) and not self.model.trim(slot, reused):
            reused = 0  # a sliding-window cache cannot always drop a suffix: read it all
            self.model.forget(slot)
        elif not reused and kept:
            self.model.forget(slot)
        seq.cached = reused
        del seq.pending[:reused]
        if not seq.prompt_done:
            seq.reused = reused

    def _share_prefix(self, seq: Sequence, slot: int, running: list[Sequence]) -> None:
        """Copy a longer shared prefix from another sequence's cells, if one holds it.

        Requests that begin alike (a system prompt, a document) then read their common part
        once: ``llama_memory_seq_cp`` shares the cells instead of evaluating them again.
        """
        tokens = seq.text()
        best_src, best_n, src_len = -1, seq.cached, 0
        sources = [(s.slot, s.held()) for s in running if s is not seq]
        sources += [(s, kept) for s, kept in self.warm.items() if s != slot]
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

    def _restore(self, seq: Sequence, slot: int) -> None:
        """Put back a prefix of the prompt from the disk cache, if it holds a longer one than
        the cells found in memory."""
        if self.prompt_cache is None or seq.prompt_done or seq.generated:
            return
        found = self.prompt_cache.lookup(seq.prompt, longest=self.keep_limit, images=seq.digests())
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
