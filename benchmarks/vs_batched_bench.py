"""localrun's batching engine against llama.cpp's llama-batched-bench, side by side.

Builds ``llama-batched-bench`` once from the pinned sdist's llama.cpp (see ``llama_tools.py``),
then runs it and ``localrun bench --parallel`` alternately on the same model, threads, prompt
and generation lengths, and prints the aggregate decode and prefill ratios per sequence count,
with the targets. llama-batched-bench feeds random tokens and samples nothing; localrun samples
every token with its default sampler chain, as ``run`` does: what is measured is what users get.

Usage: python benchmarks/vs_batched_bench.py [--model demo] [--threads 2] [--rounds 3]
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

TARGET_DECODE = {4: 0.95, 8: 0.95}  # aggregate decode, localrun / llama-batched-bench


def run_batched_bench(
    binary: Path, model: Path, threads: int, p: int, n: int, sizes: list[int]
) -> dict[int, dict[str, float]]:
    ctx = max(sizes) * (p + n) + 256
    out = subprocess.run(
        [str(binary), "-m", str(model), "-t", str(threads), "-c", str(ctx), "-b", "512",
         "-ub", "512", "-npp", str(p), "-ntg", str(n), "-npl", ",".join(map(str, sizes)),
         "--output-format", "jsonl"],
        check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip
    rates = {}
    for line in out.splitlines():
        if line.startswith("{"):
            row = json.loads(line)
            rates[int(row["pl"])] = {"pp": float(row["speed_pp"]), "tg": float(row["speed_tg"])}
    return rates


def run_localrun(
    model: str, threads: int, p: int, n: int, sizes: list[int]
) -> dict[int, dict[str, float]]:
    out = subprocess.run(
        [sys.executable, "-m", "localrun", "bench", model, "--threads", str(threads),
         "-p", str(p), "-n", str(n), "-r", "1", "--parallel", ",".join(map(str, sizes)),
         "--json"],
        check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip
    rates: dict[int, dict[str, float]] = {}
    for test in json.loads(out)["tests"]:
        kind = "pp" if test["test"].startswith("pp") else "tg"
        rates.setdefault(int(test["parallel"]), {})[kind] = float(test["mean_tokens_per_s"])
    return rates


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="demo")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("-p", type=int, default=128)
    parser.add_argument("-n", type=int, default=128)
    parser.add_argument("--parallel", default="1,4,8")
    args = parser.parse_args()
    sizes = [int(s) for s in args.parallel.split(",")]
    found = tool_for(args.model, "llama-batched-bench")
    if found is None:
        return 1
    binary, model_path = found
    ratios: dict[tuple[int, str], list[float]] = {}
    for i in range(args.rounds):
        ref = run_batched_bench(binary, model_path, args.threads, args.p, args.n, sizes)
        ours = run_localrun(args.model, args.threads, args.p, args.n, sizes)
        for size in sizes:
            for kind in ("pp", "tg"):
                ratios.setdefault((size, kind), []).append(ours[size][kind] / ref[size][kind])
            print(
                f"round {i + 1} N={size}: batched-bench pp {ref[size]['pp']:.1f} "
                f"tg {ref[size]['tg']:.1f} t/s | localrun pp {ours[size]['pp']:.1f} "
                f"tg {ours[size]['tg']:.1f} t/s | ratios pp {ratios[(size, 'pp')][-1]:.3f} "
                f"tg {ratios[(size, 'tg')][-1]:.3f}"
            )
    for size in sizes:
        decode = statistics.median(ratios[(size, "tg")])
        prefill = statistics.median(ratios[(size, "pp")])
        target = TARGET_DECODE.get(size)
        verdict = f" ({'meets' if decode >= target else 'misses'} {target})" if target else ""
        print(f"N={size}: decode ratio {decode:.3f}{verdict}, prefill ratio {prefill:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
