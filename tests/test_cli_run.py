"""CLI tests: the engine is patched, and the tests check what the CLI hands it and prints."""

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from localrun import engine
from localrun.engine import Finished, LoadedModel, Request, Stats, TextDelta
from localrun.engine.answerer import LocalAnswerer
from localrun.errors import InvalidModelError
from localrun.models.resolve import Resolved, Settings
from tests.scripted import ScriptedModel


class Recorder:
    def __init__(self) -> None:
        self.load_calls: list[dict[str, Any]] = []
        self.requests: list[Request] = []
        self.model = ScriptedModel([])


@pytest.fixture
def fake_engine(monkeypatch: pytest.MonkeyPatch) -> Recorder:
    rec = Recorder()

    def load_model(ref: str, **kwargs: Any) -> LoadedModel:
        rec.load_calls.append({"ref": ref, **kwargs})
        return LoadedModel(name=ref, path=Path(ref), model=rec.model, load_s=0.25)

    def generate(answerer: LocalAnswerer, request: Request, **_: Any) -> Iterator[engine.Event]:
        rec.requests.append(request)
        yield TextDelta("Hello")
        yield TextDelta(" there")
        yield Finished(Stats(load_s=0.25, prompt_tokens=5, prompt_evaluated=5, completion_tokens=2))

    monkeypatch.setattr(
        "localrun.models.resolve.resolve", lambda ref: Resolved(ref, (Path("/m") / ref,))
    )
    monkeypatch.setattr(engine, "load_model", load_model)
    monkeypatch.setattr(LocalAnswerer, "start", generate)
    monkeypatch.setattr("localrun.system.physical_cores", lambda: 6)
    monkeypatch.setattr("localrun.system.busy_elsewhere", lambda: 0)
    return rec


def test_the_default_threads_leave_the_cores_other_processes_keep_busy(
    cli: Any, fake_engine: Recorder, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("localrun.system.busy_elsewhere", lambda: 2)
    result = cli(["run", "m.gguf", "hi", "--verbose"])
    assert fake_engine.load_calls[-1]["n_threads"] == 4
    assert "threads: 4, as other processes keep 2 of the 6 cores busy" in result.stderr
    monkeypatch.setattr("localrun.system.busy_elsewhere", lambda: 9)  # never fewer than 1
    assert cli(["run", "m.gguf", "hi"]).exit_code == 0
    assert fake_engine.load_calls[-1]["n_threads"] == 1
    assert cli(["run", "m.gguf", "hi", "--threads", "6"]).exit_code == 0
    assert fake_engine.load_calls[-1]["n_threads"] == 6  # the flag wins


def test_a_busy_process_is_seen_by_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    """Real /proc/loadavg: a process spinning beside this one keeps a core busy."""
    import subprocess
    import sys
    import time

    from localrun import system

    spinner = subprocess.Popen([sys.executable, "-c", "while 1: pass"])
    try:
        deadline = time.monotonic() + 30
        while system.busy_elsewhere() < 1:  # until the spinner is scheduled
            assert time.monotonic() < deadline, "the spinner never showed in /proc/loadavg"
            time.sleep(0.05)
        threads, busy = system.run_threads()
        assert busy >= 1 and threads == max(1, system.physical_cores() - busy)
    finally:
        spinner.kill()
        spinner.wait()


def test_prompt_from_arguments(cli: Any, fake_engine: Recorder) -> None:
    result = cli(["run", "m.gguf", "why", "is", "it"])
    assert result.exit_code == 0
    assert result.stdout == "Hello there\n"
    assert result.stderr == ""
    assert fake_engine.requests[0].messages[-1].content == "why is it"
    assert fake_engine.load_calls == [
        {
            "ref": "m.gguf",
            "n_ctx": None,
            "n_threads": 6,
            "gpu_layers": "auto",
            "path": Path("/m/m.gguf"),
            "settings": Settings(),
            "n_seq": 1,
            "workers": (),
            "repack": True,
            "kv_type": "f16",
            "flash_attn": "auto",
            "cpu_moe": 0,
        }
    ]
    assert fake_engine.model.closed


def test_stdin_comes_before_arguments(cli: Any, fake_engine: Recorder) -> None:
    result = cli(["run", "m.gguf", "Summarize:"], input=b"notes line\n")
    assert result.exit_code == 0
    assert fake_engine.requests[0].messages[-1].content == "notes line\n\nSummarize:"


def test_stdin_alone(cli: Any, fake_engine: Recorder) -> None:
    cli(["run", "m.gguf"], input="Why is the sky blue?\n")
    assert fake_engine.requests[0].messages[-1].content == "Why is the sky blue?"


def test_invalid_utf8_is_replaced_with_a_warning(cli: Any, fake_engine: Recorder) -> None:
    result = cli(["run", "m.gguf"], input=b"caf\xe9 ok")
    assert result.exit_code == 0
    assert fake_engine.requests[0].messages[-1].content == "caf\ufffd ok"
    assert "not valid UTF-8" in result.stderr


def test_no_prompt_is_a_usage_error_before_loading(cli: Any, fake_engine: Recorder) -> None:
    result = cli(["run", "m.gguf"], input=b"  \n")
    assert result.exit_code == 2
    assert result.stderr.startswith("Error: no prompt")
    assert len(result.stderr.strip().splitlines()) == 1
    assert fake_engine.load_calls == []


def test_flags_reach_the_engine(cli: Any, fake_engine: Recorder) -> None:
    args = ["run", "m.gguf", "hi", "--system", "be brief", "--temperature", "0.2"]
    args += ["--top-k", "5", "--top-p", "0.5", "--min-p", "0.05", "--repeat-penalty", "1.3"]
    args += ["--seed", "42", "--max-tokens", "9", "--stop", "END", "--stop", "###"]
    args += ["--ctx", "1024", "--threads", "3", "--gpu-layers", "7"]
    assert cli(args).exit_code == 0
    request = fake_engine.requests[0]
    assert [(m.role, m.content) for m in request.messages] == [
        ("system", "be brief"),
        ("user", "hi"),
    ]
    assert request.max_tokens == 9
    assert request.stop == ("END", "###")
    s = request.sampling
    assert (s.temperature, s.top_k, s.top_p, s.min_p, s.repeat_penalty, s.seed) == (
        0.2,
        5,
        0.5,
        0.05,
        1.3,
        42,
    )
    assert fake_engine.load_calls[0] == {
        "ref": "m.gguf",
        "n_ctx": 1024,
        "n_threads": 3,
        "gpu_layers": 7,
        "path": Path("/m/m.gguf"),
        "settings": Settings(),
        "n_seq": 1,
        "workers": (),
        "repack": True,
        "kv_type": "f16",
        "flash_attn": "auto",
        "cpu_moe": 0,
    }


def test_rpc_workers_and_no_repack_reach_the_load(cli: Any, fake_engine: Recorder) -> None:
    from localrun.backend.llamacpp.rpc import Endpoint

    args = ["run", "m.gguf", "hi", "--rpc", "10.0.0.2:50052,gpu-box:6000", "--no-repack"]
    assert cli(args).exit_code == 0
    call = fake_engine.load_calls[0]
    assert call["workers"] == (Endpoint("10.0.0.2", 50052), Endpoint("gpu-box", 6000))
    assert call["repack"] is False
    bad = cli(["run", "m.gguf", "hi", "--rpc", "10.0.0.2"])
    assert bad.exit_code == 2 and "--rpc takes HOST:PORT, not '10.0.0.2'" in bad.stderr


def test_gpu_layers_all(cli: Any, fake_engine: Recorder) -> None:
    assert cli(["run", "m.gguf", "hi", "--gpu-layers", "ALL"]).exit_code == 0
    assert fake_engine.load_calls[0]["gpu_layers"] == "all"


def test_defaults_are_ollamas(cli: Any, fake_engine: Recorder) -> None:
    cli(["run", "m.gguf", "hi"])
    s = fake_engine.requests[0].sampling
    assert (s.temperature, s.top_k, s.top_p, s.repeat_penalty, s.seed) == (0.8, 40, 0.9, 1.1, None)


def test_json_format(cli: Any, fake_engine: Recorder) -> None:
    result = cli(["run", "m.gguf", "hi", "--format", "json"])
    assert result.exit_code == 0
    data = json.loads(result.stdout)
    assert data["model"] == "m.gguf"
    assert data["response"] == "Hello there"
    assert data["stats"]["prompt_tokens"] == 5
    assert data["stats"]["completion_tokens"] == 2
    expected = {
        "load_s",
        "prompt_tokens",
        "prefill_s",
        "prefill_tokens_per_s",
        "ttft_s",
        "completion_tokens",
        "decode_s",
        "decode_tokens_per_s",
        "total_s",
        "finish_reason",
    }
    assert expected <= set(data["stats"])


def test_verbose_prints_named_stats_to_stderr(cli: Any, fake_engine: Recorder) -> None:
    result = cli(["run", "m.gguf", "hi", "--verbose"])
    assert result.stdout == "Hello there\n"
    for name in (
        "mode:",
        "completion",
        "load time:",
        "prompt tokens:",
        "prefill:",
        "TTFT:",
        "generated tokens:",
        "decode:",
        "tok/s",
        "total time:",
    ):
        assert name in result.stderr


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--format", "xml"], "'--format'"),
        (["--top-p", "1.5"], "'--top-p'"),
        (["--temperature", "-1"], "'--temperature'"),
        (["--max-tokens", "0"], "'--max-tokens'"),
        (["--threads", "many"], "'--threads'"),
        (["--bogus"], "--bogus"),
        (["--gpu-layers", "most"], "'--gpu-layers'"),
        (["--gpu-layers", "-3"], "'--gpu-layers'"),
    ],
)
def test_bad_flag_values_are_one_line_usage_errors(
    cli: Any, fake_engine: Recorder, args: list[str], needle: str
) -> None:
    result = cli(["run", "m.gguf", "hi", *args])
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and needle in lines[0]
    assert "Hint: see 'localrun run --help'" in lines[0]
    assert fake_engine.load_calls == []


def test_handled_error_is_one_line_exit_1(cli: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(ref: str, **kwargs: Any) -> LoadedModel:
        raise InvalidModelError("x.gguf is not a GGUF model file", "pass a .gguf model file")

    monkeypatch.setattr("localrun.models.resolve.resolve", lambda ref: Resolved(ref, (Path(ref),)))
    monkeypatch.setattr(engine, "load_model", fail)
    result = cli(["run", "x.gguf", "hi"])
    assert result.exit_code == 1
    assert result.stderr == (
        "Error: x.gguf is not a GGUF model file. Hint: pass a .gguf model file\n"
    )


def test_unexpected_error_has_no_traceback_unless_debug(
    cli: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    def crash(ref: str, **kwargs: Any) -> LoadedModel:
        raise RuntimeError("kaboom")

    monkeypatch.setattr("localrun.models.resolve.resolve", lambda ref: Resolved(ref, (Path(ref),)))
    monkeypatch.setattr(engine, "load_model", crash)
    result = cli(["run", "x.gguf", "hi"])
    assert result.exit_code == 1
    assert "Traceback" not in result.stderr and "kaboom" in result.stderr
    monkeypatch.setenv("LOCALRUN_DEBUG", "1")
    assert "Traceback" in cli(["run", "x.gguf", "hi"]).stderr


def test_interrupt_ends_the_line_and_exits_130(cli: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    rec = Recorder()

    def load_model(ref: str, **kwargs: Any) -> LoadedModel:
        return LoadedModel(name=ref, path=Path(ref), model=rec.model, load_s=0.1)

    def generate(answerer: LocalAnswerer, request: Request, **_: Any) -> Iterator[engine.Event]:
        yield TextDelta("partial answ")
        raise KeyboardInterrupt

    monkeypatch.setattr("localrun.models.resolve.resolve", lambda ref: Resolved(ref, (Path(ref),)))
    monkeypatch.setattr(engine, "load_model", load_model)
    monkeypatch.setattr(LocalAnswerer, "start", generate)
    result = cli(["run", "m.gguf", "hi"])
    assert result.exit_code == 130
    assert result.stdout == "partial answ\n"
    assert "Traceback" not in result.stderr
    assert rec.model.closed


def test_version(cli: Any) -> None:
    result = cli(["--version"])
    assert result.exit_code == 0 and result.stdout.startswith("localrun 0.")


def test_bare_command_prints_help(cli: Any) -> None:
    result = cli([])
    assert result.exit_code == 0
    assert result.stdout.startswith("Usage: localrun") and "run " in result.stdout
    assert result.stderr == ""


def test_held_to_some_cpus_the_default_takes_them_all(monkeypatch: pytest.MonkeyPatch) -> None:
    """/proc/loadavg counts every CPU's tasks: under taskset or a cpuset it says nothing of
    the CPUs this process may use."""
    import os

    from localrun import system

    monkeypatch.setattr(system, "physical_cores", lambda: 4)
    monkeypatch.setattr(system, "busy_elsewhere", lambda: 20)
    monkeypatch.setattr(os, "cpu_count", lambda: 64)  # the module localrun.system calls
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(4)))
    assert system.run_threads() == (4, 0)
    monkeypatch.setattr(os, "cpu_count", lambda: 4)  # every CPU: the count applies
    assert system.run_threads() == (1, 3)


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["hi", "--parallel", "2"], "--parallel goes with --batch"),
        (["hi", "--batch", "requests.jsonl"], "--batch takes its prompts from the file"),
        (["--batch", "requests.jsonl", "-i"], "--batch takes its prompts from the file"),
        (["--batch", "requests.jsonl", "--image", "cat.png"], "--image goes with a prompt"),
        (["hi", "--schema", "json", "--grammar", "g.gbnf"], "--schema and --grammar cannot go"),
        (["hi", "-i"], "interactive chat needs a terminal on stdout"),
    ],
)
def test_flags_that_cannot_go_together_are_refused_before_the_load(
    cli: Any, fake_engine: Recorder, args: list[str], needle: str
) -> None:
    result = cli(["run", "m.gguf", *args])
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and needle in lines[0]
    assert fake_engine.load_calls == [] and fake_engine.requests == []


def test_chat_is_always_interactive(cli: Any, fake_engine: Recorder) -> None:
    result = cli(["chat", "m.gguf", "hi"])  # a prompt, but chat: it needs a terminal
    assert result.exit_code == 2 and "interactive chat needs a terminal" in result.stderr
    assert fake_engine.load_calls == []


COMMANDS = {  # each command that takes a shared flag, with what else it needs to parse
    "run": ["run", "m.gguf", "hi"],
    "chat": ["chat", "m.gguf"],
    "serve": ["serve"],
    "bench": ["bench", "m.gguf"],
    "perplexity": ["perplexity", "m.gguf", "text.txt"],
    "quantize": ["quantize", "in.gguf", "out.gguf", "Q4_K_M"],
    "worker": ["worker"],
    "create": ["create", "mine"],
}
SHARED = [  # a shared flag, a value out of its range, and the commands that take it
    ("--threads", "0", list(COMMANDS)),
    ("--threads", "513", list(COMMANDS)),
    ("--gpu-layers", "most", ["run", "chat", "bench", "perplexity"]),
    ("--ctx", "0", ["run", "chat", "bench", "perplexity"]),
    ("--parallel", "65", ["run", "chat", "serve"]),
]


@pytest.mark.parametrize(
    ("flag", "value", "command"),
    [(flag, value, c) for flag, value, commands in SHARED for c in commands],
)
def test_a_shared_flag_is_checked_alike_by_every_command(
    cli: Any, fake_engine: Recorder, flag: str, value: str, command: str
) -> None:
    """One definition each (localrun/cli/options.py): the same one-line usage error."""
    result = cli([*COMMANDS[command], flag, value])
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: Invalid value for ")
    assert f"'{flag}'" in lines[0] and f"Hint: see 'localrun {command} --help'" in lines[0]
    assert fake_engine.load_calls == []


def test_run_help_lists_the_flags_by_what_they_decide(cli: Any) -> None:
    """How to sample, what to answer, how to show it, then what to load and where."""
    out = cli(["run", "--help"]).stdout
    order = ["--system", "--grammar", "--interactive", "--parallel", "--format", "--nowordwrap"]
    order += ["--ctx", "--threads", "--no-repack", "--rpc", "--endpoint"]
    places = [out.index(f" {flag} ") for flag in order]
    assert places == sorted(places)
