"""Speculative decoding against plain decoding, side by side: prompt lookup, and a draft model.

Greedy, 2 threads, alternating the order every round, on two tasks: a copy-heavy one (a piece
of code given in the prompt, to be written out again with a small change) and a free-form one
(a story, with nothing to copy). For each it prints the decode rates, their ratio (median of
the rounds), the share of guesses kept, tokens per pass, and where the two texts first differ
(from 4 rows a step llama.cpp's CPU kernels round differently; see docs/performance.md).

- lookup: on ``--model`` (the demo model by default).
- draft: ``--draft`` guessing for ``--target``. By default the demo model (Q4_K_M) drafts for
  the same model at F16, made once with llama.cpp's llama-quantize (built as llama_tools.py
  builds its tools, cached in benchmarks/.cache): the only larger model of its vocabulary on
  a machine without the Hub. It also prints each model's own decode rate: a draft pays off
  only when its pass costs a small part of the target's.

Usage: python benchmarks/speculative.py [--model demo] [--target F16|MODEL] [--draft demo]
       [--only lookup|draft] [--rounds 3] [-n 160] [-k 8]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
from pathlib import Path
from typing import Any

from llama_tools import CACHE, build_tool  # beside this script

from localrun.backend import LoadOptions, SamplingParams, load
from localrun.engine.batch import BatchEngine, Job, collect
from localrun.engine.draft import Drafter, check_vocabulary
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


def f16_of(path: Path) -> Path:
    """The model at F16 (dequantised by llama-quantize), made once."""
    out = CACHE / f"{path.stem}-F16.gguf"
    if not out.exists():
        tool = build_tool("llama-quantize")
        part = out.with_suffix(".part")
        subprocess.run(
            [str(tool), "--allow-requantize", str(path), str(part), "F16"],
            check=True, capture_output=True,
        )  # fmt: skip
        part.rename(out)
    return out


def compare(engine: BatchEngine, model: Any, args: argparse.Namespace, label: str) -> None:
    """Plain decoding against guessing (with the engine's drafter, or by lookup), per task."""
    greedy = SamplingParams(temperature=0.0)
    for task, text in TASKS.items():
        prompt = model.tokenize(text, add_special=True, parse_special=False)
        ratios, kept, per_pass = [], [], []
        for r in range(args.rounds):
            runs = {}
            for k in (0, args.k) if r % 2 == 0 else (args.k, 0):
                # A warm-up answer first, so both read the prompt the same way (from the
                # slot's kept cells) and differ only in how they decode.
                collect(engine.submit(Job(prompt, greedy, max_tokens=1)))
                stream = engine.submit(Job(prompt, greedy, max_tokens=args.n, speculate=k,
                                       stop_at_eog=False))  # fmt: skip
                _, stats = collect(stream)
                runs[k] = (stream.tokens, stats)
            plain, spec = runs[0], runs[args.k]
            ratios.append(spec[1].decode_tokens_per_s / plain[1].decode_tokens_per_s)
            kept.append(spec[1].acceptance)
            per_pass.append(spec[1].tokens_per_pass)
            pairs = zip(plain[0], spec[0], strict=False)
            first = next((i for i, (a, b) in enumerate(pairs) if a != b), None)
            print(
                f"{label} {task} round {r + 1}: plain {plain[1].decode_tokens_per_s:.1f} tok/s, "
                f"{label} {spec[1].decode_tokens_per_s:.1f} tok/s "
                f"({spec[1].accepted} of {spec[1].drafted} guesses kept, "
                f"{spec[1].tokens_per_pass:.2f} tokens a pass), texts first differ at token "
                f"{first}",
                flush=True,
            )
        print(
            f"  {label} {task}: decode {label} / plain, median {statistics.median(ratios):.3f}; "
            f"guesses kept {statistics.median(kept):.0%}; "
            f"{statistics.median(per_pass):.2f} tokens a pass",
            flush=True,
        )


def plain_rate(model: Any, args: argparse.Namespace) -> float:
    """A model's own greedy decode rate on the free-form task."""
    engine = BatchEngine(model)
    try:
        prompt = model.tokenize(TASKS["free"], add_special=True, parse_special=False)
        greedy = SamplingParams(temperature=0.0)
        _, stats = collect(engine.submit(Job(prompt, greedy, max_tokens=args.n, stop_at_eog=False)))
        return float(stats.decode_tokens_per_s)
    finally:
        engine.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="demo", help="the model for prompt lookup")
    ap.add_argument("--target", default="F16", help="draft: the model guessed for (F16: "
                    "--draft at F16)")  # fmt: skip
    ap.add_argument("--draft", default="demo", help="draft: the model that guesses")
    ap.add_argument("--only", choices=["lookup", "draft"])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("-n", type=int, default=160, help="answer tokens")
    ap.add_argument("-k", type=int, default=8, help="the most guesses a step")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    options = {"n_ctx": 2048, "n_threads": args.threads}
    if args.only != "draft":
        model: Any = load(LoadOptions(resolve(args.model).path, **options))
        engine = BatchEngine(model)
        try:
            compare(engine, model, args, "lookup")
        finally:
            engine.close()
            model.close()
    if args.only == "lookup":
        return
    draft_path = resolve(args.draft).path
    target_path = f16_of(draft_path) if args.target == "F16" else resolve(args.target).path
    target: Any = load(LoadOptions(target_path, **options))
    draft: Any = load(LoadOptions(draft_path, **options))
    try:
        check_vocabulary(target, draft, args.draft)
        rates = plain_rate(target, args), plain_rate(draft, args)
        print(
            f"draft: {draft_path.name} ({rates[1]:.1f} tok/s alone) guessing for "
            f"{target_path.name} ({rates[0]:.1f} tok/s alone): a draft pass costs "
            f"{rates[0] / rates[1]:.2f} of a target pass",
            flush=True,
        )
        engine = BatchEngine(target, drafter=Drafter(draft, seq_ctx=draft.n_ctx))
        try:
            compare(engine, target, args, "draft")
        finally:
            engine.close()
    finally:
        target.close()
        draft.close()


if __name__ == "__main__":
    main()
