"""Thinking models' traces: told from real chat templates, switched, and split from answers.

The templates are llama.cpp's own test set (the ``real_templates`` fixture); the sample
outputs are written in the markup those templates render an earlier turn's reasoning back in.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from localrun.errors import UsageError
from localrun.prompt.template import Message, render
from localrun.prompt.thinking import (
    CONTENT,
    THINKING,
    Splitter,
    ThinkForm,
    can_switch_off,
    form_of,
    opens_in_prompt,
    strip_trace,
    switches,
)
from tests.templates import real_templates  # noqa: F401  (the fixture)

QWEN3 = "Qwen-Qwen3-0.6B.jinja"
QWEN35 = "Qwen3.5-4B.jinja"
QWQ = "Qwen-QwQ-32B.jinja"
R1_QWEN = "deepseek-ai-DeepSeek-R1-Distill-Qwen-32B.jinja"
R1_LLAMA = "deepseek-ai-DeepSeek-R1-Distill-Llama-8B.jinja"
R1_LLAMACPP = "llama-cpp-deepseek-r1.jinja"
V31 = "deepseek-ai-DeepSeek-V3.1.jinja"
SMOL = "HuggingFaceTB-SmolLM3-3B.jinja"
GRANITE = "ibm-granite-granite-3.3-2B-Instruct.jinja"
GPT_OSS = "openai-gpt-oss-120b.jinja"
MINISTRAL = "mistralai-Ministral-3-14B-Reasoning-2512.jinja"
GLM = "GLM-4.6.jinja"
GEMMA4 = "google-gemma-4-31B-it.jinja"
SEED = "ByteDance-Seed-OSS.jinja"
MINIMAX = "MiniMax-M3.jinja"
R7B = "CohereForAI-c4ai-command-r7b-12-2024-tool_use.jinja"

FORMS = {
    QWEN3: "think",
    QWEN35: "think",
    QWQ: "think",
    R1_QWEN: "think",
    R1_LLAMA: "think",
    R1_LLAMACPP: "think",
    V31: "think",
    SMOL: "think",
    GLM: "think",
    GRANITE: "granite",
    GPT_OSS: "harmony",
    MINISTRAL: "mistral",
    GEMMA4: "gemma4",
    SEED: "seed",
    MINIMAX: "minimax",
    R7B: "command",
    # Templates without thinking.
    "mistralai-Mistral-Nemo-Instruct-2407.jinja": None,
    "google-gemma-2-2b-it.jinja": None,
    "meta-llama-Llama-3.1-8B-Instruct.jinja": None,
    "Qwen-Qwen2.5-7B-Instruct.jinja": None,
}

HI = [Message("user", "hi")]


def _template(directory: Path, name: str) -> str:
    return (directory / name).read_text(encoding="utf-8")


def _form(directory: Path, name: str) -> ThinkForm:
    form = form_of(_template(directory, name))
    assert form is not None, name
    return form


def _prompt(directory: Path, name: str, think: bool | str | None = None) -> str:
    template = _template(directory, name)
    variables = switches(_form(directory, name), template, think)
    return render(template, HI, bos_token="<s>", eos_token="</s>", variables=variables)


@pytest.mark.parametrize("name", sorted(FORMS))
def test_form_of_real_templates(real_templates: Path, name: str) -> None:  # noqa: F811
    form = form_of(_template(real_templates, name))
    assert (form.name if form else None) == FORMS[name]


def test_form_of_nothing() -> None:
    assert form_of(None) is None
    assert form_of("") is None


# The prompt each family ends with, as the model's default renders it: whether the output
# starts inside a trace.
@pytest.mark.parametrize(
    ("name", "opens", "ending"),
    [
        (R1_LLAMA, True, "<｜Assistant｜><think>\n"),
        (R1_LLAMACPP, True, "<｜Assistant｜><think>\n"),
        # llama.cpp's copy closes the trace unless enable_thinking is given: the default
        # gives it, as llama.cpp does.
        (R1_QWEN, True, "<｜Assistant｜><think>\n"),
        (QWQ, True, "<|im_start|>assistant\n<think>\n"),
        (QWEN3, False, "<|im_start|>assistant\n"),
        (QWEN35, True, "<|im_start|>assistant\n<think>\n"),
        (SMOL, False, "<|im_start|>assistant\n"),
        (GLM, False, "<|assistant|>"),
        (V31, False, "<｜Assistant｜><think></think>"),  # V3.1 does not think by default
        (GRANITE, False, "<|start_of_role|>assistant<|end_of_role|>"),
        (GPT_OSS, False, "<|start|>assistant"),
        (MINISTRAL, False, "[INST]hi[/INST]"),
        (GEMMA4, False, "<|turn>model\n<|channel>thought\n<channel|>"),
    ],
)
def test_opens_in_prompt_by_default(
    real_templates: Path,  # noqa: F811
    name: str,
    opens: bool,
    ending: str,
) -> None:
    prompt = _prompt(real_templates, name)
    assert prompt.endswith(ending)
    assert opens_in_prompt(_form(real_templates, name), prompt) is opens


@pytest.mark.parametrize(
    ("name", "think", "ending", "opens"),
    [
        (QWEN3, False, "<|im_start|>assistant\n<think>\n\n</think>\n\n", False),
        (QWEN3, True, "<|im_start|>assistant\n", False),
        (QWEN35, False, "<|im_start|>assistant\n<think>\n\n</think>\n\n", False),
        (QWQ, False, "<|im_start|>assistant\n<think>\n</think>", False),
        (R1_QWEN, False, "<｜Assistant｜><think>\n</think>", False),
        (SMOL, False, "<|im_start|>assistant\n<think>\n\n</think>\n", False),
        (GLM, False, "<|assistant|>\n<think></think>", False),
        (V31, True, "<｜Assistant｜><think>", True),
        (V31, False, "<｜Assistant｜><think></think>", False),
        (GEMMA4, True, "<|turn>model\n", False),
        (R7B, False, "<|START_THINKING|><|END_THINKING|>", False),
    ],
)
def test_switches_render(
    real_templates: Path,  # noqa: F811
    name: str,
    think: bool,
    ending: str,
    opens: bool,
) -> None:
    prompt = _prompt(real_templates, name, think)
    assert prompt.endswith(ending)
    assert opens_in_prompt(_form(real_templates, name), prompt) is opens


def test_switches_as_data(real_templates: Path) -> None:  # noqa: F811
    def sw(name: str, think: bool | str | None) -> dict[str, object]:
        return switches(_form(real_templates, name), _template(real_templates, name), think)

    assert sw(QWEN3, None) == {}
    assert sw(QWEN3, False) == {"enable_thinking": False}
    assert sw(QWEN3, "high") == {"enable_thinking": True}  # no levels: an effort is on
    assert sw(SMOL, False) == {"enable_thinking": False}
    assert sw(GRANITE, True) == {"thinking": True}
    assert sw(GRANITE, False) == {"thinking": False}
    assert sw(GPT_OSS, None) == {}
    assert sw(GPT_OSS, True) == {"reasoning_effort": "medium"}  # the template's default
    assert sw(GPT_OSS, "low") == {"reasoning_effort": "low"}
    assert sw(GPT_OSS, False) == {"reasoning_effort": "low"}  # the least it thinks
    assert sw(SEED, False) == {"thinking_budget": 0}
    assert sw(MINIMAX, False) == {"thinking_mode": "disabled"}
    assert sw(R1_LLAMA, False) == {}
    assert sw(MINISTRAL, True) == {}
    for name in (QWEN3, SMOL, GLM, QWQ):
        assert "enable_thinking" in _template(real_templates, name)
    assert "{%- elif thinking %}" in _template(real_templates, GRANITE)
    assert "reasoning_effort" in _template(real_templates, GPT_OSS)


def test_switches_reach_the_prompt(real_templates: Path) -> None:  # noqa: F811
    assert "Reasoning: high" in _prompt(real_templates, GPT_OSS, "high")
    assert "Reasoning: medium" in _prompt(real_templates, GPT_OSS, True)
    assert "Reasoning: low" in _prompt(real_templates, GPT_OSS, False)
    granite_on = _prompt(real_templates, GRANITE, True)
    assert "between <think></think>" in granite_on
    assert "<think>" not in _prompt(real_templates, GRANITE, False)
    assert "/no_think" in _prompt(real_templates, SMOL, False)
    assert "/think" in _prompt(real_templates, SMOL, True)


def test_unknown_effort_is_refused(real_templates: Path) -> None:  # noqa: F811
    with pytest.raises(UsageError, match="'extreme' is not one of low, medium, high"):
        switches(_form(real_templates, GPT_OSS), _template(real_templates, GPT_OSS), "extreme")


@pytest.mark.parametrize(
    ("name", "can"),
    [
        (R1_LLAMA, False),
        (R1_LLAMACPP, False),
        (GPT_OSS, False),
        (MINISTRAL, False),
        (R1_QWEN, True),  # llama.cpp's copy has an enable_thinking switch
        (QWEN3, True),
        (SMOL, True),
        (GRANITE, True),
        (GLM, True),
        (V31, True),
        (SEED, True),
    ],
)
def test_can_switch_off(real_templates: Path, name: str, can: bool) -> None:  # noqa: F811
    assert can_switch_off(_form(real_templates, name), _template(real_templates, name)) is can


# Sample outputs: (template, in_trace, output, thinking, content).
SAMPLES = [
    (
        QWEN3,
        False,
        "<think>\nThe user says hi. Greet back.\n</think>\n\nHello! How can I help?",
        "The user says hi. Greet back.",
        "Hello! How can I help?",
    ),
    (QWEN3, False, "Hello! How can I help?", "", "Hello! How can I help?"),
    (
        QWEN3,
        False,
        "<think>\nThe user wants the weather: call the tool.\n</think>\n\n"
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>',
        "The user wants the weather: call the tool.",
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>',
    ),
    (QWEN3, False, "<think>\nLet me count: 1, 2, 3, 4", "Let me count: 1, 2, 3, 4", ""),
    (QWEN3, False, "<think>\n\n</think>\n\nHi.", "", "Hi."),  # an empty trace
    (R1_LLAMA, True, "Okay, the user says hi.\n</think>\n\nHi!", "Okay, the user says hi.", "Hi!"),
    (R1_LLAMA, True, "Still reasoning when the limit c", "Still reasoning when the limit c", ""),
    (GLM, False, "\n<think>The user greets.</think>\nHello!", "The user greets.", "Hello!"),
    (
        GRANITE,
        False,
        "<think>A greeting: answer briefly.</think><response>Hello!</response>",
        "A greeting: answer briefly.",
        "Hello!",
    ),
    (
        MINISTRAL,
        False,
        "[THINK]Greet.[/THINK]Hello! 1 < 2 and [x].",
        "Greet.",
        "Hello! 1 < 2 and [x].",
    ),
    (
        GPT_OSS,
        False,
        "<|channel|>analysis<|message|>User says hi. Respond.<|end|>"
        "<|start|>assistant<|channel|>final<|message|>Hello! <|x|> stays.<|return|>",
        "User says hi. Respond.",
        "Hello! <|x|> stays.",
    ),
    (
        GPT_OSS,
        False,
        "<|channel|>analysis<|message|>Need the weather.<|end|>"
        "<|start|>assistant<|channel|>commentary to=functions.get_weather <|constrain|>json"
        '<|message|>{"city":"Paris"}<|call|>',
        "Need the weather.",
        '{"city":"Paris"}',
    ),
    (
        GPT_OSS,
        False,
        "<|channel|>analysis<|message|>Call it.<|end|>"
        "<|start|>assistant to=functions.get_weather<|channel|>commentary json"
        '<|message|>{"city":"Paris"}<|call|>',
        "Call it.",
        '{"city":"Paris"}',
    ),
    (GPT_OSS, True, "Cut off in analy", "Cut off in analy", ""),
    (GEMMA4, False, "<|channel>thought\nA greeting.<channel|>Hello!", "A greeting.", "Hello!"),
    (SEED, False, "<seed:think>A greeting.</seed:think>Hello!", "A greeting.", "Hello!"),
    (MINIMAX, False, "<mm:think>A greeting.</mm:think>\nHello!", "A greeting.", "Hello!"),
    (
        R7B,
        False,
        "<|START_THINKING|>Answer directly.<|END_THINKING|>"
        "<|START_RESPONSE|>Hello!<|END_RESPONSE|>",
        "Answer directly.",
        "Hello!",
    ),
]

MARKERS = ("<think>", "</think>", "[THINK]", "[/THINK]", "<|channel|>", "<|message|>", "<|end|>",
           "<|start|>", "<|return|>", "<|call|>", "<|constrain|>", "<response>", "</response>",
           "<|channel>", "<channel|>", "<seed:think>", "</seed:think>", "<mm:think>",
           "<|START_THINKING|>", "<|END_THINKING|>", "<|START_RESPONSE|>")  # fmt: skip


def _split(form: ThinkForm, in_trace: bool, chunks: list[str]) -> list[tuple[str, str]]:
    splitter = Splitter(form, in_trace=in_trace)
    pieces: list[tuple[str, str]] = []
    for chunk in chunks:
        pieces += splitter.feed(chunk)
    pieces += splitter.close()
    for kind, text in pieces:
        assert kind in (THINKING, CONTENT)
        assert text
        assert not any(m in text for m in MARKERS), text
    merged: list[tuple[str, str]] = []
    for kind, text in pieces:
        if merged and merged[-1][0] == kind:
            merged[-1] = (kind, merged[-1][1] + text)
        else:
            merged.append((kind, text))
    return merged


def _chunkings(text: str, seed: int) -> list[list[str]]:
    rng = random.Random(seed)
    out = [[text], list(text)]
    for _ in range(20):
        cuts = sorted(rng.sample(range(1, len(text)), k=min(len(text) - 1, rng.randint(1, 8))))
        out.append([text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True)])
    return out


@pytest.mark.parametrize(("name", "in_trace", "output", "thinking", "content"), SAMPLES)
def test_split_streamed_as_whole(
    real_templates: Path,  # noqa: F811
    name: str,
    in_trace: bool,
    output: str,
    thinking: str,
    content: str,
) -> None:
    form = _form(real_templates, name)
    expected = [(k, t) for k, t in ((THINKING, thinking), (CONTENT, content)) if t]
    for chunks in _chunkings(output, seed=7):
        assert _split(form, in_trace, chunks) == expected, chunks


def test_sample_markup_is_the_templates_own(real_templates: Path) -> None:  # noqa: F811
    """The samples' markup is what the templates write an earlier turn's reasoning in."""
    # Qwen3 reads a turn after the last question back into its reasoning and its answer, and
    # writes them again: as the splitter splits the sample.
    template = _template(real_templates, QWEN3)
    _, _, said, thinking, content = SAMPLES[0]
    rendered = render(template, [*HI, Message("assistant", said)], add_generation_prompt=False)
    assert rendered.endswith(f"<think>\n{thinking}\n</think>\n\n{content}<|im_end|>\n")
    assert "'\\n<think>' + reasoning_content.strip() +  '</think>'" in _template(
        real_templates, GLM
    )
    assert "'[THINK]' + block['thinking'] + '[/THINK]'" in _template(real_templates, MINISTRAL)
    oss = _template(real_templates, GPT_OSS)
    for channel, field, end in (("analysis", "thinking", "end"), ("final", "content", "return")):
        said = (
            f'"<|start|>assistant<|channel|>{channel}<|message|>" + message.{field} + "<|{end}|>"'
        )
        assert said in oss
    assert "<|START_RESPONSE|>" in _template(real_templates, R7B)


def test_splitter_state() -> None:
    form = form_of("{{ '</think>' }}")
    assert form is not None
    splitter = Splitter(form)
    assert not splitter.in_trace and not splitter.trace_closed
    assert splitter.feed("<think>Hm") == [(THINKING, "Hm")]
    assert splitter.in_trace and not splitter.trace_closed
    assert splitter.feed(" ok\n</thi") == [(THINKING, " ok")]  # the partial marker is held
    assert splitter.in_trace
    assert splitter.feed("nk>") == []
    assert not splitter.in_trace and splitter.trace_closed
    assert splitter.feed("\n\n") == []  # the answer's leading newlines are dropped
    assert splitter.feed("Yes</") == [(CONTENT, "Yes")]
    assert splitter.close() == [(CONTENT, "</")]  # held text that never became a marker


def test_prompt_opened_trace_repeated_by_the_model() -> None:
    form = form_of("{{ '</think>' }}")
    assert form is not None
    splitter = Splitter(form, in_trace=True)
    pieces = splitter.feed("<think>\nWhy.\n</think>\n\nBecause.") + splitter.close()
    assert pieces == [(THINKING, "Why."), (CONTENT, "Because.")]


def test_a_trace_opens_only_before_the_answer() -> None:
    form = form_of("{{ '</think>' }}")
    assert form is not None
    said = "Wrap it as <think>notes</think> and go."
    for chunks in _chunkings(said, seed=3):
        splitter = Splitter(form)
        pieces = [p for c in chunks for p in splitter.feed(c)] + splitter.close()
        assert "".join(t for _, t in pieces) == "Wrap it as <think>notes and go."
        assert {k for k, _ in pieces} == {CONTENT}


def test_a_quoted_marker_opens_nothing(real_templates: Path) -> None:  # noqa: F811
    template = _template(real_templates, QWEN3)
    prompt = render(template, [Message("user", "what does <think> mean?")])
    assert not opens_in_prompt(_form(real_templates, QWEN3), prompt)


def test_strip_trace(real_templates: Path) -> None:  # noqa: F811
    think = _form(real_templates, QWEN3)
    said = "<think>\nGreet back.\n</think>\n\nHello!"
    assert strip_trace(think, said) == "Hello!"
    assert strip_trace(think, "Hello!") == "Hello!"
    assert strip_trace(think, "<think>cut off") == ""
    assert strip_trace(_form(real_templates, GPT_OSS), SAMPLES[10][2]) == "Hello! <|x|> stays."
    # As Qwen3's own template reads an old turn back: the answer after the trace.
    template = _template(real_templates, QWEN3)
    history = [Message("user", "hi"), Message("assistant", said), Message("user", "again")]
    rendered = render(template, history)
    assert f"<|im_start|>assistant\n{strip_trace(think, said)}<|im_end|>" in rendered
