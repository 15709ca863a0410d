"""The prompt cache: evaluated prefixes kept on disk and read back, in this process or another."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from localrun.backend import LoadOptions, SamplingParams, load
from localrun.engine import prompt_cache
from localrun.engine.batch import BatchEngine, Job
from localrun.engine.prompt_cache import PromptCache

GREEDY = SamplingParams(temperature=0.0, repeat_penalty=1.0)


def _answer(model_path: Path, prompt: list[int], keep: int, cache: bool) -> tuple[list[int], int]:
    """Greedy tokens after ``prompt`` on a fresh model and engine; tokens read from disk."""
    model = load(LoadOptions(model_path, n_ctx=1024, n_threads=1))
    store = PromptCache("test-model", model.layout()) if cache else None  # type: ignore[attr-defined]
    engine = BatchEngine(model, prompt_cache=store)  # type: ignore[arg-type]
    try:
        stream = engine.submit(Job(prompt, GREEDY, max_tokens=12, stop_at_eog=False, cache_at=keep))
        events = list(stream)
        return stream.tokens, events[-1].stats.prompt_from_disk  # type: ignore[union-attr]
    finally:
        engine.close()
        model.close()


def _prompt(model_path: Path, words: int, seed: int = 0) -> list[int]:
    model = load(LoadOptions(model_path, n_ctx=1024, n_threads=1))
    try:
        text = " ".join(f"w{(i * 7 + seed) % 97}" for i in range(words))
        return model.tokenize(text, add_special=True, parse_special=False)
    finally:
        model.close()


def test_warm_answers_equal_cold_ones(tiny_model: Path) -> None:
    for seed in (1, 2, 3):
        prompt = _prompt(tiny_model, 150, seed)
        keep = len(prompt) - 5
        cold, from_disk = _answer(tiny_model, prompt, keep, cache=False)
        assert from_disk == 0
        first, from_disk = _answer(tiny_model, prompt, keep, cache=True)  # writes the entry
        assert first == cold and from_disk == 0
        warm, from_disk = _answer(tiny_model, prompt, keep, cache=True)
        assert warm == cold and from_disk == keep
    assert len(prompt_cache.entries()) == 3


def test_a_longer_prompt_with_the_same_start_reads_the_prefix(tiny_model: Path) -> None:
    doc = _prompt(tiny_model, 150)
    _answer(tiny_model, [*doc, 5, 6, 7], len(doc), cache=True)
    other = [*doc, 9, 10, 11, 12]
    cold, _ = _answer(tiny_model, other, 0, cache=False)
    warm, from_disk = _answer(tiny_model, other, 0, cache=True)
    assert from_disk == len(doc) and warm == cold


def test_an_entry_whose_tokens_differ_is_never_used(tiny_model: Path) -> None:
    prompt = _prompt(tiny_model, 150)
    keep = len(prompt) - 5
    cold, _ = _answer(tiny_model, prompt, keep, cache=True)
    (entry,) = prompt_cache.entries()
    data = bytearray(entry.path.read_bytes())
    at = len(prompt_cache.MAGIC) + 4 + 4 * 10  # the 11th token id
    data[at] ^= 1
    entry.path.write_bytes(bytes(data))  # same name (the same digest), other tokens inside
    again, from_disk = _answer(tiny_model, prompt, keep, cache=True)
    assert from_disk == 0 and again == cold


def test_a_state_llama_cpp_refuses_is_a_miss(tiny_model: Path) -> None:
    prompt = _prompt(tiny_model, 150)
    keep = len(prompt) - 5
    cold, _ = _answer(tiny_model, prompt, keep, cache=True)
    (entry,) = prompt_cache.entries()
    data = entry.path.read_bytes()
    header = len(prompt_cache.MAGIC) + 4 + 4 * keep
    entry.path.write_bytes(data[: header + 100])  # the tokens right, the state cut short
    again, from_disk = _answer(tiny_model, prompt, keep, cache=True)
    assert from_disk == 0 and again == cold


def test_concurrent_writers_leave_one_good_entry(tiny_model: Path) -> None:
    prompt = _prompt(tiny_model, 150)
    keep = len(prompt) - 5
    model = load(LoadOptions(tiny_model, n_ctx=1024, n_threads=1))
    try:
        engine = BatchEngine(model)  # type: ignore[arg-type]
        list(engine.submit(Job(prompt[:keep], GREEDY, max_tokens=1, stop_at_eog=False)))
        engine.close()
        # The engine kept the slot's cells: what a save would copy.
        state = model.seq_state(0)  # type: ignore[attr-defined]
        caches = [PromptCache("test-model", model.layout()) for _ in range(6)]  # type: ignore[attr-defined]
    finally:
        model.close()
    threads = [
        threading.Thread(target=lambda c=c: (c.save(prompt[:keep], state), c.flush()))
        for c in caches
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    (entry,) = prompt_cache.entries()
    assert not list(entry.path.parent.glob(".*.tmp"))
    found = caches[0].lookup(prompt)
    assert found is not None and found[0] == keep


def test_the_bound_evicts_the_least_recently_used(
    tiny_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    prompts = [_prompt(tiny_model, 150, seed) for seed in (1, 2, 3)]
    for p in prompts:
        _answer(tiny_model, p, len(p) - 5, cache=True)
    sizes = [e.size for e in prompt_cache.entries()]
    assert len(sizes) == 3
    monkeypatch.setenv("LOCALRUN_PROMPT_CACHE_MAX", str(sum(sizes) - 1))
    _answer(tiny_model, prompts[0], len(prompts[0]) - 5, cache=True)  # used: now the newest
    p4 = _prompt(tiny_model, 150, 4)
    _answer(tiny_model, p4, len(p4) - 5, cache=True)  # a save: eviction runs
    kept = {e.n_tokens for e in prompt_cache.entries()}
    assert len(prompt_cache.entries()) <= 2
    assert len(prompts[0]) - 5 in kept and len(p4) - 5 in kept


def test_the_bound_comes_from_the_environment_then_the_config_file(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from localrun import config

    monkeypatch.delenv("LOCALRUN_PROMPT_CACHE_MAX", raising=False)
    config.reload()
    assert prompt_cache.max_bytes() == prompt_cache.DEFAULT_MAX_BYTES
    config.path().parent.mkdir(parents=True)
    config.path().write_text('[prompt_cache]\nmax = "500M"\n')
    config.reload()
    assert prompt_cache.max_bytes() == 500 * 1000**2
    monkeypatch.setenv("LOCALRUN_PROMPT_CACHE_MAX", "2G")  # the environment wins
    assert prompt_cache.max_bytes() == 2 * 1000**3
    monkeypatch.setenv("LOCALRUN_PROMPT_CACHE_MAX", "lots")
    with pytest.raises(Exception, match="LOCALRUN_PROMPT_CACHE_MAX"):
        prompt_cache.max_bytes()
    monkeypatch.delenv("LOCALRUN_PROMPT_CACHE_MAX")
    config.path().write_text("[prompt_cache\nmax = 1\n")
    config.reload()
    with pytest.raises(Exception, match="not valid TOML"):
        prompt_cache.max_bytes()
    config.path().unlink()
    config.reload()


LOCALRUN = str(Path(sys.executable).parent / "localrun")


@pytest.mark.e2e
def test_a_piped_document_is_read_back_by_the_next_process(tmp_path: Path) -> None:
    """The demo model (sliding-window layers: the state is put back whole or not at all)."""
    env = {**os.environ, "LOCALRUN_HOME": str(tmp_path / "home")}
    doc = " ".join(f"Item {i} is a {['red', 'blue', 'green'][i % 3]} stone." for i in range(60))

    def run(question: str, *flags: str) -> tuple[str, str]:
        proc = subprocess.run(
            [LOCALRUN, "run", "demo", question, "--verbose", "--temperature", "0",
             "--max-tokens", "16", *flags],
            input=doc, capture_output=True, text=True, env=env, timeout=300,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        return proc.stdout, proc.stderr

    plain, _ = run("Which items are red?", "--no-prompt-cache")
    cold, err = run("Which items are red?")
    assert cold == plain and "prompt cache" not in err
    warm, err = run("Which items are red?")
    assert warm == plain and "read back from the prompt cache" in err
    other, err = run("Which items are blue?")  # the same document, another question
    assert "read back from the prompt cache" in err
    assert other == run("Which items are blue?", "--no-prompt-cache")[0]
    listed = subprocess.run(
        [LOCALRUN, "cache", "prompts"], capture_output=True, text=True, env=env, timeout=60
    )
    assert "1 stored prompts" in listed.stderr
    subprocess.run([LOCALRUN, "cache", "prompts", "--clear"], env=env, check=True, timeout=60)
    assert not prompt_cache.entries(Path(env["LOCALRUN_HOME"]) / "cache" / "prompts" / "x")


def test_a_saved_chat_is_read_back_by_a_later_session(
    tiny_chat_model: Path, tmp_path: Path
) -> None:
    from localrun.engine import load_model
    from localrun.engine.answerer import LocalAnswerer
    from localrun.engine.chat import ChatSession, Options
    from localrun.engine.types import Finished, TextDelta

    long_message = " ".join(f"fact {i}: the {i}th stone is grey." for i in range(30))

    def session(cache: bool) -> tuple[object, ChatSession]:
        loaded = load_model(str(tiny_chat_model), n_threads=1, path=tiny_chat_model)
        loaded.prompt_cache = cache
        return loaded, ChatSession(LocalAnswerer(loaded), options=Options(GREEDY, max_tokens=8))

    def ask(chat: ChatSession, text: str) -> tuple[str, int]:
        parts, from_disk = [], -1
        for event in chat.ask(text):
            if isinstance(event, TextDelta):
                parts.append(event.text)
            elif isinstance(event, Finished):
                from_disk = event.stats.prompt_from_disk
        return "".join(parts), from_disk

    saved = tmp_path / "chat.json"
    loaded, chat = session(cache=True)
    ask(chat, long_message)
    chat.save(saved)  # keeps the conversation so far on disk
    loaded.close()  # type: ignore[attr-defined]

    loaded, chat = session(cache=True)
    chat.load(saved)
    chat.options = Options(GREEDY, max_tokens=8)
    warm, from_disk = ask(chat, "And the 3rd?")
    loaded.close()  # type: ignore[attr-defined]
    loaded, chat = session(cache=False)
    chat.load(saved)
    chat.options = Options(GREEDY, max_tokens=8)
    cold, none = ask(chat, "And the 3rd?")
    loaded.close()  # type: ignore[attr-defined]
    assert none == 0 and from_disk > 200 and warm == cold


@pytest.mark.slow
def test_a_restarted_server_starts_warm(tiny_chat_model: Path, tmp_path: Path) -> None:
    import json

    import ollama

    from tests.served import create_model, serving

    home = tmp_path / "home"
    system = " ".join(f"Rule {i}: always answer about stone number {i}." for i in range(40))
    create_model(home, "ruled", f'FROM {tiny_chat_model}\nSYSTEM """{system}"""\n')
    env = {**os.environ, "LOCALRUN_HOME": str(home)}

    def stored() -> list[dict[str, float]]:
        out = subprocess.run(
            [LOCALRUN, "cache", "prompts", "--json"], capture_output=True, text=True, env=env,
            timeout=60, check=True,
        )  # fmt: skip
        return json.loads(out.stdout)["entries"]  # type: ignore[no-any-return]

    options = {"temperature": 0, "num_predict": 6}
    with serving(home) as s:
        first = ollama.Client(host=s.url).chat(
            model="ruled", messages=[{"role": "user", "content": "Hi"}], options=options
        )
    (entry,) = stored()  # the system prompt, kept by the first server
    with serving(home) as s:
        again = ollama.Client(host=s.url).chat(
            model="ruled", messages=[{"role": "user", "content": "Hello"}], options=options
        )
    (read,) = stored()
    assert read["last_used"] > entry["last_used"]  # the restarted server read it back
    assert first.message.content is not None and again.message.content is not None


@pytest.mark.e2e
def test_a_model_without_a_sliding_window_reads_back_the_whole_system_prompt(cli: object) -> None:
    """SmolLM2-135M-Instruct (packaged): no sliding window, so a 1,000-token system prompt is read
    back whole in the next process, not just a window of it as on the demo model, and the
    answer is the one a cold run gives."""
    import json

    system = "You answer questions about this text. " + " ".join(
        f"Stone {i} is {['red', 'blue', 'green'][i % 3]}." for i in range(160)
    )

    def run(question: str, *flags: str) -> dict[str, object]:
        args = ["run", "smollm2:135m", "--system", system, question, "--format", "json",
                "--temperature", "0", "-n", "6", *flags]  # fmt: skip
        result = cli(args)  # type: ignore[operator]
        assert result.exit_code == 0, result.stderr
        return json.loads(result.stdout)  # type: ignore[no-any-return]

    cold = run("Which stones are red?", "--no-prompt-cache")
    run("Which stones are blue?")  # keeps the system prompt's state
    warm = run("Which stones are red?")
    stats = warm["stats"]
    assert isinstance(stats, dict) and stats["prompt_tokens"] > 1000
    # All but the question (and the template's turn around it) came from disk.
    assert stats["prompt_from_disk"] >= stats["prompt_tokens"] - 20
    assert warm["response"] == cold["response"]
