"""Modelfiles: the parser, the Go-template translation, create/show, and the library."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from localrun import engine
from localrun.errors import GoTemplateError, ModelfileError
from localrun.hub.refs import parse_hub_ref, quant_of
from localrun.models import packaged, recipes
from localrun.models.gotemplate import is_go_template, to_jinja
from localrun.models.modelfile import Modelfile, parse
from localrun.models.resolve import resolve
from localrun.prompt.template import Message, render
from tests.tinygguf import CHATML_TEMPLATE

# Written the way Ollama's documentation writes them.
MARIO = """\
FROM llama3.2
# sets the temperature to 1 [higher is more creative, lower is more coherent]
PARAMETER temperature 1
# sets the context window size to 4096, this controls how many tokens the LLM can use as context
PARAMETER num_ctx 4096

# sets a custom system message to specify the behavior of the chat assistant
SYSTEM You are Mario from super mario bros, acting as an assistant.
"""

FULL = '''\
from ./model.gguf
Parameter Temperature 0.3
PARAMETER stop "<|im_end|>"
PARAMETER stop <|endoftext|>
PARAMETER seed 42
PARAMETER num_predict 128
PARAMETER num_gpu 0
PARAMETER num_thread 2
PARAMETER top_k 20
PARAMETER top_p 0.8
PARAMETER min_p 0.05
PARAMETER repeat_penalty 1.05
PARAMETER repeat_last_n 32
SYSTEM """You are terse.
Answer in one line."""
TEMPLATE """{{ if .System }}<|im_start|>system
{{ .System }}<|im_end|>
{{ end }}{{ if .Prompt }}<|im_start|>user
{{ .Prompt }}<|im_end|>
{{ end }}<|im_start|>assistant
{{ .Response }}<|im_end|>
"""
MESSAGE user Is Toronto in Canada?
MESSAGE assistant yes
ADAPTER ./lora.gguf
LICENSE """Apache 2.0
with notes"""
'''


def test_ollama_documentation_example() -> None:
    mf = parse(MARIO)
    assert mf.from_ == "llama3.2"
    assert mf.parameters == {"temperature": 1.0, "num_ctx": 4096}
    assert mf.system == "You are Mario from super mario bros, acting as an assistant."


def test_every_instruction_case_insensitive() -> None:
    mf = parse(FULL)
    assert mf.from_ == "./model.gguf"
    assert mf.parameters["temperature"] == 0.3 and mf.parameters["seed"] == 42
    assert mf.stop == ["<|im_end|>", "<|endoftext|>"]
    assert mf.system == "You are terse.\nAnswer in one line."
    assert mf.template is not None and mf.template.endswith("{{ .Response }}<|im_end|>\n")
    assert mf.messages == [("user", "Is Toronto in Canada?"), ("assistant", "yes")]
    assert mf.adapters == ["./lora.gguf"]
    assert mf.license == ["Apache 2.0\nwith notes"]


def test_written_back_it_parses_to_the_same() -> None:
    for text in (MARIO, FULL):
        mf = parse(text)
        assert parse(mf.to_text()) == mf
    tricky = Modelfile(from_="x", system=' leading space and "quotes"', stop=["#", 'a"b'])
    assert parse(tricky.to_text()) == tricky


def test_speculative_parameters_round_trip() -> None:
    mf = parse("FROM x\nPARAMETER speculative lookup\nPARAMETER draft small:1b\n")
    assert mf.parameters == {"speculative": "lookup", "draft": "small:1b"}
    assert parse(mf.to_text()) == mf


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("PARAMETER temperature 1\n", "has no FROM"),
        ("FROM x\nFROB y\n", "line 2: unknown instruction 'FROB'"),
        ("FROM x\nPARAMETER warmth 3\n", "line 2: unknown parameter 'warmth'"),
        ("FROM x\nPARAMETER top_k many\n", "line 2: top_k must be a whole number, not 'many'"),
        ("FROM x\nPARAMETER top_p 2\n", "line 2: top_p must be between 0 and 1"),
        ("FROM x\nMESSAGE robot hi\n", "line 2: unknown MESSAGE role 'robot'"),
        ('FROM x\n\nSYSTEM """never\nclosed\n', 'line 3: the """ opened here is never closed'),
        ('FROM x\nSYSTEM "open\n', "line 2: an unterminated quoted value"),
        ("FROM\n", "line 1: FROM needs a model"),
        (
            "FROM x\nPARAMETER speculative often\n",
            "line 2: speculative must be one of lookup, draft, off, not 'often'",
        ),
    ],
)
def test_errors_name_the_line(text: str, message: str) -> None:
    with pytest.raises(ModelfileError) as e:
        parse(text, "Modelfile")
    assert message in e.value.message
    assert e.value.hint


# -- Go templates --------------------------------------------------------------------

CONVERSATION = [
    Message("system", "SYS"),
    Message("user", "Q1"),
    Message("assistant", "A1"),
    Message("user", "Q2"),
]

CHATML_GO = parse(FULL).template or ""

LLAMA3_GO = """\
{{- if .System }}<|start_header_id|>system<|end_header_id|>

{{ .System }}<|eot_id|>
{{- end }}
{{- range $i, $_ := .Messages }}
{{- $last := eq (len (slice $.Messages $i)) 1 }}
{{- if eq .Role "user" }}<|start_header_id|>user<|end_header_id|>

{{ .Content }}<|eot_id|>
{{- if $last }}<|start_header_id|>assistant<|end_header_id|>

{{ end }}
{{- else if eq .Role "assistant" }}<|start_header_id|>assistant<|end_header_id|>

{{ .Content }}{{ if not $last }}<|eot_id|>{{ end }}
{{- end }}
{{- end }}"""

# (Jinja drops the last newline of a template: the third one here.)
LLAMA3_JINJA = """\
{%- for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>

{{ m['content'] }}<|eot_id|>{% endfor %}<|start_header_id|>assistant<|end_header_id|>


"""


def test_chatml_go_template_matches_the_jinja_one() -> None:
    assert is_go_template(CHATML_GO) and not is_go_template(CHATML_TEMPLATE)
    assert render(to_jinja(CHATML_GO), CONVERSATION) == render(CHATML_TEMPLATE, CONVERSATION)


def test_llama3_style_range_template_matches_jinja() -> None:
    assert render(to_jinja(LLAMA3_GO), CONVERSATION) == render(LLAMA3_JINJA, CONVERSATION)


def test_whitespace_follows_go_rules() -> None:
    template = '{{ range .Messages }}{{ if eq .Role "user" }}\nU:{{ .Content }}\n{{ end }}{{ end }}'
    assert render(to_jinja(template), [Message("user", "hi")]) == "\nU:hi\n"
    assert render(to_jinja("{{- .Prompt -}}\n\n  X"), [Message("user", "hi")]) == "hiX"
    assert (
        render(to_jinja("{{ range .Messages }}{{ .Content }}{{ end }}\n"), [Message("user", "a")])
        == "a\n"
    )


@pytest.mark.parametrize(
    ("template", "unsupported"),
    [
        ("{{ with .System }}{{ . }}{{ end }}", "'with'"),
        ('{{ template "x" }}', "'template'"),
        ("{{ .Suffix }}", "'.Suffix'"),
        ("{{ range .Tools }}{{ end }}", "other than .Messages"),
        ("{{ index .Messages 0 }}", "'index'"),
        ("{{ if .System }}unclosed", "without its 'end'"),
    ],
)
def test_unsupported_forms_are_refused_by_name(template: str, unsupported: str) -> None:
    with pytest.raises(GoTemplateError) as e:
        to_jinja(template)
    assert unsupported in e.value.message


# -- create, show, run ---------------------------------------------------------------


@pytest.fixture
def modelfile_dir(tmp_path: Path, tiny_model: Path) -> Path:
    (tmp_path / "model.gguf").write_bytes(tiny_model.read_bytes())
    (tmp_path / "Modelfile").write_text(FULL.replace("ADAPTER ./lora.gguf\n", ""))
    return tmp_path


def test_create_show_round_trip(cli: Any, modelfile_dir: Path) -> None:
    result = cli(["create", "terse", "-f", str(modelfile_dir / "Modelfile")])
    assert result.exit_code == 0, result.stderr
    shown = cli(["show", "terse", "--modelfile"]).stdout
    assert shown.startswith(f"FROM {modelfile_dir / 'model.gguf'}\n")  # made absolute
    (modelfile_dir / "again").write_text(shown)
    assert cli(["create", "terse2", "-f", str(modelfile_dir / "again")]).exit_code == 0
    again = cli(["show", "terse2", "--modelfile"]).stdout
    assert again == shown
    assert cli(["show", "terse", "--system"]).stdout == "You are terse.\nAnswer in one line.\n"
    assert "temperature      0.3" in cli(["show", "terse", "--parameters"]).stdout
    assert cli(["show", "terse", "--license"]).stdout == "Apache 2.0\nwith notes\n"
    assert cli(["show", "terse", "--template"]).stdout.startswith("{{ if .System }}")
    listed = json.loads(cli(["list", "--json"]).stdout)
    assert {e["name"] for e in listed if e["source"] == "created"} == {"terse", "terse2"}
    assert cli(["rm", "terse2"]).stderr == "removed terse2 (its base model is kept)\n"


def test_created_model_runs_with_its_settings_and_flags_win(cli: Any, modelfile_dir: Path) -> None:
    assert cli(["create", "terse", "-f", str(modelfile_dir / "Modelfile")]).exit_code == 0
    resolved = resolve("terse")
    assert resolved.path == modelfile_dir / "model.gguf"
    opts = engine.run_options(resolved.settings, top_k=7)
    assert opts.sampling.temperature == 0.3 and opts.sampling.top_k == 7  # flag wins
    assert opts.sampling.seed == 42 and opts.max_tokens == 128 and opts.gpu_layers == 0
    assert opts.stop == ("<|im_end|>", "<|endoftext|>") and opts.threads == 2
    assert opts.history == (Message("user", "Is Toronto in Canada?"), Message("assistant", "yes"))
    result = cli(["run", "terse", "--format", "json", "--max-tokens", "3", "hi"])
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["mode"] == "chat"  # the Modelfile's TEMPLATE makes the tiny model a chat model
    assert data["stats"]["completion_tokens"] <= 3


def test_create_errors(cli: Any, tmp_path: Path) -> None:
    (tmp_path / "Modelfile").write_text("FROM ./missing.gguf\n")
    result = cli(["create", "x", "-f", str(tmp_path / "Modelfile")])
    assert result.exit_code == 1 and "no file at" in result.stderr
    bad = tmp_path / "bad"
    bad.write_text("FROM x\nPARAMETER top_p 3\n")
    result = cli(["create", "x", "-f", str(bad)])
    assert result.exit_code == 1 and "line 2: top_p must be between 0 and 1" in result.stderr
    assert cli(["create", "qwen2.5:0.5b", "-f", str(bad)]).exit_code == 2
    assert recipes.created() == []


# -- the library ---------------------------------------------------------------------


def test_library_recipes_parse_and_name_real_references() -> None:
    lib = recipes.library()
    assert len(lib) >= 13 and "demo" in lib
    for name, recipe in lib.items():
        assert recipe.description, name
        if name in packaged.names():  # comes in a Python package
            assert recipe.modelfile.from_ == name
            continue
        ref = parse_hub_ref(recipe.modelfile.from_)
        assert ref.quant or (ref.filename and quant_of(ref.filename)), f"{name} names no quant"
        assert ref.repo.lower().endswith("-gguf"), name
        assert "temperature" in recipe.modelfile.parameters, name
    for family in ("llama3.2", "qwen2.5", "qwen3", "gemma3", "phi4", "mistral", "smollm2"):
        assert any(name.startswith(family) for name in lib), family
    for family in ("deepseek-r1", "granite"):
        assert any(name.startswith(family) for name in lib), family


def test_library_json_and_short_names(cli: Any) -> None:
    entries = json.loads(cli(["library", "--json"]).stdout)
    assert all({"name", "from", "description"} <= set(e) for e in entries)
    from localrun.models.resolve import hub_ref_for

    assert hub_ref_for("qwen2.5:0.5b") == "hf.co/Qwen/Qwen2.5-0.5B-Instruct-GGUF:Q4_K_M"
    # Not pulled: described from its recipe, with the command that gets it.
    result = cli(["show", "qwen2.5:0.5b"])
    assert result.exit_code == 0, result.stderr
    assert result.stdout.startswith("Model qwen2.5:0.5b (in the library, not pulled)")
    assert "hf.co/Qwen/Qwen2.5-0.5B-Instruct-GGUF:Q4_K_M" in result.stdout
    assert "localrun pull qwen2.5:0.5b" in result.stdout
    facts = json.loads(cli(["show", "llama3.2", "--json"]).stdout)  # a family's default size
    assert facts["name"] == "llama3.2:3b" and facts["pulled"] is False


def test_adapter_is_applied_at_load(cli: Any, tmp_path: Path, tiny_model: Path) -> None:
    from tests.tinygguf import write_tiny_lora

    write_tiny_lora(tmp_path / "lora.gguf")
    (tmp_path / "Modelfile").write_text(f"FROM {tiny_model}\nADAPTER ./lora.gguf\n")
    assert cli(["create", "tuned", "-f", str(tmp_path / "Modelfile")]).exit_code == 0
    greedy = ["--temperature", "0", "--max-tokens", "12", "--format", "json", "hello"]
    tuned = json.loads(cli(["run", "tuned", *greedy]).stdout)["response"]
    base = json.loads(cli(["run", str(tiny_model), *greedy]).stdout)["response"]
    assert tuned != base
    (tmp_path / "Bad").write_text(f"FROM {tiny_model}\nADAPTER {tiny_model}\n")
    assert cli(["create", "broken", "-f", str(tmp_path / "Bad")]).exit_code == 0
    result = cli(["run", "broken", "--max-tokens", "1", "hi"])
    assert result.exit_code == 1 and "cannot apply the LoRA adapter" in result.stderr


def test_hub_from_is_pulled_on_create(cli: Any, tmp_path: Path, tiny_model: Path) -> None:
    from tests.hub import FakeHub

    with FakeHub() as hub, pytest.MonkeyPatch.context() as m:
        m.setenv("HF_ENDPOINT", hub.url)
        hub.add_repo("org/tiny-GGUF", {"tiny-Q4_K_M.gguf": tiny_model.read_bytes()})
        (tmp_path / "Modelfile").write_text("FROM hf.co/org/tiny-GGUF\nSYSTEM be brief\n")
        result = cli(["create", "brief", "-f", str(tmp_path / "Modelfile")])
        assert result.exit_code == 0, result.stderr
        listed = json.loads(cli(["list", "--json"]).stdout)
        names = [e["name"] for e in listed if e["source"] != "packaged"]
        assert names == ["brief", "hf.co/org/tiny-GGUF"]
        (tmp_path / "Nope").write_text("FROM hf.co/org/absent-GGUF\n")
        failed = cli(["create", "nope", "-f", str(tmp_path / "Nope")])
        assert failed.exit_code == 1 and "not found on the Hub" in failed.stderr
        assert [r.name for r in recipes.created()] == ["brief"]  # nothing half-made


def test_every_surface_reads_a_parameters_range_from_the_one_table() -> None:
    """top_k out of its range, said alike by a Modelfile, a flag, a --batch line, the Ollama
    options and the OpenAI fields (each under its own name for it)."""
    from localrun.engine.jobs import parse_line
    from localrun.errors import UsageError
    from localrun.models.parameters import BY_NAME
    from localrun.models.resolve import Settings
    from localrun.server import fields, openai

    said = "must be between 0 and 1000000, not -1"
    assert (BY_NAME["top_k"].low, BY_NAME["top_k"].high) == (0, 1_000_000)
    with pytest.raises(ModelfileError, match=f"line 2: top_k {said}"):
        parse("FROM x\nPARAMETER top_k -1\n")
    with pytest.raises(UsageError, match=f"--top-k {said}"):
        engine.run_options(Settings(), top_k=-1)
    defaults = engine.run_options(Settings())
    with pytest.raises(UsageError, match=f"line 1: top_k {said}"):
        parse_line('{"prompt": "x", "top_k": -1}', 1, defaults)
    with pytest.raises(UsageError, match=f"^top_k {said}"):
        fields.options({"top_k": -1})
    with pytest.raises(UsageError, match=f"^top_k {said}"):
        openai.completion_ask({"model": "m", "prompt": "x", "top_k": -1})


def test_what_is_fixed_at_load_is_refused_per_request_not_a_500() -> None:
    """``options.kv_type`` once reached the range check as a string: a 500."""
    from localrun.errors import UsageError
    from localrun.server import fields

    for name, value in (("kv_type", "q8_0"), ("flash_attn", "on")):
        with pytest.raises(UsageError, match=f"options.{name} cannot change per request"):
            fields.options({name: value})
    assert fields.think("max") == "high"  # Ollama's most
