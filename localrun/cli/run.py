"""``localrun run MODEL [PROMPT...]``: answer a prompt, streaming the text to stdout.

Over 400 lines because the command's flags are its parameters, typer's way: each flag is a
few lines here, and the checks and the work are in the modules below.

``run`` gathers its flags (:mod:`.runflags`), checks them together (:mod:`.runplan`), picks
a remote engine or a model loaded here (:mod:`.runload`), and goes to one answer
(:mod:`.answer`), the chat (:mod:`.runchat`) or a batch file's requests (:mod:`.batchrun`).
"""

from __future__ import annotations

import sys
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import typer
from typer.core import TyperCommand

from localrun.cli import app, options
from localrun.cli.options import OutputFormat
from localrun.cli.progress import resolve_or_pull
from localrun.errors import NoVisionError, UsageError

if TYPE_CHECKING:
    from localrun import engine
    from localrun.cli.runflags import RunFlags
    from localrun.cli.runplan import Plan
    from localrun.engine.answerer import Answerer
    from localrun.engine.load import LoadedModel
    from localrun.images import Image
    from localrun.models.resolve import Resolved, Settings
    from localrun.prompt.grammar import Constraint
    from localrun.remote.registry import Remote


class _RunCommand(TyperCommand):
    """run's command, reading a bare ``--think`` as ``--think=true``, as Ollama's flag does:
    its value goes after ``=`` only, so ``run MODEL --think "why?"`` keeps its prompt (an
    option with an optional value would take the prompt's first word for its own)."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:  # typer's own click's Context
        end = args.index("--") if "--" in args else len(args)
        args = [THINK_TRUE if i < end and a == "--think" else a for i, a in enumerate(args)]
        return super().parse_args(ctx, args)


THINK_TRUE = "--think=true"


@app.command(
    "chat", help="Chat with a model: the same as run, always interactive.", cls=_RunCommand
)
@app.command(cls=_RunCommand)
def run(
    ctx: typer.Context,
    model: str = options.model(
        "A pulled model, a Hub reference (pulled if needed), a .gguf file, or 'demo'."
    ),
    prompt: list[str] = typer.Argument(None, help="The prompt; piped stdin comes before it."),
    # How to sample
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
    presence_penalty: float | None = options.penalty(
        "--presence-penalty", "Lower a token once it has appeared"
    ),
    frequency_penalty: float | None = options.penalty(
        "--frequency-penalty", "Lower a token each time it has appeared"
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
    # What to answer
    interactive: bool = typer.Option(
        False, "-i", "--interactive", help="Keep chatting after answering the prompt."
    ),
    image: list[str] | None = typer.Option(
        None,
        "--image",
        metavar="FILE",
        help="A picture for a vision model to read with the prompt (repeat for several). "
        "Picture files named in the prompt are read too, as Ollama reads them.",
    ),
    batch: str | None = typer.Option(
        None,
        "--batch",
        help="Answer the requests of a JSON Lines file ('-': stdin), one JSON line each.",
    ),
    parallel: int | None = options.parallel(
        "With --batch: requests answered at once. [default: from free memory, at most 8]"
    ),
    # How to show the answer
    output_format: OutputFormat = typer.Option(
        OutputFormat.text, "--format", help="text: stream the answer; json: one JSON object."
    ),
    verbose: bool = typer.Option(False, "--verbose", help="Print timings after each answer."),
    nowordwrap: bool = typer.Option(
        False, "--nowordwrap", help="Print the answer as it comes, without Markdown or wrapping."
    ),
    think: str | None = typer.Option(
        None,
        "--think",
        metavar="[=true|false|low|medium|high]",
        help="A thinking model's reasoning: --think (on), --think=false (off), or an effort. "
        "[default: the model's]",
    ),
    think_budget: int | None = typer.Option(
        None,
        "--think-budget",
        min=0,
        max=1_000_000,
        help="Close a thinking model's reasoning after N tokens; the answer follows.",
    ),
    hidethinking: bool = typer.Option(
        False,
        "--hidethinking",
        help="Let a thinking model think, without showing its reasoning (--format json keeps it).",
    ),
    # What to load, and where
    ctx_size: int | None = options.ctx(
        "Context size in tokens (default: the model's trained context where it fits memory, "
        "at least 4096; LOCALRUN_CONTEXT_LENGTH sets it)."
    ),
    threads: int | None = options.threads(
        "CPU threads (default: the physical cores other processes leave idle)."
    ),
    gpu_layers: str | None = options.gpu_layers(
        "Layers on the GPU: auto (as many as fit; LOCALRUN_GPU_MEMORY caps what each GPU may "
        "give), all, or a number (0: CPU only). [default: auto]"
    ),
    kv_type: str | None = options.kv_type(
        "The KV cache's type: f16, q8_0 (about half the memory) or q4_0 (a quarter). "
        "[default: the Modelfile's, LOCALRUN_KV_TYPE, else f16]"
    ),
    flash_attn: str | None = options.flash_attn(
        "Flash attention: auto, on or off (q8_0 and q4_0 caches need it). [default: auto]"
    ),
    cpu_moe: bool = options.cpu_moe(),
    n_cpu_moe: int | None = options.n_cpu_moe(),
    no_repack: bool = typer.Option(
        False,
        "--no-repack",
        help="Keep the weights on the CPU as the file has them, not repacked for llama.cpp's "
        "fastest kernels: slower, with the arithmetic of an RPC worker (the same text split "
        "or not).",
    ),
    no_prompt_cache: bool = typer.Option(
        False,
        "--no-prompt-cache",
        help="Neither read nor keep evaluated prompts on disk (the prompt cache).",
    ),
    speculative: str | None = options.speculative(
        "Guess tokens ahead and check several a step, with the same text as without: "
        "lookup (from the prompt and the answer so far: fast where the answer repeats them), "
        "draft (a smaller model of the same family, --draft), or off. "
        "[default: draft with --draft, else off]"
    ),
    draft: str | None = options.draft(
        "The draft model for --speculative draft: smaller, with the same vocabulary."
    ),
    rpc: str | None = options.rpc(),
    endpoint: str | None = options.endpoint(
        "Ask MODEL of this OpenAI-compatible server instead (vLLM, llama-server, "
        "Ollama, localrun serve...): see also 'localrun remote add'."
    ),
) -> None:
    """Answer a prompt, or chat.

    With no prompt on a terminal, open a chat.
    """
    from localrun.cli.runflags import Ask, Load, RunFlags, Sample, Show
    from localrun.cli.runplan import check
    from localrun.engine.options import think_value

    flags = RunFlags(
        ask=Ask(
            words=prompt or [],
            images=tuple(image or ()),
            interactive=interactive,
            batch=batch,
            parallel=parallel,
        ),
        sample=Sample(
            system=system,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            min_p=min_p,
            repeat_penalty=repeat_penalty,
            presence_penalty=presence_penalty,
            frequency_penalty=frequency_penalty,
            seed=seed,
            max_tokens=max_tokens,
            stop=tuple(stop or ()),
            schema=schema,
            grammar=grammar,
            think=think_value(think),
            think_budget=think_budget,
        ),
        show=Show(
            format=output_format,
            verbose=verbose,
            wordwrap=not nowordwrap,
            hidethinking=hidethinking,
        ),
        load=Load(
            model=model,
            endpoint=endpoint,
            n_ctx=ctx_size,
            threads=threads,
            gpu_layers=gpu_layers,
            kv_type=kv_type,
            flash_attn=flash_attn,
            speculative=speculative,
            draft=draft,
            rpc=rpc,
            repack=not no_repack,
            prompt_cache=not no_prompt_cache,
            cpu_moe=options.experts_on_cpu(cpu_moe, n_cpu_moe),
        ),
        chat_command=ctx.info_name == "chat",
    )
    plan = check(flags)  # before any model is loaded
    _go(flags, plan)


def _go(flags: RunFlags, plan: Plan) -> None:
    """Ask the remote engine the model's name leads to, or load the model here."""
    from localrun.cli.target import remote_and_settings

    load = flags.load
    remote, settings = remote_and_settings(load.model, load.endpoint)
    if remote is None:
        _go_local(resolve_or_pull(load.model), flags, plan)
        return
    if load.draft or load.speculative or flags.sample.grammar or load.rpc:
        raise UsageError(
            "a remote engine does its own decoding: --draft, --speculative, --grammar and "
            "--rpc are for local models (it takes --schema)",
            "drop them, or run a local model",
        )
    _go_remote(remote, settings, flags, plan)


def _pictures(plan: Plan, flags: RunFlags, takes: bool) -> tuple[str | None, list[Image]]:
    """The prompt and its pictures (--image's, and the files the prompt names), read only
    once the model is known to take them: a text model refuses --image unread."""
    if not takes:
        if flags.ask.images:
            raise NoVisionError(flags.load.model)
        return plan.text, []
    from localrun.cli.runinput import prompt_images
    from localrun.images import read_image

    pictures = [read_image(path) for path in flags.ask.images]
    text, found = prompt_images(plan.text, flags.ask.words)
    return text, pictures + found


def _options(
    settings: Settings, flags: RunFlags, constraint: Constraint | None
) -> engine.RunOptions:
    """The flags over the Modelfile's settings over the defaults; the constraint applied."""
    from localrun import engine

    s, load = flags.sample, flags.load
    opts = engine.run_options(
        settings,
        temperature=s.temperature,
        top_k=s.top_k,
        top_p=s.top_p,
        min_p=s.min_p,
        repeat_penalty=s.repeat_penalty,
        presence_penalty=s.presence_penalty,
        frequency_penalty=s.frequency_penalty,
        seed=s.seed,
        max_tokens=s.max_tokens,
        stop=s.stop,
        system=s.system,
        n_ctx=load.n_ctx,
        gpu_layers=options.gpu_layers_value(load.gpu_layers),
        threads=load.threads,
        speculative=load.speculative,
        draft=load.draft,
        kv_type=load.kv_type,
        flash_attn=load.flash_attn,
        think=s.think,
        think_budget=s.think_budget,
    )
    if constraint is None:
        return opts
    return replace(opts, sampling=constraint.apply(opts.sampling))


def _go_remote(remote: Remote, settings: Settings, flags: RunFlags, plan: Plan) -> None:
    from localrun.remote.answerer import RemoteAnswerer

    text, pictures = _pictures(plan, flags, takes=True)
    opts = _options(settings, flags, plan.constraint)
    # Only the settings given (flags, the Modelfile's) go: the rest are the engine's own.
    sampler = flags.sample.sampler()
    given = {name for name, value in sampler.items() if value is not None}
    send = frozenset(given | (set(settings.parameters) & set(sampler)))
    answerer = RemoteAnswerer(remote, send=send, parallel=flags.ask.parallel)
    _answer(answerer, remote.name, plan, flags, opts, text, pictures)


def _go_local(resolved: Resolved, flags: RunFlags, plan: Plan) -> None:
    from localrun.cli.runload import load_local
    from localrun.cli.runplan import Mode
    from localrun.engine.answerer import LocalAnswerer
    from localrun.engine.chat import LoadSettings

    text, pictures = _pictures(plan, flags, takes=resolved.settings.projector is not None)
    opts = _options(resolved.settings, flags, plan.constraint)
    show, load = flags.show, flags.load
    local = load_local(
        resolved, opts, load,
        batch=plan.mode is Mode.BATCH,
        parallel=flags.ask.parallel,
        verbose=show.verbose,
        spinner=show.format is OutputFormat.text and sys.stdout.isatty() and sys.stderr.isatty(),
    )  # fmt: skip
    try:
        # What the chat's /set parameter num_ctx and /load NAME load with again.
        again = LoadSettings(local.threads, opts.n_ctx, opts.gpu_layers, opts.kv_type,
                             opts.flash_attn, load.repack, local.workers)  # fmt: skip
        answerer = LocalAnswerer(local.loaded, again)
        _thinking_note(local.loaded, opts.think)
        _answer(answerer, load.model, plan, flags, opts, text, pictures)
    finally:
        local.loaded.close()


def _thinking_note(loaded: LoadedModel, think: bool | str | None) -> None:
    """Say once, on stderr, that a model asked not to think cannot be told so (its trace
    is then hidden). A remote engine's model is not known here: no note."""
    from localrun.engine.prompting import thinking_note

    note = thinking_note(loaded, think)
    if note is not None:
        print(f"Note: {note}", file=sys.stderr)


def _answer(
    model: Answerer,
    name: str,
    plan: Plan,
    flags: RunFlags,
    opts: engine.RunOptions,
    text: str | None,
    pictures: list[Image],
) -> None:
    """Answer as the plan says, with any model: a batch file, the chat, or one answer."""
    from localrun.cli.runplan import Mode

    if plan.mode is Mode.BATCH:
        from localrun.cli.batchrun import run_batch

        assert plan.lines is not None
        if run_batch(model, plan.lines, opts):
            raise typer.Exit(1)
    elif plan.mode is Mode.CHAT:
        from localrun.cli.runchat import chat
        from localrun.engine.chat import ChatSession

        session = ChatSession(model)
        session.think = opts.think
        chat(session, text, plan.piped, opts, flags.show, pictures)
    else:
        from localrun.cli.answer import answer
        from localrun.cli.runinput import piped_part

        assert text is not None
        document = piped_part(text, flags.ask.words) if plan.piped else ""
        answer(model, name, text, pictures, document, opts, flags.show, plan.constraint)
