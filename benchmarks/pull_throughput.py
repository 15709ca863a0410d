"""Pull throughput against curl, side by side, from the same loopback test Hub.

Serves one file (default 250 MB) with ``python -m tests.hub`` and, alternately, downloads it
with ``curl`` and pulls it with ``localrun pull --json`` into a fresh cache. Throughput is bytes
over the transfer time each tool reports: curl's ``time_total`` (connect to last byte written),
localrun's ``transfer_s`` (first request to last byte written and hashed). Whole-command wall
times are printed beside them: they add Python's start-up and the metadata request, which no
transfer rate should hide. The target is a median throughput ratio (localrun / curl) >= 0.8.
localrun runs from a regular (not editable) install of this working tree (``user_install.py``).

The first write to guest memory that this virtual machine's host has reclaimed costs a host page
fault, about 4 s per GB, so runs vary with where each tool's page cache lands; the rounds
alternate the tools so that both meet the same conditions (see ``localrun/download.py``'s write
size).

Usage: python benchmarks/pull_throughput.py [--size-mb 250] [--rounds 9]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from user_install import user_install

ROOT = Path(__file__).resolve().parent.parent


def write_model(path: Path, size: int) -> None:
    block = os.urandom(1 << 20)
    with path.open("wb") as f:
        f.write(b"GGUF")
        written = 4
        while written < size:
            chunk = block[: size - written]
            f.write(chunk)
            written += len(chunk)


def timed(cmd: list[str], env: dict[str, str]) -> tuple[float, str]:
    """Wall time of a command, and its stdout."""
    start = time.perf_counter()
    out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout
    return time.perf_counter() - start, out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=250)
    parser.add_argument("--rounds", type=int, default=9)
    args = parser.parse_args()
    if shutil.which("curl") is None:
        print("curl is not installed", file=sys.stderr)
        return 1
    size = args.size_mb * 1_000_000
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        localrun_bin = user_install(work)
        model = work / "bench-Q4_K_M.gguf"
        write_model(model, size)
        server = subprocess.Popen(
            [sys.executable, "-m", "tests.hub", "--repo", "bench/model", "--file", str(model)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert server.stdout is not None
            url = server.stdout.readline().strip()
            file_url = f"{url}/bench/model/resolve/main/{model.name}"
            env = {**os.environ, "HF_ENDPOINT": url, "HF_HUB_DISABLE_XET": "1"}
            curl_rate, pull_rate, curl_wall, pull_wall = [], [], [], []
            for i in range(args.rounds):
                out = work / "curl.out"
                wall, text = timed(
                    ["curl", "-sS", "-f", "-o", str(out), "-w", "%{time_total}", file_url], env
                )
                out.unlink()
                curl_wall.append(wall)
                curl_rate.append(size / float(text))
                home = work / f"home{i}"
                pull_env = {**env, "LOCALRUN_HOME": str(home)}
                localrun = [str(localrun_bin / "localrun"), "pull", "--json", "hf.co/bench/model"]
                wall, text = timed(localrun, pull_env)
                shutil.rmtree(home)
                record = json.loads(text)
                assert record["downloaded_bytes"] == size
                pull_wall.append(wall)
                pull_rate.append(size / record["transfer_s"])
                print(
                    f"round {i + 1}: curl {curl_rate[-1] / 1e6:4.0f} MB/s ({curl_wall[-1]:.2f} s)"
                    f"   localrun pull {pull_rate[-1] / 1e6:4.0f} MB/s ({pull_wall[-1]:.2f} s)"
                    f"   ratio {pull_rate[-1] / curl_rate[-1]:.2f}"
                )
        finally:
            server.terminate()
            server.wait()
    median = statistics.median
    print(
        f"median over {args.rounds} rounds, {size / 1e6:.0f} MB: transfer throughput "
        f"localrun pull / curl = {median(pull_rate) / median(curl_rate):.2f} (target >= 0.80); "
        f"whole commands: curl {median(curl_wall):.2f} s, localrun pull {median(pull_wall):.2f} s "
        f"(ratio {median(curl_wall) / median(pull_wall):.2f})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
