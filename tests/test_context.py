"""The default context: the trained one where it fits, else the longest power of two that
does, never below 4096 (engine/context.py); and where it is said (--verbose, ps, doctor).

The room is given as the planner counts it (a Room), so each case is exact; the sizes are the
planner's own for the model's header, the ones llama.cpp allocates (tests/test_kv.py).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from localrun.backend.llamacpp.offload import COMPUTE_RESERVE, model_sizes
from localrun.engine import context
from localrun.engine.context import Room, default_context
from localrun.engine.load import load_model
from localrun.errors import UsageError
from localrun.gguf.reader import GGUFInfo, read_gguf
from tests.tinygguf import write_tiny_model


@pytest.fixture(scope="module")
def long_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny model trained, it says, for 65,536 tokens (512 bytes of f16 KV cache a token)."""
    return write_tiny_model(tmp_path_factory.mktemp("ctx") / "long.gguf", n_ctx_train=65536)


def _kv(info: GGUFInfo, n_ctx: int, kv_type: str = "f16") -> int:
    return sum(model_sizes(info, n_ctx, kv_type).kv_per_layer)


def _weights(info: GGUFInfo) -> int:
    return sum(t.n_bytes for t in info.tensors)


def _ram_for(info: GGUFInfo, n_ctx: int, kv_type: str = "f16") -> Room:
    """Free memory that holds the weights and exactly ``n_ctx`` tokens' cache, no more."""
    need = _weights(info) + _kv(info, n_ctx, kv_type) + COMPUTE_RESERVE
    return Room(gpu=0, gpus=(), ram=need)


def test_the_trained_context_where_it_fits(long_model: Path) -> None:
    info = read_gguf(long_model)
    chosen = default_context(info, here=_ram_for(info, 65536))
    assert chosen.n_ctx == 65536
    assert "as the model was trained" in chosen.reason
    assert "free memory" in chosen.reason


def test_else_the_longest_power_of_two_that_fits(long_model: Path) -> None:
    info = read_gguf(long_model)
    short = _ram_for(info, 65536)
    chosen = default_context(info, here=Room(0, (), short.ram - 1))
    assert chosen.n_ctx == 32768
    assert "the longest that fits" in chosen.reason
    assert "the trained 65536 would need" in chosen.reason
    assert default_context(info, here=_ram_for(info, 16384)).n_ctx == 16384


def test_never_below_4096_even_where_that_does_not_fit(long_model: Path) -> None:
    chosen = default_context(read_gguf(long_model), here=Room(0, (), 0))
    assert chosen.n_ctx == 4096
    assert "does not fit" in chosen.reason


def test_a_model_trained_for_less_gets_its_own(tiny_model: Path) -> None:
    # The suite's tiny model says 2048: the floor is the model's own, never more.
    assert default_context(read_gguf(tiny_model), here=Room(0, (), 10**12)).n_ctx == 2048


def test_a_trained_context_that_is_no_power_of_two(tmp_path: Path) -> None:
    info = read_gguf(write_tiny_model(tmp_path / "qwen3-like.gguf", n_ctx_train=40960))
    assert default_context(info, here=_ram_for(info, 40960)).n_ctx == 40960
    short = _ram_for(info, 40960)
    assert default_context(info, here=Room(0, (), short.ram - 1)).n_ctx == 32768


def test_the_kv_type_counts(long_model: Path) -> None:
    info = read_gguf(long_model)
    # A q8_0 cache is about half an f16 one: room for 32768 f16 tokens holds 65536 of q8_0.
    room = _ram_for(info, 65536, kv_type="q8_0")
    assert default_context(info, kv_type="f16", here=room).n_ctx == 32768
    assert default_context(info, kv_type="q8_0", here=room).n_ctx == 65536


def test_with_a_gpu_the_context_fits_the_gpu_not_the_memory(long_model: Path) -> None:
    info = read_gguf(long_model)
    gpu = _weights(info) + _kv(info, 8192)
    chosen = default_context(info, here=Room(gpu=gpu, gpus=("Sim GPU",), ram=10**12))
    assert chosen.n_ctx == 8192
    assert "free on Sim GPU" in chosen.reason
    # A GPU too small for even the least default: the layers split, so memory counts too.
    small = Room(gpu=_weights(info), gpus=("Sim GPU",), ram=10**12)
    assert default_context(info, here=small).n_ctx == 65536


def test_the_environment_sets_the_default(
    long_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(context.ENV, "8192")
    chosen = default_context(read_gguf(long_model), here=Room(0, (), 10**12))
    assert (chosen.n_ctx, chosen.reason) == (8192, "context 8192 tokens, set by " + context.ENV)
    monkeypatch.setenv(context.ENV, "lots")
    with pytest.raises(UsageError, match="must be a number of tokens, not 'lots'"):
        default_context(read_gguf(long_model), here=Room(0, (), 10**12))


def test_a_load_without_a_context_gets_the_default_and_says_why(
    long_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    info = read_gguf(long_model)
    monkeypatch.setattr(context, "room", lambda: _ram_for(info, 16384))
    loaded = load_model("long", n_threads=1, gpu_layers=0, path=long_model)
    try:
        assert loaded.model.n_ctx == 16384
        assert loaded.context_reason is not None
        assert loaded.context_reason.startswith("context 16384 tokens, the longest that fits")
    finally:
        loaded.close()
    asked = load_model("long", n_ctx=1024, n_threads=1, gpu_layers=0, path=long_model)
    try:
        assert (asked.model.n_ctx, asked.context_reason) == (1024, None)
    finally:
        asked.close()


def test_verbose_says_what_context_was_chosen(
    long_model: Path, cli: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    info = read_gguf(long_model)
    monkeypatch.setattr(context, "room", lambda: _ram_for(info, 8192))
    result = cli(["run", str(long_model), "hello", "-n", "2", "--verbose"])  # type: ignore[operator]
    assert result.exit_code == 0, result.stderr
    assert "context 8192 tokens, the longest that fits" in result.stderr
    quiet = cli(["run", str(long_model), "hello", "-n", "2"])  # type: ignore[operator]
    assert "longest that fits" not in quiet.stderr


def test_sequences_share_a_default_context_and_each_may_use_all_of_it(
    long_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    info = read_gguf(long_model)
    monkeypatch.setattr(context, "room", lambda: _ram_for(info, 8192))
    shared = load_model("long", n_threads=1, gpu_layers=0, path=long_model, n_seq=4)
    try:
        assert (shared.model.n_ctx, shared.seq_ctx, shared.shared) == (8192, 8192, True)
        assert shared.context_reason is not None
        assert shared.context_reason.endswith("its 4 sequences share it, each may use all of it")
    finally:
        shared.close()
    # A context asked for is each sequence's own, as Ollama's num_ctx with parallel requests.
    asked = load_model("long", n_ctx=1024, n_threads=1, gpu_layers=0, path=long_model, n_seq=4)
    try:
        assert (asked.model.n_ctx, asked.seq_ctx, asked.shared) == (4096, 1024, False)
    finally:
        asked.close()
