"""localrun serve against llama.cpp's llama-server, under the same load, alternately.

N clients stream completions at once (``/v1/completions``, the same prompts, lengths and
sampling settings for both servers) until each has made its share of the requests. Each run
starts its server afresh on the demo model with N sequences and the same threads, waits for
it to load, runs the load, and stops it; the order of the two flips every round. It prints,
for each server, aggregate decode tokens/s (answer tokens / wall time of the load), p50 and
p99 time to first token, and failed requests; then the ratios and the targets.

``--burst``: the clients send their requests together, wait for all the answers, and send the
next ones together (as a burst of users arriving at once, where the steady mode keeps each
client busy). Every request asks for ``ignore_eos``, so that both servers write every answer
to its full length.

``--soak SECONDS`` then runs localrun alone at N streams for that long and counts failures.

Usage: python benchmarks/serve_load.py [--model demo] [--streams 8] [--requests 32]
       [--tokens 64] [--threads 2] [--rounds 2] [--burst] [--soak 300]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from llama_tools import tool_for  # beside this script
from machine import describe

PROMPTS = [
    "The history of the city of Paris begins",
    "A short guide to growing tomatoes at home:",
    "The three laws of motion, explained simply:",
    "Once upon a time, in a village by the sea,",
]
CONTEXT = 2048  # per sequence, for both servers
PENALTY = [1.1]  # the repetition penalty requests ask for (--repeat-penalty)
TARGETS = {"decode": 0.90, "ttft_p99": 1.2}


@dataclass
class Run:
    tokens: int = 0
    ttft: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def rate(self) -> float:
        return self.tokens / self.seconds if self.seconds else 0.0

    def p(self, q: float) -> float:
        if not self.ttft:
            return float("nan")
        ordered = sorted(self.ttft)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait(url: str, proc: subprocess.Popen[bytes], path: str) -> None:
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited with {proc.returncode}")
        try:
            if httpx.get(url + path, timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"{url} did not come up")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def start_localrun(
    model: str, streams: int, threads: int, home: str
) -> tuple[str, subprocess.Popen[bytes]]:
    port = _port()
    env = {**os.environ, "LOCALRUN_HOME": home}
    proc = subprocess.Popen(
        [sys.executable, "-m", "localrun", "serve", "--port", str(port), "--parallel", str(streams),
         "--threads", str(threads), "--model", model, "--keep-alive", "-1"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    _wait(url, proc, "/")
    return url, proc


def start_llama_server(
    binary: Path, gguf: Path, streams: int, threads: int
) -> tuple[str, subprocess.Popen[bytes]]:
    port = _port()
    proc = subprocess.Popen(
        [str(binary), "-m", str(gguf), "--port", str(port), "--host", "127.0.0.1",
         "-np", str(streams), "-c", str(CONTEXT * streams), "-t", str(threads),
         "-tb", str(threads), "--no-webui"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    _wait(url, proc, "/health")
    return url, proc


def one_request(
    client: httpx.Client, url: str, model: str, prompt: str, tokens: int, seed: int
) -> tuple[float, int]:
    """Stream one completion: (TTFT, answer tokens)."""
    body = {
        "model": model, "prompt": prompt, "max_tokens": tokens, "stream": True,
        "temperature": 0.8, "top_p": 0.9, "seed": seed,
        "stream_options": {"include_usage": True},
        # Beyond OpenAI's fields; both servers take these names.
        "top_k": 40, "min_p": 0.0, "repeat_penalty": PENALTY[0], "repeat_last_n": 64,
        "ignore_eos": True,
    }  # fmt: skip
    start = time.perf_counter()
    first = None
    chunks = 0
    usage = None
    with client.stream("POST", url + "/v1/completions", json=body, timeout=600) as r:
        if r.status_code != 200:
            raise RuntimeError(f"HTTP {r.status_code}: {r.read()[:200]!r}")
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if "error" in chunk:
                raise RuntimeError(str(chunk["error"])[:200])
            if chunk.get("usage"):
                usage = chunk["usage"]
            for choice in chunk.get("choices") or []:
                if choice.get("text"):
                    chunks += 1
                    if first is None:
                        first = time.perf_counter() - start
    if first is None:
        raise RuntimeError("no text came back")
    return first, int(usage["completion_tokens"]) if usage else chunks


def load(
    url: str,
    model: str,
    streams: int,
    requests: int,
    tokens: int,
    until: float = 0,
    burst: bool = False,
) -> Run:
    """``streams`` clients at once, ``requests`` in all (or until the clock passes ``until``);
    with ``burst``, each round of requests sent together."""
    run = Run()
    lock = threading.Lock()
    counter = iter(range(10**9))
    together = threading.Barrier(streams)

    def client_loop(worker: int) -> None:
        # A new connection a request: llama-server closes idle keep-alive connections, and a
        # request sent on one just closed fails without an answer.
        limits = httpx.Limits(max_keepalive_connections=0)
        with httpx.Client(limits=limits) as client:
            while True:
                with lock:
                    n = next(counter)
                if (until and time.monotonic() > until) or (not until and n >= requests):
                    return
                if burst:
                    together.wait(timeout=600)  # the round's requests leave together
                try:
                    ttft, made = one_request(
                        client, url, model, PROMPTS[n % len(PROMPTS)], tokens, n
                    )
                    with lock:
                        run.ttft.append(ttft)
                        run.tokens += made
                except Exception as e:  # a failed request is counted, not fatal
                    with lock:
                        run.errors.append(str(e))

    start = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(streams) as pool:
        list(pool.map(client_loop, range(streams)))
    run.seconds = time.perf_counter() - start
    return run


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="demo")
    ap.add_argument("--streams", type=int, default=8)
    ap.add_argument("--requests", type=int, default=32, help="requests a run, in all")
    ap.add_argument("--tokens", type=int, default=64, help="answer tokens a request")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--burst", action="store_true", help="requests sent together, in rounds")
    ap.add_argument("--soak", type=float, default=0, help="then localrun alone for this long")
    ap.add_argument("--repeat-penalty", type=float, default=1.1)
    args = ap.parse_args()
    if args.burst:  # whole rounds: every client sends one request a round
        args.requests = -(-args.requests // args.streams) * args.streams
    PENALTY[0] = args.repeat_penalty
    found = tool_for(args.model, "llama-server")
    if found is None:
        return 1
    binary, gguf = found
    print(describe())
    home = tempfile.mkdtemp(prefix="serve-load-")
    if args.model == "demo":  # the demo model, assembled once in this home
        subprocess.run([sys.executable, "-m", "localrun", "show", "demo"], check=True,
                       env={**os.environ, "LOCALRUN_HOME": home}, capture_output=True)  # fmt: skip
    results: dict[str, list[Run]] = {"localrun": [], "llama-server": []}
    for r in range(args.rounds):
        order = ["localrun", "llama-server"] if r % 2 == 0 else ["llama-server", "localrun"]
        for name in order:
            if name == "localrun":
                url, proc = start_localrun(args.model, args.streams, args.threads, home)
            else:
                url, proc = start_llama_server(binary, gguf, args.streams, args.threads)
            try:
                load(url, args.model, args.streams, args.streams, 8)  # warm up
                run = load(
                    url, args.model, args.streams, args.requests, args.tokens, burst=args.burst
                )
            finally:
                _stop(proc)
            results[name].append(run)
            print(
                f"round {r + 1} {name:12s}: {run.rate:6.1f} tok/s aggregate, TTFT p50 "
                f"{run.p(0.5) * 1e3:6.0f} ms p99 {run.p(0.99) * 1e3:6.0f} ms, "
                f"{len(run.errors)} failed of {len(run.ttft) + len(run.errors)}",
                flush=True,
            )
            for e in run.errors[:3]:
                print(f"   failed: {e}")
    ours, theirs = results["localrun"], results["llama-server"]
    failed = sum(len(r.errors) for r in ours)
    if ours:  # --rounds 0: only the soak
        decode = statistics.median(a.rate / b.rate for a, b in zip(ours, theirs, strict=True))
        p99 = statistics.median(a.p(0.99) / b.p(0.99) for a, b in zip(ours, theirs, strict=True))
        met = {True: "met", False: "MISSED"}
        mode = "in bursts" if args.burst else "steady"
        print(
            f"\n{args.streams} streams, {args.requests} requests of {args.tokens} tokens a run, "
            f"{mode}:"
        )
        print(
            f"aggregate decode, localrun / llama-server: median {decode:.3f} "
            f"(target >= {TARGETS['decode']}: {met[decode >= TARGETS['decode']]})"
        )
        print(
            f"p99 TTFT, localrun / llama-server: median {p99:.3f} "
            f"(target <= {TARGETS['ttft_p99']}: {met[p99 <= TARGETS['ttft_p99']]})"
        )
        print(f"localrun failed requests: {failed}")
    if args.soak:
        url, proc = start_localrun(args.model, args.streams, args.threads, home)
        try:
            run = load(
                url, args.model, args.streams, 0, args.tokens, until=time.monotonic() + args.soak
            )
        finally:
            _stop(proc)
        print(
            f"soak: {args.soak:.0f} s at {args.streams} streams: {len(run.ttft)} requests, "
            f"{len(run.errors)} failed, {run.rate:.1f} tok/s, TTFT p99 {run.p(0.99) * 1e3:.0f} ms"
        )
        for e in run.errors[:5]:
            print(f"   failed: {e}")
        failed += len(run.errors)
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
