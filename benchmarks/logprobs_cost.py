"""What each token's log probabilities cost: decoding with ``logprobs`` (top 5) against
without, on the demo model's 262,144-token vocabulary, alternately, on the engine itself.

The figures are the log-softmax over the whole vocabulary (a pass over 1 MiB of logits a
token) and a partial sort for the alternatives. It prints the CPU it ran on first.

    python benchmarks/logprobs_cost.py --rounds 4 --tokens 64
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import describe

from localrun.backend import LoadOptions, SamplingParams, load
from localrun.engine.batch import BatchEngine
from localrun.engine.types import Job
from localrun.models.demo import demo_model_path
from localrun.system import physical_cores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--tokens", type=int, default=64)
    args = parser.parse_args()
    print(describe())
    model = load(LoadOptions(demo_model_path(), n_ctx=2048, n_threads=physical_cores()))
    engine = BatchEngine(model)  # type: ignore[arg-type]
    prompt = model.tokenize("The history of the city of Paris", add_special=True,
                            parse_special=False)  # fmt: skip
    greedy = SamplingParams(temperature=0.0)

    def rate(top: int | None) -> float:
        job = Job(prompt, greedy, max_tokens=args.tokens, stop_at_eog=False, logprobs=top)
        start = time.perf_counter()
        list(engine.submit(job))
        return args.tokens / (time.perf_counter() - start)

    try:
        rate(None)  # warm
        ratios = []
        for round_ in range(args.rounds):
            order = (None, 5) if round_ % 2 == 0 else (5, None)
            rates = {top: rate(top) for top in order}
            ratios.append(rates[5] / rates[None])
            print(f"round {round_ + 1}: without {rates[None]:.1f} tok/s, with logprobs (top 5) "
                  f"{rates[5]:.1f} tok/s: {ratios[-1]:.3f}")  # fmt: skip
        print(f"median with / without: {statistics.median(ratios):.3f}")
    finally:
        engine.close()
        model.close()


if __name__ == "__main__":
    main()
