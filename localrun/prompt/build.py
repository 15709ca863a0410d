"""Messages to tokens: the chat template (or plain text for base models), bounded in size."""

from __future__ import annotations

import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from localrun.backend import ImageChunk, Model, cells
from localrun.errors import LocalrunError, PromptTooLongError, TemplateError, UsageError
from localrun.images import MAX_IMAGES, Image
from localrun.prompt.template import Message, render
from localrun.prompt.tools import Tool

# A prompt is refused unread when it has more characters than this per token of context: no
# real text averages 64 characters a token (long runs of spaces make about 31).
MAX_CHARS_PER_TOKEN = 64
# Tokenizing stops early once a prompt passes this many contexts' worth of tokens.
TOKENIZE_LIMIT_FACTOR = 2
# A text longer than this many characters per allowed token is counted in slices first.
PROBE_CHARS_PER_TOKEN = 8


# Where an image goes in a rendered prompt: a text no user can guess, split off again before
# tokenizing (llama.cpp's own marker, "<__media__>", could be typed into a message).
IMAGE_MARKER = f"<__localrun_image_{secrets.token_hex(8)}__>"


@dataclass
class Prompt:
    """A conversation as the model reads it: token ids, each image a run of its negative id
    (see :class:`localrun.backend.ImageChunk`), and the images' chunks by that id."""

    tokens: list[int]
    images: dict[int, ImageChunk] = field(default_factory=dict)
    text: str = ""  # as the template rendered it (empty for a base model's plain text)

    @property
    def cells(self) -> int:
        """The KV cache cells it fills: a picture may fill more than the positions it takes
        (M-RoPE models, such as Qwen2.5-VL's)."""
        return cells(self.tokens, self.images)


def conversation_tokens(
    model: Model, template: str | None, messages: Sequence[Message], tools: Sequence[Tool] = ()
) -> list[int]:
    """The token ids of :func:`conversation_prompt` (its images' runs of ids included)."""
    return conversation_prompt(model, template, messages, tools).tokens


def conversation_prompt(
    model: Model,
    template: str | None,
    messages: Sequence[Message],
    tools: Sequence[Tool] = (),
    *,
    n_ctx: int | None = None,
    variables: Mapping[str, Any] | None = None,
) -> Prompt:
    """Tokenize a conversation, ready for the model's next answer (``variables``: more of
    the template's, such as a thinking switch).

    Chat models get their own template. Base models get the conversation as one text to
    continue: the system prompt, then each message, a blank line before each user turn. A
    message's images come before its text, as Ollama puts them. ``n_ctx`` is the context the
    prompt must fit (a sequence's share, where several share the model's); the model's whole
    context if not given.
    """
    n_ctx = n_ctx or model.n_ctx
    limit = TOKENIZE_LIMIT_FACTOR * n_ctx
    chars = sum(len(m.content) for m in messages)
    if chars > MAX_CHARS_PER_TOKEN * n_ctx:
        raise PromptTooLongError(
            f"the prompt is {chars:,} characters, more than a context of {n_ctx} tokens can hold",
            "shorten the prompt, or raise the context with --ctx",
        )
    images = [image for m in messages for image in m.images]
    if images:
        messages = [
            replace(m, content=IMAGE_MARKER * len(m.images) + m.content) if m.images else m
            for m in messages
        ]
    if template is None:
        parts: list[str] = []
        for m in messages:
            if parts and m.role in ("system", "user"):
                parts.append("\n\n")
            parts.append(m.content)
        return _tokenize(model, "".join(parts), images, limit, n_ctx, parse_special=False)
    bos, eos = model.bos_token, model.eos_token
    text = render(
        template,
        messages,
        bos_token=model.token_text(bos) if bos is not None else "",
        eos_token=model.token_text(eos) if eos is not None else "",
        tools=tools,
        variables=variables,
    )
    prompt = _tokenize(model, text, images, limit, n_ctx, parse_special=True)
    prompt.text = text
    tokens = prompt.tokens
    # Templates usually write the BOS token themselves; do not let it appear twice.
    if bos is not None and len(tokens) >= 2 and tokens[0] == tokens[1] == bos:
        del tokens[0]
    return prompt


def _tokenize(
    model: Model, text: str, images: list[Image], limit: int, n_ctx: int, *, parse_special: bool
) -> Prompt:
    if not images:
        return Prompt(
            tokenize_bounded(model, text, limit, parse_special=parse_special, n_ctx=n_ctx)
        )
    texts = text.split(IMAGE_MARKER)
    if len(texts) != len(images) + 1:
        raise TemplateError(
            f"the chat template kept {len(texts) - 1} of the {len(images)} images' places",
            "override it with a Modelfile TEMPLATE that writes every message's content",
        )
    if not texts[-1]:
        texts[-1] = "\n"  # the model's next token needs a text token's logits after the image
    return tokenize_with_images(
        model, texts, images, limit, parse_special=parse_special, n_ctx=n_ctx
    )


def tokenize_with_images(
    model: Model,
    texts: list[str],
    images: Sequence[Image],
    limit: int,
    *,
    parse_special: bool,
    n_ctx: int | None = None,
) -> Prompt:
    """``texts[0]``, ``images[0]``, ``texts[1]``, ... as the model reads them, refused (before
    a picture is decoded) when there are too many pictures or the text has over ``limit``
    tokens (``n_ctx``, the context the error names, is the model's if not given)."""
    if len(images) > MAX_IMAGES:
        raise UsageError(
            f"the prompt has {len(images)} images; at most {MAX_IMAGES} go in one",
            "send fewer pictures at a time",
        )
    _count_bounded(model, "".join(texts), limit, parse_special=parse_special, n_ctx=n_ctx)
    tokens, chunks = model.tokenize_images(texts, images, parse_special=parse_special)
    return Prompt(tokens, chunks)


def tokenize_bounded(
    model: Model,
    text: str,
    limit: int,
    *,
    parse_special: bool,
    n_ctx: int | None = None,
    add_special: bool = True,
) -> list[int]:
    """Tokenize ``text``, refusing it without tokenizing it whole when it has over ``limit`` tokens.

    A tokenized prompt costs a Python int per token: a 20 MB text took 1.9 GB before it could
    be refused. A text long enough to be suspect is counted in slices first, each small.
    ``n_ctx``, the context the error names, is the model's if not given.
    """
    _count_bounded(model, text, limit, parse_special=parse_special, n_ctx=n_ctx)
    return model.tokenize(text, add_special=add_special, parse_special=parse_special)


def _count_bounded(
    model: Model, text: str, limit: int, *, parse_special: bool, n_ctx: int | None = None
) -> None:
    probe = PROBE_CHARS_PER_TOKEN * limit
    if len(text) > probe:
        counted = 0
        for start in range(0, len(text), probe):
            piece = text[start : start + probe]
            counted += len(model.tokenize(piece, add_special=False, parse_special=parse_special))
            if counted > limit:
                raise PromptTooLongError(
                    f"the prompt is more than {limit} tokens but the context holds only "
                    f"{n_ctx or model.n_ctx}",
                    "shorten the prompt, or raise the context with --ctx",
                )


# A prefix shorter than this is not worth keeping on disk: it is read again in milliseconds.
MIN_KEEP = 64


def keep_point(
    model: Model,
    template: str | None,
    messages: Sequence[Message],
    tokens: list[int],
    document: str = "",
    tools: Sequence[Tool] = (),
) -> int:
    """How many of ``tokens`` (the conversation's) are likely to come back in later prompts:
    the system prompt and the earlier messages, and, when the last message begins with a
    document (piped text), that document too. 0 when that is too short to be worth keeping.

    Found as the part that the conversation without its last question shares with the whole,
    so whatever a template does around messages, the point falls where they stop agreeing.
    """
    head = list(messages[:-1])
    if document and messages and messages[-1].content.startswith(document):
        head.append(Message(messages[-1].role, document))
    if not head or not any(m.content for m in head):
        return 0
    try:
        prefix = conversation_tokens(model, template, head, tools)
    except LocalrunError:
        return 0  # a template that needs a user turn last: keep nothing, answer anyway
    n = 0
    for a, b in zip(prefix, tokens, strict=False):
        if a != b:
            break
        n += 1
    return n if MIN_KEEP <= n < len(tokens) else 0
