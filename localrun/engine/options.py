"""The settings of a run: defaults, under a Modelfile's parameters, under the flags."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from localrun import config
from localrun.backend import FLASH_ATTN, KV_TYPES, SamplingParams
from localrun.backend.llamacpp.offload import AUTO
from localrun.errors import UsageError
from localrun.models import parameters
from localrun.models.modelfile import SPECULATIVE
from localrun.models.resolve import Settings
from localrun.prompt.template import Message
from localrun.prompt.thinking import EFFORTS


@dataclass(frozen=True)
class RunOptions:
    """Everything that shapes a run, after layering the defaults, the Modelfile, the flags."""

    sampling: SamplingParams
    max_tokens: int | None
    stop: tuple[str, ...]
    system: str | None
    n_ctx: int | None
    gpu_layers: str | int
    threads: int | None
    history: tuple[Message, ...]
    speculative: str = "off"  # lookup, draft or off
    draft: str | None = None  # the draft model, with speculative "draft"
    kv_type: str = "f16"  # the KV cache's type: f16, q8_0 or q4_0
    flash_attn: str = "auto"
    # A thinking model's trace: True, False, an effort (low, medium, high), or None (the
    # model's default): --think, else the Modelfile's PARAMETER think.
    think: bool | str | None = None
    think_budget: int | None = None  # the most tokens a trace may take (None: no bound)


THINK_VALUES = ("true", "false", *EFFORTS)


def think_value(value: str | bool | None, where: str = "--think") -> bool | str | None:
    """A thinking setting as typed (a flag's, a Modelfile's ``true``, ``false``, ``low``,
    ``medium``, ``high``) as a Request takes it: a bool or an effort."""
    if value is None or isinstance(value, bool):
        return value
    text = value.strip().lower()
    if text not in THINK_VALUES:
        raise UsageError(f"{where} cannot be {value!r}", "use true, false, low, medium or high")
    return {"true": True, "false": False}.get(text, text)


def run_options(
    settings: Settings,
    *,
    temperature: float | None = None,
    top_k: int | None = None,
    top_p: float | None = None,
    min_p: float | None = None,
    repeat_penalty: float | None = None,
    repeat_last_n: int | None = None,
    presence_penalty: float | None = None,
    frequency_penalty: float | None = None,
    typical_p: float | None = None,
    dry_multiplier: float | None = None,
    dry_base: float | None = None,
    dry_allowed_length: int | None = None,
    dry_penalty_last_n: int | None = None,
    xtc_probability: float | None = None,
    xtc_threshold: float | None = None,
    seed: int | None = None,
    max_tokens: int | None = None,
    stop: tuple[str, ...] = (),
    system: str | None = None,
    n_ctx: int | None = None,
    gpu_layers: str | int | None = None,
    threads: int | None = None,
    speculative: str | None = None,
    draft: str | None = None,
    kv_type: str | None = None,
    flash_attn: str | None = None,
    think: bool | str | None = None,
    think_budget: int | None = None,
) -> RunOptions:
    """Flags (not None) over the Modelfile's parameters over the defaults (Ollama's)."""
    p = settings.parameters
    d = SamplingParams()
    extra: dict[str, float | int | None] = {
        "presence_penalty": presence_penalty,
        "frequency_penalty": frequency_penalty,
        "typical_p": typical_p,
        "dry_multiplier": dry_multiplier,
        "dry_base": dry_base,
        "dry_allowed_length": dry_allowed_length,
        "dry_penalty_last_n": dry_penalty_last_n,
        "xtc_probability": xtc_probability,
        "xtc_threshold": xtc_threshold,
    }
    flags = {
        "temperature": temperature,
        "top_k": top_k,
        "top_p": top_p,
        "min_p": min_p,
        "repeat_penalty": repeat_penalty,
        "repeat_last_n": repeat_last_n,
        **extra,
        "seed": seed,
        "num_predict": max_tokens,
        "num_ctx": n_ctx,
        "num_thread": threads,
        "think_budget": think_budget,
    }
    for name, value in flags.items():
        if value is not None:
            _check_flag(name, value)

    def pick(flag: Any, key: str, default: Any) -> Any:
        return flag if flag is not None else p.get(key, default)

    predict = pick(max_tokens, "num_predict", None)
    draft = pick(draft, "draft", None)
    # A draft model named (by flag or Modelfile) means guessing with it, unless told otherwise.
    method = pick(speculative, "speculative", "draft" if draft else "off")
    if method not in SPECULATIVE:
        raise UsageError(
            f"--speculative cannot be {method!r}", "use --speculative lookup, draft or off"
        )
    if method == "draft" and not draft:
        raise UsageError(
            "speculative decoding with a draft model needs the draft model",
            "name it with --draft MODEL (a smaller model of the same family)",
        )
    gpu = pick(gpu_layers, "num_gpu", AUTO)
    kv = str(
        pick(kv_type, "kv_type", None) or config.setting("kv", "type", "LOCALRUN_KV_TYPE") or "f16"
    )
    flash = str(
        pick(flash_attn, "flash_attn", None)
        or config.setting("kv", "flash_attn", "LOCALRUN_FLASH_ATTN")
        or "auto"
    )
    check_kv(kv, flash)
    chosen_seed = pick(seed, "seed", d.seed)
    return RunOptions(
        sampling=SamplingParams(
            temperature=float(pick(temperature, "temperature", d.temperature)),
            top_k=int(pick(top_k, "top_k", d.top_k)),
            top_p=float(pick(top_p, "top_p", d.top_p)),
            min_p=float(pick(min_p, "min_p", d.min_p)),
            repeat_penalty=float(pick(repeat_penalty, "repeat_penalty", d.repeat_penalty)),
            repeat_last_n=int(pick(repeat_last_n, "repeat_last_n", d.repeat_last_n)),
            seed=None if chosen_seed is None or int(chosen_seed) < 0 else int(chosen_seed),
            **{
                name: type(getattr(d, name))(pick(value, name, getattr(d, name)))
                for name, value in extra.items()
            },
        ),
        max_tokens=None if predict is None or int(predict) < 0 else int(predict),
        stop=stop or settings.stop,
        system=system if system is not None else settings.system,
        n_ctx=pick(n_ctx, "num_ctx", None),
        gpu_layers=AUTO if gpu == -1 else gpu,
        threads=pick(threads, "num_thread", None),
        history=settings.messages,
        speculative=str(method),
        draft=str(draft) if draft and method == "draft" else None,
        kv_type=kv,
        flash_attn=flash,
        think=think if think is not None or "think" not in p else _modelfile_think(p["think"]),
        think_budget=_whole(pick(think_budget, "think_budget", None)),
    )


def _whole(value: float | int | str | None) -> int | None:
    return None if value is None else int(value)


def _modelfile_think(value: float | int | str) -> bool | str | None:
    return think_value(str(value), "PARAMETER think")


def check_kv(kv_type: str, flash_attn: str) -> None:
    """A KV cache type and flash attention setting llama.cpp can run, or a UsageError."""
    if kv_type not in KV_TYPES:
        raise UsageError(
            f"the KV cache type cannot be {kv_type!r}", f"use one of {', '.join(KV_TYPES)}"
        )
    if flash_attn not in FLASH_ATTN:
        raise UsageError(
            f"--flash-attn cannot be {flash_attn!r}", f"use one of {', '.join(FLASH_ATTN)}"
        )
    if kv_type != "f16" and flash_attn == "off":
        raise UsageError(
            f"a {kv_type} KV cache needs flash attention (llama.cpp quantizes values only there)",
            "use --flash-attn auto or on, or --kv-type f16",
        )


# The run flags under their Modelfile parameter names: one table of ranges for both.
FLAG_NAMES = parameters.flag_names()


def _check_flag(name: str, value: float | int) -> None:
    try:
        parameters.check(name, value)
    except ValueError as e:
        flag = FLAG_NAMES[name]
        raise UsageError(
            str(e).replace(name, flag, 1), f"see 'localrun run --help' for {flag}"
        ) from None
