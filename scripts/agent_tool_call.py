"""Run Claude Code, Codex and opencode on ``localrun serve`` until a tool call reaches each.

Each agent gets a scripted model (tests/scripted_gguf.py): a real llama.cpp model with
Qwen3's chat template that calls the agent's own shell tool with one command, which writes
a marker file, and after the tool's result answers "The tool ran.". The agent runs once,
non-interactively, through ``localrun launch AGENT`` against one ``localrun serve``; the
marker file is the proof that the call came back through the agent's API, the agent read
it, ran the command, and sent the result back (the answer that follows ends its loop).

By hand only, not in CI: the agents come from npm, and their first requests (up to 76,000
tokens of the tiny vocabulary, about a token a character: Claude Code's) take tens of
seconds to read on 2 cores. Install them first::

    npm install --prefix /tmp/agents @anthropic-ai/claude-code @openai/codex opencode-ai

Each agent runs with a throwaway HOME in a throwaway folder, so no user configuration is read
or written; the only server they are given is the local one (opencode also tries npm and
models.dev for its plugins and model list, and goes on without them). The folder is kept
(its path is printed): the server's log (LOCALRUN_DEBUG=1), each agent's output, report.json.

Usage: python scripts/agent_tool_call.py [--agents-dir /tmp/agents] [--only claude,codex]
           [--timeout SECONDS]
Exit status: 0 when every agent ran its call (the marker is there), 1 otherwise.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.scripted_gguf import QWEN3_TEMPLATE, write_tool_caller  # noqa: E402

LOCALRUN = str(Path(sys.executable).parent / "localrun")
CTX = 131072  # Claude Code's first request is about 80,000 of the tiny model's tokens
MARK = "localrun-tool-call"
PROMPT = "Run the command that writes the marker file."
SERVER_WAIT_S = 120.0
# Variables that could point an agent at a user's settings, keys or another server.
_DROPPED = ("ANTHROPIC_", "OPENAI_", "CODEX_", "CLAUDE_", "OPENCODE_", "XDG_", "LOCALRUN_")


@dataclass(frozen=True)
class Agent:
    """An agent, its shell tool's call of a command, and its arguments for one run."""

    name: str
    tool: str
    arguments: Callable[[str], dict[str, Any]]
    args: Callable[[], list[str]]


AGENTS = {
    # Claude Code: -p is one turn of its loop, non-interactive; Bash is allowed without a
    # prompt (--dangerously-skip-permissions is refused as root); the call, then the answer.
    "claude": Agent(
        "claude", "Bash", lambda c: {"command": c},
        lambda: ["-p", PROMPT, "--allowedTools", "Bash", "--max-turns", "3"],
    ),
    # Codex 0.171's shell tool is exec_command {"cmd": ...}. Its sandbox (bubblewrap) is
    # bypassed: the folder is a throwaway one and the command is the model's, known here.
    "codex": Agent(
        "codex", "exec_command", lambda c: {"cmd": c},
        lambda: ["exec", "--skip-git-repo-check", "--dangerously-bypass-approvals-and-sandbox",
                 PROMPT],
    ),
    # opencode's bash takes {"command", "timeout", "workdir"}; --auto approves it.
    "opencode": Agent(
        "opencode", "bash", lambda c: {"command": c},
        lambda: ["run", "--auto", PROMPT],
    ),
}  # fmt: skip


@dataclass
class Result:
    """What one agent's run did."""

    agent: str
    version: str
    command: list[str]
    exit_code: int | None  # None: stopped at the timeout
    seconds: float
    marker: bool  # the command ran: the marker file holds MARK
    output_tail: str


def qwen3_template() -> str:
    """Qwen3's chat template, from the llama-cpp-python sdist as the tests take it."""
    from tests.templates import TEMPLATES_ENV, _fetch_templates, _has_templates

    version = importlib.metadata.version("llama-cpp-python")
    given = os.environ.get(TEMPLATES_ENV)
    cache = Path.home() / ".cache" / "localrun-tests" / f"llama-cpp-python-{version}"
    folder = Path(given) if given else cache / "templates"
    if not _has_templates(folder):
        _fetch_templates(version, folder)
    return (folder / QWEN3_TEMPLATE).read_text(encoding="utf-8")


def clean_env(**more: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(_DROPPED)}
    return env | more


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def create_models(work: Path, home: Path, agents: list[Agent]) -> None:
    """A scripted model per agent, ``call-AGENT``, made with ``localrun create``."""
    template = qwen3_template()
    for agent in agents:
        marker = work / agent.name / "marker.txt"
        command = f"echo {MARK} > {marker}"
        gguf = work / f"{agent.name}.gguf"
        write_tool_caller(gguf, agent.tool, agent.arguments(command), chat_template=template,
                          n_ctx_train=CTX)  # fmt: skip
        modelfile = work / f"{agent.name}.Modelfile"
        modelfile.write_text(f"FROM ./{gguf.name}\n")
        subprocess.run(
            [LOCALRUN, "create", f"call-{agent.name}", "-f", str(modelfile)],
            env=clean_env(LOCALRUN_HOME=str(home)), check=True, timeout=120,
        )  # fmt: skip


@contextlib.contextmanager
def serving(work: Path, home: Path) -> Iterator[str]:
    """``localrun serve`` on a free port, its log in work/serve.log; its address."""
    port = free_port()
    log = (work / "serve.log").open("wb")
    env = clean_env(LOCALRUN_HOME=str(home), LOCALRUN_DEBUG="1")
    args = [LOCALRUN, "serve", "--port", str(port), "--ctx", str(CTX), "--parallel", "1"]
    server = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(server, url)
        yield f"127.0.0.1:{port}"
    finally:
        server.terminate()
        try:
            server.wait(60)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log.close()


def _wait_ready(server: subprocess.Popen[bytes], url: str) -> None:
    import httpx

    deadline = time.monotonic() + SERVER_WAIT_S
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"localrun serve exited {server.returncode}: see serve.log")
        with contextlib.suppress(httpx.HTTPError):
            httpx.get(url + "/", timeout=5)
            return
        time.sleep(0.5)
    raise SystemExit(f"localrun serve did not answer within {SERVER_WAIT_S:.0f} s")


def run_agent(agent: Agent, work: Path, home: Path, host: str, bin_dir: Path,
              timeout: float) -> Result:  # fmt: skip
    """One non-interactive run of ``agent`` through ``localrun launch``."""
    folder = work / agent.name
    agent_home = work / f"{agent.name}-home"
    folder.mkdir()
    agent_home.mkdir()
    env = clean_env(HOME=str(agent_home), LOCALRUN_HOME=str(home), LOCALRUN_HOST=host,
                    PATH=f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")  # fmt: skip
    version = subprocess.run([str(bin_dir / agent.name), "--version"], env=env, cwd=folder,
                             capture_output=True, text=True, timeout=60).stdout.strip()  # fmt: skip
    command = [LOCALRUN, "launch", agent.name, "--model", f"call-{agent.name}", "--",
               *agent.args()]  # fmt: skip
    out_path = work / f"{agent.name}.out"
    start = time.monotonic()
    with out_path.open("wb") as out:
        proc = subprocess.Popen(command, env=env, cwd=folder, stdin=subprocess.DEVNULL,
                                stdout=out, stderr=subprocess.STDOUT)  # fmt: skip
        try:
            code: int | None = proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            code = None
    marker = folder / "marker.txt"
    done = marker.is_file() and marker.read_text().strip() == MARK
    tail = out_path.read_text(errors="replace")[-1500:]
    return Result(agent.name, version, command[1:], code, round(time.monotonic() - start, 1),
                  done, tail)  # fmt: skip


def requests_of(log: Path) -> list[str]:
    """The server's access lines (method, path, status) from its log."""
    return [line.strip() for line in log.read_text(errors="replace").splitlines()
            if '"POST /' in line]  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--agents-dir", type=Path, default=Path("/tmp/agents"))
    parser.add_argument("--only", default=",".join(AGENTS), help="claude,codex,opencode")
    parser.add_argument("--timeout", type=float, default=900.0, help="per agent, seconds")
    opts = parser.parse_args()
    bin_dir = opts.agents_dir / "node_modules" / ".bin"
    agents = [AGENTS[name] for name in opts.only.split(",")]
    missing = [a.name for a in agents if not (bin_dir / a.name).exists()]
    if missing:
        print(f"not installed in {bin_dir}: {', '.join(missing)} (npm install --prefix "
              f"{opts.agents_dir} ...: see this script's docstring)", file=sys.stderr)  # fmt: skip
        return 1
    work = Path(tempfile.mkdtemp(prefix="localrun-agents-"))
    home = work / "localrun-home"
    print(f"working in {work}", file=sys.stderr)
    create_models(work, home, agents)
    results = []
    with serving(work, home) as host:
        for agent in agents:
            print(f"running {agent.name} ...", file=sys.stderr)
            results.append(run_agent(agent, work, home, host, bin_dir, opts.timeout))
            print(json.dumps(asdict(results[-1]), indent=1), file=sys.stderr)
    report = {"results": [asdict(r) for r in results], "requests": requests_of(work / "serve.log")}
    (work / "report.json").write_text(json.dumps(report, indent=1))
    for r in results:
        print(f"{r.agent} {r.version}: exit {r.exit_code}, {r.seconds} s, "
              f"tool call ran: {'yes' if r.marker else 'no'}")  # fmt: skip
    return 0 if all(r.marker for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
