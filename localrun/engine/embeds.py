"""What an embedding or a rerank asks of a text, the same for the server and the command line:
its tokens cut to what the model reads in one pass (Ollama's ``truncate``), the vectors scaled,
and the documents ranked.

A text is cut as Ollama cuts it: its first tokens, then the special tokens the tokenizer puts at
a text's end ([SEP], EOS), so that the model still reads a whole input. A long text is
tokenized only as far as the cut needs: a 20 MB text costs a Python int per token, and was
refused outright past twice the context before, where Ollama cuts it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from localrun.backend.llamacpp.embedding import normalized as normalized
from localrun.errors import PromptTooLongError
from localrun.prompt.build import PROBE_CHARS_PER_TOKEN, tokenize_bounded

if TYPE_CHECKING:
    from localrun.backend import Model, StepModel

# Tokens past the cut that a prefix of a text must give before its tokens are taken for the
# text's: the prefix's last word may be split where the text's is not.
_SPARE = 16


def end_tokens(model: Model) -> list[int]:
    """The special tokens the model's tokenizer puts after a text ([SEP], EOS): what is kept
    at the end of a text cut to the context. Found by tokenizing a word with and without
    them (a vocabulary's BOS may be its EOS, as Qwen's is)."""
    plain = model.tokenize("a", add_special=False, parse_special=False)
    full = model.tokenize("a", add_special=True, parse_special=False)
    for i in range(len(full) - len(plain) + 1):
        if full[i : i + len(plain)] == plain:
            return full[i + len(plain) :]
    return []


def cut(tokens: list[int], limit: int, ending: list[int] | None) -> list[int]:
    """A text's tokens cut to ``limit`` as Ollama cuts them: its first ones, then ``ending``
    (the tokens the tokenizer puts at a text's end). ``ending`` None: a text too long is
    refused (``truncate: false``)."""
    if len(tokens) <= limit:
        return tokens
    if ending is None:
        raise PromptTooLongError(
            f"the input is {len(tokens)} tokens but the context holds only {limit}",
            "shorten it, or let the server cut it (truncate: true)",
        )
    keep = limit - len(ending) if tokens[-len(ending) :] == ending else limit
    return tokens[:keep] + tokens[len(tokens) - (limit - keep) :]


def text_tokens(
    model: StepModel,
    text: str,
    limit: int,
    ending: list[int],
    *,
    truncate: bool = True,
    query: str | None = None,
) -> list[int]:
    """The tokens of ``text`` to embed (with ``query``: a reranker's pair of ``query`` and
    ``text`` as a document), at most ``limit``: cut as :func:`cut` does, or refused past
    ``limit`` without ``truncate``."""
    if query is not None:
        tokens = _head(lambda part: model.pair_tokens(query, part), text, limit)
        if not truncate and len(tokens) > limit:
            raise PromptTooLongError(
                f"the query and document are more than {limit} tokens, which is all the "
                "context holds",
                "shorten it, or let the server cut it (truncate: true)",
            )
        return cut(tokens, limit, ending)
    if not truncate:
        return cut(tokenize_bounded(model, text, limit, parse_special=False, n_ctx=limit),
                   limit, None)  # fmt: skip
    whole = lambda part: model.tokenize(part, add_special=True, parse_special=False)  # noqa: E731
    return cut(_head(whole, text, limit + len(ending)), limit, ending)


def _head(tokenize: Callable[[str], list[int]], text: str, need: int) -> list[int]:
    """``tokenize(text)``, or of a prefix of ``text`` that gives comfortably more than
    ``need`` tokens: the first ``need`` are the whole text's."""
    chars = PROBE_CHARS_PER_TOKEN * (need + _SPARE)
    while True:
        tokens = tokenize(text[:chars])
        if chars >= len(text) or len(tokens) > need + _SPARE:
            return tokens
        chars *= 2


def ranked(scores: list[float], top_n: int | None) -> list[int]:
    """The documents' indexes, most relevant first, the first ``top_n`` (all: None)."""
    return sorted(range(len(scores)), key=lambda i: -scores[i])[: top_n or len(scores)]
