"""llama.cpp's native sampler chain, built per answer from localrun's sampling settings.

Every decoded token is sampled, so the chain's cost is paid on every step. Two cuts keep it
small without changing which token comes out:

- llama.cpp's repetition penalty looks every candidate up in a hash map: 262,144 look-ups a
  token for a Gemma vocabulary, about a fifth of the decode time here. At most ``last_n``
  tokens are penalised and a penalty only lowers a logit, so the top k after penalties are
  always among the top ``k + last_n`` before them: the chain starts with a top-k cut to
  ``k + last_n``.
- ``llama_sampler_sample`` then still copies the whole vocabulary into a candidate array and
  partially sorts it for that first cut: about 0.9 ms a token on this CPU, 3-4% of a decode
  step, paid again for every sequence in a batch. When the chain's first step keeps only the
  ``n`` best candidates, :func:`sample` hands it every candidate whose logit is within a margin
  of the best instead (two vectorised numpy passes over the logits; the margin widens until at
  least ``n`` are in, and each chain keeps the margin that last held). That set holds the
  chain's first cut whole, so the chain picks the same token from it that it would from the
  whole vocabulary, in about half the time (0.45-0.55 ms, measured inside a decode loop, where
  the 250 MB of weights each step reads have just pushed everything else out of the caches).

numpy is already a dependency of llama-cpp-python. It is imported in the background while a
model loads (:func:`preload`), so that neither ``import`` of the backend nor the first token
waits for it, without touching the environment llama.cpp reads meanwhile.

Over 400 lines because the grammar's sampling belongs with the chain it runs beside: the cut
to the candidates near the best, the control tokens it must not pick, and the guard on its
cost all read the same candidate arrays, and splitting them apart would pass those arrays
between modules on every token.
"""

from __future__ import annotations

import ctypes
import importlib
import os
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from localrun.backend import SamplingParams
from localrun.backend.llamacpp import bindings, logs
from localrun.errors import GenerationError

bindings.register()

import llama_cpp.llama_cpp as lc  # noqa: E402

_FAR = 24.0  # logits below the best past which a grammar's candidates are not looked for
_GRAMMAR_SETS = (256, 4096, 32768)  # the best candidates a grammar checks first
# The most one token's grammar checks may be expected to take. llama.cpp checks every candidate
# against every open alternative: a 4,000-value enum whose values begin alike took 10 s a
# token over the whole vocabulary, and the engine thread (every other answer) waits meanwhile.
GRAMMAR_TOKEN_BUDGET_S = 1.0
_FIRST_MARGIN = 8.0  # logits; widened until the first cut fits inside, then adapted per token


# What importing numpy sets in the process's environment for a moment, and unsets after:
# OpenBLAS is then imported without pinning the main thread to one core. numpy 2 uses putenv
# and unsetenv (numpy 1.26 set os.environ), which rewrite the C environment. llama.cpp reads
# it (getenv) while it loads a model, in another thread: a getenv that met the rewrite read a
# freed array and crashed the process (SIGSEGV in getenv("LLAMA_BATCH_DEBUG"), about one load
# in a thousand here). Set beforehand, in this thread, numpy finds them set and leaves the
# environment as it is.
_NUMPY_SETS = {"OPENBLAS_MAIN_FREE": "1", "GOTOBLAS_MAIN_FREE": "1"}


def numpy_environment() -> None:
    """Set what importing numpy would set in the environment (see _NUMPY_SETS)."""
    for key, value in _NUMPY_SETS.items():
        os.environ.setdefault(key, value)


def preload() -> threading.Thread:
    """Start importing numpy in another thread (model loads release the GIL meanwhile),
    with the environment numpy would set already set."""
    numpy_environment()
    thread = threading.Thread(target=importlib.import_module, args=("numpy",), daemon=True)
    thread.start()
    return thread


@dataclass
class Chain:
    """A native sampler chain and what :func:`sample` needs to know of its first step."""

    handle: Any  # llama_sampler *
    first_cut: int  # the chain's first step keeps this many best candidates; 0: it reads all
    margin: float = _FIRST_MARGIN  # the last margin that held the first cut, for the next token
    grammar: Any = None  # llama_sampler * of a grammar the answer must match, or None
    keep: int = 0  # how many candidates the chain's top-k keeps (1 greedy; 0: no top-k)
    temperature: float = 0.0
    recent: deque[int] | None = None  # with a grammar: the tokens its penalties look at
    # With a grammar: the control tokens it must not let through (see sampler_chain).
    blocked: frozenset[int] = frozenset()
    _blocked_ids: Any = field(default=None, repr=False)  # the same, as a numpy array
    _buffer: Any = field(default=None, repr=False)  # numpy candidate array, grown as needed
    _mask: Any = field(default=None, repr=False)  # numpy bool array, one per logit


# llama.cpp's grammar parser recurses once per level of parentheses, about 420 bytes of stack a
# level here (19,000 levels crashed an 8 MiB stack): grammars are parsed on a thread with a
# stack of this size, whatever thread asks, so the prompt layer's cap of 1,024 levels
# (localrun.prompt.grammar) leaves a margin of about 40 times.
GRAMMAR_STACK = 16 << 20
_STACK_SIZE_LOCK = threading.Lock()


def new_grammar(vocab: Any, grammar: str, errors: list[str] | None = None) -> Any:
    """llama.cpp's grammar sampler for ``grammar`` (GBNF, root rule ``root``), parsed on a
    thread with a stack of ``GRAMMAR_STACK``; None if it cannot parse it. Then ``errors``
    gets the lines llama.cpp logged as errors (its parser also writes to the process's
    stderr directly: see ``logs.stderr_text``)."""
    made: list[Any] = []

    def parse() -> None:
        logs.start()
        made.append(lc.llama_sampler_init_grammar(vocab, grammar.encode(), b"root") or None)
        if made[0] is None and errors is not None:
            errors.extend(logs.recent_errors())

    with _STACK_SIZE_LOCK:  # the size applies to every thread made meanwhile
        previous = threading.stack_size(GRAMMAR_STACK)
        try:
            parser = threading.Thread(target=parse, name="localrun-grammar", daemon=True)
            parser.start()
        finally:
            threading.stack_size(previous)
    parser.join()
    return made[0] if made else None


def sampler_chain(
    sampling: SamplingParams,
    history: list[int],
    *,
    n_vocab: int,
    n_ctx: int,
    vocab: Any = None,
    grammar: Any = None,
    specials: Sequence[tuple[int, str]] = (),
) -> Chain:
    """llama.cpp's sampler chain: penalties, top-k, top-p, min-p, temperature, seeded draw;
    with a grammar, a grammar sampler beside it (see :func:`sample`): ``grammar``, built
    before by :func:`new_grammar` (the chain owns it from now on), or built now.

    llama.cpp's grammar reads a control token as its text (``<unk>``, ``<pad>``), which an
    answer never shows: a string of four characters came out as three (an ``<unk>`` counted
    for five). Of ``specials`` (control tokens and their texts), those whose text the grammar
    does not spell out are never picked with it."""
    if grammar is None and sampling.grammar is not None:
        grammar = new_grammar(vocab, sampling.grammar)
        if grammar is None:
            raise ValueError("llama.cpp cannot parse the grammar")  # checked before: a bug
    chain = lc.llama_sampler_chain_init(lc.llama_sampler_chain_default_params())
    add = lc.llama_sampler_chain_add
    greedy = sampling.temperature <= 0
    keep = 1 if greedy else sampling.top_k  # how many candidates survive the top-k cut
    first_cut = _first_steps(chain, sampling, keep, n_vocab=n_vocab, n_ctx=n_ctx, vocab=vocab)
    penalised = _penalised(sampling)
    last_n = sampling.repeat_last_n if sampling.repeat_last_n > 0 else n_ctx
    dry = sampling.dry_multiplier > 0 and sampling.dry_penalty_last_n != 0
    if greedy:
        add(chain, lc.llama_sampler_init_greedy())
    else:
        _add_samplers(chain, sampling)
    # Penalties look at recent tokens, the prompt's included.
    looked_at = _looked_back(sampling, n_ctx)
    for token in history[-looked_at:] if looked_at else ():
        lc.llama_sampler_accept(chain, token)
    recent = None
    if grammar is not None and (penalised or dry):
        window = max(last_n if penalised else 0, looked_at)
        recent = deque(history[-window:], maxlen=window)
    raised = sampling.presence_penalty < 0 or sampling.frequency_penalty < 0
    if grammar is not None and (raised or sampling.logit_bias):
        keep = 0  # logits moved where the grammar's cut cannot see: it checks every candidate
    blocked: frozenset[int] = frozenset()
    if grammar is not None:
        blocked = _not_spelled(specials, sampling.grammar or "")
    return Chain(
        chain,
        first_cut if first_cut < n_vocab else 0,
        grammar=grammar,
        blocked=blocked,
        keep=keep if 0 < keep < n_vocab else 0,
        temperature=max(sampling.temperature, 0.0),
        recent=recent,
    )


def _first_steps(
    chain: Any, sampling: SamplingParams, keep: int, *, n_vocab: int, n_ctx: int, vocab: Any
) -> int:
    """The chain's steps before its cuts (the logit bias, the penalties, DRY), and how many
    of the best candidates the chain must be handed to pick as it would from them all (0:
    all of them)."""
    add = lc.llama_sampler_chain_add
    first_cut = keep if keep > 0 else 0
    last_n = sampling.repeat_last_n if sampling.repeat_last_n > 0 else n_ctx
    dry = sampling.dry_multiplier > 0 and sampling.dry_penalty_last_n != 0
    # What may raise a logit, or lower any token's (DRY: a token that extends a repeat of
    # the whole context), leaves no cut of the best candidates sure to hold the chain's.
    if dry or sampling.presence_penalty < 0 or sampling.frequency_penalty < 0:
        first_cut = 0
    if sampling.logit_bias:
        add(chain, _bias(sampling.logit_bias, n_vocab))
        if any(b > 0 for _, b in sampling.logit_bias):
            first_cut = 0  # a token lifted may come from anywhere
    if _penalised(sampling):
        if first_cut and sampling.repeat_last_n > 0:
            first_cut = keep + last_n  # a penalty only lowers: the best k are among these
            add(chain, lc.llama_sampler_init_top_k(first_cut))
        else:
            first_cut = 0
        add(chain, lc.llama_sampler_init_penalties(
            n_vocab, last_n, sampling.repeat_penalty, sampling.frequency_penalty,
            sampling.presence_penalty))  # fmt: skip
    if dry:
        add(chain, _dry(vocab, sampling, n_ctx))
    # Each token the bias lowers leaves its place among the best to the next one.
    return first_cut + len(sampling.logit_bias) if first_cut else 0


def _bias(pairs: Sequence[tuple[int, float]], n_vocab: int) -> Any:
    array = (lc.llama_logit_bias * len(pairs))()
    for i, (token, bias) in enumerate(pairs):
        array[i].token = token  # type: ignore[assignment]  # ctypes takes an int
        array[i].bias = bias
    return lc.llama_sampler_init_logit_bias(n_vocab, len(pairs), array)


def _penalised(sampling: SamplingParams) -> bool:
    """Whether llama.cpp's penalties sampler has anything to do."""
    on = (sampling.repeat_penalty != 1.0 or sampling.presence_penalty != 0.0
          or sampling.frequency_penalty != 0.0)  # fmt: skip
    return on and sampling.repeat_last_n != 0


def _looked_back(sampling: SamplingParams, n_ctx: int) -> int:
    """How many of the latest tokens the penalties and DRY look at (0: none)."""
    found = 0
    if _penalised(sampling):
        found = sampling.repeat_last_n if sampling.repeat_last_n > 0 else n_ctx
    if sampling.dry_multiplier > 0 and sampling.dry_penalty_last_n != 0:
        dry = sampling.dry_penalty_last_n
        found = max(found, dry if dry > 0 else n_ctx)
    return found


# DRY's sequence breakers, llama.cpp's defaults: a repeat does not run on across them.
_DRY_BREAKERS = (b"\n", b":", b'"', b"*")


def _dry(vocab: Any, sampling: SamplingParams, n_ctx: int) -> Any:
    if vocab is None:
        raise ValueError("DRY needs the model's vocabulary")  # llama.cpp would crash
    breakers = (ctypes.c_char_p * len(_DRY_BREAKERS))(*_DRY_BREAKERS)
    last_n = sampling.dry_penalty_last_n if sampling.dry_penalty_last_n > 0 else n_ctx
    return lc.llama_sampler_init_dry(
        vocab, sampling.dry_multiplier, sampling.dry_base, sampling.dry_allowed_length,
        last_n, breakers, len(_DRY_BREAKERS),
    )  # fmt: skip


def _add_samplers(chain: Any, sampling: SamplingParams) -> None:
    """The cuts and the draw, in llama.cpp's own order: top-k, typical, top-p, min-p, XTC,
    temperature, a seeded draw."""
    add = lc.llama_sampler_chain_add
    seed = lc.LLAMA_DEFAULT_SEED if sampling.seed is None else sampling.seed & 0xFFFFFFFF
    if sampling.top_k > 0:
        add(chain, lc.llama_sampler_init_top_k(sampling.top_k))
    if sampling.typical_p < 1.0:
        add(chain, lc.llama_sampler_init_typical(sampling.typical_p, 1))
    if sampling.top_p < 1.0:
        add(chain, lc.llama_sampler_init_top_p(sampling.top_p, 1))
    if sampling.min_p > 0.0:
        add(chain, lc.llama_sampler_init_min_p(sampling.min_p, 1))
    if sampling.xtc_probability > 0.0:
        add(chain, lc.llama_sampler_init_xtc(
            sampling.xtc_probability, sampling.xtc_threshold, 1, seed))  # fmt: skip
    add(chain, lc.llama_sampler_init_temp(sampling.temperature))
    add(chain, lc.llama_sampler_init_dist(seed))


def sample(chain: Chain, ctx: Any, row: int, n_vocab: int) -> int:
    """The chain's token for output ``row``, the same as ``llama_sampler_sample`` would give.

    With a grammar, as llama.cpp's own tools do: the token the chain picks without it, if the
    grammar allows that token; else the chain's pick among the tokens the grammar allows
    (whose whole-vocabulary check costs far more, and is seldom needed once an answer is
    under way). Greedy, that is the best allowed token; sampling, a draw from the allowed
    tokens in proportion to their probabilities.
    """
    if chain.grammar is not None:
        return _sample_with_grammar(chain, ctx, row, n_vocab)
    if chain.first_cut:
        token = _sample_cut(chain, ctx, row, n_vocab)
        if token is not None:
            return token
    return int(lc.llama_sampler_sample(chain.handle, ctx, row))


def free(chain: Chain) -> None:
    """Free a chain's native samplers."""
    lc.llama_sampler_free(chain.handle)
    if chain.grammar is not None:
        lc.llama_sampler_free(chain.grammar)
        chain.grammar = None


def _sample_with_grammar(chain: Chain, ctx: Any, row: int, n_vocab: int) -> int:
    token = _sample_cut(chain, ctx, row, n_vocab, accept=False) if chain.first_cut else None
    if token is None or token in chain.blocked or not _allows(chain.grammar, token):
        token = _sample_allowed(chain, ctx, row, n_vocab)
    lc.llama_sampler_accept(chain.grammar, token)
    lc.llama_sampler_accept(chain.handle, token)
    if chain.recent is not None:
        chain.recent.append(token)
    return token


def _sample_allowed(chain: Chain, ctx: Any, row: int, n_vocab: int) -> int:
    """The chain's pick among the tokens the grammar allows.

    The grammar checks each candidate's text against its rules: over a 262,144-token
    vocabulary that costs 40-70 ms here. So the candidates within a margin of the best logit
    are checked first (the best 256, then 4,096, then 32,768), until the set holds the
    chain's pick:

    - its top-k keeps the ``keep`` best allowed tokens (1 when greedy). Penalties only lower
      the logits of recent tokens, and every token outside the set has a lower logit than
      every token in it; so once the set holds ``keep`` allowed tokens that are not recent,
      the chain's cut of all the allowed tokens lies inside it, and it picks what it would
      from all of them (greedy: exactly the best allowed token);
    - or the margin has reached ``FAR`` logits (times the temperature, when over 1): tokens
      below it would be drawn with a probability under e^-24 of the best one's.

    A chain without a top-k (``top_k`` 0) checks the whole vocabulary. A check grows with the
    candidates, so the next, larger set's is foreseen from the last one's time: one that
    would take the token past ``GRAMMAR_TOKEN_BUDGET_S`` fails the answer instead.
    """
    import numpy as np

    logits = np.frombuffer(_logits_view(ctx, row, n_vocab), np.float32)
    best = float(logits.max())
    cost = _Cost()
    if chain.keep and np.isfinite(best):
        far = _FAR * max(chain.temperature, 1.0)
        recent = np.fromiter(chain.recent, np.int32) if chain.recent else None
        for n in _GRAMMAR_SETS:
            if n >= n_vocab // 4:
                break
            cost.check(n)
            ids = np.argpartition(logits, -n)[-n:]  # the n best: all above some margin
            candidates = _candidates(chain, n)
            candidates["id"] = ids
            candidates["logit"] = logits[ids]
            candidates["p"] = 0.0
            margin = best - float(candidates["logit"].min())
            array = _array(candidates)
            cost.apply(chain.grammar, array, n)
            _block(chain, candidates)
            allowed = np.isfinite(candidates["logit"])
            if not allowed.any():
                continue
            if recent is not None:
                allowed &= ~np.isin(ids, recent)
            if np.count_nonzero(allowed) >= chain.keep or margin >= far:
                return _pick(chain, candidates, array)
    cost.check(n_vocab)
    candidates = _candidates(chain, n_vocab)
    candidates["id"] = np.arange(n_vocab, dtype=np.int32)
    candidates["logit"] = logits
    candidates["p"] = 0.0
    array = _array(candidates)
    cost.apply(chain.grammar, array, n_vocab)
    _block(chain, candidates)
    return _pick(chain, candidates, array)


def _block(chain: Chain, candidates: Any) -> None:
    """Rule out the chain's blocked tokens among ``candidates`` (as the grammar rules out)."""
    import numpy as np

    if chain.blocked:
        if chain._blocked_ids is None:
            chain._blocked_ids = np.fromiter(chain.blocked, np.int32, len(chain.blocked))
        candidates["logit"][np.isin(candidates["id"], chain._blocked_ids)] = -np.inf


def _not_spelled(specials: Sequence[tuple[int, str]], grammar: str) -> frozenset[int]:
    """The tokens of ``specials`` whose text ``grammar`` does not hold. Done at admission, on
    the engine's thread: a text is looked for only where the grammar has its first two
    characters (6,247 whole searches of a 17,810-character grammar took 33 ms; this, 3 ms)."""
    pairs = {grammar[i : i + 2] for i in range(len(grammar) - 1)}
    return frozenset(t for t, text in specials if text[:2] not in pairs or text not in grammar)


class _Cost:
    """What one token's grammar checks cost, in this thread's CPU time.

    CPU time, not the clock: on a machine whose other processes take the cores, a check of
    256 candidates could wait 70 ms for a core, and foreseen 16 times over for the next set,
    an answer failed for a cost its grammar did not have. Only the grammar's own checks are
    counted (not the selection of the candidates around them): the next, larger set's cost
    is foreseen from the last set's, per candidate.
    """

    def __init__(self) -> None:
        self.spent = 0.0  # CPU seconds in the grammar's checks so far
        self.last = 0.0  # of them, the last set's
        self.checked = 0  # candidates in the last set checked

    def apply(self, grammar: Any, array: Any, n: int) -> None:
        began = time.thread_time()
        lc.llama_sampler_apply(grammar, ctypes.byref(array))
        self.last = time.thread_time() - began
        self.spent += self.last
        self.checked = n

    def check(self, n: int) -> None:
        """Refuse to check ``n`` candidates when that would take the token past its budget."""
        if not self.checked:
            return
        foreseen = self.last * n / self.checked
        if self.spent + foreseen > GRAMMAR_TOKEN_BUDGET_S:
            raise GenerationError(
                f"the grammar costs too much to follow: checking the next {n:,} candidate "
                f"tokens would take about {foreseen:.1f} s",
                "give the grammar fewer alternatives that begin alike (a smaller enum, say)",
            )


def _pick(chain: Chain, candidates: Any, array: Any) -> int:
    """The chain's choice among ``candidates`` (the grammar has set the others to -inf)."""
    import numpy as np

    lc.llama_sampler_apply(chain.handle, ctypes.byref(array))
    chosen = _selected(candidates, array)
    if chosen < 0 or not np.isfinite(candidates["logit"][chosen]):
        raise GenerationError(
            "the grammar allows no token here", "check the grammar: every rule must lead on"
        )
    return int(candidates["id"][chosen])


def _selected(candidates: Any, array: Any) -> int:
    """The index in ``candidates`` of the chain's choice: XTC drops the likeliest tokens by
    moving the array's start past them, and ``selected`` counts from where it starts now."""
    if array.selected < 0:
        return -1
    moved = ctypes.cast(array.data, ctypes.c_void_p).value or 0
    return int(array.selected + (moved - candidates.ctypes.data) // candidates.itemsize)


def _allows(grammar: Any, token: int) -> bool:
    one = (lc.llama_token_data * 1)(lc.llama_token_data(token, 0.0, 0.0))
    array = lc.llama_token_data_array(data=one, size=1, selected=-1, sorted=False)
    lc.llama_sampler_apply(grammar, ctypes.byref(array))
    return bool(one[0].logit > float("-inf"))


def _candidates(chain: Chain, n: int) -> Any:
    """The chain's numpy candidate array, at least ``n`` long: its first ``n`` entries."""
    import numpy as np

    global _TOKEN_DATA
    if _TOKEN_DATA is None:
        _TOKEN_DATA = np.dtype([("id", np.int32), ("logit", np.float32), ("p", np.float32)])
        assert _TOKEN_DATA.itemsize == ctypes.sizeof(lc.llama_token_data)
    if chain._buffer is None or len(chain._buffer) < n:
        chain._buffer = np.empty(max(n, 8 * chain.first_cut), _TOKEN_DATA)
    return chain._buffer[:n]


def _array(candidates: Any) -> Any:
    return lc.llama_token_data_array(
        data=candidates.ctypes.data_as(lc.llama_token_data_p),
        size=len(candidates),
        selected=-1,
        sorted=False,
    )


def best(ctx: Any, row: int, n_vocab: int) -> tuple[int, float]:
    """The most likely token of output ``row`` and its probability (a softmax of the raw
    logits): what a draft model guesses, and how sure it is."""
    import numpy as np

    logits = np.frombuffer(_logits_view(ctx, row, n_vocab), np.float32)
    token = int(logits.argmax())
    top = float(logits[token])
    if not np.isfinite(top):
        return token, 0.0
    return token, 1.0 / float(np.exp(logits - top).sum())


def _logits_view(ctx: Any, row: int, n_vocab: int) -> Any:
    address = ctypes.cast(lc.llama_get_logits_ith(ctx, row), ctypes.c_void_p).value
    if not address:
        raise IndexError(f"row {row} of the last batch has no logits")
    return (ctypes.c_float * n_vocab).from_address(address)


_TOKEN_DATA: Any = None  # numpy dtype of llama_token_data, made on first use


def _sample_cut(
    chain: Chain, ctx: Any, row: int, n_vocab: int, *, accept: bool = True
) -> int | None:
    import numpy as np

    address = ctypes.cast(lc.llama_get_logits_ith(ctx, row), ctypes.c_void_p).value
    if not address:
        return None  # no logits for this row: llama_sampler_sample says so in its own words
    view: Any = (ctypes.c_float * n_vocab).from_address(address)
    logits = np.frombuffer(view, np.float32)
    best = float(logits.max())
    if not np.isfinite(best):
        return None  # -inf everywhere or a NaN: let llama.cpp decide what that means
    if chain._mask is None or len(chain._mask) != n_vocab:
        chain._mask = np.empty(n_vocab, dtype=bool)  # reused: a fresh one is a fresh mmap
    margin = chain.margin
    while True:
        ids = np.flatnonzero(np.greater_equal(logits, best - margin, out=chain._mask))
        if len(ids) >= chain.first_cut:
            break
        margin *= 1.5
        if margin > 1e30:
            return None  # fewer finite logits than the cut keeps
    n = len(ids)
    if n > n_vocab // 4:
        return None  # a flat distribution: the cut would save little
    # The next token starts from a margin that held this one, narrowed if it held far too many.
    chain.margin = margin * 0.9 if n > 8 * chain.first_cut else margin
    candidates = _candidates(chain, n)
    candidates["id"] = ids
    candidates["logit"] = logits[ids]
    candidates["p"] = 0.0
    array = _array(candidates)
    lc.llama_sampler_apply(chain.handle, ctypes.byref(array))
    token = int(candidates["id"][_selected(candidates, array)])
    if accept:
        lc.llama_sampler_accept(chain.handle, token)
    return token
