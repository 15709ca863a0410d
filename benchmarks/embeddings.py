"""``localrun embed`` against llama.cpp's ``llama-embedding``: 1,000 short texts, same model.

Both run as whole processes (the load included) on the same GGUF, texts file and threads,
alternately, each with its own batching (llama-embedding: as many texts a decode as its
batch holds; localrun: as many as its embedding context's sequences and batch hold). Prints
each run's wall time and texts per second, then localrun's speed as a fraction of
llama-embedding's (target: 0.9 or more), the median over the rounds, and the cosine of the
two tools' vectors for the first texts (llama-embedding's default --embd-normalize 2).

Without --model, a random BERT of MiniLM-L6's shape (384 wide, 6 layers, 12 heads, a
30,522-token vocabulary; all-minilm's) is written by tests/tiny_encoder.py: the speed is the
shape's, whatever the weights. llama-embedding is built once from the pinned llama-cpp-python
sdist (the tests' cache, tests/test_embedding_models.py).

With --server, also one ``POST /v1/embeddings`` of all the texts to ``localrun serve`` and to
``llama-server --embeddings`` (built by tests/test_embedding_models.py's cache, or by
benchmarks/llama_tools.py), each model loaded by a first small request: the request's time.

Usage: python benchmarks/embeddings.py [--model PATH.gguf] [--texts 1000] [--threads 2]
       [--rounds 3] [--server]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.machine import describe  # noqa: E402
from tests.test_embedding_models import llama_embedding, their_vectors  # noqa: E402
from tests.tiny_encoder import WORDS, write_tiny_bert  # noqa: E402

LOCALRUN = str(Path(sys.executable).parent / "localrun")


def texts(n: int, words: int = 18) -> list[str]:
    """``n`` short texts of about 20 tokens each ([CLS] and [SEP] included)."""
    rng = random.Random(0)
    return [" ".join(rng.choice(WORDS) for _ in range(words)) for _ in range(n)]


def timed(argv: list[str], stdin: Path | None, env: dict[str, str]) -> tuple[float, str]:
    start = time.perf_counter()
    with open(stdin or os.devnull, "rb") as given:
        done = subprocess.run(argv, stdin=given, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"{argv[0]} failed: {done.stderr[-1500:]}")
    return wall, done.stdout


def cosine(a: list[float], b: list[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    return dot / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))


def post_time(url: str, model: str, inputs: list[str]) -> float:
    """One ``/v1/embeddings`` request of ``inputs`` (after a first one that loads the model)."""
    import httpx

    httpx.post(f"{url}/v1/embeddings", json={"model": model, "input": inputs[:1]}, timeout=600)
    start = time.perf_counter()
    r = httpx.post(f"{url}/v1/embeddings", json={"model": model, "input": inputs}, timeout=600)
    r.raise_for_status()
    assert len(r.json()["data"]) == len(inputs)
    return time.perf_counter() - start


def servers(model: Path, inputs: list[str], threads: int, home: Path, rounds: int) -> None:
    """localrun serve and llama-server --embeddings, one request of all the texts each."""
    import importlib.metadata

    from tests.proc import wait_for
    from tests.served import create_model, free_port, serving

    version = importlib.metadata.version("llama-cpp-python")
    binary = (
        Path.home() / f".cache/localrun-tests/llama.cpp-{version}/build-no-amx/bin/llama-server"
    )
    if not binary.exists():
        print("  llama-server is not built: no server figures")
        return
    create_model(home, "embedder", f"FROM {model}\n")
    port = free_port()
    theirs = subprocess.Popen(
        [str(binary), "-m", str(model), "--embeddings", "-t", str(threads), "--port", str(port),
         "-c", "512"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        env={**os.environ, "LD_LIBRARY_PATH": str(binary.parent)},
    )  # fmt: skip
    try:
        import httpx

        def up() -> bool:
            try:
                return httpx.get(f"http://127.0.0.1:{port}/health", timeout=5).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(up, 120, "llama-server's start")
        with serving(home, "--threads", str(threads)) as ours:
            for r in range(rounds):
                mine = post_time(ours.url, "embedder", inputs)
                other = post_time(f"http://127.0.0.1:{port}", "x", inputs)
                n = len(inputs)
                print(f"  server round {r + 1}: localrun serve {mine:.2f} s ({n / mine:.0f} "
                      f"texts/s), llama-server {other:.2f} s ({n / other:.0f} texts/s), "
                      f"{other / mine:.3f}x")  # fmt: skip
    finally:
        theirs.terminate()
        theirs.wait(60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--texts", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--server", action="store_true")
    args = parser.parse_args()
    binary = llama_embedding()
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model or write_tiny_bert(
            Path(tmp) / "minilm-shape.gguf", n_embd=384, n_layer=6, n_head=12, n_vocab=30522
        )
        lines = Path(tmp) / "texts.txt"
        lines.write_text("\n".join(texts(args.texts)))
        env = {**os.environ, "LOCALRUN_HOME": str(Path(tmp) / "home")}
        theirs_env = {**os.environ, "LD_LIBRARY_PATH": str(binary.parent)}
        ours_argv = [LOCALRUN, "embed", str(model), "--threads", str(args.threads)]
        theirs_argv = [str(binary), "-m", str(model), "-f", str(lines), "-t", str(args.threads),
                       "--embd-output-format", "array"]  # fmt: skip
        print(describe())
        print(f"model {model.name}, {args.texts} texts, {args.threads} threads")
        ratios = []
        for r in range(args.rounds):
            ours, our_out = timed(ours_argv, lines, env)
            theirs, _ = timed(theirs_argv, None, theirs_env)  # its printing is not waited for
            ratios.append(theirs / ours)
            n = args.texts
            print(f"  round {r + 1}: localrun {ours:.2f} s ({n / ours:.0f} texts/s), "
                  f"llama-embedding {theirs:.2f} s ({n / theirs:.0f} texts/s)")  # fmt: skip
        mine = [json.loads(line) for line in our_out.splitlines()[:8]]
        other = their_vectors(binary, model, texts(args.texts)[:8], 2)
        worst = min(cosine(a, b) for a, b in zip(mine, other, strict=True))
        speed = statistics.median(ratios)
        print(f"  speed: localrun at {speed:.3f} x llama-embedding's (median of {args.rounds});"
              f" lowest cosine of the first 8 vectors {worst:.6f}")  # fmt: skip
        if args.server:
            servers(model, texts(args.texts), args.threads, Path(tmp) / "home", args.rounds)


if __name__ == "__main__":
    main()
