"""A request's prompt as a model loaded here reads it: the one place where a local answer's
messages become tokens (the conversation with its pictures and the tools offered, the oldest
turns left out when it does not fit, or an API's raw prompt), and the tools' watch and
required call."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from localrun.engine.budget import Budget
from localrun.engine.load import LoadedModel
from localrun.engine.stream import ANSWER_ROOM, TraceWatch
from localrun.engine.types import Request
from localrun.errors import NoVisionError, PromptTooLongError, UsageError
from localrun.prompt.build import (
    TOKENIZE_LIMIT_FACTOR,
    Prompt,
    conversation_prompt,
    tokenize_bounded,
    tokenize_with_images,
)
from localrun.prompt.template import Message
from localrun.prompt.thinking import (
    Splitter,
    can_switch_off,
    opens_in_prompt,
    strip_trace,
    switches,
)
from localrun.prompt.thinking import form_of as think_form
from localrun.prompt.tools import CallWatch, Tool, call_grammar, form_of


def check_tools(loaded: LoadedModel) -> None:
    """Refuse tools when the model's template has no place for them, or a form not read."""
    template = loaded.template
    if form_of(template) is None:
        why = (
            "writes tool calls in a form localrun does not read yet"
            if template and "tools" in template
            else "does not take tools: its chat template has no place for them"
        )
        raise UsageError(
            f"{loaded.name} {why}",
            "use a model that does (such as qwen2.5, llama3.2 or mistral), or send no tools",
        )


def offered(
    loaded: LoadedModel, request: Request
) -> tuple[tuple[Tool, ...], CallWatch | None, str | None]:
    """The tools the prompt offers, the watch that reads calls out of the answer, and the
    grammar of a required call (None when the call is the model's choice)."""
    if not request.tools or request.tool_choice == "none":
        return (), None, None
    form = form_of(loaded.template)
    if form is None:
        check_tools(loaded)
    assert form is not None
    watch = CallWatch(form, request.tools)
    if request.tool_choice == "auto":
        return request.tools, watch, None
    chosen = request.tools
    if request.tool_choice != "required":
        chosen = tuple(t for t in request.tools if t.name == request.tool_choice)
        if not chosen:
            raise UsageError(
                f"tool_choice names {request.tool_choice!r}, which is not among the tools",
                "name one of the tools, or use auto, none or required",
            )
    return request.tools, watch, call_grammar(form, chosen)


def raw_prompt(loaded: LoadedModel, request: Request) -> Prompt:
    """The last message's text as it is, special tokens read, its pictures first (as
    Ollama puts them)."""
    model, n_ctx = loaded.model, loaded.seq_ctx
    last = request.messages[-1] if request.messages else Message("user", "")
    limit = TOKENIZE_LIMIT_FACTOR * n_ctx
    if last.images:
        texts = [""] * len(last.images) + [last.content or "\n"]
        return tokenize_with_images(model, texts, list(last.images), limit,
                                    parse_special=True, n_ctx=n_ctx)  # fmt: skip
    return Prompt(tokenize_bounded(model, last.content, limit, parse_special=True, n_ctx=n_ctx))


def fill_in_prompt(loaded: LoadedModel, request: Request) -> Prompt:
    """The last message's text and ``request.suffix`` put around the model's fill-in-the-
    middle tokens, as llama-server's infill puts them: its prefix token, the text before, its
    suffix token, the text after, its middle token; the answer is the middle."""
    model, n_ctx = loaded.model, loaded.seq_ctx
    fim = model.fim_tokens
    if fim is None:
        raise UsageError(
            f"{loaded.name} cannot fill in the middle: its vocabulary has no prefix, suffix "
            "and middle tokens",
            "use a code model made for it (Qwen2.5-Coder, CodeLlama, StarCoder2, Codestral), "
            "or send no suffix",
        )
    limit = TOKENIZE_LIMIT_FACTOR * n_ctx
    before = request.messages[-1].content if request.messages else ""
    head, tail = (
        tokenize_bounded(model, text, limit, parse_special=False, n_ctx=n_ctx, add_special=False)
        for text in (before, request.suffix or "")
    )
    # What the vocabulary puts before a text (its BOS, where it adds one) leads; what it
    # puts after one (an EOS) would end the prompt before the middle: left out.
    added = model.tokenize("", add_special=True, parse_special=False)
    lead = added[:1] if model.bos_token is not None and added[:1] == [model.bos_token] else []
    pre, suf, mid = fim
    return Prompt([*lead, pre, *head, suf, *tail, mid])


def messages_prompt(loaded: LoadedModel, messages: Sequence[Message], request: Request) -> Prompt:
    """``messages`` as the model reads them, with the request's tools."""
    if not loaded.model.vision and any(m.images for m in messages):
        raise NoVisionError(loaded.name, "use a vision model, or send no pictures")
    variables = thinking_variables(loaded, request.think)
    form = think_form(loaded.template)
    if form is not None:  # earlier answers' traces are not read again (a client sent them)
        messages = [
            replace(m, content=strip_trace(form, m.content))
            if m.role == "assistant" and form.end in m.content
            else m
            for m in messages
        ]
    return conversation_prompt(loaded.model, loaded.template, messages, request.tools,
                               n_ctx=loaded.seq_ctx, variables=variables)  # fmt: skip


def prompt_tokens(loaded: LoadedModel, request: Request) -> int:
    """How many tokens ``request``'s prompt is, as the model would read it (its tools
    offered): an API's count of a request it is not asked to answer."""
    tools, _, _ = offered(loaded, request)
    return len(messages_prompt(loaded, request.messages, replace(request, tools=tools)).tokens)


def thinking_variables(loaded: LoadedModel, think: bool | str | None) -> dict[str, Any]:
    """The template's variables that switch a thinking model's trace as ``think`` asks
    (None: the model's default, which some templates need told). Asking a model that does
    not think to think is refused; asking one that cannot stop to stop is not (its trace is
    still told apart, and the caller hides it: see :func:`thinking_note`)."""
    template = loaded.template
    form = think_form(template)
    if form is None or template is None:
        if think is None or think is False:
            return {}
        raise UsageError(
            f"{loaded.name} does not think: its chat template writes no reasoning trace",
            "drop the thinking setting, or use a thinking model such as qwen3 or deepseek-r1",
        )
    return switches(form, template, think)


def thinking_note(loaded: LoadedModel, think: bool | str | None) -> str | None:
    """What to tell a user who asked for no trace from a model that cannot be asked that."""
    template = loaded.template
    form = think_form(template)
    if think is not False or form is None or template is None:
        return None
    if can_switch_off(form, template):
        return None
    return f"{loaded.name}'s chat template has no switch for thinking: its trace is hidden"


# After the analysis channel's end, gpt-oss's answer opens its final channel itself.
_HARMONY_FINAL = "<|start|>assistant<|channel|>final<|message|>"


def trace_budget(loaded: LoadedModel, request: Request, prompt: Prompt) -> Budget | None:
    """The engine's thinking budget for ``request`` (None: no budget asked, or a model that
    does not think, or an answer held to a grammar, whose tokens the engine cannot force)."""
    form = think_form(loaded.template)
    if request.think_budget is None or form is None or request.raw or request.suffix:
        return None
    if request.sampling.grammar is not None:
        return None
    model = loaded.model
    closing = form.end + (_HARMONY_FINAL if form.name == "harmony" else "")

    def ids(text: str) -> tuple[int, ...]:
        return tuple(model.tokenize(text, add_special=False, parse_special=True))

    return Budget(max(0, request.think_budget), ids(form.start), ids(closing),
                  open=opens_in_prompt(form, prompt.text))  # fmt: skip


def trace_watch(loaded: LoadedModel, request: Request, prompt: Prompt) -> TraceWatch | None:
    """The split of a thinking model's answer into its trace and the answer proper (None
    for a model that does not think, or a raw prompt, which is the caller's to read)."""
    form = think_form(loaded.template)
    if form is None or request.raw or request.suffix:
        return None
    splitter = Splitter(form, in_trace=opens_in_prompt(form, prompt.text))
    return TraceWatch(splitter, needs_special=form.needs_special)


def fitted(
    loaded: LoadedModel, messages: Sequence[Message], request: Request
) -> tuple[Prompt, list[Message]]:
    """The conversation's prompt, without its oldest turns if an answer would not fit in
    a sequence's context: the system prompt that opens it stays, and so does the newest
    turn (the last user message and what follows it: calls, their results), whole. A turn
    goes whole, so that no answer or tool result is left without what it answers."""
    n_ctx = loaded.seq_ctx
    room = min(ANSWER_ROOM, n_ctx // 4, request.max_tokens or n_ctx)
    system = list(messages[:1]) if messages and messages[0].role == "system" else []
    rest = messages[len(system) :]
    # Where each turn begins: the conversation may begin at any of them.
    starts = [0, *(i for i, m in enumerate(rest) if i and m.role == "user")]

    def prompt_from(start: int) -> Prompt | None:
        """The prompt from the turn at ``start`` on, if it leaves room for an answer."""
        try:
            prompt = messages_prompt(loaded, [*system, *rest[start:]], request)
        except PromptTooLongError:
            return None  # far too long to count
        return prompt if prompt.cells + room <= n_ctx else None

    # Fewer turns are fewer tokens: the first turn to begin at is found by halving, so that
    # an agent's conversation of hundreds of turns is tokenized a few times, not hundreds.
    whole = prompt_from(0)
    if whole is not None:
        return whole, [*system, *rest]
    found, start = None, starts[-1]
    low, high = 1, len(starts) - 1
    while low <= high:
        middle = (low + high) // 2
        prompt = prompt_from(starts[middle])
        if prompt is not None:
            found, start, high = prompt, starts[middle], middle - 1
        else:
            low = middle + 1
    kept = [*system, *rest[start:]]
    if found is None:  # the newest turn alone leaves no room: read as it is, or refused
        found = messages_prompt(loaded, kept, request)
    return found, kept


def turns(messages: Sequence[Message]) -> int:
    """The messages kept, not counting the system prompt."""
    return sum(1 for m in messages if m.role != "system")
