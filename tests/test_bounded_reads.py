"""Files a user names are read only if they are regular files, and only up to their cap.

Pictures (``--image``, a batch line's ``images``), batch files, Modelfiles and perplexity
texts, each tried as the 2026-12-06 sweep tried them: ``/dev/zero`` (which the old code read
until it held 18 GB), a FIFO with no writer (which hung it), and files over the cap. Each case
runs the installed command in a subprocess with a time limit: a hang fails the test, not the
run. Also the batch lines that once stopped a whole batch, and bounds printed as ``%g``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from localrun.models.modelfile import check_parameter
from tests.proc import Done, run
from tests.tinygguf import write_tiny_projector

TIMEOUT = 60  # seconds: each case takes about one; a FIFO that blocks takes all of them


@pytest.fixture
def home(localrun_home: Path) -> Path:
    return localrun_home


@pytest.fixture
def fifo(tmp_path: Path) -> Path:
    """A FIFO that no process writes to: opening it for reading blocks, unless told not to."""
    path = tmp_path / "fifo.png"
    os.mkfifo(path)
    return path


def refused(done: Done, code: int, *needles: str) -> str:
    """The one line of a refusal, with its exit code, nothing on stdout and no traceback."""
    assert done.code == code, (done.code, done.stderr)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), done.stderr
    assert "this is a bug" not in lines[0] and done.stdout == ""
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def lines_of(done: Done) -> list[dict[str, object]]:
    return [json.loads(line) for line in done.stdout.splitlines()]


# -- pictures -----------------------------------------------------------------------------------


@pytest.fixture
def seer(home: Path, tiny_chat_model: Path, tmp_path: Path) -> str:
    """A created vision model: the tiny chat model and a tiny projector."""
    projector = write_tiny_projector(tmp_path / "mmproj-tiny-f32.gguf")
    modelfile = tmp_path / "Modelfile"
    modelfile.write_text(f"FROM {tiny_chat_model}\nFROM {projector}\n")
    done = run(home, "create", "seer", "-f", str(modelfile))
    assert done.code == 0, done.stderr
    return "seer"


def test_pictures_for_a_text_model_are_refused_unread(
    home: Path, tiny_chat_model: Path, fifo: Path
) -> None:
    for path in (fifo, Path("/dev/zero")):
        done = run(home, "run", str(tiny_chat_model), "--image", str(path), "hi", timeout=TIMEOUT)
        refused(done, 2, "reads no images")


def test_a_picture_that_is_not_a_regular_file_is_refused(home: Path, seer: str, fifo: Path) -> None:
    for path in (fifo, Path("/dev/zero")):
        done = run(home, "run", seer, "--image", str(path), "what is it", timeout=TIMEOUT)
        refused(done, 2, f"the image {path} is not a regular file")
        assert done.peak_mb < 1000  # the old read of /dev/zero reached 17.9 GB


def test_a_batch_lines_picture_that_is_not_a_regular_file_is_its_error(
    home: Path, seer: str, fifo: Path, tmp_path: Path
) -> None:
    batch = tmp_path / "in.jsonl"
    lines = [
        {"id": "fifo", "prompt": "what", "images": [str(fifo)]},
        {"id": "ok", "prompt": "what", "max_tokens": 2},
    ]
    batch.write_text("".join(json.dumps(line) + "\n" for line in lines))
    done = run(home, "run", seer, "--batch", str(batch), timeout=TIMEOUT)
    assert done.code == 1, done.stderr
    out = lines_of(done)
    assert [o["id"] for o in out] == ["fifo", "ok"]
    assert "is not a regular file" in str(out[0]["error"]) and "response" in out[1]


# -- batch files --------------------------------------------------------------------------------

GOOD = json.dumps({"id": "good", "prompt": "hi", "max_tokens": 2})
LAST = json.dumps({"id": "last", "prompt": "hi", "max_tokens": 2})


def test_a_bad_line_never_stops_the_others(home: Path, tiny_model: Path, tmp_path: Path) -> None:
    """The sweep's batch: a lone surrogate ended the run, and lines 3-6 lost their answers."""
    bad = [
        "not json",
        "[1,2]",
        '{"prompt":""}',
        '{"prompt":"hi","bogus":1}',
        '{"prompt":"hi","max_tokens":-5}',
        r'{"prompt":"\ud800","max_tokens":2}',  # the backslash escape, as the file has it
        r'{"id":"\udfff","prompt":"hi"}',  # an id is echoed on stdout, which takes only text
        r'{"messages":[{"role":"user","content":"a\udc80b"}]}',
        "[" * 100_000,  # Python's JSON decoder recurses
    ]
    batch = tmp_path / "bad.jsonl"
    batch.write_text("\n".join([GOOD, *bad, LAST]) + "\n")
    for source, stdin in ((str(batch), b""), ("-", batch.read_bytes())):
        done = run(home, "run", str(tiny_model), "--batch", source, "--threads", "1",
                   "--parallel", "1", stdin=stdin, timeout=TIMEOUT)  # fmt: skip
        assert done.code == 1, done.stderr  # some lines failed
        assert "Traceback" not in done.stderr and "this is a bug" not in done.stderr
        out = lines_of(done)
        assert [o.get("line") for o in out] == [None, *range(2, 2 + len(bad)), None]
        assert out[0]["id"] == "good" and "response" in out[0]
        assert out[-1]["id"] == "last" and "response" in out[-1]
        assert "'prompt' holds '\\ud800', half of a UTF-16 surrogate pair" in str(out[6]["error"])
        assert "'id' holds '\\udfff'" in str(out[7]["error"]) and out[7]["id"] is None
        assert "'messages' holds '\\udc80'" in str(out[8]["error"])
        assert "nested too deeply" in str(out[9]["error"])
        assert len(done.stderr.strip().splitlines()) == len(bad)  # one line per bad line


@pytest.mark.parametrize("content", [b"", b"\n  \n\t\n"])
def test_a_batch_with_no_request_is_refused_before_the_model_loads(
    home: Path, tmp_path: Path, content: bytes
) -> None:
    batch = tmp_path / "empty.jsonl"
    batch.write_bytes(content)
    # The model does not exist: the refusal comes before it is looked for, let alone loaded.
    missing = str(tmp_path / "missing.gguf")
    done = run(home, "run", missing, "--batch", str(batch), timeout=TIMEOUT)
    refused(done, 2, f"the batch file {batch} holds no request: it is empty or blank")
    done = run(home, "run", missing, "--batch", "-", stdin=content, timeout=TIMEOUT)
    refused(done, 2, "the batch file - holds no request")


def test_a_batch_file_that_is_not_a_regular_file_is_refused(
    home: Path, tiny_model: Path, fifo: Path
) -> None:
    for path in (fifo, Path("/dev/zero")):
        done = run(home, "run", str(tiny_model), "--batch", str(path), timeout=TIMEOUT)
        refused(done, 2, f"the batch file {path} is not a regular file")
        assert done.peak_mb < 1000


def test_a_batch_file_that_is_not_text_is_refused_before_the_model_loads(
    home: Path, tmp_path: Path
) -> None:
    batch = tmp_path / "model.gguf"
    batch.write_bytes(GOOD.encode() + b"\n" + b"GGUF\xff\xfe\x00\x01" * 100)
    done = run(home, "run", str(tmp_path / "missing.gguf"), "--batch", str(batch))
    refused(done, 2, f"the batch file {batch} is not UTF-8 text (line 2)")


def test_a_line_of_stdin_that_is_not_text_is_its_own_error(home: Path, tiny_model: Path) -> None:
    """Stdin is answered as it comes, so a bad line cannot refuse the whole input first."""
    given = GOOD.encode() + b"\n\xff\xfe\n" + LAST.encode() + b"\n"
    done = run(home, "run", str(tiny_model), "--batch", "-", stdin=given, timeout=TIMEOUT)
    assert done.code == 1, done.stderr
    out = lines_of(done)
    assert [o["id"] for o in out] == ["good", None, "last"]
    assert out[1]["error"] == "line 2: not UTF-8 text"


def test_a_line_over_the_cap_is_its_own_error(home: Path, tiny_model: Path, tmp_path: Path) -> None:
    batch = tmp_path / "long.jsonl"
    with batch.open("wb") as f:
        f.write(GOOD.encode() + b"\n")
        f.seek(65_000_000, os.SEEK_CUR)  # a sparse hole: 65 MB of NULs on paper, one line
        f.write(b"\n" + LAST.encode() + b"\n")
    done = run(home, "run", str(tiny_model), "--batch", str(batch), "--threads", "1",
               "--parallel", "1", timeout=TIMEOUT)  # fmt: skip
    assert done.code == 1, done.stderr
    out = lines_of(done)
    assert [o["id"] for o in out] == ["good", None, "last"]
    assert out[1] == {
        "id": None,
        "line": 2,
        "error": "line 2: longer than 64 MB",
        "hint": "see 'localrun run --help' for --batch",
    }


def test_a_line_that_breaks_localrun_still_lets_the_lines_before_it_be_written() -> None:
    """A bug on one line (not a bad line: those are its error) ends the run, but the answers
    to the lines already submitted ahead of the writer are handed on first."""
    from localrun.cli.batchrun import _ahead

    def made() -> Iterator[int]:
        yield from range(5)
        raise RuntimeError("a bug on the sixth line")

    handed: list[int] = []
    with pytest.raises(RuntimeError, match="sixth line"):
        for item in _ahead(made(), 4):
            handed.append(item)
    assert handed == [0, 1, 2, 3, 4]


# -- Modelfiles -----------------------------------------------------------------------------------


def test_a_modelfile_that_is_not_a_regular_file_is_refused(home: Path, fifo: Path) -> None:
    for path in (fifo, Path("/dev/zero")):
        done = run(home, "create", "m", "-f", str(path), timeout=TIMEOUT)
        refused(done, 2, f"the Modelfile {path} is not a regular file")
        assert done.peak_mb < 1000


def test_a_modelfile_over_the_cap_is_refused(home: Path, tmp_path: Path) -> None:
    modelfile = tmp_path / "Modelfile"
    with modelfile.open("wb") as f:
        f.write(b"FROM demo\n")
        f.truncate(11_000_000)  # sparse
    refused(run(home, "create", "m", "-f", str(modelfile)), 2, "is larger than 10 MB")


# -- perplexity texts ---------------------------------------------------------------------------


@pytest.mark.parametrize(("content", "message"), [(b"", "is empty"), (b" \n\n\t \n", "is blank")])
def test_perplexity_of_no_text_says_so(
    home: Path, tmp_path: Path, content: bytes, message: str
) -> None:
    text = tmp_path / "t.txt"
    text.write_bytes(content)
    refused(run(home, "perplexity", "demo", str(text)), 2, f"the text file {text} {message}")


def test_perplexity_of_a_file_that_is_not_regular_is_refused(home: Path, fifo: Path) -> None:
    for path in (fifo, Path("/dev/zero")):
        done = run(home, "perplexity", "demo", str(path), timeout=TIMEOUT)
        refused(done, 2, f"the text file {path} is not a regular file")
        assert done.peak_mb < 1000


# -- bounds in range errors -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "value", "bounds"),
    [
        ("seed", 10**30, "between -1 and 4294967294"),
        ("num_ctx", 0, "between 1 and 10000000"),
        ("top_k", -1, "between 0 and 1000000"),
        ("num_predict", -3, "between -2 and 10000000"),
    ],
)
def test_range_errors_print_whole_bounds_as_whole_numbers(
    name: str, value: float, bounds: str
) -> None:
    with pytest.raises(ValueError) as caught:
        check_parameter(name, value)
    assert f"{name} must be {bounds}" in str(caught.value)


def test_the_seed_flag_prints_its_bound_whole(home: Path, tiny_model: Path) -> None:
    seed = "123456789012345678901234567890"
    done = run(home, "run", str(tiny_model), "hi", "--seed", seed)
    refused(done, 2, f"--seed must be between -1 and 4294967294, not {seed}")
