"""llama.cpp's native sampler chain, built per answer from localrun's sampling settings."""

from __future__ import annotations

from typing import Any

from localrun.backend import SamplingParams
from localrun.backend.llamacpp import bindings

bindings.register()

import llama_cpp.llama_cpp as lc  # noqa: E402


def sampler_chain(sampling: SamplingParams, history: list[int], *, n_vocab: int, n_ctx: int) -> Any:
    """llama.cpp's sampler chain: penalties, top-k, top-p, min-p, temperature, seeded draw.

    llama.cpp's repetition penalty looks every candidate up in a hash map: 262,144
    look-ups a token for a Gemma vocabulary, about a fifth of the decode time here.
    At most ``last_n`` tokens are penalised and a penalty only lowers a logit, so the
    top k after penalties are always among the top ``k + last_n`` before them: a
    first top-k cut to ``k + last_n`` makes the penalty pass cheap and changes nothing.
    """
    chain = lc.llama_sampler_chain_init(lc.llama_sampler_chain_default_params())
    add = lc.llama_sampler_chain_add
    greedy = sampling.temperature <= 0
    keep = 1 if greedy else sampling.top_k  # how many candidates survive the top-k cut
    if sampling.repeat_penalty != 1.0 and sampling.repeat_last_n != 0:
        last_n = sampling.repeat_last_n if sampling.repeat_last_n > 0 else n_ctx
        if keep > 0 and sampling.repeat_last_n > 0:
            add(chain, lc.llama_sampler_init_top_k(keep + last_n))
        penalties = lc.llama_sampler_init_penalties(
            n_vocab, last_n, sampling.repeat_penalty, 0.0, 0.0
        )
        add(chain, penalties)
    if greedy:
        add(chain, lc.llama_sampler_init_greedy())
    else:
        if sampling.top_k > 0:
            add(chain, lc.llama_sampler_init_top_k(sampling.top_k))
        if sampling.top_p < 1.0:
            add(chain, lc.llama_sampler_init_top_p(sampling.top_p, 1))
        if sampling.min_p > 0.0:
            add(chain, lc.llama_sampler_init_min_p(sampling.min_p, 1))
        add(chain, lc.llama_sampler_init_temp(sampling.temperature))
        seed = lc.LLAMA_DEFAULT_SEED if sampling.seed is None else sampling.seed & 0xFFFFFFFF
        add(chain, lc.llama_sampler_init_dist(seed))
    # Repetition penalties look at recent tokens, the prompt's included.
    if sampling.repeat_last_n:
        for token in history[-max(sampling.repeat_last_n, 0) or None :]:
            lc.llama_sampler_accept(chain, token)
    return chain
