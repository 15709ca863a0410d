"""Tokens as a model reads them, and back to text: what ``localrun tokenize`` prints and the
server's ``/tokenize`` and ``/detokenize`` answer.

A conversation is counted by the code that answers it (:mod:`.prompting`): its count is the
``prompt_eval_count`` (``usage.prompt_tokens``) an answer to the same messages reports. From
the command line only the model's vocabulary is opened (llama.cpp's ``vocab_only`` load:
:class:`~localrun.backend.llamacpp.vocab.Vocabulary`), never its weights.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol

from localrun.backend import Model
from localrun.engine.load import LoadedModel
from localrun.engine.options import run_options
from localrun.engine.prompting import fill_in_prompt, messages_prompt, offered, raw_prompt
from localrun.engine.types import Request
from localrun.errors import UsageError
from localrun.models.resolve import Settings


class Vocab(Protocol):
    """What tokenizing and detokenizing need of a model (a loaded one, or its vocabulary)."""

    def tokenize(self, text: str, *, add_special: bool, parse_special: bool) -> list[int]: ...

    def piece(self, token: int, special: bool = False) -> bytes: ...

    def token_text(self, token: int) -> str: ...

    @property
    def n_vocab(self) -> int: ...


@dataclass(frozen=True)
class Tokenized:
    """A text's or a conversation's tokens, and each one's bytes when asked for."""

    model: str
    tokens: list[int]
    pieces: list[bytes] | None = None


def check_ids(vocab: Vocab, tokens: object, name: str = "tokens") -> list[int]:
    """``tokens`` as token ids of ``vocab``; a UsageError naming ``name`` (and the first bad
    entry) otherwise."""
    if not isinstance(tokens, list):
        raise UsageError(f"'{name}' must be a list of token ids", f"send {name}: [1, 2, 3]")
    for i, token in enumerate(tokens):
        check_id(vocab, token, f"{name}[{i}]")
    return tokens


def check_id(vocab: Vocab, token: object, where: str) -> None:
    """A UsageError naming ``where`` unless ``token`` is an id of ``vocab``: llama.cpp aborts
    the process on an id outside its vocabulary."""
    if isinstance(token, bool) or not isinstance(token, int):
        raise UsageError(f"'{where}' must be a token id (an integer), not {_shown(token)}")
    n_vocab = vocab.n_vocab
    if not 0 <= token < n_vocab:
        raise UsageError(
            f"'{where}' is {token}, not a token of this model",
            f"token ids go from 0 to {n_vocab - 1}",
        )


def _shown(value: object) -> str:
    return json.dumps(value)[:40]


def mixed_tokens(
    vocab: Vocab, content: Sequence[str | int], *, add_special: bool, parse_special: bool
) -> list[int]:
    """llama-server's mixed prompt: texts tokenized in turn (the model's special tokens
    added before the first only, where it is a text) and token ids kept as they are."""
    tokens: list[int] = []
    for i, part in enumerate(content):
        if isinstance(part, str):
            first = add_special and i == 0
            tokens += vocab.tokenize(part, add_special=first, parse_special=parse_special)
        else:
            tokens.append(part)
    return tokens


def pieces(vocab: Vocab, tokens: Sequence[int]) -> list[bytes]:
    """Each token's bytes, a control token's text included (as llama-server shows them)."""
    return [vocab.piece(t, special=True) for t in tokens]


def piece_value(piece: bytes) -> str | list[int]:
    """A piece as llama-server's ``with_pieces`` gives it: its text when it is whole UTF-8,
    else its bytes (a character split across tokens)."""
    try:
        return piece.decode("utf-8")
    except UnicodeDecodeError:
        return list(piece)


def detokenize(vocab: Vocab, tokens: Sequence[int]) -> str:
    """The text of ``tokens`` (checked ids), their pieces joined as llama-server's
    /detokenize joins them; bytes that are not UTF-8 are replaced."""
    return b"".join(pieces(vocab, tokens)).decode("utf-8", errors="replace")


def prompt_of(loaded: LoadedModel, request: Request) -> list[int]:
    """``request``'s prompt as the model reads it when it answers (the messages through the
    chat template with the tools offered, a raw prompt as it is, Ollama's context first):
    the tokens whose count an answer reports as its prompt's."""
    tools, _, _ = offered(loaded, request)
    if request.suffix:
        prompt = fill_in_prompt(loaded, request)
    elif request.raw:
        prompt = raw_prompt(loaded, request)
    else:
        prompt = messages_prompt(loaded, request.messages, replace(request, tools=tools))
    return [*request.context, *prompt.tokens]


def tokenize(
    ref: str,
    text: str,
    *,
    chat: bool = False,
    system: str | None = None,
    think: bool | str | None = None,
    add_special: bool = True,
    parse_special: bool = True,
    with_pieces: bool = False,
) -> Tokenized:
    """``text``'s tokens in the model ``ref`` (resolved here, not pulled), from its vocabulary
    alone. With ``chat``, the tokens ``localrun run REF TEXT`` reads: ``text`` as the user's
    message after the Modelfile's system prompt (or ``system``) and messages, through the
    chat template, ``think`` as run's --think. Without, the text alone, with the model's
    special tokens added (``add_special``: a BOS) and special tokens' text read as those
    tokens (``parse_special``), as llama.cpp's llama-tokenize does."""
    from localrun.backend.llamacpp.vocab import Vocabulary
    from localrun.models.resolve import resolve

    resolved = resolve(ref)
    with Vocabulary(resolved.path) as vocab:
        if chat:
            tokens = _chat(resolved.name, resolved.path, resolved.settings, vocab, text,
                           system=system, think=think)  # fmt: skip
        else:
            tokens = vocab.tokenize(text, add_special=add_special, parse_special=parse_special)
        found = pieces(vocab, tokens) if with_pieces else None
    return Tokenized(resolved.name, tokens, found)


def _chat(
    name: str,
    path: Path,
    settings: Settings,
    vocab: Model,
    text: str,
    *,
    system: str | None,
    think: bool | str | None,
) -> list[int]:
    """``text`` as run's one question, over a model that is its vocabulary alone."""
    options = run_options(settings, system=system, think=think)
    request = Request.of(text, system=options.system, history=options.history)
    request = replace(request, think=options.think)
    loaded = LoadedModel(name, path, vocab, 0.0, template_override=settings.template)
    return prompt_of(loaded, request)
