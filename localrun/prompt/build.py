"""Messages to tokens: the chat template (or plain text for base models), bounded in size."""

from __future__ import annotations

from collections.abc import Sequence

from localrun.backend import Model
from localrun.errors import PromptTooLongError
from localrun.prompt.template import Message, render

# A prompt is refused unread when it has more characters than this per token of context: no
# real text averages 64 characters a token (long runs of spaces make about 31).
MAX_CHARS_PER_TOKEN = 64
# Tokenizing stops early once a prompt passes this many contexts' worth of tokens.
TOKENIZE_LIMIT_FACTOR = 2
# A text longer than this many characters per allowed token is counted in slices first.
PROBE_CHARS_PER_TOKEN = 8


def conversation_tokens(
    model: Model, template: str | None, messages: Sequence[Message]
) -> list[int]:
    """Tokenize a conversation, ready for the model's next answer.

    Chat models get their own template. Base models get the conversation as one text to
    continue: the system prompt, then each message, a blank line before each user turn.
    """
    limit = TOKENIZE_LIMIT_FACTOR * model.n_ctx
    chars = sum(len(m.content) for m in messages)
    if chars > MAX_CHARS_PER_TOKEN * model.n_ctx:
        raise PromptTooLongError(
            f"the prompt is {chars:,} characters, more than a context of {model.n_ctx} "
            "tokens can hold",
            "shorten the prompt, or raise the context with --ctx",
        )
    if template is None:
        parts: list[str] = []
        for m in messages:
            if parts and m.role in ("system", "user"):
                parts.append("\n\n")
            parts.append(m.content)
        return tokenize_bounded(model, "".join(parts), limit, parse_special=False)
    bos, eos = model.bos_token, model.eos_token
    text = render(
        template,
        messages,
        bos_token=model.token_text(bos) if bos is not None else "",
        eos_token=model.token_text(eos) if eos is not None else "",
    )
    tokens = tokenize_bounded(model, text, limit, parse_special=True)
    # Templates usually write the BOS token themselves; do not let it appear twice.
    if bos is not None and len(tokens) >= 2 and tokens[0] == tokens[1] == bos:
        del tokens[0]
    return tokens


def tokenize_bounded(model: Model, text: str, limit: int, *, parse_special: bool) -> list[int]:
    """Tokenize ``text``, refusing it without tokenizing it whole when it has over ``limit`` tokens.

    A tokenized prompt costs a Python int per token: a 20 MB text took 1.9 GB before it could
    be refused. A text long enough to be suspect is counted in slices first, each small.
    """
    probe = PROBE_CHARS_PER_TOKEN * limit
    if len(text) > probe:
        counted = 0
        for start in range(0, len(text), probe):
            piece = text[start : start + probe]
            counted += len(model.tokenize(piece, add_special=False, parse_special=parse_special))
            if counted > limit:
                raise PromptTooLongError(
                    f"the prompt is more than {limit} tokens but the context holds only "
                    f"{model.n_ctx}",
                    "shorten the prompt, or raise the context with --ctx",
                )
    return model.tokenize(text, add_special=True, parse_special=parse_special)
