"""``localrun run MODEL --batch FILE``: JSON Lines in, JSON Lines out, N at a time."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.proc import LOCALRUN, run


@pytest.fixture
def home(localrun_home: Path) -> Path:
    return localrun_home


def lines_of(stdout: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in stdout.splitlines()]


GOOD = [
    {"id": 1, "prompt": "the sky is", "max_tokens": 6, "temperature": 0},
    {"id": "two", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 4},
    {"prompt": "why is the sky blue", "max_tokens": 5, "seed": 3, "stop": ["zz"]},
]


def test_answers_come_back_in_input_order_with_their_ids(home: Path, tiny_model: Path) -> None:
    file = home.parent / "in.jsonl"
    file.write_text("".join(json.dumps(g) + "\n" for g in GOOD * 3))
    done = run(home, "run", str(tiny_model), "--batch", str(file), "--parallel", "4")
    assert done.code == 0, done.stderr
    assert done.stderr == ""  # not a terminal: nothing on stderr but errors
    out = lines_of(done.stdout)
    assert [o["id"] for o in out] == [1, "two", None] * 3
    for o, g in zip(out, GOOD * 3, strict=True):
        stats = o["stats"]
        assert isinstance(stats, dict) and stats["completion_tokens"] <= g["max_tokens"]
        assert o["finish_reason"] in ("stop", "length")
        assert isinstance(o["response"], str)


def test_bad_lines_get_an_error_line_and_the_rest_run(home: Path, tiny_model: Path) -> None:
    text = "\n".join(
        [
            json.dumps({"id": "a", "prompt": "hi", "max_tokens": 3}),
            "not json",
            json.dumps({"id": "b", "prompt": ""}),
            json.dumps({"id": "c", "prompt": "hi", "colour": "red"}),
            json.dumps({"id": "d", "prompt": "hi", "temperature": "hot"}),
            json.dumps({"id": "e", "prompt": "hi", "max_tokens": 3}),
            "",
        ]
    )
    done = run(home, "run", str(tiny_model), "--batch", "-", stdin=text.encode())
    assert done.code == 1
    out = lines_of(done.stdout)
    assert [o["id"] for o in out] == ["a", None, "b", "c", "d", "e"]
    assert "response" in out[0] and "response" in out[5]
    assert out[1]["error"] == "line 2: not JSON (Expecting value)"
    assert "non-empty" in str(out[2]["error"]) and "'colour'" in str(out[3]["error"])
    assert "'temperature' must be a number" in str(out[4]["error"])
    assert len(done.stderr.strip().splitlines()) == 4  # one line per bad line
    assert "Traceback" not in done.stderr


def test_two_at_a_time_gives_the_texts_of_one_at_a_time(home: Path, tiny_model: Path) -> None:
    """Greedy, two rows per step: llama.cpp's kernels give exactly the lone logits."""
    file = home.parent / "in.jsonl"
    prompts = ["the sky is", "hello world", "why is", "blue"]
    file.write_text(
        "".join(
            json.dumps({"prompt": p, "max_tokens": 16, "temperature": 0}) + "\n" for p in prompts
        )
    )
    one = run(home, "run", str(tiny_model), "--batch", str(file), "--parallel", "1")
    two = run(home, "run", str(tiny_model), "--batch", str(file), "--parallel", "2")
    assert one.code == two.code == 0
    assert [o["response"] for o in lines_of(one.stdout)] == [
        o["response"] for o in lines_of(two.stdout)
    ]


@pytest.mark.parametrize(
    "args",
    [["--parallel", "2", "hi"], ["--batch", "x.jsonl", "hi"], ["--batch", "x.jsonl", "-i"]],
)
def test_batch_flags_that_do_not_go_together(home: Path, tiny_model: Path, args: list[str]) -> None:
    done = run(home, "run", str(tiny_model), *args)
    assert done.code == 2 and done.stderr.startswith("Error: ")
    assert len(done.stderr.strip().splitlines()) == 1


def test_a_missing_batch_file_is_named(home: Path, tiny_model: Path) -> None:
    done = run(home, "run", str(tiny_model), "--batch", str(home / "none.jsonl"))
    assert done.code == 2 and "cannot read the batch file" in done.stderr


def test_ctrl_c_keeps_the_lines_already_written(home: Path, tiny_model: Path) -> None:
    file = home.parent / "in.jsonl"
    long = {"prompt": "the sky", "max_tokens": 100000, "temperature": 1}
    first = {"prompt": "hi", "max_tokens": 2}
    file.write_text(json.dumps(first) + "\n" + (json.dumps(long) + "\n") * 4)
    env = {**os.environ, "LOCALRUN_HOME": str(home)}
    proc = subprocess.Popen(
        [
            LOCALRUN,
            "run",
            str(tiny_model),
            "--batch",
            str(file),
            "--parallel",
            "2",
            "--ctx",
            "2048",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], 60)
    assert ready, "the first answer never came"
    first_line = proc.stdout.readline()
    proc.send_signal(signal.SIGINT)
    rest, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert json.loads(first_line)["stats"]["completion_tokens"] <= 2
    assert all(json.loads(line) for line in rest.splitlines())  # whole lines only
    assert b"Traceback" not in err


def test_bench_parallel_reports_aggregate_rates_per_count(home: Path, tiny_model: Path) -> None:
    done = run(
        home, "bench", str(tiny_model), "--parallel", "1,2", "-p", "16", "-n", "8", "-r", "2",
        "--json",
    )  # fmt: skip
    assert done.code == 0, done.stderr
    tests = json.loads(done.stdout)["tests"]
    assert [(t["test"], t["parallel"]) for t in tests] == [
        ("pp16 x1", 1),
        ("tg8 x1", 1),
        ("pp16 x2", 2),
        ("tg8 x2", 2),
    ]
    assert all(len(t["tokens_per_s"]) == 2 and min(t["tokens_per_s"]) > 0 for t in tests)


def test_bench_parallel_refuses_bad_counts(home: Path, tiny_model: Path) -> None:
    done = run(home, "bench", str(tiny_model), "--parallel", "0,2")
    assert done.code == 2 and "--parallel" in done.stderr


@pytest.mark.slow
def test_doctor_shows_the_default_parallel_for_the_demo_model(home: Path) -> None:
    before = json.loads(run(home, "doctor", "--json").stdout)
    assert before["parallel_demo"] is None  # the demo is not in this cache yet: not sized
    assert run(home, "run", "demo", "--max-tokens", "1", "x").code == 0
    after = json.loads(run(home, "doctor", "--json").stdout)
    assert 1 <= after["parallel_demo"] <= 8
    assert "sequences at once for the demo model" in run(home, "doctor").stdout


def test_requests_are_made_a_bounded_number_ahead_of_the_writer() -> None:
    from localrun.cli.batchrun import _ahead

    made: list[int] = []

    def items() -> Iterator[int]:
        for i in range(100):
            made.append(i)
            yield i

    seen = []
    for item in _ahead(items(), 8):
        seen.append(item)
        assert len(made) == min(100, item + 9)  # this one, and 8 more at most
    assert seen == list(range(100))
