"""The llama.cpp adapter on a tiny generated model: real llama.cpp, milliseconds per test."""

from pathlib import Path

import pytest

from localrun.backend import LoadOptions, SamplingParams, load
from localrun.engine.batch import BatchEngine, Job
from localrun.engine.types import PromptEvaluated
from localrun.errors import InvalidModelError, ModelLoadError


def test_loads_and_reports_its_context(tiny_model: Path) -> None:
    model = load(LoadOptions(tiny_model, n_ctx=512, n_threads=1))
    try:
        assert model.n_ctx == 512
        assert model.n_ctx_train == 2048
        assert model.chat_template is None
        assert model.metadata["general.architecture"] == "llama"
        assert model.token_text(model.bos_token or 0) == "<s>"
    finally:
        model.close()


def test_default_context_is_the_smaller_of_trained_and_4096(
    tmp_path: Path, tiny_model: Path
) -> None:
    from tests.tinygguf import write_tiny_model

    big = write_tiny_model(tmp_path / "big.gguf", n_ctx_train=32768)
    for path, expected in ((tiny_model, 2048), (big, 4096)):
        model = load(LoadOptions(path, n_threads=1))
        assert model.n_ctx == expected
        model.close()


def generate(batch: BatchEngine, prompt: list[int], n: int) -> tuple[PromptEvaluated, list[int]]:
    """n tokens after ``prompt``, through the engine: how much prompt it read, and the tokens."""
    stream = batch.submit(Job(prompt, SamplingParams(seed=5), max_tokens=n, stop_at_eog=False))
    events = list(stream)
    evaluated = next(e for e in events if isinstance(e, PromptEvaluated))
    return evaluated, stream.tokens


def test_second_turn_reuses_the_cached_prefix(tiny_model: Path) -> None:
    model = load(LoadOptions(tiny_model, n_threads=1))
    batch = BatchEngine(model)  # type: ignore[arg-type]
    try:
        prompt = model.tokenize("the sky is blue", add_special=True, parse_special=False)
        first, answer = generate(batch, prompt, 4)
        assert first.evaluated == len(prompt)
        # The next turn extends the conversation: only the new tokens are evaluated.
        turn2 = prompt + answer[:3] + model.tokenize(" why", add_special=False, parse_special=False)
        second, _ = generate(batch, turn2, 2)
        assert second.evaluated == len(turn2) - len(prompt) - 3
        # A prompt that diverges early drops the rest of the cache.
        other = model.tokenize("hello world", add_special=True, parse_special=False)
        third, _ = generate(batch, other, 1)
        assert third.evaluated == len(other) - 1  # only BOS was shared
    finally:
        batch.close()
        model.close()


def test_identical_prompt_gives_identical_tokens_after_reuse(tiny_model: Path) -> None:
    model = load(LoadOptions(tiny_model, n_threads=1))
    batch = BatchEngine(model)  # type: ignore[arg-type]
    try:
        prompt = model.tokenize("hello", add_special=True, parse_special=False)
        _, a = generate(batch, prompt, 8)
        again, b = generate(batch, prompt, 8)
        assert again.evaluated == 1  # the last prompt token is evaluated for its logits
        assert a == b
    finally:
        batch.close()
        model.close()


def test_truncated_file_names_the_damage(tmp_path: Path, tiny_model: Path) -> None:
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(tiny_model.read_bytes()[:-50_000])
    with pytest.raises(InvalidModelError, match="truncated or corrupted") as e:
        load(LoadOptions(cut, n_threads=1))
    assert "not within the file bounds" in e.value.message


def test_header_cut_inside_metadata(tmp_path: Path, tiny_model: Path) -> None:
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(tiny_model.read_bytes()[:2000])
    with pytest.raises(InvalidModelError, match="truncated or corrupted"):
        load(LoadOptions(cut, n_threads=1))


def _unknown_architecture(path: Path) -> Path:
    """A well-formed GGUF of an architecture llama.cpp does not know."""
    import gguf

    w = gguf.GGUFWriter(str(path), "no-such-arch")
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_unsupported_architecture_is_a_load_error(tmp_path: Path) -> None:
    path = _unknown_architecture(tmp_path / "weird.gguf")
    with pytest.raises(ModelLoadError, match="no-such-arch"):
        load(LoadOptions(path, n_threads=1))


def _reference_chain(
    sampling: SamplingParams,
    history: list[int],
    *,
    n_vocab: int,
    n_ctx: int,
    vocab: object = None,
    grammar: object = None,
    specials: object = (),
) -> object:
    """The textbook order: penalties over the whole vocabulary, then the usual cuts."""
    import llama_cpp as lc

    from localrun.backend.llamacpp.sampler import Chain

    chain = lc.llama_sampler_chain_init(lc.llama_sampler_chain_default_params())
    penalties = lc.llama_sampler_init_penalties(
        n_vocab, sampling.repeat_last_n, sampling.repeat_penalty, 0.0, 0.0
    )
    lc.llama_sampler_chain_add(chain, penalties)
    lc.llama_sampler_chain_add(chain, lc.llama_sampler_init_top_k(sampling.top_k))
    lc.llama_sampler_chain_add(chain, lc.llama_sampler_init_top_p(sampling.top_p, 1))
    lc.llama_sampler_chain_add(chain, lc.llama_sampler_init_temp(sampling.temperature))
    lc.llama_sampler_chain_add(chain, lc.llama_sampler_init_dist(sampling.seed))
    for token in history[-sampling.repeat_last_n :]:
        lc.llama_sampler_accept(chain, token)
    return Chain(chain, first_cut=0)  # 0: llama_sampler_sample over the whole vocabulary


def test_cheap_penalty_order_samples_exactly_as_the_textbook_order(
    tiny_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def tokens(seed: int) -> list[int]:
        model = load(LoadOptions(tiny_model, n_threads=1))
        batch = BatchEngine(model)  # type: ignore[arg-type]
        try:
            prompt = model.tokenize(
                "the sky is blue the sky", add_special=True, parse_special=False
            )
            sampling = SamplingParams(temperature=1.2, top_k=8, repeat_penalty=3.0, seed=seed)
            stream = batch.submit(Job(prompt, sampling, max_tokens=80, stop_at_eog=False))
            list(stream)
            return stream.tokens
        finally:
            batch.close()
            model.close()

    ours = {seed: tokens(seed) for seed in (1, 2, 3)}
    # The model builds each answer's chain with sampler.sampler_chain: swap in the textbook one.
    monkeypatch.setattr("localrun.backend.llamacpp.model.sampler_chain", _reference_chain)
    reference = {seed: tokens(seed) for seed in (1, 2, 3)}
    assert ours == reference
    assert len(set(ours[1])) > 10  # the penalty is doing something: no single-token loops


def test_concurrent_failed_loads_each_report_their_own_cause(
    tmp_path: Path, tiny_model: Path
) -> None:
    """llama.cpp's log is one callback for the process: its lines are kept per thread."""
    import threading

    weird = _unknown_architecture(tmp_path / "weird.gguf")
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(tiny_model.read_bytes()[:-50_000])
    seen: dict[str, list[str]] = {"weird": [], "cut": []}
    start = threading.Barrier(2)

    def keep_failing(name: str, path: Path) -> None:
        start.wait()
        for _ in range(15):
            try:
                load(LoadOptions(path, n_threads=1)).close()
            except (ModelLoadError, InvalidModelError) as e:
                seen[name].append(e.message)

    threads = [
        threading.Thread(target=keep_failing, args=("weird", weird)),
        threading.Thread(target=keep_failing, args=("cut", cut)),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert len(seen["weird"]) == len(seen["cut"]) == 15
    assert all("no-such-arch" in m for m in seen["weird"]), seen["weird"]
    assert all("truncated or corrupted" in m for m in seen["cut"]), seen["cut"]


def test_loading_starts_none_of_llamacpps_threads_in_the_loading_thread(tiny_model: Path) -> None:
    """llama.cpp's threads are OpenMP's: a parallel region in the loading thread (the warm-up
    decode) gave it a team of its own beside the engine thread's, and with more of OpenMP's
    threads than cores libgomp put every worker to sleep between steps: decode on 2 threads
    ran at 0.6 of llama-bench's. The warm-up runs on one thread, which starts none."""
    import threading

    from localrun.backend import LoadOptions, load

    def threads() -> set[str]:
        """The process's threads that Python did not start (numpy's import may run meanwhile)."""
        python = {str(t.native_id) for t in threading.enumerate()}
        return {p.name for p in Path("/proc/self/task").iterdir()} - python

    loaded: list[object] = []
    loader = threading.Thread(
        target=lambda: loaded.append(load(LoadOptions(tiny_model, n_ctx=256, n_threads=4)))
    )
    before = threads()
    loader.start()
    loader.join()
    try:
        started = threads() - before - {str(loader.native_id)}
        assert not started, f"loading left {len(started)} threads running"
    finally:
        loaded[0].close()  # type: ignore[attr-defined]
