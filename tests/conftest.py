from __future__ import annotations

import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner

from localrun.cli import main
from tests.tinygguf import CHATML_TEMPLATE, write_tiny_model


@pytest.fixture(autouse=True)
def localrun_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Every test gets its own empty localrun home: nothing touches the user's files."""
    home = tmp_path / "localrun-home"
    monkeypatch.setenv("LOCALRUN_HOME", str(home))
    monkeypatch.delenv("LOCALRUN_DEBUG", raising=False)
    yield home


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random model without a chat template (runs in completion mode)."""
    return write_tiny_model(tmp_path_factory.mktemp("models") / "tiny.gguf")


@pytest.fixture(scope="session")
def tiny_chat_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random model with a ChatML chat template."""
    path = tmp_path_factory.mktemp("models") / "tiny-chat.gguf"
    return write_tiny_model(path, chat_template=CHATML_TEMPLATE)


@dataclass
class CliResult:
    exit_code: int
    stdout: str
    stderr: str


@pytest.fixture
def cli() -> object:
    """Run ``main(args)`` with captured stdio, as the console script would."""

    def invoke(args: list[str], input: bytes | str | None = None) -> CliResult:
        runner = CliRunner()
        with runner.isolation(input=input) as streams:
            code = main(args)
            sys.stdout.flush()
            sys.stderr.flush()
        return CliResult(code, streams[0].getvalue().decode(), streams[1].getvalue().decode())

    return invoke
