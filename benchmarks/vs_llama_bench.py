"""localrun against llama.cpp's own llama-bench, side by side, on the same GGUF and threads.

Builds ``llama-bench`` once from the llama.cpp source inside the pinned llama-cpp-python
sdist (the same source, built with the flags llama-cpp-python's CMakeLists sets: Release,
no curl, and localrun's own from ``scripts/cmake_args.py``), cached in
``benchmarks/.cache``. Then runs it and ``localrun bench`` alternately, and prints the
ratios of prefill (pp) and decode (tg) tokens/s, with the targets.

Usage: python benchmarks/vs_llama_bench.py [--model demo] [--threads 2] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from llama_tools import tool_for  # beside this script

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / "benchmarks" / ".cache"
TARGETS = {"pp": 0.98, "tg": 0.97}


def run_llama_bench(binary: Path, model: Path, threads: int, p: int, n: int) -> dict[str, float]:
    out = subprocess.run(
        [str(binary), "-m", str(model), "-t", str(threads), "-p", str(p), "-n", str(n),
         "-r", "5", "-o", "json"],
        check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip
    rates: dict[str, float] = {}
    for test in json.loads(out):
        kind = "pp" if test["n_prompt"] and not test["n_gen"] else "tg"
        rates[kind] = float(test["avg_ts"])
    return rates


def run_localrun(model: str, threads: int, p: int, n: int) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, "-m", "localrun", "bench", model, "--threads", str(threads),
         "-p", str(p), "-n", str(n), "-r", "5", "--json"],
        check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip
    data = json.loads(out)
    return {"pp": data["prefill_tokens_per_s"], "tg": data["decode_tokens_per_s"]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="demo")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("-p", type=int, default=512)
    parser.add_argument("-n", type=int, default=128)
    args = parser.parse_args()
    found = tool_for(args.model, "llama-bench")
    if found is None:
        return 1
    binary, model_path = found
    ratios: dict[str, list[float]] = {"pp": [], "tg": []}
    for i in range(args.rounds):
        # The order flips every round: whichever runs second may find the machine in
        # another state (caches, other tenants), and that must not always favour one.
        if i % 2 == 0:
            ref = run_llama_bench(binary, model_path, args.threads, args.p, args.n)
            ours = run_localrun(args.model, args.threads, args.p, args.n)
        else:
            ours = run_localrun(args.model, args.threads, args.p, args.n)
            ref = run_llama_bench(binary, model_path, args.threads, args.p, args.n)
        for kind in ("pp", "tg"):
            ratios[kind].append(ours[kind] / ref[kind])
        print(
            f"round {i + 1}: llama-bench pp{args.p} {ref['pp']:.1f} tg{args.n} {ref['tg']:.1f} t/s"
            f" | localrun bench pp{args.p} {ours['pp']:.1f} tg{args.n} {ours['tg']:.1f} t/s"
            f" | ratios pp {ratios['pp'][-1]:.3f} tg {ratios['tg'][-1]:.3f}"
        )
    for kind, name in (("pp", f"prefill pp{args.p}"), ("tg", f"decode tg{args.n}")):
        median = statistics.median(ratios[kind])
        verdict = "meets" if median >= TARGETS[kind] else "misses"
        print(f"{name}: median ratio {median:.3f} ({verdict} the target {TARGETS[kind]})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
