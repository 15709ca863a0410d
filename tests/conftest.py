from __future__ import annotations

import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner

from localrun.cli import main
from tests.fuzz_harness import fuzz_seed, replay
from tests.hub import TEST_TOKEN, FakeHub
from tests.lavapipe import lavapipe, vulkan_python  # noqa: F401 - fixtures for all tests
from tests.templates import real_templates  # noqa: F401 - fixtures for all tests
from tests.terminal import terminal, tmux, tui_home  # noqa: F401
from tests.tinygguf import CHATML_TEMPLATE, write_tiny_model

# Whole modules left out of the edit loop (`pytest -m "not slow"`): each starts servers,
# terminals or other processes for most of its tests, or runs the fuzz cross-product. Tests that
# run the real demo or packaged model are marked e2e, which counts as slow too; other slow
# tests carry @pytest.mark.slow where they are.
SLOW_MODULES = {
    "test_chat_model", "test_chat_terminal", "test_docs_commands", "test_e2e", "test_fuzz",
    "test_fuzz_grammar", "test_fuzz_http", "test_kv", "test_perplexity", "test_quantize",
    "test_remote", "test_remote_llama_server", "test_rpc", "test_serve", "test_serve_demo",
    "test_serve_guard", "test_serve_pull", "test_tui",
}  # fmt: skip


def pytest_configure() -> None:
    try:
        fuzz_seed()
    except ValueError as e:  # a mistyped LOCALRUN_FUZZ_SEED: said in one line, before any test
        raise pytest.UsageError(str(e)) from None


def pytest_report_header() -> str:
    """The fuzz tests' seed, first thing in the output, so that any run can be replayed."""
    return f"fuzz {replay()}"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        module = item.nodeid.split("::")[0].rsplit("/", 1)[-1].removesuffix(".py")
        if module in SLOW_MODULES or item.get_closest_marker("e2e"):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(autouse=True)
def localrun_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Every test gets its own empty localrun home: nothing touches the user's files."""
    home = tmp_path / "localrun-home"
    monkeypatch.setenv("LOCALRUN_HOME", str(home))
    monkeypatch.delenv("LOCALRUN_DEBUG", raising=False)
    monkeypatch.delenv("LOCALRUN_CONTEXT_LENGTH", raising=False)
    # No test reaches a real registry: a name that is nowhere else fails at once, here.
    monkeypatch.setenv("LOCALRUN_REGISTRY", "http://127.0.0.1:9")
    yield home


@pytest.fixture(scope="session")
def demo_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo model's GGUF (Gemma 3 270M), taken from its package into a home of its own."""
    from localrun.models.demo import demo_model_path

    with pytest.MonkeyPatch.context() as m:
        m.setenv("LOCALRUN_HOME", str(tmp_path_factory.mktemp("demo-home")))
        return demo_model_path()


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random model without a chat template (runs in completion mode)."""
    return write_tiny_model(tmp_path_factory.mktemp("models") / "tiny.gguf")


@pytest.fixture(scope="session")
def tiny_chat_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random model with a ChatML chat template."""
    path = tmp_path_factory.mktemp("models") / "tiny-chat.gguf"
    return write_tiny_model(path, chat_template=CHATML_TEMPLATE)


@pytest.fixture(scope="session")
def tiny_bytes(tiny_model: Path) -> bytes:
    return tiny_model.read_bytes()


@pytest.fixture
def hub(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeHub]:
    """A Hub on 127.0.0.1 that the real huggingface_hub client (and pull) talks to.

    The client is pointed at it (HF_ENDPOINT), kept off Xet and away from any real token.
    """
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")
    # constants are read when huggingface_hub is imported: the env var alone may come too late.
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    with FakeHub(token=TEST_TOKEN) as h:
        monkeypatch.setenv("HF_ENDPOINT", h.url)
        yield h


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
