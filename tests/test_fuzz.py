"""Random and hostile values for every flag and Modelfile parameter, on a real tiny model.

Each value must give a correct answer or a one-line error with a hint: never an abort inside
llama.cpp, a traceback, "this is a bug", or more than 1 GB of memory. The cases run in
forked children (``tests/fuzz_harness.py``), one per core, so a crash is one failed case, not
a dead run.

Each session tries a sample of the values for every flag and parameter, drawn from the
session's seed (``LOCALRUN_FUZZ_SEED`` replays one), with random values of its own: another
session tries others.
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from localrun.models.modelfile import PARAMETERS
from tests.fuzz_harness import JOBS, SEED_ENV, fuzz_seed, read_seed, replay

# How many values each flag or parameter tries in one session, of its 35 (a run flag), 23 (a
# bench flag) or 32 (a Modelfile parameter): about half the cross-product.
SAMPLE = {"run": 16, "bench": 10, "parameter": 16}
HOSTILE = [
    "",
    " ",
    "0",
    "-0",
    "-1",
    "1",
    "2",
    "nan",
    "-nan",
    "inf",
    "-inf",
    "1e308",
    "1e-320",
    "9" * 30,
    "-" + "9" * 30,
    "2147483648",
    "4294967295",
    "4294967296",
    "-2147483649",
    "0x10",
    "1_000",
    "0.5",
    "1e3",
    "abc",
    "%s%n%x",
    "{{ 7*7 }}",
    "\u202edlrow",
    "日本語",
    "x" * 5000,
]
RUN_FLAGS = [
    "--temperature",
    "--top-k",
    "--top-p",
    "--min-p",
    "--repeat-penalty",
    "--seed",
    "--max-tokens",
    "--stop",
    "--ctx",
    "--threads",
    "--gpu-layers",
    "--system",
    "--format",
    "--speculative",
    "--draft",
]
NAMES = ("--speculative", "--draft", "speculative", "draft")  # a word or a model: seldom valid
BENCH_FLAGS = ["-p", "-n", "-r", "--ctx", "--threads", "--gpu-layers"]
PROMPT = "the sky is blue " * 20


def _random_values(rng: random.Random, n: int) -> list[str]:
    values = []
    for _ in range(n):
        kind = rng.randrange(4)
        if kind == 0:
            values.append(str(rng.randint(-(10 ** rng.randint(1, 12)), 10 ** rng.randint(1, 12))))
        elif kind == 1:
            values.append(repr(rng.uniform(-1, 1) * 10 ** rng.randint(-5, 12)))
        elif kind == 2:
            values.append(str(rng.randint(0, 600)))
        else:
            alphabet = "abc019.-+e_ %{}\"'\\/\t"
            values.append("".join(rng.choice(alphabet) for _ in range(rng.randint(1, 12))))
    return values


def _threads_value_ok(value: str) -> bool:
    # A valid but large thread count is correct and slow on two cores: keep the valid ones small.
    try:
        return not 8 < int(value) <= 512
    except ValueError:
        return True


def _sample(rng: random.Random, values: list[str], kind: str) -> list[str]:
    return rng.sample(values, min(SAMPLE[kind], len(values)))


def cases(model: Path, base: Path, seed: int) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    found: list[dict[str, Any]] = []

    def add(steps: list[list[str]], stdin: str = "") -> None:
        home = str(base / f"case{len(found)}")
        found.append({"steps": steps, "stdin": stdin, "home": home})

    for flag in RUN_FLAGS:
        values = HOSTILE + _random_values(rng, 6)
        if flag == "--threads":
            values = [v for v in values if _threads_value_ok(v)]
        for value in _sample(rng, values, "run"):
            limit = [] if flag == "--max-tokens" else ["--max-tokens", "4"]
            add([["run", str(model), flag, value, *limit, PROMPT]])
    for flag in BENCH_FLAGS:
        values = HOSTILE[:20] + _random_values(rng, 3)
        if flag in ("--threads", "-r", "-p", "-n"):
            values = [v for v in values if _small_or_invalid(v)]
        for value in _sample(rng, values, "bench"):
            add([["bench", str(model), "-p", "8", "-n", "4", "-r", "1", flag, value]])
    for name in PARAMETERS:
        values = HOSTILE + _random_values(rng, 3)
        if name == "num_thread":
            values = [v for v in values if _threads_value_ok(v)]
        for value in _sample(rng, values, "parameter"):
            modelfile = base / f"Modelfile-{name}-{len(found)}"
            quoted = json.dumps(value)
            modelfile.write_text(f"FROM {model}\nPARAMETER {name} {quoted}\n")
            add(
                [
                    ["create", "m", "-f", str(modelfile)],
                    ["run", "m", "--max-tokens", "4", PROMPT],
                ]
            )
    # Prompts: empty, huge, control characters, invalid UTF-8 stand-ins.
    for stdin in ["", " \n", "\x00\x01\x1b[2J", "word " * 200_000, "é" * 50_000]:
        add([["run", str(model), "--max-tokens", "4"]], stdin=stdin)
    return found


def _small_or_invalid(value: str) -> bool:
    try:
        return int(value) <= 64
    except ValueError:
        return True


def _problem(result: dict[str, Any]) -> str | None:
    if result["signal"] is not None:
        # faulthandler's stack, innermost call first
        return f"killed by signal {result['signal']} ({result['stderr'][:1500]!r})"
    if result["code"] not in (0, 1, 2):
        return f"exit code {result['code']}"
    if not 0 < result["peak_mb"] <= 1024:
        return f"{result['peak_mb']:.0f} MB of memory"
    err = result["stderr"]
    if "Traceback" in err or "this is a bug" in err:
        return "a traceback or an unexpected error"
    if result["code"] != 0:
        lines = [line for line in err.splitlines() if line.strip()]
        if len(lines) != 1 or not lines[0].startswith("Error: ") or "Hint: " not in lines[0]:
            return "not a one-line error with a hint"
        if result["stdout"]:
            return "output on stdout with an error"
    return None


def test_every_flag_and_parameter_survives_hostile_values(tiny_model: Path, tmp_path: Path) -> None:
    all_cases = cases(tiny_model, tmp_path, fuzz_seed())
    case_file, result_file = tmp_path / "cases.json", tmp_path / "results.json"
    case_file.write_text(json.dumps(all_cases))
    env = {k: v for k, v in os.environ.items() if k != "LOCALRUN_DEBUG"}
    root = Path(__file__).resolve().parent.parent
    command = [sys.executable, "-m", "tests.fuzz_harness", str(case_file), str(result_file)]
    subprocess.run([*command, "60", str(JOBS)], check=True, cwd=root, env=env, timeout=600)
    results = json.loads(result_file.read_text())
    assert len(results) == len(all_cases)
    failures = [
        f"{problem}: {r['steps']!r:.300} -> {r['stderr'][-300:]!r}"
        for r in results
        if (problem := _problem(r)) is not None
    ]
    shown = "\n".join(failures[:40])
    assert not failures, f"{len(failures)} of {len(results)} cases ({replay()}):\n{shown}"
    # The numbers are not all refused: many are valid and must give an answer. About a quarter
    # of all the values are valid; a session's sample of some 500 spreads by about 1.5 points.
    numeric = [r for r in results if not any(n in json.dumps(r["steps"]) for n in NAMES)]
    assert sum(r["code"] == 0 for r in numeric) > len(numeric) // 6, replay()


def test_a_seed_draws_the_same_cases_and_another_seed_others(
    tiny_model: Path, tmp_path: Path
) -> None:
    """A failure's seed replays it exactly; another seed tries other values, but every flag
    and parameter each time."""

    def drawn(seed: int, name: str) -> str:
        base = tmp_path / name
        base.mkdir()
        return json.dumps(cases(tiny_model, base, seed)).replace(str(base), "BASE")

    one = drawn(1, "a")
    assert drawn(1, "b") == one
    assert drawn(2, "c") != one
    for flag in [*RUN_FLAGS, *BENCH_FLAGS, *(f"Modelfile-{name}-" for name in PARAMETERS)]:
        assert flag in one, flag


def test_the_seed_comes_from_the_environment_else_a_fresh_one() -> None:
    assert read_seed({SEED_ENV: " 123 "}) == 123
    assert len({read_seed({}) for _ in range(5)}) > 1
    with pytest.raises(ValueError, match=SEED_ENV):
        read_seed({SEED_ENV: "1.5"})


@pytest.mark.parametrize("value", ["nan", "inf", "-1", "4294967301"])
def test_harness_reports_each_case(value: str, tiny_model: Path, tmp_path: Path) -> None:
    """The harness itself: a refused value comes back as exit 2 with its one line."""
    case = {"steps": [["run", str(tiny_model), "--temperature", value, "hi"]], "stdin": ""}
    case_file, result_file = tmp_path / "c.json", tmp_path / "r.json"
    case_file.write_text(json.dumps([case]))
    root = Path(__file__).resolve().parent.parent
    subprocess.run(
        [sys.executable, "-m", "tests.fuzz_harness", str(case_file), str(result_file)],
        check=True,
        cwd=root,
    )
    (result,) = json.loads(result_file.read_text())
    assert result["code"] == 2 and result["signal"] is None
    assert result["stderr"].startswith("Error: ") and "--temperature" in result["stderr"]


def test_harness_kills_a_case_past_its_deadline_and_runs_others_beside_it(
    tiny_model: Path, tmp_path: Path
) -> None:
    """The harness's deadline and its jobs: a server (which never ends by itself) is killed at
    its deadline and reported so, while a case beside it runs to its end meanwhile."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = str(s.getsockname()[1])
    cases = [
        {"steps": [["serve", "--port", port]], "stdin": "", "home": str(tmp_path / "a")},
        {"steps": [["run", str(tiny_model), "--temperature", "nan", "hi"]], "stdin": ""},
    ]
    case_file, result_file = tmp_path / "c.json", tmp_path / "r.json"
    case_file.write_text(json.dumps(cases))
    root = Path(__file__).resolve().parent.parent
    command = [sys.executable, "-m", "tests.fuzz_harness", str(case_file), str(result_file)]
    subprocess.run([*command, "3", "2"], check=True, cwd=root, timeout=60)
    served, refused = json.loads(result_file.read_text())
    assert served["timed_out"] and served["signal"] == signal.SIGKILL
    assert not refused["timed_out"] and refused["code"] == 2
    # An order, not a time: it ran and ended while the server ran beside it.
    assert served["started"] <= refused["started"]
    assert refused["started"] + refused["seconds"] < served["started"] + served["seconds"]
