"""What splitting a model over an RPC worker costs: the demo model alone against split in two.

A ``localrun worker`` runs in a subprocess on loopback; this process loads the model twice
(all layers here, and the offload plan's split with the worker), then answers the same prompt
with each, alternating the order every round. It prints prefill and decode tokens/s, the time
each token costs over running alone, and the bytes the worker reads and writes per decoded
token over its TCP connection (from ``ss``: prompt and answer together, over the answer's
tokens), from which the cost on a real network follows.

Usage: python benchmarks/rpc.py [--model demo] [--rounds 3] [-n 128] [--threads 2]
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import time
from typing import Any

from localrun import engine
from localrun.backend import SamplingParams
from localrun.backend.llamacpp import rpc
from localrun.engine.batch import Job, collect
from localrun.engine.runner import runner_of
from localrun.errors import WorkerError

PROMPT = (
    "The harbour woke before the sun. Boats knocked against the pier, gulls argued over the "
    "nets, and the smell of salt and tar hung over the stones. "
) * 6 + "Once upon a time, in that small village by the sea, there lived an old fisherman who"


def wire_bytes(port: int) -> int:
    """Bytes the worker's TCP connections have sent and received (``ss``' tcp_info)."""
    shown = subprocess.run(
        ["ss", "-tinH", "state", "established", f"( sport = :{port} )"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    sent = sum(int(n) for n in re.findall(r"bytes_sent:(\d+)", shown))
    received = sum(int(n) for n in re.findall(r"bytes_received:(\d+)", shown))
    return sent + received


def start_worker(port: int, threads: int) -> subprocess.Popen[bytes]:
    worker = subprocess.Popen(
        [sys.executable, "-m", "localrun", "worker", "--port", str(port), "--threads",
         str(threads), "--no-cache"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while True:
        try:
            rpc.hello(rpc.Endpoint("127.0.0.1", port), timeout=5)
            return worker
        except WorkerError:
            if worker.poll() is not None or time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="demo")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("-n", type=int, default=128, help="answer tokens")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--port", type=int, default=50152)
    args = ap.parse_args()
    worker = start_worker(args.port, args.threads)
    loaded: dict[str, Any] = {}
    try:
        endpoint = rpc.Endpoint("127.0.0.1", args.port)
        loaded["alone"] = engine.load_model(args.model, n_ctx=1024, n_threads=args.threads,
                                            gpu_layers=0)  # fmt: skip
        loaded["split"] = engine.load_model(
            args.model, n_ctx=1024, n_threads=args.threads, workers=(endpoint,)
        )
        print(f"split: {loaded['split'].plan.describe()}", flush=True)
        rates: dict[str, dict[str, list[float]]] = {
            k: {"prefill": [], "decode": [], "bytes": []} for k in loaded
        }
        sampling = SamplingParams(temperature=0.0)
        for one in loaded.values():
            one.prompt_cache = False
            tokens = one.model.tokenize(PROMPT, add_special=True, parse_special=False)
            collect(runner_of(one).engine.submit(Job(tokens, sampling, max_tokens=4)))  # warm
        for r in range(args.rounds):
            order = list(loaded) if r % 2 == 0 else list(reversed(loaded))
            for kind in order:
                one = loaded[kind]
                # A new first line each time: nothing of the prompt is in the KV cache yet.
                text_in = f"Story {r + 1}{kind[0]}.\n{PROMPT}"
                tokens = one.model.tokenize(text_in, add_special=True, parse_special=False)
                before = wire_bytes(args.port)
                text, stats = collect(
                    runner_of(one).engine.submit(Job(tokens, sampling, max_tokens=args.n))
                )
                moved = (wire_bytes(args.port) - before) / max(1, stats.completion_tokens)
                rates[kind]["prefill"].append(stats.prefill_tokens_per_s)
                rates[kind]["decode"].append(stats.decode_tokens_per_s)
                rates[kind]["bytes"].append(moved)
                print(
                    f"round {r + 1} {kind}: prefill {stats.prefill_tokens_per_s:.1f} tok/s, "
                    f"decode {stats.decode_tokens_per_s:.1f} tok/s, {moved / 1024:.1f} KiB a "
                    f"token through the worker, {text[:30]!r}",
                    flush=True,
                )
    finally:
        for one in loaded.values():
            one.close()
        worker.terminate()
        worker.wait(30)
    med = {k: {m: statistics.median(v) for m, v in d.items()} for k, d in rates.items()}
    for measure in ("prefill", "decode"):
        ratio = med["split"][measure] / med["alone"][measure]
        print(
            f"  {measure}: alone {med['alone'][measure]:.1f} tok/s, split "
            f"{med['split'][measure]:.1f} tok/s, split/alone {ratio:.3f}"
        )
    extra = 1000 / med["split"]["decode"] - 1000 / med["alone"]["decode"]
    print(f"  a decoded token costs {extra:.2f} ms more split over loopback")
    print(f"  {med['split']['bytes'] / 1024:.1f} KiB cross the network a token")


if __name__ == "__main__":
    main()
