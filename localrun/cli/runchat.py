"""The chat that ``localrun run`` opens (or ``localrun chat``): a session with the run's
settings, over a model loaded here or a remote engine, in :mod:`.chat`'s loop."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from localrun import engine
    from localrun.cli.runflags import Show
    from localrun.cli.runload import Local
    from localrun.engine.chat import ChatSession
    from localrun.images import Image


def chat_local(
    local: Local,
    text: str | None,
    piped: bool,
    opts: engine.RunOptions,
    repack: bool,
    show: Show,
    images: list[Image],
) -> None:
    """The chat over a model loaded here, which /load and /set parameter num_ctx load again."""
    from localrun.engine.answerer import LocalAnswerer
    from localrun.engine.chat import ChatSession, LoadSettings

    # What /set parameter num_ctx and /load NAME load with again, as run loaded it.
    again = LoadSettings(local.threads, opts.n_ctx, opts.gpu_layers, opts.kv_type,
                         opts.flash_attn, repack, local.workers)  # fmt: skip
    chat(ChatSession(LocalAnswerer(local.loaded, again)), text, piped, opts, show, images)


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
    session.options = Options(opts.sampling, opts.max_tokens, opts.stop)
    session.messages = list(opts.history)
    ui = ChatUI(session, Console(), verbose=show.verbose, wordwrap=show.wordwrap)
    ui.greet()
    if text is not None and (text or images):
        ui.answer(lambda: session.ask(text, images))
    else:
        ui.waiting = list(images)
    if piped:
        reattach_terminal()
    ui.run(setup_history())
