"""The chat that ``localrun run`` opens (or ``localrun chat``): a session with the run's
settings, over a model loaded here or a remote engine, in :mod:`.chat`'s loop."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from localrun import engine
    from localrun.cli.runflags import Show
    from localrun.engine.chat import ChatSession
    from localrun.images import Image


def chat(
    session: ChatSession,
    text: str | None,
    piped: bool,
    opts: engine.RunOptions,
    show: Show,
    images: list[Image],
) -> None:
    """The interactive chat, with the run's settings, over a local or a remote session.
    ``images`` go with the first message (the prompt's, or the first one typed)."""
    from rich.console import Console

    from localrun.cli.chat import ChatUI, reattach_terminal, setup_history
    from localrun.engine.chat import Options

    session.system = opts.system
    session.options = Options(opts.sampling, opts.max_tokens, opts.stop, opts.think_budget)
    session.messages = list(opts.history)
    ui = ChatUI(session, Console(), verbose=show.verbose, wordwrap=show.wordwrap,
                hidethinking=show.hidethinking)  # fmt: skip
    ui.greet()
    if text is not None and (text or images):
        ui.answer(lambda: session.ask(text, images))
    else:
        ui.waiting = list(images)
    if piped:
        reattach_terminal()
    ui.run(setup_history())
