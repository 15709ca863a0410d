"""What a compressed KV cache saves and costs: f16 against q8_0 and q4_0 at a long context.

Each type runs in its own process (so that its peak memory is its own), in turn, the order
reversed every round, on Lincoln's 1861 and 1862 addresses (about 20,000 tokens, public
domain, ``tests/data``). Each process loads the demo model with a context of ``--ctx`` cells
in that type and measures:

- decode: 64 tokens after a prompt that fills most of the context, where reading the cache
  is a large part of each step;
- the KV cache's size as llama.cpp allocated it, and the process's peak memory (VmHWM) up to
  the end of that answer;
- perplexity over the text in windows of ``--ctx`` (``localrun perplexity``'s computation),
  whose evaluation rate is the prefill rate at that length.

Prints each round's figures, then the medians and each type against f16. Targets for q8_0:
at most 0.55 of f16's KV memory, perplexity within 1%, decode at least 0.95 of f16's.

Usage: python benchmarks/kv_types.py [--model demo] [--ctx 8192] [--rounds 2] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TEXTS = [ROOT / "tests" / "data" / f"sotu-{year}-lincoln.txt" for year in (1861, 1862)]
TYPES = ("f16", "q8_0", "q4_0")


def one(model: str, kv_type: str, n_ctx: int, threads: int) -> dict[str, float]:
    """The figures of one type, in this process."""
    from localrun import engine
    from localrun.backend import SamplingParams
    from localrun.engine.batch import Job, collect
    from localrun.engine.perplexity import perplexity
    from localrun.engine.runner import runner_of

    text = "\n\n".join(path.read_text() for path in TEXTS)
    loaded = engine.load_model(model, n_ctx=n_ctx, n_threads=threads, kv_type=kv_type)
    loaded.prompt_cache = False
    try:
        tokens = loaded.model.tokenize(text, add_special=True, parse_special=False)
        prompt = tokens[: n_ctx - 128]
        sampling = SamplingParams(temperature=0.0)
        _, stats = collect(runner_of(loaded).engine.submit(Job(prompt, sampling, max_tokens=64)))
        # The peak of answering (weights, cache, compute), before perplexity's logits.
        status = Path("/proc/self/status").read_text().splitlines()
        peak_kb = int(next(line.split()[1] for line in status if line.startswith("VmHWM")))
        runner_of(loaded).stop()
        measured = perplexity(loaded, text, n_ctx)
        kv_bytes = int(getattr(loaded.model, "kv_bytes", 0))
    finally:
        loaded.close()
    return {
        "kv_mib": kv_bytes / 2**20,
        "peak_mib": peak_kb / 1024,
        "ppl": measured.ppl,
        "ppl_error": measured.error,
        "prefill": measured.tokens_per_s,
        "decode": stats.decode_tokens_per_s,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="demo")
    ap.add_argument("--ctx", type=int, default=8192)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--one", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(one(args.model, args.one, args.ctx, args.threads)))
        return
    runs: dict[str, list[dict[str, float]]] = {t: [] for t in TYPES}
    for r in range(args.rounds):
        for kind in TYPES if r % 2 == 0 else tuple(reversed(TYPES)):
            out = subprocess.run(
                [sys.executable, __file__, "--one", kind, "--model", args.model, "--ctx",
                 str(args.ctx), "--threads", str(args.threads)],
                capture_output=True, text=True, check=True,
            ).stdout  # fmt: skip
            runs[kind].append(json.loads(out.strip().splitlines()[-1]))
            f = runs[kind][-1]
            print(
                f"round {r + 1} {kind}: KV {f['kv_mib']:.1f} MiB, peak {f['peak_mib']:.0f} MiB, "
                f"PPL {f['ppl']:.4f}, prefill {f['prefill']:.1f} tok/s, "
                f"decode {f['decode']:.1f} tok/s",
                flush=True,
            )
    med = {t: {k: statistics.median(x[k] for x in runs[t]) for k in runs[t][0]} for t in TYPES}
    base = med["f16"]
    header = ("KV type", "KV memory", "peak memory", "prefill tok/s", "decode tok/s", "PPL")
    print("\n| " + " | ".join(header) + " |")
    print("|---|---|---|---|---|---|")
    for t in TYPES:
        m = med[t]
        print(
            f"| {t} | {m['kv_mib']:.1f} MiB ({m['kv_mib'] / base['kv_mib']:.2f}x) | "
            f"{m['peak_mib']:.0f} MiB | "
            f"{m['prefill']:.1f} ({m['prefill'] / base['prefill']:.3f}x) | "
            f"{m['decode']:.1f} ({m['decode'] / base['decode']:.3f}x) | "
            f"{m['ppl']:.4f} ({(m['ppl'] / base['ppl'] - 1) * 100:+.2f}%) |"
        )


if __name__ == "__main__":
    main()
