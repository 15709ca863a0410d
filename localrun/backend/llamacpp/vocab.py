"""A model's vocabulary alone: llama.cpp's ``vocab_only`` load reads the GGUF's tokenizer and
metadata, not its weights, and makes no context. Tokenizing and counting need no more
(``localrun tokenize``): a millisecond to open whatever the model's size, and no memory for
weights or a KV cache.

The token functions are the loaded model's too (:mod:`.model`): one tokenizer call, one
piece call, one metadata reader over llama.cpp's pointers.
"""

from __future__ import annotations

import ctypes
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from localrun.backend import DEFAULT_MAX_CTX, ImageChunk
from localrun.backend.llamacpp import bindings, logs
from localrun.errors import NoVisionError, UsageError

bindings.register()  # the ctypes bindings alone (see bindings.py)

import llama_cpp.llama_cpp as lc  # noqa: E402

lc.llama_backend_init()

if TYPE_CHECKING:
    from localrun.images import Image


def tokenize(vocab: Any, text: str, *, add_special: bool, parse_special: bool) -> list[int]:
    """``text``'s token ids in ``vocab`` (a ``llama_vocab`` pointer)."""
    try:
        data = text.encode("utf-8")
    except UnicodeEncodeError as e:  # bytes that were not UTF-8 (argv), a lone \ud800
        raise UsageError(
            f"the text is not valid UTF-8 (at character {e.start + 1:,})",
            "give UTF-8 text (in JSON, a \\ud800-\\udfff escape only as one of a pair)",
        ) from None
    capacity = len(data) + 8
    buf = (lc.llama_token * capacity)()
    n = lc.llama_tokenize(vocab, data, len(data), buf, capacity, add_special, parse_special)
    if n < 0:
        capacity = -n
        buf = (lc.llama_token * capacity)()
        n = lc.llama_tokenize(vocab, data, len(data), buf, capacity, add_special, parse_special)
    return list(buf[:n])


def token_piece(vocab: Any, token: int, special: bool) -> bytes:
    """The bytes of ``token`` (with ``special``, a control token's text too). The caller
    checks that ``token`` is in the vocabulary: llama.cpp aborts on one that is not."""
    buf = ctypes.create_string_buffer(64)
    n = lc.llama_token_to_piece(vocab, token, buf, len(buf), 0, special)
    if n < 0:
        buf = ctypes.create_string_buffer(-n)
        n = lc.llama_token_to_piece(vocab, token, buf, len(buf), 0, special)
    return buf.raw[:n]


def fim_tokens(vocab: Any) -> tuple[int, int, int] | None:
    """``vocab``'s fill-in-the-middle tokens (prefix, suffix, middle), if it has all three."""
    found = (lc.llama_vocab_fim_pre(vocab), lc.llama_vocab_fim_suf(vocab),
             lc.llama_vocab_fim_mid(vocab))  # fmt: skip
    return (int(found[0]), int(found[1]), int(found[2])) if min(found) >= 0 else None


def read_metadata(model: Any) -> dict[str, str]:
    """The GGUF's metadata of ``model`` (a ``llama_model`` pointer), as strings."""
    result: dict[str, str] = {}
    buf = ctypes.create_string_buffer(1024)
    for i in range(int(lc.llama_model_meta_count(model))):
        n = lc.llama_model_meta_key_by_index(model, i, buf, len(buf))
        key = buf.value[:n].decode("utf-8", "replace")
        n = lc.llama_model_meta_val_str_by_index(model, i, buf, len(buf))
        result[key] = buf.value[:n].decode("utf-8", "replace")
    return result


class VocabularyCalls:
    """What a vocabulary answers, the same for a loaded model and a vocabulary alone; the
    class that takes it sets ``_vocab`` (a ``llama_vocab`` pointer), ``_pieces`` (an empty
    dict, the pieces kept as they are asked for) and ``_chat_template``."""

    _vocab: Any
    _pieces: dict[int, bytes]
    _chat_template: str | None

    @property
    def chat_template(self) -> str | None:
        return self._chat_template

    @property
    def bos_token(self) -> int | None:
        token = int(lc.llama_vocab_bos(self._vocab))
        return token if token >= 0 else None

    @property
    def eos_token(self) -> int | None:
        token = int(lc.llama_vocab_eos(self._vocab))
        return token if token >= 0 else None

    @property
    def fim_tokens(self) -> tuple[int, int, int] | None:
        return fim_tokens(self._vocab)

    def token_text(self, token: int) -> str:
        return bytes(lc.llama_vocab_get_text(self._vocab, token)).decode("utf-8", "replace")

    def tokenize(self, text: str, *, add_special: bool, parse_special: bool) -> list[int]:
        return tokenize(self._vocab, text, add_special=add_special, parse_special=parse_special)

    def piece(self, token: int, special: bool = False) -> bytes:
        key = ~token if special else token  # control tokens' text kept apart
        piece = self._pieces.get(key)
        if piece is None:
            piece = self._pieces[key] = token_piece(self._vocab, token, special)
        return piece

    @property
    def n_vocab(self) -> int:
        return int(lc.llama_vocab_n_tokens(self._vocab))


class Vocabulary(VocabularyCalls):
    """A GGUF's vocabulary, chat template and metadata, as :class:`localrun.backend.Model`
    offers them (with :meth:`piece`), without the weights: nothing here can decode."""

    def __init__(self, path: Path) -> None:
        logs.start()
        params = lc.llama_model_default_params()
        params.vocab_only = True
        params.n_gpu_layers = 0
        model = lc.llama_model_load_from_file(str(path).encode(), params)
        if not model:
            raise logs.load_failure(path)
        self._model = model
        self._vocab = lc.llama_model_get_vocab(model)
        self._pieces: dict[int, bytes] = {}
        self._metadata = read_metadata(model)
        raw = lc.llama_model_chat_template(model, None)
        self._chat_template = raw.decode("utf-8", errors="replace") if raw else None

    def __enter__(self) -> Vocabulary:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def n_ctx(self) -> int:
        """No context is made: the trained one, the most any prompt could be given."""
        return self.n_ctx_train

    @property
    def n_ctx_train(self) -> int:
        # llama.cpp reads no hyperparameters in a vocab_only load: the GGUF says it.
        arch = self._metadata.get("general.architecture", "")
        value = self._metadata.get(f"{arch}.context_length", "")
        return int(value) if value.isdigit() and int(value) > 0 else DEFAULT_MAX_CTX

    @property
    def metadata(self) -> Mapping[str, str]:
        return self._metadata

    @property
    def vision(self) -> bool:
        return False

    def tokenize_images(
        self, texts: Sequence[str], images: Sequence[Image], *, parse_special: bool
    ) -> tuple[list[int], dict[int, ImageChunk]]:
        raise NoVisionError()  # a projector is never loaded beside a vocabulary

    def close(self) -> None:
        if self._model:
            lc.llama_model_free(self._model)
            self._model = None

    def __del__(self) -> None:
        if lc is not None and getattr(self, "_model", None):
            self.close()
