"""A scripted model: the engine's loop, stop strings and statistics without weights."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from localrun.backend import SamplingParams

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
    ) -> None:
        self.pieces = pieces
        self.end = end
        self._n_ctx = n_ctx
        self._chat_template = chat_template
        self.prompts: list[list[int]] = []
        self.rows = 0  # tokens decoded, over every step
        self.closed = False

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

    @property
    def bos_token(self) -> int | None:
        return 1

    @property
    def eos_token(self) -> int | None:
        return 2

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
        return 1

    @property
    def n_batch(self) -> int:
        return 512

    def decode_rows(
        self, tokens: list[int], positions: list[int], seqs: list[int], logits: list[bool]
    ) -> int:
        self.rows += len(tokens)
        return 0

    def new_sampler(
        self, sampling: SamplingParams, history: list[int], grammar: object | None = None
    ) -> object:
        self.prompts.append(list(history))
        return _Script()

    def logits(self, row: int) -> list[float]:
        return [0.0] * self.n_vocab

    def sample(self, sampler: object, row: int) -> int:
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

    def piece(self, token: int) -> bytes:
        i = token - FIRST
        return self.pieces[i] if 0 <= i < len(self.pieces) else b""

    def forget(self, seq: int) -> None:
        pass

    def seq_state(self, seq: int) -> bytes:
        return b""

    def set_seq_state(self, seq: int, state: bytes | memoryview) -> bool:
        return False

    def layout(self) -> dict[str, object]:
        return {}

    def embed(self, tokens: list[int], seq: int) -> list[float]:
        return [float(len(tokens)), 0.0]

    def copy_prefix(self, src: int, dst: int, n: int, src_len: int) -> bool:
        return True

    def trim(self, seq: int, keep: int) -> bool:
        return True

    def close(self) -> None:
        self.closed = True
