"""Where one sequence's decode time goes: llama.cpp's step, sampling, the thread pool, the engine.

llama-bench's tg test decodes the same token again and again, samples nothing and runs on a
persistent ggml thread pool; localrun samples every token and lets llama.cpp make a thread
pool per step (llama-cpp-python attaches none). On this shared machine whole runs drift by 10%
from one minute to the next, so the parts are timed inside the same steps instead:

- every step decodes one token, on a persistent thread pool (llama-bench's, polling 50) at
  odd steps and on llama.cpp's per-step pool at even ones;
- then samples it twice, with two chains of the same settings: llama.cpp's sampling over the
  whole vocabulary (``native``) and localrun's (``cut``: the candidates within a margin of the
  best), the order flipping each step since the second reads logits the first brought into
  the caches. Both must pick the same token.

It prints the median time of each part and what each costs as a share of a step. Then it
runs whole answers through the batching engine (on a second context over the same weights,
since the engine keeps its own account of what its sequences hold), alternating with the
bare loop (decode and cut sampling), and prints the ratio of their rates.

Usage: python benchmarks/decode_overhead.py [--model demo] [--threads 2] [--steps 512]
"""

from __future__ import annotations

import argparse
import ctypes
import dataclasses
import statistics
import time
from pathlib import Path
from typing import Any

from localrun.backend import LoadOptions, SamplingParams, load
from localrun.backend.llamacpp import sampler
from localrun.engine.batch import BatchEngine, Job, collect
from localrun.models.resolve import resolve

lc = sampler.lc
PROMPT = "The history of the city of Paris begins in the third century before our era, when"


class _PoolParams(ctypes.Structure):  # ggml.h: struct ggml_threadpool_params
    _fields_ = [
        ("cpumask", ctypes.c_bool * 512),
        ("n_threads", ctypes.c_int),
        ("prio", ctypes.c_int),
        ("poll", ctypes.c_uint32),
        ("strict_cpu", ctypes.c_bool),
        ("paused", ctypes.c_bool),
    ]


def _thread_pool(threads: int) -> tuple[Any, Any]:
    """A persistent ggml thread pool as llama-bench makes it, and libllama for attaching it."""
    lib = Path(lc.__file__).parent / "lib"
    base = ctypes.CDLL(str(lib / "libggml-base.so"))
    cpu = ctypes.CDLL(str(lib / "libggml-cpu.so"))
    llama = ctypes.CDLL(str(lib / "libllama.so"))
    base.ggml_threadpool_params_init.argtypes = [ctypes.POINTER(_PoolParams), ctypes.c_int]
    cpu.ggml_threadpool_new.argtypes = [ctypes.POINTER(_PoolParams)]
    cpu.ggml_threadpool_new.restype = ctypes.c_void_p
    llama.llama_attach_threadpool.argtypes = [ctypes.c_void_p] * 3
    llama.llama_detach_threadpool.argtypes = [ctypes.c_void_p]
    params = _PoolParams()
    base.ggml_threadpool_params_init(ctypes.byref(params), threads)  # poll 50, as llama-bench
    return cpu.ggml_threadpool_new(ctypes.byref(params)), llama


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="demo")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=512, help="timed steps in all")
    ap.add_argument("-n", type=int, default=64, help="steps an answer (the context then resets)")
    args = ap.parse_args()
    path = resolve(args.model).path  # the demo, a pulled model, or a GGUF file
    model: Any = load(LoadOptions(path, n_ctx=1024, n_threads=args.threads))
    prompt = model.tokenize(PROMPT, add_special=True, parse_special=False)
    pool, llama = _thread_pool(args.threads)
    context = ctypes.c_void_p(ctypes.cast(model._ctx, ctypes.c_void_p).value)
    # The engine keeps its own account of what its sequences hold: it gets its own context.
    engine_model: Any = load(LoadOptions(path, n_ctx=1024, n_threads=args.threads))
    engine = BatchEngine(engine_model)

    def chain() -> Any:
        return sampler.sampler_chain(
            SamplingParams(seed=1), prompt, n_vocab=model.n_vocab, n_ctx=model.n_ctx
        )

    def prefill() -> int:
        model.forget(0)
        last = len(prompt) - 1
        model.decode_rows(prompt, list(range(len(prompt))), [0] * len(prompt),
                          [i == last for i in range(len(prompt))])  # fmt: skip
        return last

    def bare_loop() -> float:
        row, pos, c = prefill(), len(prompt), chain()
        start = time.perf_counter()
        for _ in range(args.n):
            token = sampler.sample(c, model._ctx, row, model.n_vocab)
            model.decode_rows([token], [pos], [0], [True])
            row, pos = 0, pos + 1
        lc.llama_sampler_free(c.handle)
        return args.n / (time.perf_counter() - start)

    def answer() -> float:
        stream = engine.submit(Job(prompt, SamplingParams(seed=1), max_tokens=args.n + 1,
                               stop_at_eog=False))  # fmt: skip
        return collect(stream)[1].decode_tokens_per_s

    times: dict[str, list[float]] = {"per-step pool": [], "persistent pool": [],
                                     "native": [], "cut": []}  # fmt: skip
    loop_rates: list[float] = []
    engine_rates: list[float] = []
    clock = time.perf_counter
    try:
        done = 0
        while done < args.steps:
            row, pos = prefill(), len(prompt)
            native = dataclasses.replace(chain(), first_cut=0)
            cut = chain()
            for i in range(min(args.n, args.steps - done)):
                first = (native, "native") if i % 2 else (cut, "cut")
                second = (cut, "cut") if i % 2 else (native, "native")
                t0 = clock()
                a = sampler.sample(first[0], model._ctx, row, model.n_vocab)
                t1 = clock()
                b = sampler.sample(second[0], model._ctx, row, model.n_vocab)
                t2 = clock()
                assert a == b, "the cut picked another token than the whole vocabulary"
                times[first[1]].append(t1 - t0)
                times[second[1]].append(t2 - t1)
                persistent = i % 2 == 1
                if persistent:
                    llama.llama_attach_threadpool(context, pool, None)
                t0 = clock()
                model.decode_rows([a], [pos], [0], [True])
                times["persistent pool" if persistent else "per-step pool"].append(clock() - t0)
                if persistent:
                    llama.llama_detach_threadpool(context)
                row, pos = 0, pos + 1
            done += args.n
            for c in (native, cut):
                lc.llama_sampler_free(c.handle)
            # A whole answer through the engine, then the same bare loop, for their ratio.
            engine_rates.append(answer())
            loop_rates.append(bare_loop())
    finally:
        engine.close()
        engine_model.close()
        model.close()
    step = statistics.median(times["per-step pool"]) + statistics.median(times["cut"])
    print(f"{len(times['cut'])} steps, demo model, {args.threads} threads\n")
    print(f"{'part':18s} {'median ms':>9s} {'share of a step':>16s}")
    for part, seen in times.items():
        median = statistics.median(seen)
        print(f"{part:18s} {median * 1e3:9.3f} {median / step:16.3f}")
    pools = statistics.median(times["persistent pool"]) / statistics.median(times["per-step pool"])
    print(f"\ndecode, persistent pool / per-step pool: {pools:.3f}")
    ratios = [e / b for e, b in zip(engine_rates, loop_rates, strict=True)]
    pairs = ", ".join(f"{r:.3f}" for r in ratios)
    print(
        "answers through the engine / bare loop, decode rate: "
        f"median {statistics.median(ratios):.3f} ({len(ratios)} pairs: {pairs})"
    )


if __name__ == "__main__":
    main()
