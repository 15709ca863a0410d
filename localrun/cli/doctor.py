"""``localrun doctor``: can this machine offload, what devices, which versions."""

from __future__ import annotations

import json

import typer

from localrun.cli import app
from localrun.files import human_size


@app.command()
def doctor(as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """Check the installation and the GPUs.

    The llama.cpp build, GPU devices, threads, the cache and the versions.
    """
    from localrun.engine.doctor import report  # loads llama.cpp: only when asked

    r = report()
    if as_json:
        print(json.dumps(r.as_dict(), indent=2))
        return
    offload = "no: this build has no GPU backend (see docs/gpu.md)"
    if r.gpu_offload:
        found = any(d["type"] in ("gpu", "igpu") for d in r.devices)
        offload = "yes" if found else "built in, but llama.cpp found no GPU (see docs/gpu.md)"
    print(f"localrun          {r.localrun}")
    print(f"llama-cpp-python  {r.llama_cpp}")
    print(f"llama.cpp build   {r.system_info}")
    print(f"GPU offload       {offload}")
    if r.gpu_budget is not None:
        print(f"GPU budget        {human_size(r.gpu_budget)} on each GPU (LOCALRUN_GPU_MEMORY)")
    rpc = "yes: localrun worker, --rpc" if r.rpc else "no: built without it (see docs/scale.md)"
    print(f"RPC               {rpc}")
    print("devices")
    for d in r.devices:
        free, total = int(str(d["free_bytes"])), int(str(d["total_bytes"]))
        print(
            f"  {d['name']:<10} {d['type']:<5} {d['description']}: "
            f"{human_size(free)} free of {human_size(total)}"
        )
    print(f"threads           {r.threads} (physical cores; {r.logical_cpus} logical CPUs)")
    print(f"cache             {r.cache_dir} ({human_size(r.cache_bytes)})")
    if r.parallel_demo is not None:
        print(
            f"parallel          {r.parallel_demo} sequences at once for the demo model with "
            "--batch (half the memory after the weights, at most 8)"
        )
    if r.context_demo is not None:
        print(f"context           the demo model's default here: {r.context_demo[1]}")
    if r.kv_demo is not None and r.context_demo is not None:
        sizes = ", ".join(f"{kind} {human_size(size)}" for kind, size in r.kv_demo.items())
        tokens = r.context_demo[0]
        print(f"KV cache          the demo model's, {tokens} tokens: {sizes} (--kv-type)")
    for name, version in r.packages.items():
        print(f"  {name:<17} {version}")
