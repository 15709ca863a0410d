"""OpenAI's ``n``: four answers to one prompt in one request, against four requests one after
another, on a real ``localrun serve``, alternately.

The n answers share one reading of the prompt and decode side by side (one pass over the
weights a step for all of them), where four requests each read the prompt and decode alone.
Each answer is 64 tokens (``ignore_eos``). The issue's bar: n=4 costs at most 0.5x four
separate requests. It prints the CPU it ran on first.

    python benchmarks/choices.py --model smollm2:135m --rounds 3
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import describe
from serve_load import _port, _stop, _wait

PROMPT = "Write a short story about a lighthouse keeper who finds a message in a bottle."


def _ask(url: str, model: str, n: int, tokens: int) -> float:
    body = {
        "model": model,
        "messages": [{"role": "user", "content": PROMPT}],
        "n": n,
        "max_tokens": tokens,
        "temperature": 0.8,
        "ignore_eos": True,
    }
    start = time.perf_counter()
    reply = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=600)
    reply.raise_for_status()
    done = reply.json()
    assert done["usage"]["completion_tokens"] == n * tokens, done["usage"]
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2:135m")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--n", type=int, default=4)
    args = parser.parse_args()
    print(describe())
    port = _port()
    url = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory() as scratch:
        env = {**os.environ, "LOCALRUN_HOME": os.environ.get("LOCALRUN_HOME", scratch)}
        server = subprocess.Popen(
            ["localrun", "serve", "--port", str(port), "--parallel", str(args.n)],
            env=env, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            _wait(url, server, "/")
            _ask(url, args.model, 1, 4)  # loaded, and warm
            ratios = []
            for round_ in range(args.rounds):
                order = ("n", "one by one") if round_ % 2 == 0 else ("one by one", "n")
                seconds = {}
                for way in order:
                    if way == "n":
                        seconds[way] = _ask(url, args.model, args.n, args.tokens)
                    else:
                        seconds[way] = sum(
                            _ask(url, args.model, 1, args.tokens) for _ in range(args.n)
                        )
                ratio = seconds["n"] / seconds["one by one"]
                ratios.append(ratio)
                print(f"round {round_ + 1}: n={args.n} {seconds['n']:.2f} s, {args.n} requests "
                      f"one by one {seconds['one by one']:.2f} s: {ratio:.2f}x")  # fmt: skip
            median = statistics.median(ratios)
            print(f"median n={args.n} / {args.n} separate requests: {median:.2f}")
        finally:
            _stop(server)


if __name__ == "__main__":
    main()
