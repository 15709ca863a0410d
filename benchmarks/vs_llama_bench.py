"""localrun against llama.cpp's own llama-bench, side by side, on the same GGUF and threads.

Builds ``llama-bench`` once from the llama.cpp source inside the pinned llama-cpp-python
sdist (the same source, built with the flags llama-cpp-python's CMakeLists sets: Release,
no curl, and localrun's own from ``scripts/cmake_args.py``), cached in
``benchmarks/.cache``. Then runs it and ``localrun bench`` alternately, and prints the
ratios of prefill (pp) and decode (tg) tokens/s, with the targets.

With ``--vulkan`` both run every layer on a Vulkan device (``--vk-device``, the index
``GGML_VK_VISIBLE_DEVICES`` takes: Mesa's lavapipe on a machine without a GPU): llama-bench
built with ``-DGGML_VULKAN=ON`` from the same source, and localrun on the Vulkan build of
llama-cpp-python the tests make (``tests/vulkan_build.py``), flash attention off on both.

Usage: python benchmarks/vs_llama_bench.py [--model demo] [--threads 2] [--rounds 3] [--vulkan]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from llama_tools import tool_for  # beside this script
from machine import describe

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / "benchmarks" / ".cache"
TARGETS = {"pp": 0.98, "tg": 0.97}


# How each side runs: on the CPU build, or (--vulkan) every layer on one Vulkan device.
Side = dict[str, object]


def run_llama_bench(
    binary: Path, model: Path, threads: int, p: int, n: int, side: Side
) -> dict[str, float]:
    device = ["-ngl", "99", "-fa", "0"] if side.get("env") else []
    out = subprocess.run(
        [str(binary), "-m", str(model), "-t", str(threads), "-p", str(p), "-n", str(n),
         "-r", str(side.get("repeats", 5)), "-o", "json", *device],
        check=True, capture_output=True, text=True, env=_env(side),
    ).stdout  # fmt: skip
    rates: dict[str, float] = {}
    for test in json.loads(out):
        kind = "pp" if test["n_prompt"] and not test["n_gen"] else "tg"
        rates[kind] = float(test["avg_ts"])
    return rates


def run_localrun(model: str, threads: int, p: int, n: int, side: Side) -> dict[str, float]:
    device = ["--gpu-layers", "all", "--flash-attn", "off"] if side.get("env") else []
    out = subprocess.run(
        [str(side.get("python", sys.executable)), "-m", "localrun", "bench", model,
         "--threads", str(threads), "-p", str(p), "-n", str(n),
         "-r", str(side.get("repeats", 5)), "--json", *device],
        check=True, capture_output=True, text=True, env=_env(side),
    ).stdout  # fmt: skip
    data = json.loads(out)
    return {"pp": data["prefill_tokens_per_s"], "tg": data["decode_tokens_per_s"]}


def _env(side: Side) -> dict[str, str]:
    extra = side.get("env")
    return {**os.environ, **(extra if isinstance(extra, dict) else {})}


def vulkan_side(device: str, repeats: int) -> Side:
    """The Vulkan build's Python (built by the tests' helper the first time) and the device."""
    sys.path.insert(0, str(ROOT))
    from tests import vulkan_build

    python = vulkan_build.vulkan_python()
    env = {"GGML_VK_VISIBLE_DEVICES": device, "PYTHONPATH": str(ROOT)}
    return {"python": python, "env": env, "repeats": repeats}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="demo")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("-p", type=int, default=512)
    parser.add_argument("-n", type=int, default=128)
    parser.add_argument("--vulkan", action="store_true", help="every layer on a Vulkan device")
    parser.add_argument("--vk-device", default="0", help="GGML_VK_VISIBLE_DEVICES (--vulkan)")
    parser.add_argument("--repeats", type=int, default=5, help="runs a side makes a round")
    args = parser.parse_args()
    print(describe())
    side: Side = vulkan_side(args.vk_device, args.repeats) if args.vulkan else {}
    side.setdefault("repeats", args.repeats)
    found = tool_for(args.model, "llama-bench", vulkan=args.vulkan)
    if found is None:
        return 1
    binary, model_path = found
    # The Vulkan build has no demo package: both read the same file by its path.
    model = str(model_path) if args.vulkan else args.model
    ratios: dict[str, list[float]] = {"pp": [], "tg": []}
    for i in range(args.rounds):
        # The order flips every round: whichever runs second may find the machine in
        # another state (caches, other tenants), and that must not always favour one.
        if i % 2 == 0:
            ref = run_llama_bench(binary, model_path, args.threads, args.p, args.n, side)
            ours = run_localrun(model, args.threads, args.p, args.n, side)
        else:
            ours = run_localrun(model, args.threads, args.p, args.n, side)
            ref = run_llama_bench(binary, model_path, args.threads, args.p, args.n, side)
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
