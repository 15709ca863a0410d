"""Two minutes: localrun against llama-bench at 1 and 2 threads, on whatever machine runs it.

For every change that touches the hot path. Prints the machine first (a figure from one CPU
is no claim about another), then for each thread count the rounds, alternating which runs
first, and the median ratios of prefill (pp) and decode (tg) against the targets. A
benchmark, not a test: CI's machines are shared.

Usage: python benchmarks/parity.py [--model demo] [--threads 1,2] [--rounds 2]
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from llama_tools import tool_for  # beside this script
from machine import describe
from vs_llama_bench import TARGETS, run_llama_bench, run_localrun


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="demo")
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("-p", type=int, default=256)
    parser.add_argument("-n", type=int, default=64)
    args = parser.parse_args()
    found = tool_for(args.model, "llama-bench")
    if found is None:
        return 1
    binary, model_path = found
    print(describe())
    worst = 1.0
    for threads in (int(t) for t in args.threads.split(",")):
        ratios: dict[str, list[float]] = {"pp": [], "tg": []}
        for i in range(args.rounds):
            runs = [
                lambda t=threads: run_llama_bench(binary, model_path, t, args.p, args.n),
                lambda t=threads: run_localrun(args.model, t, args.p, args.n),
            ]
            first, second = (runs[0](), runs[1]()) if i % 2 == 0 else (runs[1](), runs[0]())
            ref, ours = (first, second) if i % 2 == 0 else (second, first)
            for kind in ("pp", "tg"):
                ratios[kind].append(ours[kind] / ref[kind])
            print(
                f"{threads} thread(s), round {i + 1}: llama-bench pp {ref['pp']:.1f} "
                f"tg {ref['tg']:.1f} | localrun pp {ours['pp']:.1f} tg {ours['tg']:.1f} t/s"
            )
        for kind, name in (("pp", f"prefill pp{args.p}"), ("tg", f"decode tg{args.n}")):
            median = statistics.median(ratios[kind])
            worst = min(worst, median / TARGETS[kind])
            verdict = "meets" if median >= TARGETS[kind] else "misses"
            print(f"  {name}: {median:.3f}x llama-bench ({verdict} {TARGETS[kind]})")
    return 0 if worst >= 1.0 else 1


if __name__ == "__main__":
    sys.exit(main())
