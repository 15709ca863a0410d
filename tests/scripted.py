"""A scripted model: the engine's loop, stop strings and statistics without weights.

It holds N sequences in a cache of ``n_ctx`` cells, as llama.cpp's context does: a step that
would need more cells than are free is refused (1, as ``llama_decode`` says it), so the
engine's admission, pausing, slot choice and prefix sharing can be tested in milliseconds.
With :meth:`ScriptedModel.hold`, the engine thread decodes only the steps a test lets it.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from localrun.backend import ImageChunk, SamplingParams
from localrun.errors import NoVisionError
from localrun.images import Image

FIRST = 100  # the first scripted answer token; its piece is pieces[0]
FILLER = 99  # what comes after the pieces when the answer does not end: no text
END = 2


@dataclass
class _Script:
    """One sequence's place in the script (the scripted model's sampler)."""

    next: int = 0


class ScriptedModel:
    """Answers every prompt with the same byte pieces, then an end-of-generation token.

    It offers the batching engine's step API, so ``run`` and the chat go through the real
    engine loop; its "sampler" plays the script instead of reading logits.
    """

    def __init__(
        self,
        pieces: list[bytes],
        *,
        n_ctx: int = 256,
        chat_template: str | None = None,
        end: bool = True,
        n_seq: int = 1,
        n_batch: int = 512,
    ) -> None:
        self.pieces = pieces
        self.end = end
        self._n_ctx = n_ctx
        self._n_seq = n_seq
        self._n_batch = n_batch
        self._chat_template = chat_template
        self.prompts: list[list[int]] = []
        self.rows = 0  # tokens decoded, over every step
        self.closed = False
        # The cache: per sequence, the tokens its cells hold (by position).
        self.held: dict[int, list[int]] = {seq: [] for seq in range(n_seq)}
        self.steps: list[list[tuple[int, int, int]]] = []  # per step: (token, position, seq)
        self.refused = 0  # steps refused for want of cells
        self.copies: list[tuple[int, int, int]] = []  # (from, to, cells)
        self._wants: set[int] = set()  # the last step's rows with logits
        self._gate: threading.Condition | None = None
        self._permits = 0
        self._blocked = False

    @property
    def n_ctx(self) -> int:
        return self._n_ctx

    @property
    def n_ctx_train(self) -> int:
        return 8192

    @property
    def metadata(self) -> Mapping[str, str]:
        return {"general.architecture": "scripted"}

    @property
    def chat_template(self) -> str | None:
        return self._chat_template

    vision = False  # a text model: it reads no images

    def tokenize_images(
        self, texts: Sequence[str], images: Sequence[Image], *, parse_special: bool
    ) -> tuple[list[int], dict[int, ImageChunk]]:
        raise NoVisionError()  # as a model loaded without a projector

    @property
    def bos_token(self) -> int | None:
        return 1

    @property
    def eos_token(self) -> int | None:
        return 2

    @property
    def fim_tokens(self) -> tuple[int, int, int] | None:
        return None  # no fill-in-the-middle tokens

    pooling: str | None = None  # a generative model, not an embedding model

    def token_text(self, token: int) -> str:
        return {1: "<s>", 2: "</s>"}.get(token, "?")

    def tokenize(self, text: str, *, add_special: bool, parse_special: bool) -> list[int]:
        # One token per byte, offset past the special ids; BOS first when asked.
        if parse_special:
            text = text.replace("<s>", "\x01")
        tokens = [b + 3 if b != 1 else 1 for b in text.encode()]
        return ([1] if add_special else []) + tokens

    @property
    def n_vocab(self) -> int:
        return 259

    # -- the step API -------------------------------------------------------------

    @property
    def n_seq_max(self) -> int:
        return self._n_seq

    @property
    def n_batch(self) -> int:
        return self._n_batch

    def decode_rows(
        self, tokens: list[int], positions: list[int], seqs: list[int], logits: list[bool]
    ) -> int:
        self._wait_for_leave()
        after = {seq: list(held) for seq, held in self.held.items()}
        for token, pos, seq in zip(tokens, positions, seqs, strict=True):
            held = after[seq]
            assert pos <= len(held), f"position {pos} of sequence {seq} leaves a hole"
            del held[pos:]
            held.append(token)
        if sum(len(held) for held in after.values()) > self._n_ctx:
            self.refused += 1
            return 1
        self.held = after
        self.rows += len(tokens)
        self.steps.append(list(zip(tokens, positions, seqs, strict=True)))
        self._wants = {row for row, wants in enumerate(logits) if wants}
        return 0

    # -- the engine thread's pace, as a test lets it go -----------------------------------------

    def hold(self) -> None:
        """From now on, decode a step only when :meth:`step` lets it."""
        self._gate = threading.Condition()
        self._permits, self._blocked = 0, False

    def step(self, n: int = 1, timeout: float = 10.0) -> None:
        """Let the engine decode ``n`` steps (tried steps, refused ones too), and wait until it
        has done them and waits at the next one: all it does after a step is done too."""
        gate = self._gate
        assert gate is not None, "hold() first"
        with gate:
            self._permits += n
            gate.notify_all()
            done = gate.wait_for(lambda: self._permits == 0 and self._blocked, timeout)
        assert done, "the engine did not come back to a step"

    def go(self) -> None:
        """Decode freely again."""
        gate, self._gate = self._gate, None
        if gate is not None:
            with gate:
                self._permits = 1 << 30
                gate.notify_all()

    def _wait_for_leave(self) -> None:
        gate = self._gate
        if gate is None:
            return
        with gate:
            self._blocked = True
            gate.notify_all()
            gate.wait_for(lambda: self._permits > 0)
            self._permits -= 1
            self._blocked = False

    def new_sampler(
        self, sampling: SamplingParams, history: list[int], grammar: object | None = None
    ) -> object:
        self.prompts.append(list(history))
        return _Script()

    def logits(self, row: int) -> list[float]:
        return [0.0] * self.n_vocab

    def sample(self, sampler: object, row: int) -> int:
        assert row in self._wants, f"row {row} was decoded without logits"
        script = sampler
        assert isinstance(script, _Script)
        i = script.next
        script.next += 1
        if i < len(self.pieces):
            return FIRST + i
        return END if self.end else FILLER

    def free_sampler(self, sampler: object) -> None:
        pass

    def is_end(self, token: int) -> bool:
        return token == END

    def piece(self, token: int, special: bool = False) -> bytes:
        i = token - FIRST
        return self.pieces[i] if 0 <= i < len(self.pieces) else b""

    def forget(self, seq: int) -> None:
        self.held[seq] = []

    def seq_state(self, seq: int) -> bytes:
        return b""

    def set_seq_state(self, seq: int, state: bytes | memoryview) -> bool:
        self.held[seq] = []  # as llama.cpp's, a state it cannot read leaves the slot empty
        return False

    def layout(self) -> dict[str, object]:
        return {}

    def embed(self, tokens: list[int], seq: int) -> list[float]:
        return [float(len(tokens)), 0.0]

    def embed_batch(self, texts: Sequence[Sequence[int]]) -> list[list[float]]:
        raise AssertionError("a generative model embeds one text at a time")

    def pair_tokens(self, query: str, document: str) -> list[int]:
        raise AssertionError("a generative model reranks nothing")

    def copy_prefix(self, src: int, dst: int, n: int, src_len: int) -> bool:
        assert len(self.held[src]) == src_len, "the source holds other cells than told"
        self.held[dst] = self.held[src][:n]
        self.copies.append((src, dst, n))
        return True

    def trim(self, seq: int, keep: int) -> bool:
        del self.held[seq][keep:]
        return True

    def close(self) -> None:
        self.closed = True
