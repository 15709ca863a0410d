"""``localrun perplexity`` against llama.cpp's ``llama-perplexity``: the same figure, the speed.

Both run on the same model, text and window size, alternately, as whole processes (the load
included), each with its own defaults otherwise (llama-perplexity evaluates several windows a
batch). Prints each run's perplexity and wall time; then the relative difference of the
figures (target: within 0.5%) and localrun's speed as a fraction of llama-perplexity's
(target: 0.95 or more), the median over the rounds.

llama-perplexity is built once from the pinned llama-cpp-python sdist (``llama_tools.py``).

Usage: python benchmarks/vs_llama_perplexity.py [--model demo]
       [--text tests/data/sotu-1862-lincoln.txt] [--ctx 512] [--threads 2] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

from llama_tools import ROOT, tool_for  # beside this script

TEXT = ROOT / "tests" / "data" / "sotu-1862-lincoln.txt"


def llama(binary: Path, model: Path, text: Path, ctx: int, threads: int) -> tuple[float, float]:
    start = time.perf_counter()
    done = subprocess.run(
        [str(binary), "-m", str(model), "-f", str(text), "-c", str(ctx), "-t", str(threads)],
        capture_output=True, text=True, check=True,
        env={**os.environ, "LD_LIBRARY_PATH": str(binary.parent)},
    )  # fmt: skip
    seconds = time.perf_counter() - start
    found = re.search(r"Final estimate: PPL = ([\d.]+)", done.stdout + done.stderr)
    assert found is not None, done.stderr[-2000:]
    return float(found.group(1)), seconds


def ours(model: str, text: Path, ctx: int, threads: int) -> tuple[float, float]:
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "localrun", "perplexity", model, str(text), "--ctx", str(ctx),
         "--threads", str(threads), "--json"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return float(json.loads(done.stdout)["ppl"]), time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="demo")
    ap.add_argument("--text", type=Path, default=TEXT)
    ap.add_argument("--ctx", type=int, default=512)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    found = tool_for(args.model, "llama-perplexity")
    if found is None:
        sys.exit(1)
    binary, path = found
    figures: dict[str, list[float]] = {"llama": [], "localrun": []}
    times: dict[str, list[float]] = {"llama": [], "localrun": []}
    for r in range(args.rounds):
        order = ["llama", "localrun"] if r % 2 == 0 else ["localrun", "llama"]
        for who in order:
            if who == "llama":
                ppl, seconds = llama(binary, path, args.text, args.ctx, args.threads)
            else:
                ppl, seconds = ours(args.model, args.text, args.ctx, args.threads)
            figures[who].append(ppl)
            times[who].append(seconds)
            print(f"round {r + 1} {who}: PPL {ppl:.4f} in {seconds:.1f} s", flush=True)
    ppl_ours, ppl_llama = figures["localrun"][0], figures["llama"][0]
    difference = (ppl_ours / ppl_llama - 1) * 100
    speed = statistics.median(b / a for a, b in zip(times["localrun"], times["llama"], strict=True))
    print(f"  PPL: localrun {ppl_ours:.4f}, llama-perplexity {ppl_llama:.4f} ({difference:+.3f}%)")
    print(f"  speed: localrun at {speed:.3f} x llama-perplexity's (wall time, load included)")


if __name__ == "__main__":
    main()
