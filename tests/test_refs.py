import pytest

from localrun.errors import NotGGUFError, QuantNotFoundError, UsageError
from localrun.hub.refs import (
    HubRef,
    choose,
    gguf_choices,
    is_hub_ref,
    parse_hub_ref,
    quant_of,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("hf.co/org/repo", HubRef("org/repo")),
        ("huggingface.co/org/repo:q4_k_m", HubRef("org/repo", quant="Q4_K_M")),
        ("hf://org/repo:IQ4_XS", HubRef("org/repo", quant="IQ4_XS")),
        ("https://huggingface.co/org/repo", HubRef("org/repo")),
        ("hf.co/org/repo/model-Q8_0.gguf", HubRef("org/repo", filename="model-Q8_0.gguf")),
        ("hf.co/org/repo/sub/dir/m.gguf", HubRef("org/repo", filename="sub/dir/m.gguf")),
        ("hf.co/org/repo:Q8_0@v1.0", HubRef("org/repo", quant="Q8_0", revision="v1.0")),
        ("hf.co/org/repo@abc123:Q8_0", HubRef("org/repo", quant="Q8_0", revision="abc123")),
        ("HF.CO/Org/Repo.v2-GGUF", HubRef("Org/Repo.v2-GGUF")),
    ],
)
def test_parse(text: str, expected: HubRef) -> None:
    assert parse_hub_ref(text) == expected


def test_canonical_name() -> None:
    assert parse_hub_ref("huggingface.co/o/r:q8_0@dev").name == "hf.co/o/r:Q8_0@dev"
    assert parse_hub_ref("hf://o/r/f.gguf").name == "hf.co/o/r/f.gguf"


@pytest.mark.parametrize(
    "text",
    [
        "hf.co/org",
        "hf.co/../etc",
        "hf.co/org/..",
        "hf.co/org/repo/../../../etc/passwd",
        "hf.co/org/repo/./x.gguf",
        "hf.co/org/repo@../../x",
        "hf.co/org/repo:Q4;rm",
        "hf.co/org/repo/x.gguf:Q4_K_M",
        "hf.co//etc/passwd",
    ],
)
def test_refuses_escapes_and_nonsense(text: str) -> None:
    with pytest.raises(UsageError):
        parse_hub_ref(text)


def test_is_hub_ref() -> None:
    assert is_hub_ref("hf.co/a/b") and is_hub_ref("hf://a/b") and is_hub_ref("HuggingFace.co/a/b")
    assert not is_hub_ref("demo") and not is_hub_ref("./model.gguf") and not is_hub_ref("a/b")


@pytest.mark.parametrize(
    ("name", "quant"),
    [
        ("Llama-3.2-1B-Instruct-Q4_K_M.gguf", "Q4_K_M"),
        ("qwen2.5-0.5b-instruct-q8_0.gguf", "Q8_0"),
        ("gemma-3-4b-it-UD-Q4_K_XL.gguf", "Q4_K_XL"),
        ("Phi-4-mini-instruct.IQ4_XS.gguf", "IQ4_XS"),
        ("model-f16.gguf", "F16"),
        ("model-BF16-00002-of-00003.gguf", "BF16"),
        ("sub/Mistral-7B-Instruct-v0.3.Q5_K_M.gguf", "Q5_K_M"),
        ("model.gguf", None),
    ],
)
def test_quant_of(name: str, quant: str | None) -> None:
    assert quant_of(name) == quant


REPO = [
    "README.md",
    "m-Q8_0.gguf",
    "m-Q4_K_M.gguf",
    "mmproj-m-f16.gguf",
    "big-F16-00001-of-00002.gguf",
    "big-F16-00002-of-00002.gguf",
    "broken-Q2_K-00001-of-00002.gguf",
]


def test_choices_group_complete_shard_sets_and_skip_projectors() -> None:
    files = [c.files for c in gguf_choices(REPO)]
    assert files == [
        ("big-F16-00001-of-00002.gguf", "big-F16-00002-of-00002.gguf"),
        ("m-Q4_K_M.gguf",),
        ("m-Q8_0.gguf",),
    ]


def test_default_is_q4_k_m() -> None:
    choice, note = choose(HubRef("o/r"), REPO)
    assert choice.files == ("m-Q4_K_M.gguf",) and note is None


def test_fallback_says_which() -> None:
    choice, note = choose(HubRef("o/r"), ["m-Q8_0.gguf", "m-Q6_K.gguf", "m-F16.gguf"])
    assert choice.quant == "Q6_K"
    assert note == "o/r has no Q4_K_M; using Q6_K"


def test_quant_match_is_case_insensitive_and_shards_come_whole() -> None:
    choice, _ = choose(HubRef("o/r", quant="F16"), REPO)
    assert len(choice.files) == 2
    assert choose(HubRef("o/r", quant="Q8_0"), [n.lower() for n in REPO])[0].quant == "Q8_0"


def test_missing_quant_lists_the_available_ones() -> None:
    with pytest.raises(QuantNotFoundError) as e:
        choose(HubRef("o/r", quant="IQ2_XXS"), REPO)
    assert e.value.message == "o/r has no IQ2_XXS GGUF; it has Q4_K_M, Q8_0, F16"


def test_exact_file_and_its_errors() -> None:
    assert choose(HubRef("o/r", filename="m-Q8_0.gguf"), REPO)[0].files == ("m-Q8_0.gguf",)
    shard = choose(HubRef("o/r", filename="big-F16-00002-of-00002.gguf"), REPO)[0]
    assert len(shard.files) == 2
    with pytest.raises(NotGGUFError, match="not a GGUF"):
        choose(HubRef("o/r", filename="README.md"), REPO)
    with pytest.raises(QuantNotFoundError, match="has no file"):
        choose(HubRef("o/r", filename="nope.gguf"), REPO)


def test_repo_without_gguf() -> None:
    with pytest.raises(NotGGUFError, match="no GGUF model files"):
        choose(HubRef("o/r"), ["model.safetensors", "README.md"])
