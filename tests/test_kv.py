"""The KV cache's type: ``--kv-type f16|q8_0|q4_0`` and ``--flash-attn`` on every path.

The planner's sizes are checked against what llama.cpp allocates for the demo model in each
type; the flags, the Modelfile parameter and the environment default reach the load; a
q8_0 cache's prompts are never read back into an f16 one.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from localrun.backend import KV_TYPES, LoadOptions, context_size, load
from localrun.backend.llamacpp.offload import model_sizes
from localrun.engine import load as engine_load
from localrun.gguf.reader import read_gguf
from localrun.models.demo import demo_model_path
from tests.proc import run


@pytest.fixture
def home(localrun_home: Path) -> Path:
    return localrun_home


@pytest.mark.parametrize("kv_type", KV_TYPES)
def test_the_planner_counts_what_llama_cpp_allocates(kv_type: str) -> None:
    info = read_gguf(demo_model_path())
    for n_ctx, n_seq in ((4096, 1), (2048, 2)):
        model = load(LoadOptions(demo_model_path(), n_ctx=n_ctx, n_threads=2, n_seq=n_seq,
                                 kv_type=kv_type))  # fmt: skip
        try:
            allocated = model.kv_bytes  # type: ignore[attr-defined]
        finally:
            model.close()
        planned = sum(model_sizes(info, n_ctx, kv_type).kv_per_layer)
        assert allocated == pytest.approx(planned, rel=0.001), (kv_type, n_ctx, n_seq)


def test_a_compressed_cache_is_smaller_and_lets_more_sequences_in(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    info = read_gguf(demo_model_path())
    n_ctx = context_size(None, int(info.arch_value("context_length")))
    sizes = {t: sum(model_sizes(info, n_ctx, t).kv_per_layer) for t in KV_TYPES}
    assert sizes["q8_0"] <= 0.55 * sizes["f16"] and sizes["q4_0"] <= 0.3 * sizes["f16"]
    # Half of a small machine's memory, after the weights, holds more q4_0 sequences.
    weights = demo_model_path().stat().st_size
    monkeypatch.setattr("localrun.system.physical_memory", lambda: 2 * (weights + 3 * sizes["f16"]))
    counts = {t: engine_load.default_parallel(demo_model_path(), None, t) for t in KV_TYPES}
    assert counts["f16"] == 3 and counts["q8_0"] == 5 and counts["q4_0"] == 8


def test_the_flags_reach_the_cache_and_say_so(home: Path) -> None:
    done = run(home, "run", "demo", "--kv-type", "q8_0", "--ctx", "4096", "--verbose",
               "--max-tokens", "4", "Hi")  # fmt: skip
    assert done.code == 0, done.stderr
    assert "KV cache:         40 MB q8_0, 4096 cells" in done.stderr
    refused = run(home, "run", "demo", "--kv-type", "q4_0", "--flash-attn", "off", "Hi")
    assert refused.code == 2 and "a q4_0 KV cache needs flash attention" in refused.stderr
    unknown = run(home, "run", "demo", "--kv-type", "q5", "Hi")
    assert unknown.code == 2 and "cannot be 'q5'" in unknown.stderr
    bench = run(home, "bench", "demo", "--kv-type", "q4_0", "-p", "16", "-n", "4", "-r", "1")
    assert bench.code == 0, bench.stderr


def test_the_modelfile_and_the_environment_set_the_default(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    modelfile = home.parent / "Modelfile"
    modelfile.write_text("FROM demo\nPARAMETER kv_type q4_0\n")
    assert run(home, "create", "small-kv", "-f", str(modelfile)).code == 0
    done = run(home, "run", "small-kv", "--verbose", "--max-tokens", "2", "Hi")
    assert done.code == 0 and "MB q4_0" in done.stderr
    flag = run(home, "run", "small-kv", "--kv-type", "f16", "--verbose", "--max-tokens", "2", "Hi")
    assert "MB f16" in flag.stderr  # the flag over the Modelfile
    modelfile.write_text("FROM demo\nPARAMETER kv_type q9\n")
    bad = run(home, "create", "bad-kv", "-f", str(modelfile))
    assert bad.code != 0 and "kv_type must be one of f16, q8_0, q4_0" in bad.stderr
    monkeypatch.setenv("LOCALRUN_KV_TYPE", "q8_0")
    env = run(home, "run", "demo", "--verbose", "--max-tokens", "2", "Hi")
    assert "MB q8_0" in env.stderr


def test_a_q8_0_cache_never_reads_back_an_f16_prompt(home: Path) -> None:
    document = ("The harbour woke before the sun. " * 40).encode()  # piped: kept on disk
    args = ("--verbose", "--max-tokens", "2", "--temperature", "0", "Summarize:")
    first = run(home, "run", "demo", *args, stdin=document)
    assert first.code == 0 and "read back from the prompt cache" not in first.stderr
    other = run(home, "run", "demo", "--kv-type", "q8_0", *args, stdin=document)
    assert other.code == 0 and "read back from the prompt cache" not in other.stderr
    again = run(home, "run", "demo", *args, stdin=document)
    assert "read back from the prompt cache" in again.stderr  # the f16 entry, for f16
    q8 = run(home, "run", "demo", "--kv-type", "q8_0", *args, stdin=document)
    assert "read back from the prompt cache" in q8.stderr  # and the q8_0 one, for q8_0


def test_a_device_without_flash_attention_falls_back_to_f16_with_a_note(
    tiny_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from localrun import backend
    from localrun.errors import ModelLoadError

    real = backend.load
    tried: list[str] = []

    def load_without_flash_attention(options: LoadOptions) -> object:
        tried.append(options.kv_type)
        if options.kv_type != "f16":  # what llama.cpp says on such a device
            raise ModelLoadError(
                "llama.cpp could not create a context of 512 tokens: llama_init_from_model: "
                "quantized V cache requires flash_attn to be enabled"
            )
        return real(options)

    monkeypatch.setattr(backend, "load", load_without_flash_attention)
    loaded = engine_load.load_model(str(tiny_model), n_ctx=512, n_threads=1, kv_type="q8_0")
    try:
        assert tried == ["q8_0", "f16"]
        assert loaded.kv_cache.endswith(" f16")
        assert any("cannot run a q8_0 KV cache" in note for note in loaded.notes)
    finally:
        loaded.close()
    with pytest.raises(ModelLoadError, match="requires flash_attn"):  # asked for: not replaced
        engine_load.load_model(str(tiny_model), n_ctx=512, n_threads=1, kv_type="q8_0",
                               flash_attn="on")  # fmt: skip
