"""``localrun run MODEL [PROMPT...]``: answer a prompt, streaming the text to stdout."""

from __future__ import annotations

import enum
import json
import sys
from contextlib import AbstractContextManager, nullcontext
from typing import TextIO

import typer

from localrun import engine
from localrun.backend import SamplingParams
from localrun.cli import app
from localrun.cli.output import format_stats
from localrun.cli.progress import reporter
from localrun.errors import UsageError
from localrun.system import physical_cores


class OutputFormat(str, enum.Enum):
    text = "text"
    json = "json"


def read_prompt(args: list[str], stdin: TextIO) -> str:
    """The prompt: piped stdin first, then the arguments (as Ollama and llm do)."""
    parts = []
    if not stdin.isatty():
        data = stdin.buffer.read() if hasattr(stdin, "buffer") else stdin.read().encode()
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
    if args:
        parts.append(" ".join(args))
    if parts:
        return "\n\n".join(parts)
    if stdin.isatty():
        raise UsageError(
            "interactive chat is not available yet: give a prompt",
            "pass it as arguments, or pipe it in: echo 'question' | localrun run MODEL",
        )
    raise UsageError(
        "no prompt: the arguments are empty and standard input was empty",
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


@app.command()
def run(
    model: str = typer.Argument(..., help="A .gguf file, or 'demo' for the packaged demo model."),
    prompt: list[str] = typer.Argument(None, help="The prompt; piped stdin comes before it."),
    system: str | None = typer.Option(None, "--system", help="System prompt."),
    temperature: float = typer.Option(0.8, min=0.0, help="Sampling temperature; 0 is greedy."),
    top_k: int = typer.Option(40, "--top-k", min=0, help="Keep the K most likely tokens (0: all)."),
    top_p: float = typer.Option(0.9, "--top-p", min=0.0, max=1.0, help="Nucleus sampling mass."),
    min_p: float = typer.Option(0.0, "--min-p", min=0.0, max=1.0, help="Minimum probability."),
    repeat_penalty: float = typer.Option(
        1.1, "--repeat-penalty", min=0.0, help="Penalty for repeated tokens (1: none)."
    ),
    seed: int | None = typer.Option(None, "--seed", help="Random seed, for repeatable output."),
    max_tokens: int | None = typer.Option(
        None, "--max-tokens", min=1, help="Stop after this many tokens."
    ),
    stop: list[str] = typer.Option(None, "--stop", help="Stop at this text (repeatable)."),
    ctx: int | None = typer.Option(
        None, "--ctx", min=1, help="Context size in tokens (default: the model's, at most 4096)."
    ),
    threads: int | None = typer.Option(
        None, "--threads", min=1, help="CPU threads (default: the physical cores)."
    ),
    verbose: bool = typer.Option(False, "--verbose", help="Print timings to stderr."),
    output_format: OutputFormat = typer.Option(
        OutputFormat.text, "--format", help="text: stream the answer; json: one JSON object."
    ),
) -> None:
    """Answer a prompt with a model."""
    text = read_prompt(prompt or [], sys.stdin)
    n_threads = threads or physical_cores()
    request = engine.Request(
        prompt=text,
        system=system,
        sampling=SamplingParams(
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            min_p=min_p,
            repeat_penalty=repeat_penalty,
            seed=seed,
        ),
        max_tokens=max_tokens,
        stop=tuple(stop or ()),
    )
    spinner: AbstractContextManager[object] = nullcontext()
    if sys.stderr.isatty() and sys.stdout.isatty() and output_format is OutputFormat.text:
        from rich.console import Console

        spinner = Console(stderr=True).status(f"Loading {model}…")
    path = engine.resolve_model(model, reporter())  # pulls a Hub model not yet pulled
    with spinner:
        loaded = engine.load_model(model, n_ctx=ctx, n_threads=n_threads, path=path)
    stream = _Stream(sys.stdout)
    answer: list[str] = []
    try:
        for event in engine.generate(loaded, request):
            if isinstance(event, engine.TextDelta):
                if output_format is OutputFormat.json:
                    answer.append(event.text)
                else:
                    stream.write(event.text)
            elif isinstance(event, engine.Finished):
                stats = event.stats
    finally:
        stream.end_line()
        loaded.close()
    if output_format is OutputFormat.json:
        result = {
            "model": model,
            "mode": loaded.mode,
            "response": "".join(answer),
            "stats": stats.as_dict(),
        }
        print(json.dumps(result, ensure_ascii=False))
    if verbose:
        print(format_stats(stats, mode=loaded.mode, threads=n_threads), file=sys.stderr)
