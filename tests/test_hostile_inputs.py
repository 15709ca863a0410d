"""Inputs that once crashed localrun, took gigabytes, or surprised: each case, as a user types it.

Every case runs the installed command in a subprocess: an abort inside llama.cpp must show
as a signal here, not take the test run down with it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.proc import LOCALRUN, Done, quote, run
from tests.tinygguf import CHATML_TEMPLATE, write_tiny_model

LETTERS = " ".join("abcdefghijklmnopqrstuvwxyz" * 6)  # 156 one-letter tokens and spaces


def one_line_error(done: Done, code: int, *needles: str) -> str:
    assert done.code == code, (done.code, done.stderr)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("Error: ") and "Hint: " in lines[0], lines[0]
    assert "Traceback" not in done.stderr and "this is a bug" not in lines[0]
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def answered(done: Done) -> None:
    assert done.code == 0, (done.code, done.stderr)
    assert "Traceback" not in done.stderr


@pytest.fixture
def home(localrun_home: Path) -> Path:
    """The commands run in the test's own home, which the test can also read and write."""
    return localrun_home


# -- contexts smaller than the prompt: llama.cpp aborted (exit 134) ---------------------------


@pytest.mark.parametrize(
    ("ctx", "prompt"),
    [("100", LETTERS), ("2", "a b c d"), ("1", "a"), ("257", LETTERS * 2)],
)
def test_small_context_never_aborts(home: Path, tiny_model: Path, ctx: str, prompt: str) -> None:
    done = run(home, "run", str(tiny_model), "--ctx", ctx, "--max-tokens", "3", prompt)
    assert done.code in (0, 1), done.stderr  # an answer, or "prompt too long"
    assert "GGML_ASSERT" not in done.stderr + done.stdout
    if done.code == 1:
        one_line_error(done, 1, "context holds only")


def test_bench_with_context_smaller_than_the_batch(home: Path, tiny_model: Path) -> None:
    done = run(home, "bench", str(tiny_model), "-p", "64", "-n", "4", "--ctx", "16", "-r", "1")
    answered(done)
    assert "pp64" in done.stdout and "tg4" in done.stdout


def test_modelfile_with_tiny_num_ctx_runs(home: Path, tiny_model: Path, tmp_path: Path) -> None:
    modelfile = tmp_path / "Modelfile"
    modelfile.write_text(f"FROM {tiny_model}\nPARAMETER num_ctx 1\n")
    answered(run(home, "create", "tinyctx", "-f", str(modelfile)))
    done = run(home, "run", "tinyctx", "--max-tokens", "2", LETTERS)
    answered(done)


def test_context_over_the_trained_length_is_lowered(home: Path, tiny_model: Path) -> None:
    # The tiny model was trained for 2048 tokens.
    done = run(home, "run", str(tiny_model), "--ctx", "10000000", "--max-tokens", "2", "a")
    answered(done)
    assert "context lowered from 10000000 to 2048 tokens" in done.stderr
    assert 0 < done.peak_mb < 1000


def test_abort_callback_prints_one_line_and_no_backtrace(tmp_path: Path) -> None:
    """Should llama.cpp still abort, the user sees one line on stderr and nothing on stdout."""
    script = (
        "import ctypes\n"
        "import localrun.backend.llamacpp.model\n"
        "from localrun.backend.llamacpp.bindings import load_library\n"
        "base = load_library('ggml-base')\n"
        "base.ggml_abort.argtypes = [ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p]\n"
        "base.ggml_abort(b'file.c', 7, b'GGML_ASSERT(x) failed')\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == -signal.SIGABRT
    assert done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: llama.cpp stopped the process")
    assert "GGML_ASSERT(x) failed" in lines[0]


# -- Ctrl-C while the model loads: swallowed inside llama.cpp's callbacks ------------------------

_INTERRUPT_DURING_LOAD = """
import os, signal, sys
import localrun.backend.llamacpp.model as backend

real = backend.lc.llama_progress_callback


def interrupting(fn):
    def progress(p, data):
        os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C, delivered while llama.cpp is loading
        return fn(p, data)
    return real(progress)


backend.lc.llama_progress_callback = interrupting
from localrun.cli import main
sys.exit(main(["run", sys.argv[1], "--max-tokens", "64", "hello"]))
"""


def test_ctrl_c_while_loading_stops_with_130(home: Path, tiny_model: Path) -> None:
    env = {**os.environ, "LOCALRUN_HOME": str(home)}
    done = subprocess.run(
        [sys.executable, "-c", _INTERRUPT_DURING_LOAD, str(tiny_model)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert done.returncode == 130, done.stderr
    assert done.stdout == ""  # nothing was generated
    assert "Exception ignored" not in done.stderr


# -- a prompt far larger than the context ------------------------------------------------------


def test_huge_piped_prompt_is_refused_quickly_and_small(home: Path, tiny_model: Path) -> None:
    data = ("word " * 2_400_000).encode()  # 12 MB
    done = run(home, "run", str(tiny_model), stdin=data)
    one_line_error(done, 1, "characters", "context")
    assert 0 < done.peak_mb < 300  # measured (0: never sampled)


def test_piped_prompt_of_spaces_is_refused_without_tokenizing_it_whole(
    home: Path, tiny_model: Path
) -> None:
    # Under 64 characters a token, so not refused unread; counted in slices, not tokenized whole.
    data = b"a" + b" " * 10_000 + b"b"
    done = run(home, "run", str(tiny_model), "--ctx", "256", stdin=data)
    one_line_error(done, 1, "more than 512 tokens but the context holds only 256")
    done = run(home, "run", str(tiny_model), "--ctx", "256", stdin=b"a" + b" " * 100_000)
    one_line_error(done, 1, "100,001 characters, more than a context of 256 tokens can hold")


def test_stdin_over_the_limit_is_refused(home: Path, tiny_model: Path) -> None:
    done = run(home, "run", str(tiny_model), stdin=b"x" * (17 * 2**20))
    one_line_error(done, 2, "standard input is over 16 MiB")
    assert 0 < done.peak_mb < 300  # measured (0: never sampled)


def test_template_bomb_in_a_modelfile(home: Path, tiny_model: Path, tmp_path: Path) -> None:
    modelfile = tmp_path / "Modelfile"
    modelfile.write_text(f'FROM {tiny_model}\nTEMPLATE """{{{{ \'x\' * 10**9 }}}}"""\n')
    answered(run(home, "create", "bomb", "-f", str(modelfile)))
    done = run(home, "run", "bomb", "hi")
    one_line_error(done, 1, "chat template asked for too much memory")
    assert 0 < done.peak_mb < 300  # measured (0: never sampled)


# -- flags that were silently accepted -----------------------------------------------------------


@pytest.mark.parametrize(
    ("flag", "value"),
    [
        ("--temperature", "nan"),
        ("--temperature", "inf"),
        ("--repeat-penalty", "nan"),
        ("--top-p", "nan"),
        ("--seed", "4294967301"),
        ("--seed", "-2"),
        ("--threads", "100000"),
    ],
)
def test_values_that_cannot_be_honoured_are_refused(
    home: Path, tiny_model: Path, flag: str, value: str
) -> None:
    one_line_error(run(home, "run", str(tiny_model), flag, value, "hi"), 2, flag)


def test_seed_minus_one_is_random_as_documented(home: Path, tiny_model: Path) -> None:
    runs = [
        run(home, "run", str(tiny_model), "--seed", "-1", "--max-tokens", "24", "hello")
        for _ in range(3)
    ]
    for done in runs:
        answered(done)
    assert len({d.stdout for d in runs}) > 1  # random: three runs do not all agree
    help_text = run(home, "run", "--help").stdout
    assert "-1: random" in help_text


@pytest.mark.parametrize("prompt", ["", "   ", "\n"])
def test_empty_prompt_argument_is_refused_like_empty_stdin(
    home: Path, tiny_model: Path, prompt: str
) -> None:
    one_line_error(run(home, "run", str(tiny_model), prompt), 2, "no prompt")
    one_line_error(run(home, "run", str(tiny_model), stdin=b"  \n"), 2, "no prompt")


# -- names -----------------------------------------------------------------------------------------


def test_empty_model_name(home: Path) -> None:
    one_line_error(run(home, "run", "", "hi"), 1, "model name is empty")
    one_line_error(run(home, "show", ""), 1, "model name is empty")


@pytest.mark.parametrize("name", [".", "..", "a/./b", "", "x" * 300])
def test_bad_names_cannot_be_created(
    home: Path, tiny_model: Path, tmp_path: Path, name: str
) -> None:
    modelfile = tmp_path / "Modelfile"
    modelfile.write_text(f"FROM {tiny_model}\n")
    one_line_error(run(home, "create", name, "-f", str(modelfile)), 2, "name")


@pytest.mark.parametrize("command", ["rm", "show"])
def test_a_300_character_name_is_not_found(home: Path, command: str) -> None:
    line = one_line_error(run(home, command, "m" * 300), 1)
    assert "not found" in line or "unknown model" in line


def test_create_refuses_a_pulled_name_and_cp_a_created_one(
    home: Path, tiny_model: Path, tmp_path: Path
) -> None:
    from localrun.hub import store

    sha = "0" * 64
    files = (store.ModelFile("t.gguf", 1, sha, sha),)
    store.save(store.Manifest("pulled", "org/tiny", None, "c" * 40, "F32", files))
    modelfile = tmp_path / "Modelfile"
    modelfile.write_text(f"FROM {tiny_model}\n")
    one_line_error(
        run(home, "create", "pulled", "-f", str(modelfile)), 2, "a pulled model is called"
    )
    answered(run(home, "create", "made", "-f", str(modelfile)))
    one_line_error(run(home, "cp", "pulled", "made"), 2, "a created model is called 'made'")
    one_line_error(run(home, "cp", "pulled", "demo"), 2, "library model")


# -- files and streams -----------------------------------------------------------------------------


def test_create_from_a_directory_or_a_binary_file(home: Path, tmp_path: Path) -> None:
    one_line_error(run(home, "create", "m", "-f", str(tmp_path)), 1, "is a directory")
    binary = tmp_path / "weights.bin"
    binary.write_bytes(bytes(range(256)) * 10)
    one_line_error(run(home, "create", "m", "-f", str(binary)), 1, "binary file")


def test_closed_stdin_still_answers_a_prompt_given_as_arguments(
    home: Path, tiny_model: Path
) -> None:
    done = run(home, "run", str(tiny_model), "--max-tokens", "3", "hi", shell_suffix="<&-")
    answered(done)


def test_closed_stdout_is_named(home: Path, tiny_model: Path) -> None:
    done = run(home, "run", str(tiny_model), "--max-tokens", "3", "hi", shell_suffix=">&-")
    one_line_error(done, 1, "standard output is closed")
    # A command that prints nothing on stdout does not care.
    answered(run(home, "cache", "prune", shell_suffix=">&-"))


def test_full_stdout_is_not_a_full_disk(home: Path, tiny_model: Path) -> None:
    done = run(home, "run", str(tiny_model), "--max-tokens", "8", "hi", shell_suffix=">/dev/full")
    line = one_line_error(done, 1, "cannot write to standard output")
    assert "LOCALRUN_HOME" not in line


def test_reader_going_away_is_not_an_error(home: Path, tiny_model: Path) -> None:
    env = {**os.environ, "LOCALRUN_HOME": str(home)}
    cmd = f"{quote(LOCALRUN)} run {quote(str(tiny_model))} --max-tokens 400 hi | head -c 10"
    done = subprocess.run(
        ["/bin/bash", "-o", "pipefail", "-c", cmd], capture_output=True, env=env, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr == b""
    assert len(done.stdout) == 10  # the answer was longer: the pipe was really cut


# -- the chat: /save and the history -------------------------------------------------------------


def test_save_asks_before_overwriting(tmp_path: Path, tiny_chat_model: Path) -> None:
    from rich.console import Console

    from localrun import engine
    from localrun.cli.chat import ChatUI
    from localrun.engine.answerer import LocalAnswerer
    from localrun.engine.chat import ChatSession

    loaded = engine.load_model(str(tiny_chat_model), n_threads=1, gpu_layers=0)
    try:
        session = ChatSession(LocalAnswerer(loaded))
        session.messages.append(engine.Message("user", "hello"))
        console = Console(file=open(os.devnull, "w"), width=80)  # noqa: SIM115
        ui = ChatUI(session, console, live=False)
        target = tmp_path / "chat.json"
        target.write_text("precious")
        answers = iter(["n"])
        ui.read = lambda prompt: next(answers)
        ui.command(f"/save {target}")
        assert target.read_text() == "precious"
        answers = iter(["y"])
        ui.command(f"/save {target}")
        assert json.loads(target.read_text())["messages"][0]["content"] == "hello"
    finally:
        loaded.close()


def test_history_is_written_from_the_first_line(
    localrun_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from localrun.cli.chat import setup_history

    monkeypatch.setattr("builtins.input", lambda prompt: "why is the sky blue?")
    read = setup_history()
    assert read(">>> ") == "why is the sky blue?"
    history = localrun_home / "data" / "history"
    assert "why is the sky blue?" in history.read_text()


# -- cache repair --------------------------------------------------------------------------------


def test_show_reports_a_truncated_file(home: Path, tmp_path: Path) -> None:
    model = write_tiny_model(tmp_path / "m.gguf", chat_template=CHATML_TEMPLATE)
    data = model.read_bytes()
    model.write_bytes(data[: len(data) - 1000])
    one_line_error(run(home, "show", str(model)), 1, "truncated")


@pytest.mark.parametrize("flag", [None, "--system"])
def test_text_that_is_not_utf8_is_refused_in_one_line(
    home: Path, tiny_model: Path, flag: str | None
) -> None:
    text = os.fsdecode(b"hi \xff there")  # argv's bytes, as Python holds them
    args = [flag, text, "hi"] if flag else [text]
    done = run(home, "run", str(tiny_model), *args, "--max-tokens", "2")
    one_line_error(done, 2, "the text is not valid UTF-8")  # was "this is a bug"
