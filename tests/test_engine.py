from pathlib import Path

import pytest

from localrun import engine
from localrun.backend import SamplingParams
from localrun.engine import Finished, LoadedModel, Request, Stats, TextDelta
from localrun.errors import ModelNotFoundError, PromptTooLongError
from localrun.models.resolve import resolve
from localrun.prompt.build import conversation_tokens
from tests.scripted import ScriptedModel
from tests.tinygguf import CHATML_TEMPLATE


def loaded(model: ScriptedModel) -> LoadedModel:
    return LoadedModel(name="scripted", path=Path("scripted.gguf"), model=model, load_s=0.5)


def answer(model: ScriptedModel, request: Request) -> tuple[str, Stats]:
    events = list(engine.generate(loaded(model), request))
    finished = events[-1]
    assert isinstance(finished, Finished)
    # Order: the prompt, the first token, the text, the statistics.
    assert isinstance(events[0], engine.PromptEvaluated)
    assert events[0].prompt_tokens == finished.stats.prompt_tokens
    assert isinstance(events[1], engine.FirstToken)
    assert events[1].ttft_s == finished.stats.ttft_s
    deltas = events[2:-1]
    assert all(isinstance(e, TextDelta) for e in deltas)
    counts = [e.tokens for e in deltas if isinstance(e, TextDelta)]
    assert counts == sorted(counts) and (
        not counts or counts[-1] == finished.stats.completion_tokens
    )
    return "".join(e.text for e in deltas if isinstance(e, TextDelta)), finished.stats


def test_streams_text_and_counts_tokens() -> None:
    text, stats = answer(ScriptedModel([b"Hello", b",", b" world"]), Request.of("hi"))
    assert text == "Hello, world"
    assert stats.completion_tokens == 3
    assert stats.finish_reason == "stop"
    assert stats.load_s == 0.5
    assert stats.prompt_tokens == stats.prompt_evaluated == 3  # BOS + "hi"
    assert stats.ttft_s > 0
    assert stats.total_s >= stats.load_s + stats.ttft_s


def test_multibyte_character_split_across_tokens() -> None:
    pieces = [
        b"caf",
        "é".encode()[:1],
        "é".encode()[1:],
        b" ",
        "日".encode()[:2],
        "日".encode()[2:],
    ]
    text, _ = answer(ScriptedModel(pieces), Request.of("x"))
    assert text == "café 日"


def test_invalid_bytes_become_replacement_characters() -> None:
    text, _ = answer(ScriptedModel([b"ok", b"\xff", b"!"]), Request.of("x"))
    assert text == "ok\ufffd!"


def test_max_tokens_ends_with_length() -> None:
    text, stats = answer(ScriptedModel([b"a", b"b", b"c", b"d"]), Request.of("x", max_tokens=2))
    assert text == "ab"
    assert stats.completion_tokens == 2
    assert stats.finish_reason == "length"


def test_context_full_ends_with_length() -> None:
    text, stats = answer(ScriptedModel([b"a", b"b"], end=False), Request.of("x"))
    assert text == "ab"
    assert stats.finish_reason == "length"


def test_stop_string_across_tokens_is_not_printed() -> None:
    model = ScriptedModel([b"one ", b"tw", b"o EN", b"D three"])
    text, stats = answer(model, Request.of("x", stop=("END",)))
    assert text == "one two "
    assert stats.finish_reason == "stop"


def test_held_back_prefix_of_a_stop_string_is_released() -> None:
    text, _ = answer(ScriptedModel([b"a E", b"N", b"d"]), Request.of("x", stop=("END",)))
    assert text == "a ENd"


def test_held_back_text_is_released_at_end_of_generation() -> None:
    text, _ = answer(ScriptedModel([b"x", b"EN"]), Request.of("x", stop=("END",)))
    assert text == "xEN"


def test_completion_mode_puts_system_before_prompt() -> None:
    model = ScriptedModel([b"."])
    answer(model, Request.of("question", system="sys"))
    assert bytes(t - 3 for t in model.prompts[0][1:]) == b"sys\n\nquestion"
    assert loaded(model).mode == engine.COMPLETION


def test_chat_mode_uses_the_template_without_double_bos() -> None:
    template = "{{ bos_token }}" + CHATML_TEMPLATE
    model = ScriptedModel([b"."], chat_template=template)
    answer(model, Request.of("hello", system="sys"))
    prompt = model.prompts[0]
    assert prompt[0] == 1 and prompt[1] != 1
    assert b"<|im_start|>user\nhello<|im_end|>" in bytes(t - 3 for t in prompt[1:])
    assert loaded(model).mode == engine.CHAT


def test_prompt_longer_than_context_suggests_ctx() -> None:
    model = ScriptedModel([b"."], n_ctx=256)
    with pytest.raises(PromptTooLongError) as e:
        answer(model, Request.of("x" * 300))
    assert "301 tokens" in e.value.message and "256" in e.value.message
    assert e.value.hint and "--ctx 1024" in e.value.hint


def test_prompt_longer_than_training_says_shorten() -> None:
    model = ScriptedModel([b"."], n_ctx=4096)
    with pytest.raises(PromptTooLongError) as e:
        answer(model, Request.of("x" * 9000))
    assert e.value.hint and "8192" in e.value.hint


def test_unknown_model_name() -> None:
    with pytest.raises(ModelNotFoundError, match="unknown model 'llama9'"):
        resolve("llama9")


# -- the real llama.cpp path, on a tiny generated model -------------------------------


def run_real(path: Path, request: Request, n_ctx: int | None = None) -> tuple[str, Stats]:
    model = engine.load_model(str(path), n_ctx=n_ctx, n_threads=2)
    try:
        events = list(engine.generate(model, request))
    finally:
        model.close()
    finished = events[-1]
    assert isinstance(finished, Finished)
    return "".join(e.text for e in events if isinstance(e, TextDelta)), finished.stats


def test_real_model_generates_with_honest_stats(tiny_model: Path) -> None:
    request = Request.of("the sky is", max_tokens=16, sampling=SamplingParams(seed=7))
    text, stats = run_real(tiny_model, request)
    assert stats.completion_tokens == 16
    assert stats.finish_reason == "length"
    assert stats.prompt_tokens == stats.prompt_evaluated > 1
    assert stats.load_s > 0 and stats.prefill_s > 0 and stats.ttft_s >= stats.prefill_s
    assert stats.decode_tokens_per_s > 0
    assert text


def test_real_model_same_seed_same_text(tiny_model: Path) -> None:
    request = Request.of("hello", max_tokens=24, sampling=SamplingParams(seed=11))
    first, _ = run_real(tiny_model, request)
    second, _ = run_real(tiny_model, request)
    other, _ = run_real(
        tiny_model, Request.of("hello", max_tokens=24, sampling=SamplingParams(seed=12))
    )
    assert first == second
    assert first != other


def test_real_chat_model_runs_in_chat_mode(tiny_chat_model: Path) -> None:
    model = engine.load_model(str(tiny_chat_model), n_threads=1)
    try:
        assert model.mode == engine.CHAT
        tokens = conversation_tokens(model.model, model.template, Request.of("hello").messages)
        # <|im_start|> is one special token (id 3), not text.
        assert tokens.count(3) == 2
    finally:
        model.close()


def test_real_context_is_rounded_and_enforced(tiny_model: Path) -> None:
    model = engine.load_model(str(tiny_model), n_ctx=64, n_threads=1)
    try:
        assert model.model.n_ctx == 256  # llama.cpp rounds up; we read what it made
        with pytest.raises(PromptTooLongError):
            list(engine.generate(model, Request.of("a b " * 200)))
    finally:
        model.close()


def test_real_generation_stops_when_context_is_full(tiny_model: Path) -> None:
    request = Request.of("hi", sampling=SamplingParams(seed=1, temperature=1.5))
    _, stats = run_real(tiny_model, request, n_ctx=256)
    assert stats.finish_reason == "length"
    # 256 tokens fill the KV cache; the token sampled from the last one needs no slot.
    assert stats.prompt_tokens + stats.completion_tokens == 257
