"""localrun against llama.cpp's own llama-bench, side by side, on the same GGUF and threads.

Builds ``llama-bench`` once from the llama.cpp source inside the pinned llama-cpp-python
sdist (the same source, built with the flags llama-cpp-python's CMakeLists sets: Release,
no curl, and localrun's own from ``scripts/cmake_args.py``), cached in
``benchmarks/.cache``. Then runs it and ``localrun bench`` alternately, and prints the
ratios of prefill (pp) and decode (tg) tokens/s, with the targets.

Usage: python benchmarks/vs_llama_bench.py [--model demo] [--threads 2] [--rounds 3]
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / "benchmarks" / ".cache"
TARGETS = {"pp": 0.98, "tg": 0.97}


def llama_bench() -> Path:
    """The llama-bench binary built from the pinned sdist's llama.cpp (built once)."""
    version = importlib.metadata.version("llama-cpp-python")
    build = CACHE / f"llama.cpp-{version}" / "build-no-amx"
    binary = build / "bin" / "llama-bench"
    if binary.exists():
        return binary
    source = build.parent / "src"
    if not source.exists():
        with tempfile.TemporaryDirectory() as tmp:
            subprocess.run(
                [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary",
                 "llama-cpp-python", f"llama-cpp-python=={version}", "-d", tmp, "-q"],
                check=True,
            )  # fmt: skip
            sdist = next(Path(tmp).glob("llama_cpp_python-*.tar.gz"))
            with tarfile.open(sdist) as tar:
                prefix = f"{sdist.name.removesuffix('.tar.gz')}/vendor/llama.cpp/"
                members = [m for m in tar.getmembers() if m.name.startswith(prefix)]
                for m in members:
                    m.name = m.name[len(prefix) :]
                tar.extractall(source, members=[m for m in members if m.name], filter="data")
    flags = [
        "-DCMAKE_BUILD_TYPE=Release",
        "-DLLAMA_CURL=OFF",
        "-DLLAMA_BUILD_COMMON=ON",
        "-DLLAMA_BUILD_TESTS=OFF",
        "-DLLAMA_BUILD_EXAMPLES=OFF",
        "-DLLAMA_BUILD_SERVER=OFF",
        *_localrun_cmake_flags(),
    ]
    subprocess.run(["cmake", "-S", str(source), "-B", str(build), *flags], check=True)
    jobs = str(os.cpu_count() or 2)
    subprocess.run(
        ["cmake", "--build", str(build), "--target", "llama-bench", "-j", jobs], check=True
    )
    return binary


def _localrun_cmake_flags() -> list[str]:
    """The flags localrun's own install builds llama.cpp with (scripts/cmake_args.py)."""
    import runpy

    flags: list[str] = runpy.run_path(str(ROOT / "scripts" / "cmake_args.py"))["cmake_flags"]()
    return flags


def run_llama_bench(binary: Path, model: Path, threads: int, p: int, n: int) -> dict[str, float]:
    out = subprocess.run(
        [str(binary), "-m", str(model), "-t", str(threads), "-p", str(p), "-n", str(n),
         "-r", "5", "-o", "json"],
        check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip
    rates: dict[str, float] = {}
    for test in json.loads(out):
        kind = "pp" if test["n_prompt"] and not test["n_gen"] else "tg"
        rates[kind] = float(test["avg_ts"])
    return rates


def run_localrun(model: str, threads: int, p: int, n: int) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, "-m", "localrun", "bench", model, "--threads", str(threads),
         "-p", str(p), "-n", str(n), "-r", "5", "--json"],
        check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip
    data = json.loads(out)
    return {"pp": data["prefill_tokens_per_s"], "tg": data["decode_tokens_per_s"]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="demo")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("-p", type=int, default=512)
    parser.add_argument("-n", type=int, default=128)
    args = parser.parse_args()
    if shutil.which("cmake") is None:
        print("cmake is needed to build llama-bench", file=sys.stderr)
        return 1
    binary = llama_bench()
    path = subprocess.run(
        [sys.executable, "-m", "localrun", "show", args.model, "--json"],
        check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip
    model_path = Path(json.loads(path)["path"])
    ratios: dict[str, list[float]] = {"pp": [], "tg": []}
    for i in range(args.rounds):
        ref = run_llama_bench(binary, model_path, args.threads, args.p, args.n)
        ours = run_localrun(args.model, args.threads, args.p, args.n)
        for kind in ("pp", "tg"):
            ratios[kind].append(ours[kind] / ref[kind])
        print(
            f"round {i + 1}: llama-bench pp{args.p} {ref['pp']:.1f} tg{args.n} {ref['tg']:.1f} t/s"
            f" | localrun bench pp{args.p} {ours['pp']:.1f} tg{args.n} {ours['tg']:.1f} t/s"
            f" | ratios pp {ratios['pp'][-1]:.3f} tg {ratios['tg'][-1]:.3f}"
        )
    for kind, name in (("pp", f"prefill pp{args.p}"), ("tg", f"decode tg{args.n}")):
        median = statistics.median(ratios[kind])
        verdict = "meets" if median >= TARGETS[kind] else "misses"
        print(f"{name}: median ratio {median:.3f} ({verdict} the target {TARGETS[kind]})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
