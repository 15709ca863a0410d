"""An agent-sized first request, and the second one that repeats it: localrun serve against
llama.cpp's llama-server, on the same model, alternately.

A coding agent's first request carries its system prompt and its tools' schemas (Claude
Code's about 20,000 tokens); every later request repeats all of it and adds the last turn.
Prefill sets the first request's TTFT; the second's should come from the cache of the
first's (the engine keeps the prefix in its cells), at a tenth of the first's or less.

Each round starts both servers afresh (``localrun serve --ctx`` and ``llama-server -c``, one
sequence, the same threads), sends the first request (streamed, 8 tokens), then the second:
the first's messages, its answer, and a new question. It prints the CPU it ran on first.

    python benchmarks/agent_prefill.py --rounds 2 --tokens 24000
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

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from llama_tools import tool_for  # beside this script
from machine import describe
from serve_load import _port, _stop, _wait

# Tool schemas as an agent sends them: the text a prompt of N tokens is made of.
TOOL = {
    "type": "function",
    "function": {
        "name": "edit_file",
        "description": "Replace one exact string in a file with another. The old string must "
        "occur exactly once; read the file first, and keep its indentation.",
        "parameters": {
            "type": "object",
            "properties": {
                "path": {"type": "string", "description": "The file's path, from the root."},
                "old": {"type": "string", "description": "The text to replace, exactly."},
                "new": {"type": "string", "description": "The text to put in its place."},
            },
            "required": ["path", "old", "new"],
        },
    },
}


def system_prompt(tokens: int) -> str:
    """About ``tokens`` tokens of instructions and tool schemas (4 characters a token)."""
    parts = ["You are a coding agent. You read files, run commands and edit code.\n"]
    n = 0
    while sum(len(p) for p in parts) < tokens * 4:
        tool = json.loads(json.dumps(TOOL))
        tool["function"]["name"] = f"tool_{n}"
        parts.append(json.dumps(tool) + "\n")
        n += 1
    return "".join(parts)


def ttft(url: str, model: str, messages: list[dict[str, str]]) -> tuple[float, str, int]:
    """Stream one chat completion: (TTFT, its text, its prompt's tokens)."""
    body = {"model": model, "messages": messages, "max_tokens": 8, "temperature": 0,
            "stream": True, "stream_options": {"include_usage": True}}  # fmt: skip
    start = time.perf_counter()
    first, text, prompt = None, [], 0
    with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=900) as r:
        if r.status_code != 200:
            raise SystemExit(f"HTTP {r.status_code}: {r.read()[:300]!r}")
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                prompt = int(chunk["usage"]["prompt_tokens"])
            for choice in chunk.get("choices") or []:
                piece = (choice.get("delta") or {}).get("content")
                if piece:
                    first = first or time.perf_counter() - start
                    text.append(piece)
    return first or time.perf_counter() - start, "".join(text), prompt


def session(url: str, model: str, system: str) -> tuple[float, float, int]:
    """The first request's TTFT, the second's, and the first's prompt tokens."""
    asked = [{"role": "system", "content": system},
             {"role": "user", "content": "List the files you would read first."}]  # fmt: skip
    first, said, prompt = ttft(url, model, asked)
    again = [*asked, {"role": "assistant", "content": said},
             {"role": "user", "content": "Now read the first one."}]  # fmt: skip
    second, _, _ = ttft(url, model, again)
    return first, second, prompt


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="demo")
    ap.add_argument("--tokens", type=int, default=24000, help="the first request's size")
    ap.add_argument("--ctx", type=int, default=32768)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    print(describe())
    found = tool_for(args.model, "llama-server")
    if found is None:
        return 1
    binary, gguf = found
    system = system_prompt(args.tokens)
    figures: dict[str, list[tuple[float, float, int]]] = {"localrun": [], "llama-server": []}
    for round_ in range(args.rounds):
        order = ["localrun", "llama-server"] if round_ % 2 == 0 else ["llama-server", "localrun"]
        for name in order:
            port = _port()
            url = f"http://127.0.0.1:{port}"
            if name == "localrun":
                home = tempfile.mkdtemp()
                command = [sys.executable, "-m", "localrun", "serve", "--port", str(port),
                           "--parallel", "1", "--threads", str(args.threads),
                           "--ctx", str(args.ctx), "--model", args.model]  # fmt: skip
                env = {**os.environ, "LOCALRUN_HOME": home}
                proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL)  # fmt: skip
                _wait(url, proc, "/")
            else:
                command = [str(binary), "-m", str(gguf), "--port", str(port), "--host",
                           "127.0.0.1", "-np", "1", "-c", str(args.ctx), "-t", str(args.threads),
                           "-tb", str(args.threads), "--no-webui"]  # fmt: skip
                proc = subprocess.Popen(command, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL)  # fmt: skip
                _wait(url, proc, "/health")
            try:
                first, second, prompt = session(url, args.model, system)
            finally:
                _stop(proc)
            figures[name].append((first, second, prompt))
            print(f"round {round_ + 1} {name:12} prompt {prompt:6} tokens  first TTFT "
                  f"{first:7.2f} s  second {second:6.3f} s  ({second / first:.3f}x)")  # fmt: skip
    ours, theirs = figures["localrun"], figures["llama-server"]
    firsts = [a[0] / b[0] for a, b in zip(ours, theirs, strict=True)]
    print(
        f"first TTFT, localrun / llama-server (median of rounds): {statistics.median(firsts):.3f}"
    )
    print(
        f"second / first, localrun: {statistics.median(s / f for f, s, _ in ours):.3f}; "
        f"llama-server: {statistics.median(s / f for f, s, _ in theirs):.3f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
