"""``localrun bench``: prefill and decode speed, measured on the path ``run`` uses.

Like llama.cpp's ``llama-bench``: a prefill test evaluates N random tokens, a decode test
generates N tokens after one; each repetition loads the model afresh (so no KV cache is
reused), and results are means with standard deviations. Unlike llama-bench, decoding
samples each token with localrun's default sampler chain, as ``run`` does: what is
measured is what users get.
"""

from __future__ import annotations

import random
import statistics
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from localrun import engine
from localrun.backend import SamplingParams
from localrun.backend.llamacpp.rpc import Endpoint
from localrun.engine import Finished
from localrun.models.resolve import resolve


@dataclass(frozen=True)
class BenchConfig:
    model: str
    prefill: tuple[int, ...] = (512,)
    decode: tuple[int, ...] = (128,)
    repetitions: int = 5
    threads: int = 1
    n_ctx: int | None = None
    gpu_layers: str | int = "auto"
    seed: int = 1234
    workers: tuple[Endpoint, ...] = ()  # llama.cpp RPC workers that take part of the layers
    kv_type: str = "f16"
    flash_attn: str = "auto"


@dataclass
class Measure:
    """One test (pp N or tg N) over its repetitions."""

    test: str  # "pp512", "tg128", and "pp512 x4" for 4 sequences at once
    tokens: int
    parallel: int = 1  # sequences at once; tokens_per_s is then their aggregate
    tokens_per_s: list[float] = field(default_factory=list)
    ttft_s: list[float] = field(default_factory=list)
    load_s: list[float] = field(default_factory=list)

    @property
    def mean(self) -> float:
        return statistics.fmean(self.tokens_per_s)

    @property
    def stdev(self) -> float:
        return statistics.stdev(self.tokens_per_s) if len(self.tokens_per_s) > 1 else 0.0


@dataclass
class BenchResult:
    config: BenchConfig
    placement: str
    measures: list[Measure]

    def _mean(self, kind: str, attr: str) -> float:
        values = [v for m in self.measures if m.test.startswith(kind) for v in getattr(m, attr)]
        return statistics.fmean(values) if values else 0.0

    def as_dict(self) -> dict[str, object]:
        """The JSON report: means first, then every repetition."""
        return {
            "model": self.config.model,
            "threads": self.config.threads,
            "placement": self.placement,
            "prefill_tokens_per_s": self._mean("pp", "tokens_per_s"),
            "decode_tokens_per_s": self._mean("tg", "tokens_per_s"),
            "ttft_s": self._mean("pp", "ttft_s"),
            "load_s": self._mean("", "load_s"),
            "tests": [
                {
                    **asdict(m),
                    "mean_tokens_per_s": m.mean,
                    "stdev_tokens_per_s": m.stdev,
                }
                for m in self.measures
            ],
        }


def _one(
    config: BenchConfig, path: Path, prompt_len: int, gen_len: int, rng: random.Random
) -> tuple[float, float, float, str]:
    """(tokens/s, TTFT, load time, placement) of one fresh load and one generation."""
    loaded = engine.load_model(
        config.model,
        n_ctx=config.n_ctx,
        n_threads=config.threads,
        gpu_layers=config.gpu_layers,
        path=path,
        workers=config.workers,
        kv_type=config.kv_type,
        flash_attn=config.flash_attn,
    )
    try:
        engine.check_fits(loaded, prompt_len + gen_len)  # before making the tokens
        n_vocab = loaded.model.n_vocab
        bos = loaded.model.bos_token

        def random_tokens() -> list[int]:
            tokens = [rng.randrange(n_vocab) for _ in range(prompt_len)]
            if bos is not None:
                tokens[0] = bos
            return tokens

        # A warm-up, as llama-bench runs one: a context's first prompt pays for touching its
        # buffers (about 4% of a 256-token prefill on 2 threads). Other tokens, so that the
        # measured prompt finds none of its own in the cache.
        for _ in engine.generate_tokens(
            loaded, random_tokens(), SamplingParams(seed=config.seed), max_tokens=1
        ):
            pass
        tokens = random_tokens()
        stats = None
        for event in engine.generate_tokens(
            loaded,
            tokens,
            SamplingParams(seed=config.seed),
            max_tokens=gen_len,
            stop_at_eog=False,  # as llama-bench: every test runs its full length
        ):
            if isinstance(event, Finished):
                stats = event.stats
        assert stats is not None
        rate = stats.prefill_tokens_per_s if gen_len == 1 else stats.decode_tokens_per_s
        return rate, stats.ttft_s, loaded.load_s, loaded.placement
    finally:
        loaded.close()


def run(config: BenchConfig, progress: Callable[[str], None] = lambda s: None) -> BenchResult:
    """Run every test ``config.repetitions`` times."""
    path = resolve(config.model).path  # pulled already: the CLI pulls first
    rng = random.Random(config.seed)
    measures: list[Measure] = []
    placement = "CPU"
    tests = [(f"pp{n}", n, 1) for n in config.prefill if n > 0]
    # A decode test starts from one token, as llama-bench's tg does.
    tests += [(f"tg{n}", 1, n) for n in config.decode if n > 0]
    for name, prompt_len, gen_len in tests:
        measure = Measure(name, max(prompt_len, gen_len))
        for rep in range(config.repetitions):
            progress(f"{name}: repetition {rep + 1} of {config.repetitions}")
            rate, ttft, load, placement = _one(config, path, prompt_len, gen_len, rng)
            measure.tokens_per_s.append(rate)
            measure.ttft_s.append(ttft)
            measure.load_s.append(load)
        measures.append(measure)
    return BenchResult(config, placement, measures)


def run_parallel(
    config: BenchConfig,
    parallels: tuple[int, ...],
    progress: Callable[[str], None] = lambda s: None,
) -> BenchResult:
    """Aggregate prefill and decode speed with N sequences at once, for each N, through the
    batching engine (as llama-batched-bench measures llama.cpp's own).

    Prefill: N prompts of ``p`` random tokens, one token each answer; the aggregate is N * p
    over the time until the last prompt is read. Decode: N one-token prompts, ``n`` tokens each;
    the aggregate is N * (n - 1) over the time from the first sampled token to the last.
    """
    from localrun.engine.batch import Job, collect
    from localrun.engine.runner import ModelRunner

    path = resolve(config.model).path
    rng = random.Random(config.seed)
    measures: list[Measure] = []
    placement = "CPU"
    p = max(config.prefill or (0,))
    n = max(config.decode or (0,))
    for size in parallels:
        loaded = engine.load_model(
            config.model,
            n_ctx=config.n_ctx or (p + n + 1),
            n_threads=config.threads,
            gpu_layers=config.gpu_layers,
            path=path,
            n_seq=size,
            workers=config.workers,
            kv_type=config.kv_type,
            flash_attn=config.flash_attn,
        )
        placement = loaded.placement
        runner = ModelRunner(loaded)
        batch = runner.engine
        try:
            vocab, bos = loaded.model.n_vocab, loaded.model.bos_token
            sampling = SamplingParams(seed=config.seed)
            tests = [(f"pp{p} x{size}", p, 1)] if p else []
            tests += [(f"tg{n} x{size}", 1, n)] if n else []
            for name, prompt_len, gen_len in tests:
                measure = Measure(name, prompt_len if gen_len == 1 else gen_len, size)
                for rep in range(config.repetitions):
                    progress(f"{name}: repetition {rep + 1} of {config.repetitions}")
                    prompts = []
                    for _ in range(size):
                        tokens = [rng.randrange(vocab) for _ in range(prompt_len)]
                        if bos is not None:
                            tokens[0] = bos
                        prompts.append(tokens)
                    streams = [
                        batch.submit(Job(t, sampling, max_tokens=gen_len, stop_at_eog=False))
                        for t in prompts
                    ]
                    stats = [collect(s)[1] for s in streams]
                    first = [s.ttft_s for s in stats]
                    if gen_len == 1:
                        measure.tokens_per_s.append(size * prompt_len / max(first))
                    else:
                        last = [s.ttft_s + s.decode_s for s in stats]
                        produced = sum(s.completion_tokens - 1 for s in stats)
                        measure.tokens_per_s.append(produced / (max(last) - min(first)))
                    measure.ttft_s.append(statistics.fmean(first))
                    measure.load_s.append(loaded.load_s)
                measures.append(measure)
        finally:
            runner.close()  # the engine first, then the model
    return BenchResult(config, placement, measures)
