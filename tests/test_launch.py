"""``localrun launch``: an agent is run with its variables pointing at ``serve`` (a server
started for the run when none answers, and stopped after), or they are printed.

The agents here are stand-ins on PATH that record what they were given and ask the server
what its models are; docs/agents.md says how the real ones ran against ``serve``.
"""

from __future__ import annotations

import json
import os
import shlex
import stat
import sys
from pathlib import Path

import pytest

from localrun.cli.launch import setup
from tests.proc import run
from tests.served import create_model, free_port

AGENT = """#!{python}
import json, os, sys, urllib.request
base = os.environ.get("ANTHROPIC_BASE_URL") or os.environ.get("AGENT_URL", "")
seen = {{"args": sys.argv[1:], "env": {{k: v for k, v in os.environ.items()
        if k.startswith(("ANTHROPIC_", "OPENCODE_", "LOCALRUN_API"))}}}}
if base:
    body = json.dumps({{"model": os.environ["ANTHROPIC_MODEL"], "max_tokens": 2,
                       "messages": [{{"role": "user", "content": "hi"}}]}}).encode()
    request = urllib.request.Request(base + "/v1/messages", data=body,
                                     headers={{"content-type": "application/json"}})
    seen["answer"] = json.loads(urllib.request.urlopen(request, timeout=120).read())
open(os.environ["AGENT_RECORD"], "w").write(json.dumps(seen))
sys.exit(7)
"""


@pytest.fixture
def agents(tmp_path: Path) -> Path:
    """A directory holding stand-ins for the three agents' commands."""
    where = tmp_path / "bin"
    where.mkdir()
    for name in ("claude", "codex", "opencode"):
        script = where / name
        script.write_text(AGENT.format(python=sys.executable))
        script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return where


def test_the_settings_point_each_agent_at_the_server() -> None:
    claude = setup("claude", "http://127.0.0.1:9", "qwen3", "k")
    assert claude.env["ANTHROPIC_BASE_URL"] == "http://127.0.0.1:9"
    assert claude.env["ANTHROPIC_MODEL"] == claude.env["ANTHROPIC_SMALL_FAST_MODEL"] == "qwen3"
    codex = setup("codex", "http://127.0.0.1:9", "qwen3", "k")
    assert 'base_url="http://127.0.0.1:9/v1"' in " ".join(codex.args)
    assert 'wire_api="responses"' in " ".join(codex.args) and codex.args[-2:] == ["-m", "qwen3"]
    opencode = json.loads(
        setup("opencode", "http://h:9", "qwen3", "k").env["OPENCODE_CONFIG_CONTENT"]
    )
    assert opencode["model"] == "localrun/qwen3"
    assert opencode["provider"]["localrun"]["options"]["baseURL"] == "http://h:9/v1"


@pytest.mark.slow
def test_an_agent_runs_against_a_server_started_for_it(
    localrun_home: Path, tiny_chat_model: Path, agents: Path, tmp_path: Path
) -> None:
    create_model(localrun_home, "tiny", f"FROM {tiny_chat_model}\n")
    record = tmp_path / "seen.json"
    port = free_port()
    env = {"PATH": f"{agents}{os.pathsep}{os.environ['PATH']}", "AGENT_RECORD": str(record),
           "LOCALRUN_HOST": f"127.0.0.1:{port}"}  # fmt: skip
    done = run(localrun_home, "launch", "claude", "--model", "tiny", "--ctx", "4096", "--",
               "-p", "fix it", env=env, timeout=240)  # fmt: skip
    assert done.code == 7, done.stderr  # the agent's own exit code
    seen = json.loads(record.read_text())
    assert seen["args"] == ["-p", "fix it"]
    assert seen["env"]["ANTHROPIC_BASE_URL"] == f"http://127.0.0.1:{port}"
    assert seen["answer"]["type"] == "message"  # the server it started answered
    assert "starting localrun serve" in done.stderr
    # ...and stopped it after: nothing listens there any more.
    import socket

    with socket.socket() as s, pytest.raises(ConnectionRefusedError):
        s.connect(("127.0.0.1", port))


def test_config_prints_what_to_paste_and_errors_are_one_line(
    localrun_home: Path, tiny_chat_model: Path, tmp_path: Path
) -> None:
    create_model(localrun_home, "tiny", f"FROM {tiny_chat_model}\n")
    printed = run(localrun_home, "launch", "codex", "--model", "tiny", "--config")
    assert printed.code == 0, printed.stderr
    lines = printed.stdout.splitlines()
    assert lines[0].startswith("export LOCALRUN_API_KEY=")
    assert shlex.split(lines[-1])[:2] == ["codex", "-c"]
    empty = {"PATH": str(tmp_path)}  # no agent installed
    missing = run(localrun_home, "launch", "opencode", "-m", "tiny", env=empty)
    assert missing.code == 2 and "npm install -g opencode-ai" in missing.stderr
    for args, words in ((["aider", "-m", "tiny"], "unknown agent"),
                        (["claude", "-m", "nothere"], "'nothere' not found")):  # fmt: skip
        done = run(localrun_home, "launch", *args)
        assert done.code != 0 and words in done.stderr
        assert len(done.stderr.strip().splitlines()) == 1
