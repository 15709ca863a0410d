"""A scripted model: the engine's loop, stop strings and statistics without weights."""

from __future__ import annotations

from collections.abc import Generator, Mapping

from localrun.backend import BackendEvent, Prefilled, SamplingParams, Token


class ScriptedModel:
    """Answers every prompt with the same byte pieces, then an end-of-generation token."""

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

    def generate(
        self, prompt: list[int], sampling: SamplingParams, *, stop_at_eog: bool = True
    ) -> Generator[BackendEvent, None, None]:
        self.prompts.append(prompt)
        yield Prefilled(evaluated=len(prompt), seconds=0.001)
        for i, piece in enumerate(self.pieces):
            yield Token(100 + i, piece, False)
        if self.end:
            yield Token(2, b"", True)

    def close(self) -> None:
        self.closed = True
