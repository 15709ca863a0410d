"""The prompt cache: cold and warm time to first token in new processes, entry size, miss cost.

Each run is a new ``localrun run MODEL --system S "question" --format json`` process (the demo
model by default), its TTFT read from its JSON. For each system-prompt length:

- cold: the cache emptied first (the run evaluates the system prompt, and keeps it);
- warm: the same system prompt, another question (it is read back);
- miss and off: a system prompt never seen (a miss: evaluated, and kept) against
  ``--no-prompt-cache``, alternating, for what the cache costs when it does not help (TTFT,
  and the whole process's time, which includes waiting for the entry to be written).

Usage: python benchmarks/prompt_cache.py [--model demo] [--rounds 3] [--tokens 1500,480]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

WORDS = [
    "the",
    "river",
    "city",
    "market",
    "house",
    "garden",
    "winter",
    "summer",
    "light",
    "stone",
    "road",
    "music",
    "paper",
    "window",
]


def system_prompt(n_words: int, seed: int) -> str:
    import random

    rng = random.Random(seed)
    return "You answer questions about this text. " + " ".join(
        rng.choice(WORDS) for _ in range(n_words)
    )


def run(
    model: str, env: dict[str, str], system: str, question: str, *flags: str
) -> tuple[dict[str, float], float]:
    start = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-m", "localrun", "run", model, "--system", system, question,
         "--format", "json", "--max-tokens", "4", "--temperature", "0", "--threads", "2", *flags],
        capture_output=True, text=True, env=env, check=True,
    ).stdout  # fmt: skip
    wall = time.perf_counter() - start
    return json.loads(out)["stats"], wall


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="demo")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--tokens", default="1500,480", help="system prompt lengths, roughly")
    args = ap.parse_args()
    home = tempfile.mkdtemp(prefix="prompt-cache-")
    env = {**os.environ, "LOCALRUN_HOME": home}
    subprocess.run([sys.executable, "-m", "localrun", "show", args.model], env=env,
                   capture_output=True, check=True)  # fmt: skip
    for target in (int(t) for t in args.tokens.split(",")):
        n_words = int(target * 0.95)
        cold, warm, ratios, sizes, kept = [], [], [], [], []
        miss, off, miss_wall, off_wall = [], [], [], []
        for r in range(args.rounds):
            system = system_prompt(n_words, r)
            subprocess.run([sys.executable, "-m", "localrun", "cache", "prompts", "--clear"],
                           env=env, capture_output=True, check=True)  # fmt: skip
            c, _ = run(args.model, env, system, "What is the first word?")
            w, _ = run(args.model, env, system, "What is the last word?")
            cold.append(c["ttft_s"])
            warm.append(w["ttft_s"])
            ratios.append(w["ttft_s"] / c["ttft_s"])
            kept.append(w["prompt_from_disk"])
            listed = subprocess.run(
                [sys.executable, "-m", "localrun", "cache", "prompts", "--json"],
                env=env, capture_output=True, text=True, check=True,
            ).stdout  # fmt: skip
            sizes += [e["size"] for e in json.loads(listed)["entries"]]
            pair = [("miss", 100 + 2 * r), ("off", 101 + 2 * r)]
            for kind, seed in pair if r % 2 == 0 else pair[::-1]:
                stats, wall = run(args.model, env, system_prompt(n_words, seed), "Why?",
                                  *(["--no-prompt-cache"] if kind == "off" else []))  # fmt: skip
                (miss if kind == "miss" else off).append(stats["ttft_s"])
                (miss_wall if kind == "miss" else off_wall).append(wall)
            print(
                f"{c['prompt_tokens']} prompt tokens, round {r + 1}: "
                f"cold TTFT {c['ttft_s']:.3f} s, "
                f"warm {w['ttft_s']:.3f} s ({w['prompt_from_disk']} tokens read back), "
                f"miss {miss[-1]:.3f} s, off {off[-1]:.3f} s",
                flush=True,
            )
        ratio = statistics.median(ratios)
        miss_cost = statistics.median(miss) / statistics.median(off)
        wall_cost = statistics.median(miss_wall) / statistics.median(off_wall)
        met = {True: "met", False: "missed"}
        print(
            f"  warm / cold TTFT: median {ratio:.3f} (target <= 0.05: {met[ratio <= 0.05]}); "
            f"tokens read back {statistics.median(kept):.0f}"
        )
        print(
            f"  entry size: {max(sizes) / 1e6:.1f} MB (target <= 15 MB: "
            f"{'met' if max(sizes) <= 15e6 else 'missed'})"
        )
        print(
            f"  a miss against --no-prompt-cache: TTFT {miss_cost:.3f}, whole process "
            f"{wall_cost:.3f} (target <= 1.02: {met[max(miss_cost, wall_cost) <= 1.02]})"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
