"""Messages to tokens: the chat template (or plain text for base models), bounded in size."""

from __future__ import annotations

from collections.abc import Sequence

from localrun.backend import Model
from localrun.errors import LocalrunError, PromptTooLongError
from localrun.prompt.template import Message, render
from localrun.prompt.tools import Tool

# A prompt is refused unread when it has more characters than this per token of context: no
# real text averages 64 characters a token (long runs of spaces make about 31).
MAX_CHARS_PER_TOKEN = 64
# Tokenizing stops early once a prompt passes this many contexts' worth of tokens.
TOKENIZE_LIMIT_FACTOR = 2
# A text longer than this many characters per allowed token is counted in slices first.
PROBE_CHARS_PER_TOKEN = 8


def conversation_tokens(
    model: Model, template: str | None, messages: Sequence[Message], tools: Sequence[Tool] = ()
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
        tools=tools,
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
