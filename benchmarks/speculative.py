"""Speculative decoding by prompt lookup against plain decoding, side by side.

On one loaded model (the demo model by default, 2 threads, greedy), alternating the order
every round: a copy-heavy task (a piece of code given in the prompt, to be written out again)
and a free-form one (a story, with nothing to copy). It prints each task's decode rates, their
ratio (median of the rounds), the share of guesses kept, and where the two texts first differ
(from 4 rows a step llama.cpp's CPU kernels round differently; see docs/performance.md).

Usage: python benchmarks/speculative.py [--model demo] [--rounds 3] [-n 160] [-k 8]
"""

from __future__ import annotations

import argparse
import statistics
from typing import Any

from localrun.backend import LoadOptions, SamplingParams, load
from localrun.engine.batch import BatchEngine, collect
from localrun.models.resolve import resolve

CODE = """def fibonacci(n):
    a, b = 0, 1
    for _ in range(n):
        a, b = b, a + b
    return a


def factorial(n):
    result = 1
    for i in range(2, n + 1):
        result *= i
    return result


def is_prime(n):
    if n < 2:
        return False
    for i in range(2, int(n ** 0.5) + 1):
        if n % i == 0:
            return False
    return True
"""
TASKS = {
    "copy": f"Here is some code:\n\n{CODE}\nHere is the same code, with is_prime renamed to "
    "prime:\n\n",
    "free": "Once upon a time, in a small village by the sea, there lived an old fisherman who",
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="demo")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("-n", type=int, default=160, help="answer tokens")
    ap.add_argument("-k", type=int, default=8, help="the most guesses a step")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    path = resolve(args.model).path  # the demo, a pulled model, or a GGUF file
    model: Any = load(LoadOptions(path, n_ctx=2048, n_threads=args.threads))
    engine = BatchEngine(model)
    greedy = SamplingParams(temperature=0.0)
    try:
        for task, text in TASKS.items():
            prompt = model.tokenize(text, add_special=True, parse_special=False)
            ratios, kept = [], []
            first_diff: list[int | None] = []
            for r in range(args.rounds):
                runs = {}
                for k in (0, args.k) if r % 2 == 0 else (args.k, 0):
                    # A warm-up answer first, so both read the prompt the same way (from the
                    # slot's kept cells) and differ only in how they decode.
                    collect(engine.submit(prompt, greedy, max_tokens=1))
                    stream = engine.submit(prompt, greedy, max_tokens=args.n, speculate=k,
                                           stop_at_eog=False)  # fmt: skip
                    _, stats = collect(stream)
                    runs[k] = (stream.tokens, stats)
                plain, spec = runs[0], runs[args.k]
                ratios.append(spec[1].decode_tokens_per_s / plain[1].decode_tokens_per_s)
                kept.append(spec[1].accepted / spec[1].drafted if spec[1].drafted else 0.0)
                pairs = zip(plain[0], spec[0], strict=False)
                first_diff.append(next((i for i, (a, b) in enumerate(pairs) if a != b), None))
                print(
                    f"{task} round {r + 1}: plain {plain[1].decode_tokens_per_s:.1f} tok/s, "
                    f"lookup {spec[1].decode_tokens_per_s:.1f} tok/s "
                    f"({spec[1].accepted} of {spec[1].drafted} guesses kept), "
                    f"texts first differ at token {first_diff[-1]}",
                    flush=True,
                )
            print(
                f"  {task}: decode lookup / plain, median {statistics.median(ratios):.3f}; "
                f"guesses kept {statistics.median(kept):.0%}"
            )
    finally:
        engine.close()
        model.close()


if __name__ == "__main__":
    main()
