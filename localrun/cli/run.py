"""``localrun run MODEL [PROMPT...]``: answer a prompt, streaming the text to stdout."""

from __future__ import annotations

import enum
import json
import sys
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, nullcontext
from dataclasses import replace
from typing import TYPE_CHECKING, TextIO

import typer

from localrun.cli import app
from localrun.cli.output import format_remote_stats, format_stats
from localrun.cli.progress import resolve_or_pull
from localrun.errors import GenerationError, NoVisionError, UsageError
from localrun.system import run_threads

if TYPE_CHECKING:
    from localrun import engine
    from localrun.engine.chat import ChatSession, LoadSettings
    from localrun.images import Image
    from localrun.models.resolve import Settings
    from localrun.prompt.grammar import Constraint
    from localrun.remote.registry import Remote


def parse_gpu_layers(value: str | None) -> str | None:
    """auto, all, or a whole number of layers: anything else is a usage error."""
    if value is None:
        return None
    value = value.strip().lower()
    if value in ("auto", "all") or (value.isdigit() and int(value) < 100_000):
        return value
    raise typer.BadParameter(f"'{value}' is not auto, all or a number of layers")


def gpu_layers_value(value: str | None) -> str | int | None:
    return int(value) if value is not None and value.isdigit() else value


class OutputFormat(str, enum.Enum):
    text = "text"
    json = "json"


MAX_STDIN_BYTES = 16 * 1024 * 1024  # 4M tokens or so: more than any context holds


def _piped_part(text: str, args: list[str]) -> str:
    """The piped document at the start of a prompt that :func:`read_prompt` joined."""
    joined = " ".join(args)
    if joined.strip() and text.endswith("\n\n" + joined):
        return text[: -len(joined) - 2]
    return ""


def read_prompt(args: list[str], stdin: TextIO) -> str:
    """The prompt: piped stdin first, then the arguments (as Ollama and llm do).

    A prompt of only white space, from either, is no prompt.
    """
    parts = []
    if not stdin.isatty():
        if hasattr(stdin, "buffer"):
            data = stdin.buffer.read(MAX_STDIN_BYTES + 1)
        else:
            data = stdin.read(MAX_STDIN_BYTES + 1).encode()
        if len(data) > MAX_STDIN_BYTES:
            raise UsageError(
                f"standard input is over {MAX_STDIN_BYTES // 2**20} MiB: more text than any "
                "model's context holds",
                "pass a shorter text, or split it and ask about each part",
            )
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            text = data.decode("utf-8", errors="replace")
            print(
                "Warning: standard input is not valid UTF-8; invalid bytes were replaced by U+FFFD",
                file=sys.stderr,
            )
        if text.strip():
            parts.append(text.rstrip("\n"))
    joined = " ".join(args)
    if joined.strip():
        parts.append(joined)
    if parts:
        return "\n\n".join(parts)
    raise UsageError(
        "no prompt: the arguments and standard input are empty or only white space",
        "localrun run MODEL 'your question', or pipe text in",
    )


class _Stream:
    """Writes the answer to stdout as it comes, remembering whether the line is open."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.line_open = False

    def write(self, text: str) -> None:
        self.out.write(text)
        self.out.flush()
        self.line_open = not text.endswith("\n")

    def end_line(self) -> None:
        if self.line_open:
            self.write("\n")


@app.command("chat", help="Chat with a model: the same as run, always interactive.")
@app.command()
def run(
    ctx: typer.Context,
    model: str = typer.Argument(
        ..., help="A pulled model, a Hub reference (pulled if needed), a .gguf file, or 'demo'."
    ),
    prompt: list[str] = typer.Argument(None, help="The prompt; piped stdin comes before it."),
    system: str | None = typer.Option(None, "--system", help="System prompt."),
    temperature: float | None = typer.Option(
        None, min=0.0, help="Sampling temperature; 0 is greedy. [default: 0.8]"
    ),
    top_k: int | None = typer.Option(
        None, "--top-k", min=0, help="Keep the K most likely tokens (0: all). [default: 40]"
    ),
    top_p: float | None = typer.Option(
        None, "--top-p", min=0.0, max=1.0, help="Nucleus sampling mass. [default: 0.9]"
    ),
    min_p: float | None = typer.Option(
        None, "--min-p", min=0.0, max=1.0, help="Minimum probability. [default: 0.0]"
    ),
    repeat_penalty: float | None = typer.Option(
        None,
        "--repeat-penalty",
        min=0.0,
        help="Penalty for repeated tokens (1: none). [default: 1.1]",
    ),
    seed: int | None = typer.Option(
        None, "--seed", help="Random seed, 0 to 4294967294, for repeatable output; -1: random."
    ),
    max_tokens: int | None = typer.Option(
        None, "-n", "--max-tokens", min=1, help="Stop after this many tokens."
    ),
    stop: list[str] = typer.Option(None, "--stop", help="Stop at this text (repeatable)."),
    schema: str | None = typer.Option(
        None,
        "--schema",
        metavar="FILE|JSON",
        help="Answer JSON that follows this JSON schema (a file, or the schema itself); "
        "'json': any JSON value. The sampler cannot pick a token that breaks it.",
    ),
    grammar: str | None = typer.Option(
        None, "--grammar", metavar="FILE", help="Answer text that matches this GBNF grammar."
    ),
    ctx_size: int | None = typer.Option(
        None, "--ctx", min=1, help="Context size in tokens (default: the model's, at most 4096)."
    ),
    threads: int | None = typer.Option(
        None,
        "--threads",
        min=1,
        max=512,
        help="CPU threads (default: the physical cores other processes leave idle).",
    ),
    gpu_layers: str | None = typer.Option(
        None,
        "--gpu-layers",
        callback=parse_gpu_layers,
        help="Layers on the GPU: auto (as many as fit), all, or a number (0: CPU only). "
        "[default: auto]",
    ),
    verbose: bool = typer.Option(False, "--verbose", help="Print timings after each answer."),
    output_format: OutputFormat = typer.Option(
        OutputFormat.text, "--format", help="text: stream the answer; json: one JSON object."
    ),
    interactive: bool = typer.Option(
        False, "-i", "--interactive", help="Keep chatting after answering the prompt."
    ),
    nowordwrap: bool = typer.Option(
        False, "--nowordwrap", help="Print the answer as it comes, without Markdown or wrapping."
    ),
    batch: str | None = typer.Option(
        None,
        "--batch",
        help="Answer the requests of a JSON Lines file ('-': stdin), one JSON line each.",
    ),
    parallel: int | None = typer.Option(
        None,
        "--parallel",
        min=1,
        max=64,
        help="With --batch: requests answered at once. [default: from free memory, at most 8]",
    ),
    no_prompt_cache: bool = typer.Option(
        False,
        "--no-prompt-cache",
        help="Neither read nor keep evaluated prompts on disk (the prompt cache).",
    ),
    speculative: str | None = typer.Option(
        None,
        "--speculative",
        help="Guess tokens ahead and check several a step, with the same text as without: "
        "lookup (from the prompt and the answer so far: fast where the answer repeats them), "
        "draft (a smaller model of the same family, --draft), or off. "
        "[default: draft with --draft, else off]",
    ),
    draft: str | None = typer.Option(
        None,
        "--draft",
        metavar="MODEL",
        help="The draft model for --speculative draft: smaller, with the same vocabulary.",
    ),
    rpc: str | None = typer.Option(
        None,
        "--rpc",
        metavar="HOST:PORT,...",
        help="Split the model's layers with these RPC workers ('localrun worker' on other "
        "machines), by free memory.",
    ),
    kv_type: str | None = typer.Option(
        None,
        "--kv-type",
        help="The KV cache's type: f16, q8_0 (about half the memory) or q4_0 (a quarter). "
        "[default: the Modelfile's, LOCALRUN_KV_TYPE, else f16]",
    ),
    flash_attn: str | None = typer.Option(
        None,
        "--flash-attn",
        help="Flash attention: auto, on or off (q8_0 and q4_0 caches need it). [default: auto]",
    ),
    no_repack: bool = typer.Option(
        False,
        "--no-repack",
        help="Keep the weights on the CPU as the file has them, not repacked for llama.cpp's "
        "fastest kernels: slower, with the arithmetic of an RPC worker (the same text split "
        "or not).",
    ),
    image: list[str] | None = typer.Option(
        None,
        "--image",
        metavar="FILE",
        help="A picture for a vision model to read with the prompt (repeat for several). "
        "Picture files named in the prompt are read too, as Ollama reads them.",
    ),
    endpoint: str | None = typer.Option(
        None,
        "--endpoint",
        metavar="URL",
        help="Ask MODEL of this OpenAI-compatible server instead (vLLM, llama-server, "
        "Ollama, localrun serve...): see also 'localrun remote add'.",
    ),
) -> None:
    """Answer a prompt, or chat.

    With no prompt on a terminal, open a chat.
    """
    from localrun import engine  # loaded on use: --help and the other commands stay fast

    args = prompt or []
    constraint = _constraint(schema, grammar)
    if parallel is not None and batch is None:
        raise UsageError("--parallel goes with --batch", "localrun run MODEL --batch FILE")
    if batch is not None:
        if args or interactive or ctx.info_name == "chat" or output_format is OutputFormat.json:
            raise UsageError(
                "--batch takes its prompts from the file, and writes JSON lines",
                "drop the prompt, -i and --format with --batch",
            )
        if image:
            raise UsageError(
                "--image goes with a prompt, not with --batch",
                'give each line of the batch file its own "images": [FILE, ...]',
            )
        if batch == "-" and sys.stdin.isatty():
            raise UsageError(
                "--batch - reads standard input, which is a terminal", "pipe a file in"
            )
        from localrun.cli.batchrun import BatchLines

        batch_lines = BatchLines(batch)  # a file that cannot run is refused before the load
    piped = not sys.stdin.isatty()
    chat_mode = batch is None and (
        interactive or ctx.info_name == "chat" or (not args and not piped)
    )
    if chat_mode and (output_format is OutputFormat.json or not sys.stdout.isatty()):
        raise UsageError(
            "interactive chat needs a terminal on stdout and --format text",
            "give a prompt for a one-shot answer, or run it in a terminal",
        )
    text = None
    if batch is None and (args or piped or not chat_mode):
        text = read_prompt(args, sys.stdin)
    terminal = sys.stdout.isatty() and output_format is OutputFormat.text
    remote, settings = remote_and_settings(model, endpoint)
    if remote is not None and (draft or speculative or grammar or rpc):
        raise UsageError(
            "a remote engine does its own decoding: --draft, --speculative, --grammar and "
            "--rpc are for local models (it takes --schema)",
            "drop them, or run a local model",
        )
    resolved = resolve_or_pull(model) if remote is None else None
    pictures: list[Image] = []
    if remote is not None or (resolved is not None and resolved.settings.projector is not None):
        from localrun.images import read_image

        # Read only once the model is known to take them: a text model refuses them unread.
        pictures = [read_image(path) for path in image or ()]
        text, found = _prompt_images(text, args)
        pictures += found
    elif image:
        raise NoVisionError(model)
    opts = engine.run_options(
        resolved.settings if resolved is not None else settings,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        min_p=min_p,
        repeat_penalty=repeat_penalty,
        seed=seed,
        max_tokens=max_tokens,
        stop=tuple(stop or ()),
        system=system,
        n_ctx=ctx_size,
        gpu_layers=gpu_layers_value(gpu_layers),
        threads=threads,
        speculative=speculative,
        draft=draft,
        kv_type=kv_type,
        flash_attn=flash_attn,
    )
    if constraint is not None:
        opts = replace(opts, sampling=constraint.apply(opts.sampling))
    if remote is not None:
        # Only the settings given (flags, the Modelfile's) go: the rest are the engine's own.
        flags = {"temperature": temperature, "top_k": top_k, "top_p": top_p, "min_p": min_p}
        flags |= {"repeat_penalty": repeat_penalty, "seed": seed}
        given = {name for name, value in flags.items() if value is not None}
        send = frozenset(given | (set(settings.parameters) & set(flags)))
        if batch is not None:
            from localrun.cli.batchrun import run_batch
            from localrun.remote.answerer import RemoteAnswerer

            answerer = RemoteAnswerer(remote, send=send, parallel=parallel)
            try:
                if run_batch(answerer, batch_lines, opts):
                    raise typer.Exit(1)
            finally:
                answerer.close()
            return
        if chat_mode:
            from localrun.engine.chat import ChatSession
            from localrun.remote.answerer import RemoteAnswerer

            _chat_session(
                ChatSession(RemoteAnswerer(remote, send=send)), text, piped, opts, verbose=verbose,
                wordwrap=not nowordwrap, images=pictures,
            )  # fmt: skip
            return
        assert text is not None
        done = _answer_remotely(
            remote, text, opts, output_format, terminal, verbose, not nowordwrap, send, pictures
        )
        if constraint is not None and done is not None:
            _check_complete(done, constraint)
        return
    assert resolved is not None
    n_threads = opts.threads
    if not n_threads:
        n_threads, busy = run_threads()
        if busy and verbose:
            cores = n_threads + busy
            print(f"threads: {n_threads}, as other processes keep {busy} of the {cores} cores "
                  "busy (--threads sets it)", file=sys.stderr)  # fmt: skip
    draft_model = None
    if opts.draft is not None:
        draft_model = (opts.draft, resolve_or_pull(opts.draft).path)
    n_seq = 1
    if batch is not None:
        n_seq = parallel or engine.default_parallel(resolved.path, opts.n_ctx, opts.kv_type)
    workers = engine.parse_endpoints(rpc) if rpc else ()
    spinner: AbstractContextManager[object] = nullcontext()
    if terminal and sys.stderr.isatty():
        from rich.console import Console

        spinner = Console(stderr=True).status(f"Loading {model}…")
    with spinner:
        loaded = engine.load_model(
            model,
            n_ctx=opts.n_ctx,
            n_threads=n_threads,
            gpu_layers=opts.gpu_layers,
            path=resolved.path,
            settings=resolved.settings,
            n_seq=n_seq,
            workers=workers,
            repack=not no_repack,
            kv_type=opts.kv_type,
            flash_attn=opts.flash_attn,
        )
        try:
            engine.speculate(
                loaded,
                opts.speculative,
                draft_model,
                n_threads=n_threads,
                gpu_layers=opts.gpu_layers,
            )
        except BaseException:
            loaded.close()
            raise
    loaded.prompt_cache = not no_prompt_cache
    for note in loaded.notes:
        print(note, file=sys.stderr)
    if verbose and batch is not None:
        print(f"parallel: {n_seq} sequences of {loaded.seq_ctx} tokens", file=sys.stderr)
    try:
        if batch is not None:
            from localrun.cli.batchrun import run_batch
            from localrun.engine.answerer import LocalAnswerer

            if run_batch(LocalAnswerer(loaded), batch_lines, opts):
                raise typer.Exit(1)
            return
        if chat_mode:
            from localrun.engine.chat import LoadSettings

            # What /set parameter num_ctx and /load NAME load with again, as run loaded it.
            again = LoadSettings(n_threads, opts.n_ctx, opts.gpu_layers, opts.kv_type,
                                 opts.flash_attn, not no_repack, workers)  # fmt: skip
            _chat(
                loaded, text, piped, opts, verbose=verbose, wordwrap=not nowordwrap,
                images=pictures, load=again,
            )  # fmt: skip
            return
        assert text is not None
        request = engine.Request.of(
            text,
            system=opts.system,
            history=opts.history,
            sampling=opts.sampling,
            max_tokens=opts.max_tokens,
            stop=opts.stop,
            document=_piped_part(text, args) if piped else "",
            images=pictures,
        )
        events = engine.generate(loaded, request)
        described = _described(loaded, n_threads) if verbose else None
        stats: engine.Stats | None
        if output_format is OutputFormat.json:
            stats = _json(events, model, loaded.mode, described)
        elif terminal:
            stats = _live(events, loaded.placement, loaded.model.n_ctx, described, not nowordwrap)
        else:
            stats = _plain(events, described)
        if constraint is not None and stats is not None:
            _check_complete(stats, constraint)
    finally:
        loaded.close()


def _prompt_images(text: str | None, args: list[str]) -> tuple[str | None, list[Image]]:
    """The prompt without the picture files its arguments name, and those pictures (piped
    text is a document: its words stay words)."""
    if text is None or not args:
        return text, []
    joined = " ".join(args)
    from localrun.images import read_image, split_image_paths

    cleaned, paths = split_image_paths(joined)
    if not paths:
        return text, []
    head = text[: len(text) - len(joined)]
    return (head + cleaned).strip() if cleaned else head.rstrip(), [read_image(p) for p in paths]


def _constraint(schema: str | None, grammar: str | None) -> Constraint | None:
    """The answer's constraint from --schema or --grammar (one of them), checked now."""
    from localrun.prompt import grammar as grammars

    if schema is not None and grammar is not None:
        raise UsageError("--schema and --grammar cannot go together", "give one of them")
    if schema is not None:
        return grammars.schema_argument(schema)
    if grammar is not None:
        return grammars.grammar_argument(grammar)
    return None


def _check_complete(stats: engine.Stats, constraint: Constraint) -> None:
    """An answer cut off before its grammar was done is not passed off as complete."""
    from localrun.engine import FinishReason

    if stats.finish_reason is FinishReason.LENGTH:
        kind = "JSON" if constraint.json else "text for the grammar"
        raise GenerationError(
            f"the answer reached its token limit before its {kind} was complete "
            f"({stats.completion_tokens} tokens)",
            "raise --max-tokens (or --ctx), or ask for a shorter answer",
        )


def _chat(
    loaded: engine.LoadedModel,
    text: str | None,
    piped: bool,
    opts: engine.RunOptions,
    *,
    verbose: bool,
    wordwrap: bool,
    images: list[Image],
    load: LoadSettings,
) -> None:
    from localrun.engine.answerer import LocalAnswerer
    from localrun.engine.chat import ChatSession

    session = ChatSession(LocalAnswerer(loaded, load))
    _chat_session(session, text, piped, opts, verbose=verbose, wordwrap=wordwrap, images=images)


def _chat_session(
    session: ChatSession,
    text: str | None,
    piped: bool,
    opts: engine.RunOptions,
    *,
    verbose: bool,
    wordwrap: bool,
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
    ui = ChatUI(session, Console(), verbose=verbose, wordwrap=wordwrap)
    ui.greet()
    if text is not None and (text or images):
        ui.answer(lambda: session.ask(text, images))
    else:
        ui.waiting = list(images)
    if piped:
        reattach_terminal()
    ui.run(setup_history())


def _described(loaded: engine.LoadedModel, threads: int) -> Callable[[engine.Stats], str]:
    """The --verbose block of a local model's answer."""
    return lambda stats: format_stats(stats, loaded, threads)


def _plain(
    events: Iterator[engine.Event], described: Callable[[engine.Stats], str] | None
) -> engine.Stats:
    from localrun import engine

    stream = _Stream(sys.stdout)
    try:
        for event in events:
            if isinstance(event, engine.TextDelta) and event.text:
                stream.write(event.text)
            elif isinstance(event, engine.Finished):
                stats = event.stats
    finally:
        stream.end_line()
    if described is not None:
        print(described(stats), file=sys.stderr)
    return stats


def _live(
    events: Iterator[engine.Event],
    placement: str,
    n_ctx: int,
    described: Callable[[engine.Stats], str] | None,
    wordwrap: bool,
) -> engine.Stats | None:
    from rich.console import Console

    from localrun.cli.chatview import AnswerState, AnswerView

    state = AnswerState(placement, n_ctx)
    view = AnswerView(Console(), state, markdown=wordwrap, live=wordwrap)
    with view:
        for event in events:
            view.handle(event)
    if described is not None and view.stats is not None:
        print(described(view.stats), file=sys.stderr)
    return view.stats


def _json(
    events: Iterator[engine.Event],
    model: str,
    mode: str,
    described: Callable[[engine.Stats], str] | None,
) -> engine.Stats:
    from localrun import engine

    answer: list[str] = []
    for event in events:
        if isinstance(event, engine.TextDelta):
            answer.append(event.text)
        elif isinstance(event, engine.Finished):
            stats = event.stats
    result = {"model": model, "mode": mode, "response": "".join(answer), "stats": stats.as_dict()}
    print(json.dumps(result, ensure_ascii=False))
    if described is not None:
        print(described(stats), file=sys.stderr)
    return stats


def remote_named(model: str, endpoint: str | None) -> Remote | None:
    """The remote engine that ``model`` names (registered, or on --endpoint), if any."""
    return remote_and_settings(model, endpoint)[0]


def remote_and_settings(model: str, endpoint: str | None) -> tuple[Remote | None, Settings]:
    """The remote engine ``model`` names, with the settings of a created model made
    ``FROM`` it (its SYSTEM, PARAMETERs, MESSAGEs, stops)."""
    from localrun.models import recipes
    from localrun.models.resolve import Settings
    from localrun.prompt.template import Message
    from localrun.remote import registry

    if endpoint is not None:
        return registry.Remote(model, registry.base_url(endpoint), model), Settings()
    if (found := registry.find(model)) is not None:
        return found, Settings()
    recipe = recipes.find(model)
    if recipe is None or (base := registry.find(recipe.modelfile.from_)) is None:
        return None, Settings()
    mf = recipe.modelfile
    settings = Settings(
        parameters=dict(mf.parameters),
        stop=tuple(mf.stop),
        system=mf.system,
        messages=tuple(Message(r, t) for r, t in mf.messages),
    )
    return base, settings


def _answer_remotely(
    remote: Remote,
    text: str,
    opts: engine.RunOptions,
    output_format: OutputFormat,
    terminal: bool,
    verbose: bool,
    wordwrap: bool,
    send: frozenset[str],
    images: list[Image],
) -> engine.Stats | None:
    from localrun import engine
    from localrun.remote.client import generate

    request = engine.Request.of(
        text,
        system=opts.system,
        history=opts.history,
        sampling=opts.sampling,
        max_tokens=opts.max_tokens,
        stop=opts.stop,
        images=images,
    )
    events = generate(remote, request, send)
    described = format_remote_stats if verbose else None
    if output_format is OutputFormat.json:
        return _json(events, remote.name, "remote", described)
    if terminal:
        return _live(events, f"remote {remote.url}", 0, described, wordwrap)
    return _plain(events, described)
