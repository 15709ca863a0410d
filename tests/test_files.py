"""Reading the files a user names: regular files only, and never more than their cap."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from localrun.errors import UsageError
from localrun.files import read_capped


def _refusal(path: str | Path, cap: int = 1000) -> str:
    with pytest.raises(UsageError) as e:
        read_capped(path, cap, "the grammar file", "give a GBNF file")
    assert e.value.hint == "give a GBNF file"
    return e.value.message


def test_a_regular_file_is_read_whole(tmp_path: Path) -> None:
    path = tmp_path / "g.gbnf"
    path.write_bytes(b"root ::= [a-z]+\n")
    assert read_capped(path, 16, "the grammar file", "-") == b"root ::= [a-z]+\n"


def test_one_byte_over_the_cap_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "g.gbnf"
    path.write_bytes(b"x" * 17)
    assert _refusal(path, 16) == f"the grammar file {path} is larger than 16 B"


def test_a_device_is_refused_before_reading() -> None:
    assert _refusal("/dev/zero") == "the grammar file /dev/zero is not a regular file"


def test_a_fifo_without_a_writer_is_refused_at_once(tmp_path: Path) -> None:
    fifo = tmp_path / "pic.png"
    os.mkfifo(fifo)
    done: list[str] = []
    reader = threading.Thread(target=lambda: done.append(_refusal(fifo)), daemon=True)
    reader.start()
    reader.join(timeout=30)  # a blocking open would wait for a writer forever
    assert done == [f"the grammar file {fifo} is not a regular file"]


def test_a_folder_and_a_missing_file_are_named(tmp_path: Path) -> None:
    assert _refusal(tmp_path) == f"the grammar file {tmp_path} is a folder"
    missing = tmp_path / "nope"
    assert _refusal(missing) == f"cannot read the grammar file {missing}: No such file or directory"


def test_a_file_that_lies_about_its_size_is_capped_while_reading() -> None:
    # /proc files say they are empty; this one holds the whole environment
    assert os.stat("/proc/self/environ").st_size == 0
    assert (
        _refusal("/proc/self/environ", 4)
        == "the grammar file /proc/self/environ is larger than 4 B"
    )
