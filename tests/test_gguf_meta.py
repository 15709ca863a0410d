from pathlib import Path

import pytest

from localrun.errors import InvalidModelError
from localrun.gguf.reader import ArrayInfo, file_type_name, read_gguf, type_name
from tests.tinygguf import N_EMBD, N_LAYER, write_tiny_model


def test_reads_metadata_and_tensor_table(tiny_chat_model: Path) -> None:
    info = read_gguf(tiny_chat_model)
    assert info.architecture == "llama"
    assert info.arch_value("block_count") == N_LAYER
    assert info.arch_value("embedding_length") == N_EMBD
    assert info.metadata["general.name"] == "tiny-test-model"
    assert isinstance(info.metadata["tokenizer.ggml.tokens"], ArrayInfo)
    assert info.metadata["tokenizer.chat_template"].startswith("{% for m in messages %}")
    names = {t.name for t in info.tensors}
    assert {"token_embd.weight", "output.weight", "blk.1.ffn_down.weight"} <= names
    # f32 tensors: 4 bytes each, and the last one ends where the file does.
    embd = next(t for t in info.tensors if t.name == "token_embd.weight")
    assert embd.n_bytes == 4 * embd.n_elements and type_name(embd.type) == "f32"
    assert max(t.offset + t.n_bytes for t in info.tensors) == info.file_size


def test_parameter_count_is_the_sum_of_tensor_elements(tmp_path: Path) -> None:
    info = read_gguf(write_tiny_model(tmp_path / "m.gguf"))
    assert info.parameters == sum(t.n_elements for t in info.tensors) > 100_000


def test_truncated_header(tmp_path: Path, tiny_model: Path) -> None:
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(tiny_model.read_bytes()[:300])
    with pytest.raises(InvalidModelError, match="truncated"):
        read_gguf(cut)


def test_file_type_names() -> None:
    assert file_type_name(15) == "Q4_K_M"
    assert file_type_name(0) == "F32"
    assert file_type_name(None) is None
