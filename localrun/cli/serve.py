"""``localrun serve``: the Ollama and OpenAI APIs over HTTP; ``ps`` and ``stop`` ask it."""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import typer

from localrun.cli import app, options
from localrun.errors import LocalrunError, UsageError


@app.command()
def serve(
    host: str | None = typer.Option(
        None, "--host", help="Address to listen on. [default: LOCALRUN_HOST, else 127.0.0.1]"
    ),
    port: int | None = typer.Option(
        None, "--port", min=1, max=65535, help="TCP port. [default: LOCALRUN_HOST's, else 11434]"
    ),
    api_key: str | None = typer.Option(
        None,
        "--api-key",
        envvar="LOCALRUN_API_KEY",
        help="Require 'Authorization: Bearer KEY' (needed off loopback). [env: LOCALRUN_API_KEY]",
        show_envvar=False,
    ),
    allow_host: list[str] = typer.Option(
        [], "--allow-host", help="Another name the server may be called by (Host header)."
    ),
    allow_origin: list[str] = typer.Option(
        [], "--allow-origin", help="A web page origin allowed to call the server, or '*'."
    ),
    allow_admin: bool = typer.Option(
        False, "--allow-admin", help="Allow pull, delete, copy and create off loopback."
    ),
    parallel: int | None = options.parallel("Sequences per model. [default: from memory]"),
    keep_alive: str = typer.Option(
        "5m", "--keep-alive", help="How long an idle model stays loaded (0: unload, -1: keep)."
    ),
    max_loaded: int = typer.Option(3, "--max-loaded", min=1, max=64, help="Models loaded at once."),
    max_queue: int = typer.Option(
        64, "--max-queue", min=0, max=100_000, help="Requests a model may queue; then 503."
    ),
    max_body: int = typer.Option(
        32 * 1024 * 1024, "--max-body", min=1024, help="Largest request body in bytes; then 413."
    ),
    threads: int | None = options.threads(),
    ctx_size: int | None = options.ctx(
        "Each model's context when neither the request (num_ctx) nor its Modelfile says: "
        "coding agents' first requests take 10,000-30,000 tokens. [default: the model's "
        "trained context where it fits memory, at least 4096; LOCALRUN_CONTEXT_LENGTH sets it]"
    ),
    preload: list[str] = typer.Option(
        [], "--model", "-m", help="Load this model at start (a missing one stops the server)."
    ),
    speculative: str | None = options.speculative(
        "Guess tokens ahead and check several a step: lookup, draft (--draft) or off. "
        "[default: each model's Modelfile, else draft with --draft, else off]"
    ),
    draft: str | None = options.draft(
        "A draft model for the models that share its vocabulary (others go without)."
    ),
    kv_type: str | None = options.kv_type(
        "Every model's KV cache type: f16, q8_0 or q4_0. "
        "[default: each model's Modelfile, LOCALRUN_KV_TYPE, else f16]"
    ),
    flash_attn: str | None = options.flash_attn(
        "Flash attention: auto, on or off. [default: auto]"
    ),
    cpu_moe: bool = options.cpu_moe(),
    n_cpu_moe: int | None = options.n_cpu_moe(),
    rpc: str | None = options.rpc(
        "Split the models' layers with these RPC workers ('localrun worker' on other "
        "machines), by free memory."
    ),
    allow_remote_images: bool = typer.Option(
        False,
        "--allow-remote-images",
        help="Fetch the http(s) URLs of OpenAI image_url parts (off: only data URLs, so that "
        "clients cannot make the server fetch addresses on its network).",
    ),
    metrics: bool = typer.Option(
        False,
        "--metrics",
        help="Serve GET /metrics in Prometheus' text format: requests, tokens, TTFT, decode "
        "rate, queue depth, KV cache use (behind --api-key like the rest).",
    ),
) -> None:
    """Serve the Ollama and OpenAI APIs (clients, editors and chat front-ends).

    Listens on 127.0.0.1:11434, where Ollama's clients look. Requests to one model share its
    batching engine; several models stay loaded as memory allows.
    """
    from localrun.server.config import ServeConfig, host_and_port
    from localrun.server.fields import keep_alive as seconds

    env_host, env_port = host_and_port(os.environ.get("LOCALRUN_HOST"))
    if host is not None:  # --host takes LOCALRUN_HOST's forms too: 127.0.0.1:11435, a URL
        host, env_port = host_and_port(host, env_port)
    try:
        keep = seconds(keep_alive)
    except LocalrunError as e:
        raise UsageError(e.message.replace("'keep_alive'", "--keep-alive"), e.hint) from None
    if speculative is not None or draft is not None:
        from localrun.engine.options import run_options
        from localrun.models.resolve import Settings
        from localrun.server.pool import resolve_served

        # The same checks as run's: a known method, a draft model for "draft", pulled already.
        run_options(Settings(), speculative=speculative, draft=draft)
        if draft is not None:
            resolve_served(draft)
    if kv_type is not None or flash_attn is not None:
        from localrun.engine.options import check_kv

        check_kv(kv_type or "f16", flash_attn or "auto")
    config = ServeConfig(
        host=host or env_host,
        port=port or env_port,
        api_key=api_key or None,
        allow_hosts=tuple(allow_host),
        allow_origins=tuple(allow_origin),
        allow_admin=allow_admin,
        max_body=max_body,
        max_queue=max_queue,
        max_loaded=max_loaded,
        parallel=parallel,
        keep_alive=keep if keep is not None else -1.0,
        threads=threads,
        speculative=speculative,
        draft=draft,
        kv_type=kv_type,
        flash_attn=flash_attn,
        cpu_moe=options.experts_on_cpu(cpu_moe, n_cpu_moe),
        allow_remote_images=allow_remote_images,
        n_ctx=ctx_size,
        metrics=metrics,
    )
    if rpc:
        from localrun.engine.workers import connect, parse_endpoints
        from localrun.files import human_size

        for d in connect(parse_endpoints(rpc)):
            print(
                f"RPC worker {d.description} lends {d.name}: {human_size(d.free_bytes)} free",
                file=sys.stderr,
            )
    from localrun.server.run import serve as run_server

    run_server(config, preload=tuple(preload))


def _ask(method: str, path: str, body: dict[str, Any] | None = None) -> Any:
    """One request to the running server (``LOCALRUN_HOST``), its JSON answer."""
    import urllib.error
    import urllib.request

    from localrun.server.config import server_url

    url = server_url()
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url + path, data=data, method=method)
    request.add_header("Content-Type", "application/json")
    key = os.environ.get("LOCALRUN_API_KEY")
    if key:
        request.add_header("Authorization", f"Bearer {key}")
    try:
        with urllib.request.urlopen(request, timeout=600) as response:
            return json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as e:
        try:
            message = json.loads(e.read()).get("error", str(e))
        except ValueError:
            message = str(e)
        raise LocalrunError(f"the server at {url} says: {message}") from None
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise LocalrunError(
            f"no localrun server at {url} ({reason})",
            "start one with: localrun serve (or set LOCALRUN_HOST to where it listens)",
        ) from None


@app.command()
def ps(as_json: bool = options.as_json()) -> None:
    """List the models a running server has loaded."""
    import time

    from localrun.cli.output import table
    from localrun.files import human_size

    models = _ask("GET", "/api/ps").get("models", [])
    if as_json:
        print(json.dumps(models, indent=2))
        return
    rows = []
    for m in models:
        until = m.get("expires_at")
        if until is None:
            left = "forever"
        else:
            import datetime as dt

            when = dt.datetime.fromisoformat(until.replace("Z", "+00:00")).timestamp()
            secs = max(0, int(when - time.time()))
            left = f"{secs // 60} min {secs % 60} s" if secs >= 60 else f"{secs} s"
        rows.append(
            [
                m["name"],
                m.get("digest", "")[:12],
                human_size(m.get("size", 0)),
                m.get("placement", ""),
                str(m.get("context_length", "")),
                str(m.get("parallel", "")),
                str(m.get("active", "")),
                left,
            ]
        )
    if not rows:
        print("no models loaded", file=sys.stderr)
        return
    print(
        table(["NAME", "ID", "SIZE", "PROCESSOR", "CONTEXT", "PARALLEL", "ACTIVE", "UNTIL"], rows)
    )


@app.command()
def stop(model: str = typer.Argument(..., help="A model the server has loaded.")) -> None:
    """Unload a model from a running server (once its requests have finished)."""
    loaded = {m["name"] for m in _ask("GET", "/api/ps").get("models", [])}
    if model not in loaded:
        raise LocalrunError(
            f"the server has no model '{model}' loaded", "see what it has with: localrun ps"
        )
    _ask("POST", "/api/generate", {"model": model, "keep_alive": 0})
    print(f"stopped {model}", file=sys.stderr)
