"""``localrun worker``: lend this machine's devices to another's models (llama.cpp RPC)."""

from __future__ import annotations

import sys
import threading
import time

import typer

from localrun.cli import app, options
from localrun.errors import WorkerError


@app.command()
def worker(
    host: str = typer.Option(
        "127.0.0.1", "--host", help="Address to listen on (off loopback, see the flag below)."
    ),
    port: int = typer.Option(50052, "--port", min=1, max=65535, help="TCP port."),
    threads: int | None = options.threads(),
    cache: bool = typer.Option(
        True,
        "--cache/--no-cache",
        help="Keep the tensors clients send on disk, so that a model's weights cross the "
        "network once.",
    ),
    public: bool = typer.Option(
        False,
        "--i-know-rpc-is-unauthenticated",
        help="Listen off loopback although llama.cpp's RPC has no authentication or "
        "encryption: only inside a trusted network.",
    ),
) -> None:
    """Lend this machine's devices to other machines' models (llama.cpp RPC).

    Serves its GPUs (else its CPU) to 'localrun run MODEL --rpc HOST:PORT' elsewhere, which
    puts part of the model's layers here. Runs until Ctrl-C.
    """
    from localrun import paths
    from localrun.backend.llamacpp.devices import FLASH_ATTN_CRASHES
    from localrun.engine.workers import PROTOCOL, Worker, parse_endpoints
    from localrun.files import human_size
    from localrun.system import physical_cores

    (endpoint,) = parse_endpoints(f"{host}:{port}", "--host/--port")
    n_threads = threads or physical_cores()
    server = Worker(
        endpoint,
        n_threads=n_threads,
        cache_dir=paths.cache_dir() / "rpc" if cache else None,
        public=public,
    )

    def say(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    def event(text: str) -> None:
        say(f"{time.strftime('%H:%M:%S')} {text}")

    server.start(event)
    version = ".".join(map(str, PROTOCOL))
    say(f"worker listening on {endpoint} (llama.cpp RPC protocol {version})")
    for d in server.devices:
        say(
            f"  lends {d.name} ({d.description}): {human_size(d.free_bytes)} free of "
            f"{human_size(d.total_bytes)}" + (f", {n_threads} threads" if d.type == "cpu" else "")
        )
    if server.cache_dir is not None:
        say(f"  tensor cache: {server.cache_dir}")
    if any(d.description.startswith(FLASH_ATTN_CRASHES) for d in server.devices):
        # A client cannot tell what device an RPC worker lends (llama.cpp's RPC backend says
        # every operation runs there), so its flash attention "auto" turns it on.
        say("  WARNING: flash attention crashes this driver (Mesa's lavapipe): clients must run "
            "with --flash-attn off")  # fmt: skip
    if not endpoint.loopback:
        say("  WARNING: no authentication or encryption: whoever reaches this port can use it")
    where = endpoint if endpoint.host not in ("0.0.0.0", "::") else f"THIS-HOST:{port}"
    say(f"use it with: localrun run MODEL --rpc {where}   (Ctrl-C stops the worker)")
    stopped = threading.Event()
    while server.running:
        stopped.wait(0.5)  # wakes for Ctrl-C; the server itself never returns
    raise WorkerError(
        "llama.cpp's RPC server stopped", "see the lines above; start the worker again"
    )
