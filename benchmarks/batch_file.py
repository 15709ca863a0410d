"""A 64-request ``--batch`` file: wall time with ``--parallel 8`` against ``--parallel 1``.

Both runs answer the same JSON Lines file (64 prompts, 32 tokens each, seeded), alternating
per round; the ratio of their median wall times is the figure (target: at most 0.5).

Usage: python benchmarks/batch_file.py [--model demo] [--rounds 1] [--parallel 8]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROMPTS = [
    "Tell me about the ocean",
    "The history of Rome",
    "How do birds fly",
    "Why is the sky blue",
    "A recipe for bread",
    "The capital of France",
    "Once upon a time",
    "The best way to learn",
]
TARGET = 0.5


def timed(model: str, file: Path, parallel: int) -> float:
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "localrun", "run", model, "--batch", str(file),
         "--parallel", str(parallel)],
        check=True, stdout=subprocess.DEVNULL,
    )  # fmt: skip
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="demo")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--parallel", type=int, default=8)
    parser.add_argument("--requests", type=int, default=64)
    parser.add_argument("--tokens", type=int, default=32)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        file = Path(tmp) / "requests.jsonl"
        lines = [
            {"id": i, "prompt": PROMPTS[i % len(PROMPTS)], "max_tokens": args.tokens, "seed": i}
            for i in range(args.requests)
        ]
        file.write_text("".join(json.dumps(line) + "\n" for line in lines))
        many: list[float] = []
        one: list[float] = []
        for i in range(args.rounds):
            many.append(timed(args.model, file, args.parallel))
            one.append(timed(args.model, file, 1))
            print(
                f"round {i + 1}: --parallel {args.parallel} {many[-1]:.1f} s, "
                f"--parallel 1 {one[-1]:.1f} s, ratio {many[-1] / one[-1]:.3f}"
            )
    ratio = statistics.median(many) / statistics.median(one)
    verdict = "meets" if ratio <= TARGET else "misses"
    print(f"{args.requests} requests: median ratio {ratio:.3f} ({verdict} the target {TARGET})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
