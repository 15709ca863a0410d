"""The demo model and its requantizations: size, decode speed and perplexity, as one table.

Quantizes the demo model (Q4_K_M) to Q3_K_M, Q2_K and Q8_0 with ``localrun quantize`` (into
``benchmarks/.cache``; Q8_0 with ``--allow-requantize``, since from Q4_K_M it can only match
it), then measures each: its file size, its decode rate (``localrun bench -p 0``, the models
in turn, alternating the order every round) and its perplexity over a public-domain text
(``localrun perplexity``). Prints a Markdown table for docs/quantization.md.

Usage: python benchmarks/quant_table.py [--text tests/data/sotu-1862-lincoln.txt]
       [--rounds 3] [-n 128] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

from llama_tools import CACHE, ROOT  # beside this script

TYPES = ("Q3_K_M", "Q2_K", "Q8_0")


def localrun(*args: str) -> str:
    return subprocess.run(
        [sys.executable, "-m", "localrun", *args], capture_output=True, text=True, check=True
    ).stdout


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--text", type=Path, default=ROOT / "tests" / "data" / "sotu-1862-lincoln.txt")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("-n", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    demo = Path(json.loads(localrun("show", "demo", "--json"))["path"])
    models = {"Q4_K_M (the demo)": demo}
    for kind in TYPES:
        out = CACHE / f"demo-{kind}.gguf"
        if not out.exists():
            extra = ["--allow-requantize"] if kind == "Q8_0" else []
            localrun("quantize", "demo", str(out), kind, "--threads", str(args.threads), *extra)
        models[kind] = out
    rates: dict[str, list[float]] = {name: [] for name in models}
    for r in range(args.rounds):
        order = list(models) if r % 2 == 0 else list(reversed(models))
        for name in order:
            flags = ["-p", "0", "-n", str(args.n), "-r", "1", "--threads", str(args.threads)]
            report = json.loads(localrun("bench", str(models[name]), *flags, "--json"))
            rates[name].append(report["decode_tokens_per_s"])
            print(f"round {r + 1} {name}: {rates[name][-1]:.1f} tok/s", flush=True)
    ppl = {}
    for name, path in models.items():
        ppl[name] = json.loads(localrun("perplexity", str(path), str(args.text), "--threads",
                                        str(args.threads), "--json"))  # fmt: skip
        print(f"{name}: PPL {ppl[name]['ppl']:.4f} +/- {ppl[name]['error']:.4f}", flush=True)
    base = "Q4_K_M (the demo)"
    print("\n| type | size | decode tok/s | perplexity | vs the demo |")
    print("|---|---|---|---|---|")
    for name, path in models.items():
        size = path.stat().st_size / 1e6
        rate = statistics.median(rates[name])
        p = ppl[name]
        change = (p["ppl"] / ppl[base]["ppl"] - 1) * 100
        print(
            f"| {name} | {size:.0f} MB | {rate:.1f} | {p['ppl']:.3f} +/- {p['error']:.3f} | "
            f"{change:+.2f}% |"
        )


if __name__ == "__main__":
    main()
