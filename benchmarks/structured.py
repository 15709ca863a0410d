"""What a grammar costs: decode with ``--schema json`` (and a schema) against unconstrained decode.

On one loaded model (the demo model by default, 2 threads), alternating the order every
round, the same prompt answered without a constraint, with any JSON value, and with a schema
(a list of books). The prompt asks for a long JSON list, so that every answer runs to ``-n``
tokens. It prints each decode rate and the ratios (median of the rounds); the target for
``--schema json`` is 0.90 of unconstrained decode.

Usage: python benchmarks/structured.py [--model demo] [--rounds 3] [-n 200]
"""

from __future__ import annotations

import argparse
import statistics
from typing import Any

from localrun.backend import LoadOptions, SamplingParams, load
from localrun.engine.batch import BatchEngine, Job, collect
from localrun.models.resolve import resolve
from localrun.prompt import grammar

PROMPT = (
    "Here is a JSON list of 20 books, each with its title, author, year and genre:\n\n```json\n"
)
BOOKS = {
    "type": "array",
    "items": {
        "type": "object",
        "properties": {
            "title": {"type": "string"},
            "author": {"type": "string"},
            "year": {"type": "integer"},
            "genre": {"type": "string"},
        },
        "required": ["title", "author", "year", "genre"],
    },
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="demo")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("-n", type=int, default=200, help="answer tokens")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    model: Any = load(LoadOptions(resolve(args.model).path, n_ctx=2048, n_threads=args.threads))
    engine = BatchEngine(model)
    kinds = {
        "none": None,
        "json": grammar.json_value().grammar,
        "schema": grammar.json_schema(BOOKS).grammar,
    }
    rates: dict[str, list[float]] = {k: [] for k in kinds}
    try:
        prompt = model.tokenize(PROMPT, add_special=True, parse_special=False)
        collect(engine.submit(Job(prompt, SamplingParams(temperature=0.0), max_tokens=1)))  # warm
        for r in range(args.rounds):
            order = list(kinds) if r % 2 == 0 else list(reversed(kinds))
            for kind in order:
                sampling = SamplingParams(temperature=0.0, grammar=kinds[kind])
                text, stats = collect(engine.submit(Job(prompt, sampling, max_tokens=args.n)))
                rates[kind].append(stats.decode_tokens_per_s)
                print(
                    f"round {r + 1} {kind}: {stats.decode_tokens_per_s:.1f} tok/s, "
                    f"{stats.completion_tokens} tokens, {text[:40]!r}",
                    flush=True,
                )
    finally:
        engine.close()
        model.close()
    for kind in ("json", "schema"):
        ratios = [c / u for c, u in zip(rates[kind], rates["none"], strict=True)]
        print(f"  --schema {kind} / unconstrained decode: median {statistics.median(ratios):.3f}")


if __name__ == "__main__":
    main()
