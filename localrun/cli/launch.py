"""``localrun launch claude|codex|opencode``: a coding agent on a local model, through serve.

Each agent speaks its own API, which ``localrun serve`` answers: Claude Code Anthropic's
Messages API, Codex OpenAI's Responses API, opencode chat completions. ``launch`` finds the
server where ``LOCALRUN_HOST`` says (or starts one for the agent's run, and stops it after),
sets the agent's variables (its base URL, key and model) and runs it; ``--config`` prints
them instead. The settings were found by running each agent against ``serve`` (docs/agents.md).
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field

import typer

from localrun.cli import app, options
from localrun.errors import LocalrunError, UsageError

# An agent's first request holds its system prompt and tools: Claude Code's about 20,000
# tokens of a real model's vocabulary, Codex's about 10,000, opencode's about 8,000.
AGENT_CTX = 32768
SERVER_WAIT_S = 120.0  # a server started here: how long it may take to answer


@dataclass(frozen=True)
class Agent:
    command: str  # the executable
    package: str  # its npm package
    api: str  # what it speaks


AGENTS = {
    "claude": Agent("claude", "@anthropic-ai/claude-code", "Anthropic's Messages API"),
    "codex": Agent("codex", "@openai/codex", "OpenAI's Responses API"),
    "opencode": Agent("opencode", "opencode-ai", "OpenAI's chat completions"),
}


@dataclass
class Setup:
    """What an agent is run with: its environment's variables and its first arguments."""

    env: dict[str, str] = field(default_factory=dict)
    args: list[str] = field(default_factory=list)


def setup(agent: str, url: str, model: str, key: str) -> Setup:
    """The variables and arguments that point ``agent`` at the server at ``url``."""
    if agent == "claude":
        names = ("ANTHROPIC_MODEL", "ANTHROPIC_SMALL_FAST_MODEL", "ANTHROPIC_DEFAULT_HAIKU_MODEL",
                 "ANTHROPIC_DEFAULT_SONNET_MODEL", "ANTHROPIC_DEFAULT_OPUS_MODEL")  # fmt: skip
        env = {"ANTHROPIC_BASE_URL": url, "ANTHROPIC_AUTH_TOKEN": key, "ANTHROPIC_API_KEY": ""}
        env |= dict.fromkeys(names, model)
        env["CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC"] = "1"  # nothing sent elsewhere
        return Setup(env)
    if agent == "codex":
        table = (f'{{name="localrun", base_url="{url}/v1", env_key="LOCALRUN_API_KEY", '
                 'wire_api="responses"}')  # fmt: skip
        args = ["-c", 'model_provider="localrun"', "-c", f"model_providers.localrun={table}"]
        return Setup({"LOCALRUN_API_KEY": key}, [*args, "-m", model])
    provider: dict[str, object] = {
        "npm": "@ai-sdk/openai-compatible",
        "name": "localrun",
        "options": {"baseURL": f"{url}/v1", "apiKey": key},
        "models": {model: {"name": model}},
    }
    config: dict[str, object] = {
        "model": f"localrun/{model}",
        "small_model": f"localrun/{model}",
        "provider": {"localrun": provider},
    }
    return Setup({"OPENCODE_CONFIG_CONTENT": json.dumps(config)})


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def launch(
    ctx: typer.Context,
    agent: str = typer.Argument(..., help="claude, codex or opencode."),
    model: str = typer.Option(..., "--model", "-m", help="The model the agent works with."),
    config: bool = typer.Option(
        False, "--config", help="Print the agent's settings instead of running it."
    ),
    ctx_size: int = options.ctx(
        "The context of a server started here (an agent's first request takes 10,000-30,000 "
        "tokens); a running server keeps its own, or the model's Modelfile num_ctx.",
        default=AGENT_CTX,
        least=4096,
    ),
) -> None:
    """Run a coding agent (Claude Code, Codex, opencode) on a local model.

    Finds the server (LOCALRUN_HOST), or starts one for the run; the agent's own arguments
    follow (localrun launch claude --model qwen3 -- -p "fix the tests").
    """
    from localrun.server.config import server_url

    if agent not in AGENTS:
        raise UsageError(f"unknown agent '{agent}'", "use claude, codex or opencode")
    _check_model(model)
    url = server_url()
    key = os.environ.get("LOCALRUN_API_KEY") or "localrun"
    made = setup(agent, url, model, key)
    extra = [a for a in ctx.args if a != "--"]
    if config:
        _print(agent, made, extra)
        return
    found = shutil.which(AGENTS[agent].command)
    if found is None:
        raise UsageError(
            f"{AGENTS[agent].command} is not installed",
            f"install it with: npm install -g {AGENTS[agent].package}",
        )
    server = None if _answers(url) else _start_server(url, ctx_size)
    try:
        done = subprocess.run([found, *made.args, *extra], env=os.environ | made.env, check=False)
    finally:
        if server is not None:
            server.terminate()
            server.wait(timeout=30)
    raise typer.Exit(done.returncode)


def _check_model(name: str) -> None:
    """The model is one the server can load (a clear error now, not the agent's later)."""
    from localrun.server.pool import resolve_served

    resolve_served(name)


def _print(agent: str, made: Setup, extra: list[str]) -> None:
    for name, value in made.env.items():
        print(f"export {name}={shlex.quote(value)}")
    words = [AGENTS[agent].command, *made.args, *extra]
    print(" ".join(shlex.quote(w) for w in words))


def _answers(url: str) -> bool:
    """Whether a localrun server answers at ``url``."""
    import httpx

    try:
        return httpx.get(url + "/", timeout=2).text.startswith("localrun")
    except httpx.HTTPError:
        return False


def _start_server(url: str, n_ctx: int) -> subprocess.Popen[bytes]:
    """``localrun serve`` where ``url`` says, for the agent's run; its log on stderr."""
    from localrun.server.config import host_and_port

    host, port = host_and_port(url)
    print(f"starting localrun serve on {host}:{port} (context {n_ctx})", file=sys.stderr)
    command = [sys.executable, "-m", "localrun", "serve", "--host", host, "--port", str(port),
               "--ctx", str(n_ctx)]  # fmt: skip
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + SERVER_WAIT_S
    while not _answers(url):
        if server.poll() is not None:
            raise LocalrunError(
                f"localrun serve stopped at start (exit {server.returncode})",
                "run localrun serve yourself to see why, or set LOCALRUN_HOST",
            )
        if time.monotonic() > deadline:
            server.terminate()
            raise LocalrunError(f"localrun serve did not answer at {url} in time")
        time.sleep(0.2)
    return server
