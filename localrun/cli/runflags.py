"""``localrun run``'s flags, folded by what they decide: what to answer, how to sample, how to
show the answer, and what to load where. The command gathers them; the rest of run reads
these instead of thirty-two parameters. Imported when run runs, not at every command's
start-up: making the classes takes a millisecond or more."""

from __future__ import annotations

from dataclasses import dataclass

from localrun.cli.options import OutputFormat


@dataclass(frozen=True)
class Ask:
    """What to answer: the prompt's words (stdin comes before them), pictures, and whether
    to chat on afterwards or answer a batch file's requests instead."""

    words: list[str]
    images: tuple[str, ...]
    interactive: bool
    batch: str | None  # a JSON Lines file, '-' for stdin
    parallel: int | None  # with batch: requests answered at once


@dataclass(frozen=True)
class Sample:
    """How to sample: each flag over the Modelfile's parameter over the default (None: not
    given), and a constraint on the answer (schema or grammar)."""

    system: str | None
    temperature: float | None
    top_k: int | None
    top_p: float | None
    min_p: float | None
    repeat_penalty: float | None
    seed: int | None
    max_tokens: int | None
    stop: tuple[str, ...]
    schema: str | None
    grammar: str | None
    # --think: a thinking model's trace on or off, or an effort (None: the model's default)
    think: bool | str | None = None
    think_budget: int | None = None  # the most tokens a trace may take
    presence_penalty: float | None = None
    frequency_penalty: float | None = None

    def sampler(self) -> dict[str, float | int | None]:
        """The sampler's flags under their Modelfile names (which a remote engine takes)."""
        return {
            "temperature": self.temperature,
            "top_k": self.top_k,
            "top_p": self.top_p,
            "min_p": self.min_p,
            "repeat_penalty": self.repeat_penalty,
            "presence_penalty": self.presence_penalty,
            "frequency_penalty": self.frequency_penalty,
            "seed": self.seed,
        }


@dataclass(frozen=True)
class Show:
    """How to show the answer."""

    format: OutputFormat
    verbose: bool  # timings after each answer, on stderr
    wordwrap: bool  # Markdown and wrapping on a terminal (--nowordwrap: as it comes)
    hidethinking: bool = False  # a thinking model's trace is not shown (--format json keeps it)


@dataclass(frozen=True)
class Load:
    """What to load, and where: the model (or a remote engine's) and how to run it here."""

    model: str
    endpoint: str | None
    n_ctx: int | None
    threads: int | None
    gpu_layers: str | None  # auto, all or a number, as parse_gpu_layers left it
    kv_type: str | None
    flash_attn: str | None
    speculative: str | None
    draft: str | None
    rpc: str | None
    repack: bool
    prompt_cache: bool
    cpu_moe: int = 0  # the first N layers' experts on the CPU (-1: every layer's)


@dataclass(frozen=True)
class RunFlags:
    ask: Ask
    sample: Sample
    show: Show
    load: Load
    chat_command: bool  # called as `localrun chat`: always interactive
