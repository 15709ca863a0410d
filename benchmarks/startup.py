"""Start-up cost: localrun against a bare llama-cpp-python script, side by side.

Alternates, for N rounds, ``echo Hello | localrun run MODEL --max-tokens 1`` and a bare
script that loads the same GGUF with ``llama_cpp.Llama`` (same threads and context) and
generates one token, measuring each process's wall time (start to exit) and peak memory
(the kernel's maximum resident set size). Also times ``localrun --help`` and
``localrun list`` beside ``python -c pass`` and ``python -c "import typer"``, the floor any
typer command line stands on here. Prints medians and the targets.

Everything runs from a regular (not editable) install of this working tree, as the README
installs it for users (see ``user_install.py``).

Usage: python benchmarks/startup.py [--model demo] [--rounds 5]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from user_install import user_install

BARE = """
import sys
from llama_cpp import Llama
llm = Llama(model_path=sys.argv[1], n_threads=int(sys.argv[2]), n_threads_batch=int(sys.argv[2]),
            n_ctx=4096, verbose=False)
out = llm.create_completion("Hello\\n", max_tokens=1)
print(out["choices"][0]["text"])
"""


def measure(
    cmd: list[str], stdin: bytes = b"", env: dict[str, str] | None = None
) -> tuple[float, int]:
    """(wall seconds, peak RSS in bytes) of one process."""
    start = time.perf_counter()
    proc = subprocess.Popen(
        cmd, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    assert proc.stdin is not None
    proc.stdin.write(stdin)
    proc.stdin.close()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{cmd} failed with {proc.returncode}")
    return wall, usage.ru_maxrss * 1024


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="demo")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        bin_dir = user_install(Path(tmp))
        os.chdir(tmp)  # the working tree must not shadow the installed package
        return run(bin_dir, args)


def run(bin_dir: Path, args: argparse.Namespace) -> int:
    python = str(bin_dir / "python")
    localrun = [str(bin_dir / "localrun")]
    shown = subprocess.run(
        [*localrun, "show", args.model, "--json"], check=True, capture_output=True, text=True
    ).stdout
    path = json.loads(shown)["path"]
    bare = [python, "-c", BARE, path, str(args.threads)]
    ours = [*localrun, "run", args.model, "--max-tokens", "1", "--threads", str(args.threads)]
    # Warm the page cache once for both.
    measure(bare)
    measure(ours, b"Hello\n")
    walls: dict[str, list[float]] = {"bare": [], "localrun": []}
    peaks: dict[str, list[int]] = {"bare": [], "localrun": []}
    for i in range(args.rounds):
        for name, cmd, stdin in (("bare", bare, b""), ("localrun", ours, b"Hello\n")):
            wall, peak = measure(cmd, stdin)
            walls[name].append(wall)
            peaks[name].append(peak)
        print(
            f"round {i + 1}: bare {walls['bare'][-1]:.3f} s {peaks['bare'][-1] / 1e6:.1f} MB"
            f"   localrun {walls['localrun'][-1]:.3f} s {peaks['localrun'][-1] / 1e6:.1f} MB"
        )
    med = statistics.median
    ratio = med(walls["localrun"]) / med(walls["bare"])
    extra = (med(peaks["localrun"]) - med(peaks["bare"])) / 1e6
    paired = med([ours / bare for ours, bare in zip(walls["localrun"], walls["bare"], strict=True)])
    print(
        f"one-token run: localrun / bare wall time = {ratio:.3f} (target <= 1.10); "
        f"median of the rounds' ratios {paired:.3f}"
    )
    print(f"peak memory: localrun - bare = {extra:+.1f} MB (target <= +40 MB)")
    quick = {
        "python -c pass": [python, "-c", "pass"],
        "python -c 'import typer'": [python, "-c", "import typer"],
        "localrun --help": [*localrun, "--help"],
        "localrun list": [*localrun, "list"],
    }
    times: dict[str, list[float]] = {name: [] for name in quick}
    for _ in range(15):  # interleaved, so that a busy moment hits all four alike
        for name, cmd in quick.items():
            times[name].append(measure(cmd)[0])
    for name, target in zip(quick, ("", "", " (target <= 0.15)", " (target <= 0.30)"), strict=True):
        print(f"{name}: median {med(times[name]):.3f} s of 15{target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
