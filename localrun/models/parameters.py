"""The one table of a model's parameters, and what each surface calls them.

A parameter is set in seven places: a Modelfile's PARAMETER, run's flags, the chat's ``/set
parameter``, a ``--batch`` line, the Ollama API's ``options``, the OpenAI API's fields, and
what the remote client sends to another engine. Each reads its names, type and range here, so
adding a parameter is one line. Below the engine (no llama.cpp, no HTTP): the models, the
engine, the server and the remote client all import it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from localrun.backend import MAX_THREADS
from localrun.prompt.thinking import EFFORTS

INF = math.inf


@dataclass(frozen=True)
class Parameter:
    """One setting: its Modelfile (Ollama) name, type and range, and its other names."""

    name: str  # a Modelfile's PARAMETER name, and the Ollama API's option
    kind: type  # int, float or str
    low: float = -INF  # the range, both ends allowed (numbers only)
    high: float = INF
    choices: tuple[str, ...] = ()  # the values a str parameter may take (none: any text)
    example: str = "N"  # a PARAMETER line's value in the hint of an error
    keyword: str = ""  # run_options' keyword (and the engine's setting); "": the name
    flag: str | None = None  # run's flag
    chat: tuple[str, ...] = ()  # /set parameter: its canonical name first, then aliases
    batch: str | None = None  # a --batch line's field
    ollama: bool = False  # in the Ollama API's options (read per request)
    per_request: bool = False  # applied to each answer (not fixed when the model loads)
    openai: tuple[str, ...] = ()  # the OpenAI API's own fields for it, first one first
    llama_server: tuple[str, ...] = ()  # beyond OpenAI's: the fields llama-server, vLLM take
    remote: bool = False  # sent to a remote engine when the user gave it
    help: str = ""  # run's --help line for the flag

    @property
    def setting(self) -> str:
        """Its name among the engine's settings (run_options' keyword)."""
        return self.keyword or self.name


P = Parameter
# Ollama's defaults are SamplingParams'; the order is the Modelfile's reference order, and the
# order in which the APIs check their fields (which error a request with two bad ones gets).
TABLE: tuple[Parameter, ...] = (
    # On /v1 too (localrun's own field there: an agent's request may need a larger context).
    P("num_ctx", int, 1, 10_000_000, keyword="n_ctx", flag="--ctx", ollama=True,
      llama_server=("num_ctx",),
      help="Context size in tokens (default: the trained context where it fits, >= 4096)."),
    P("temperature", float, 0, 100, flag="--temperature", chat=("temperature",),
      batch="temperature", ollama=True, per_request=True, openai=("temperature",), remote=True,
      help="Sampling temperature; 0 is greedy. [default: 0.8]"),
    P("top_k", int, 0, 1_000_000, flag="--top-k", chat=("top_k",), batch="top_k", ollama=True,
      per_request=True, llama_server=("top_k",), remote=True,
      help="Keep the K most likely tokens (0: all). [default: 40]"),
    P("top_p", float, 0, 1, flag="--top-p", chat=("top_p",), batch="top_p", ollama=True,
      per_request=True, openai=("top_p",), remote=True,
      help="Nucleus sampling mass. [default: 0.9]"),
    P("min_p", float, 0, 1, flag="--min-p", chat=("min_p",), ollama=True, per_request=True,
      llama_server=("min_p",), remote=True, help="Minimum probability. [default: 0.0]"),
    P("repeat_penalty", float, 0, 100, flag="--repeat-penalty", chat=("repeat_penalty",),
      ollama=True, per_request=True, llama_server=("repeat_penalty", "repetition_penalty"),
      remote=True, help="Penalty for repeated tokens (1: none). [default: 1.1]"),
    P("repeat_last_n", int, -1, 1_000_000, flag="--repeat-last-n", chat=("repeat_last_n",),
      ollama=True, per_request=True, llama_server=("repeat_last_n",)),
    # OpenAI's penalties (-2 to 2 there, as here), on llama.cpp's penalties sampler.
    P("presence_penalty", float, -2, 2, flag="--presence-penalty", chat=("presence_penalty",),
      batch="presence_penalty", ollama=True, per_request=True, openai=("presence_penalty",),
      remote=True, help="Lower a token once it has appeared (OpenAI's; 0: none). [default: 0]"),
    P("frequency_penalty", float, -2, 2, flag="--frequency-penalty",
      chat=("frequency_penalty",), batch="frequency_penalty", ollama=True, per_request=True,
      openai=("frequency_penalty",), remote=True,
      help="Lower a token each time it has appeared (OpenAI's; 0: none). [default: 0]"),
    # llama.cpp's other samplers, as llama-server names them (Modelfile, options, /v1 fields).
    P("typical_p", float, 0, 1, chat=("typical_p",), ollama=True, per_request=True,
      llama_server=("typical_p",), remote=True),
    P("dry_multiplier", float, 0, 100, chat=("dry_multiplier",), ollama=True, per_request=True,
      llama_server=("dry_multiplier",)),
    P("dry_base", float, 1, 10, chat=("dry_base",), ollama=True, per_request=True,
      llama_server=("dry_base",)),
    P("dry_allowed_length", int, 1, 1_000, chat=("dry_allowed_length",), ollama=True,
      per_request=True, llama_server=("dry_allowed_length",)),
    P("dry_penalty_last_n", int, -1, 10_000_000, chat=("dry_penalty_last_n",), ollama=True,
      per_request=True, llama_server=("dry_penalty_last_n",)),
    P("xtc_probability", float, 0, 1, chat=("xtc_probability",), ollama=True, per_request=True,
      llama_server=("xtc_probability",)),
    P("xtc_threshold", float, 0, 1, chat=("xtc_threshold",), ollama=True, per_request=True,
      llama_server=("xtc_threshold",)),
    # -1: a random seed (as Ollama); llama.cpp's seeds are 32 bits, and 0xFFFFFFFF means random.
    P("seed", int, -1, 0xFFFFFFFE, flag="--seed", chat=("seed",), batch="seed", ollama=True,
      per_request=True, openai=("seed",), remote=True,
      help="Random seed, 0 to 4294967294, for repeatable output; -1: random."),
    P("stop", str, chat=("stop",), batch="stop", help="Stop at this text (repeatable)."),
    P("num_predict", int, -2, 10_000_000, keyword="max_tokens", flag="--max-tokens",
      chat=("max_tokens", "num_predict"), batch="max_tokens", ollama=True, per_request=True,
      openai=("max_completion_tokens", "max_tokens"), help="Stop after this many tokens."),
    P("num_gpu", int, -1, 100_000, keyword="gpu_layers"),
    P("num_thread", int, 1, MAX_THREADS, keyword="threads", flag="--threads",  # ggml aborts above
      help="CPU threads (default: the physical cores other processes leave idle)."),
    # localrun's own: how answers guess ahead, with which draft model; the KV cache's type.
    P("speculative", str, choices=("lookup", "draft", "off"), example="lookup"),
    P("draft", str, example="MODEL"),
    P("kv_type", str, choices=("f16", "q8_0", "q4_0"), example="q8_0", ollama=True),
    P("flash_attn", str, choices=("auto", "on", "off"), example="auto", ollama=True),
    # A thinking model's trace (run's --think, the chat's /set think, a --batch line's and
    # the APIs' "think" field: a bool or an effort there, so not read from this table).
    P("think", str, choices=("true", "false", *EFFORTS), example="false"),
    # The most tokens a trace may take (as llama.cpp's --reasoning-budget): a Request's field,
    # not a sampler's, so a --batch line's "think_budget" is read apart (engine/jobs.py).
    P("think_budget", int, 0, 1_000_000, flag="--think-budget", chat=("think_budget",),
      ollama=True, per_request=True,
      help="Close a thinking model's reasoning after N tokens; the answer follows."),
)  # fmt: skip
BY_NAME: dict[str, Parameter] = {p.name: p for p in TABLE}


def check(name: str, value: float | int) -> None:
    """Raise ValueError if a numeric parameter is out of its range (NaN and infinities are)."""
    p = BY_NAME.get(name)
    low, high = (p.low, p.high) if p is not None else (-INF, INF)
    if not low <= value <= high:  # False for NaN too
        raise ValueError(f"{name} must be between {_bound(low)} and {_bound(high)}, not {value}")


def _bound(value: float) -> str:
    """A range's end as a user types it: ``4294967294``, not ``%g``'s ``4.29497e+09``."""
    return str(int(value)) if math.isfinite(value) and value == int(value) else f"{value:g}"


def flag_names() -> dict[str, str]:
    """Each parameter that run has a flag for, and the flag: ``{"num_predict": "--max-tokens"}``."""
    return {p.name: p.flag for p in TABLE if p.flag and p.kind is not str}


def chat_names() -> dict[str, str]:
    """``/set parameter`` names (aliases too) and the canonical name each sets."""
    return {alias: p.chat[0] for p in TABLE for alias in p.chat}


def per_request() -> tuple[Parameter, ...]:
    """What each answer may set for itself (sampling and length)."""
    return tuple(p for p in TABLE if p.per_request)


def openai_fields() -> list[tuple[str, Parameter]]:
    """The OpenAI API's fields and their parameters: OpenAI's own first, then llama-server's
    and vLLM's; of two names for one parameter, the first given wins."""
    own = [(field, p) for p in TABLE for field in p.openai]
    return own + [(field, p) for p in TABLE for field in p.llama_server]
