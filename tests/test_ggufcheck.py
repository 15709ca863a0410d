from pathlib import Path

import pytest

from localrun.errors import InvalidModelError, ModelNotFoundError
from localrun.gguf.check import check_model_file


def test_accepts_a_real_gguf(tiny_model: Path) -> None:
    check_model_file(tiny_model)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError, match="not found"):
        check_model_file(tmp_path / "nope.gguf")


def test_directory(tmp_path: Path) -> None:
    with pytest.raises(InvalidModelError, match="is a directory") as e:
        check_model_file(tmp_path)
    assert e.value.hint and ".gguf" in e.value.hint


@pytest.mark.parametrize(
    ("content", "shown"),
    [(b"hello world", "b'hell'"), (b"", "(empty file)"), (b"PK\x03\x04rest", "b'PK\\x03\\x04'")],
)
def test_not_gguf_names_what_it_found(tmp_path: Path, content: bytes, shown: str) -> None:
    path = tmp_path / "model.gguf"
    path.write_bytes(content)
    with pytest.raises(InvalidModelError, match="is not a GGUF model file") as e:
        check_model_file(path)
    assert shown in e.value.message


def test_header_cut_short(tmp_path: Path) -> None:
    path = tmp_path / "short.gguf"
    path.write_bytes(b"GGUF\x03")
    with pytest.raises(InvalidModelError, match="truncated"):
        check_model_file(path)


def test_unknown_version(tmp_path: Path) -> None:
    path = tmp_path / "future.gguf"
    path.write_bytes(b"GGUF\x09\x00\x00\x00" + b"\x00" * 32)
    with pytest.raises(InvalidModelError, match="version 9"):
        check_model_file(path)


def test_unreadable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Root reads any file whatever its mode, so simulate the refusal the OS would give.
    path = tmp_path / "secret.gguf"
    path.write_bytes(b"GGUF\x03\x00\x00\x00")

    def refuse(self: Path, *args: object, **kwargs: object) -> None:
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "open", refuse)
    with pytest.raises(InvalidModelError, match="permission denied") as e:
        check_model_file(path)
    assert e.value.hint and "chmod" in e.value.hint
