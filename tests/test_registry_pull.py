"""Pulling from an Ollama-style registry (the stand-in in tests/registry.py), knowing which
pulled models are outdated (there and on the test Hub), and ``pull --all``."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from localrun.errors import (
    CorruptDownloadError,
    InsufficientSpaceError,
    ModelNotFoundError,
    NetworkError,
    RegistryError,
    UsageError,
)
from localrun.hub import registry_names, store
from localrun.models import fromregistry, recipes, updates
from localrun.models.resolve import resolve
from tests.hub import FakeHub, fake_gguf
from tests.proc import wait_for
from tests.pulling import localrun_cmd
from tests.registry import FakeRegistry, digest_of

MiB = 1 << 20

GO_CHATML = (
    "{{ if .System }}<|im_start|>system\n{{ .System }}<|im_end|>\n{{ end }}"
    "{{ range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}"
    "<|im_start|>assistant\n"
)
SYSTEM = "You answer in one word, and the word is always the same one, whatever is asked."


@pytest.fixture
def registry(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeRegistry]:
    r = FakeRegistry()
    monkeypatch.setenv("LOCALRUN_REGISTRY", r.url)
    yield r
    r.close()


@pytest.fixture
def chat_bytes(tiny_chat_model: Path) -> bytes:
    return tiny_chat_model.read_bytes()


def publish_chat(r: FakeRegistry, name: str, model: bytes, **extra: Any) -> str:
    layers: dict[str, bytes | str] = {
        "model": model,
        "template": GO_CHATML,
        "system": SYSTEM,
        "params": json.dumps({"stop": ["<|im_end|>", "<|im_start|>"], "temperature": 0.2,
                              "num_ctx": 512, "top_k": 20, "no_such_option": 1}),
        "license": "Tiny Licence 1.0",
        "messages": json.dumps([{"role": "user", "content": "hello"},
                                {"role": "assistant", "content": "hi"}]),
    }  # fmt: skip
    layers.update(extra)
    return r.publish(name, layers)


# -- names ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "full"),
    [
        ("llama3.2", "registry.ollama.ai/library/llama3.2:latest"),
        ("llama3.2:3b", "registry.ollama.ai/library/llama3.2:3b"),
        ("me/mine:q4", "registry.ollama.ai/me/mine:q4"),
        ("ollama.com/library/qwen3:4b", "ollama.com/library/qwen3:4b"),
        ("https://ollama.com/library/qwen3", "ollama.com/library/qwen3:latest"),
    ],
)
def test_names_take_ollamas_defaults(text: str, full: str) -> None:
    assert registry_names.parse_name(text).full == full


def test_bad_names_are_refused() -> None:
    for text in ("a/b/c/d", "bad name", "ollama.com//x", "x:bad tag"):
        with pytest.raises(UsageError):
            registry_names.parse_name(text)


def test_the_default_host_and_ollama_com_go_to_localrun_registry(
    registry: FakeRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert registry_names.parse_name("ollama.com/library/x").base_url == registry.url
    assert registry_names.parse_name("x").base_url == registry.url
    assert registry_names.parse_name("example.org/ns/x").base_url == "https://example.org"
    monkeypatch.delenv("LOCALRUN_REGISTRY")
    assert registry_names.parse_name("x").base_url == "https://registry.ollama.ai"


def test_which_names_go_to_the_registry(registry: FakeRegistry) -> None:
    assert updates.registry_target("ollama.com/library/llama3.2:3b") == (
        "ollama.com/library/llama3.2:3b", "ollama.com/library/llama3.2:3b")  # fmt: skip
    assert updates.registry_target("llama3.2:3b") is None  # the library's recipe
    assert updates.registry_target("llama3.2") is None  # its alias
    assert updates.registry_target("hf.co/org/m") is None
    assert updates.registry_target("./model.gguf") is None
    assert updates.registry_target("granite9:2b") == ("granite9:2b", "granite9:2b")


# -- pulling --------------------------------------------------------------------------------


def test_pull_by_name_makes_a_created_model_of_the_layers(
    registry: FakeRegistry, chat_bytes: bytes, cli: Any
) -> None:
    digest = publish_chat(registry, "library/tiny:1b", chat_bytes)
    result = cli(["pull", "ollama.com/library/tiny:1b"])
    assert result.exit_code == 0, result.stderr
    assert "every layer's sha256 verified" in result.stderr
    recipe = recipes.find("ollama.com/library/tiny:1b")
    assert recipe is not None and recipe.origin is not None
    assert recipe.origin["digest"] == digest
    assert recipe.origin["name"] == "ollama.com/library/tiny:1b"
    mf = recipe.modelfile
    assert mf.template == GO_CHATML and mf.system == SYSTEM
    assert mf.stop == ["<|im_end|>", "<|im_start|>"]
    assert mf.parameters == {"temperature": 0.2, "num_ctx": 512, "top_k": 20}
    assert "parameter 'no_such_option' is not one localrun knows: left out" in result.stderr
    assert mf.license == ["Tiny Licence 1.0"] and mf.messages == [("user", "hello"),
                                                                  ("assistant", "hi")]  # fmt: skip
    resolved = resolve("ollama.com/library/tiny:1b")
    assert resolved.path.read_bytes() == chat_bytes
    assert "<|im_start|>system" in (resolved.settings.template or "")  # translated to Jinja
    assert store.upload_path(digest_of(chat_bytes)).is_file()
    assert list(store.partial_dir().glob("*.part")) == []


def test_a_bare_name_not_in_the_library_comes_from_the_registry(
    registry: FakeRegistry, chat_bytes: bytes, cli: Any
) -> None:
    publish_chat(registry, "library/tiny:1b", chat_bytes)
    assert cli(["pull", "tiny:1b"]).exit_code == 0
    assert resolve("tiny:1b").path.read_bytes() == chat_bytes
    again = cli(["pull", "tiny:1b", "--json"])
    assert again.exit_code == 0 and json.loads(again.stdout)["up_to_date"] is True
    cdn = [r for r in registry.requests if r.path.startswith("/cdn/")]
    assert len(cdn) == 6  # each layer once: the second pull read the manifest alone


def test_created_model_runs_with_the_manifests_template(
    registry: FakeRegistry, chat_bytes: bytes, tiny_chat_model: Path, cli: Any
) -> None:
    publish_chat(registry, "library/tiny:1b", chat_bytes)
    assert cli(["pull", "tiny:1b"]).exit_code == 0
    result = cli(["run", "tiny:1b", "-n", "4", "--format", "json", "hi"])
    assert result.exit_code == 0, result.stderr
    stats = json.loads(result.stdout)["stats"]
    assert stats["completion_tokens"] == 4
    plain = cli(["run", str(tiny_chat_model), "-n", "1", "--format", "json", "hi"])
    # The manifest's system prompt and messages are in the prompt its template rendered.
    assert stats["prompt_tokens"] > json.loads(plain.stdout)["stats"]["prompt_tokens"] + 20


def test_a_layer_that_does_not_match_its_digest_leaves_nothing(
    registry: FakeRegistry, chat_bytes: bytes, cli: Any
) -> None:
    publish_chat(registry, "library/tiny:1b", chat_bytes)
    registry.faults.wrong_bytes = digest_of(chat_bytes)
    with pytest.raises(CorruptDownloadError, match="does not match its digest"):
        fromregistry.pull("tiny:1b")
    assert recipes.find("tiny:1b") is None
    assert not store.upload_path(digest_of(chat_bytes)).exists()
    assert not (store.partial_dir() / f"sha256-{digest_of(chat_bytes)[7:]}.part").exists()
    result = cli(["pull", "tiny:1b"])
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error")]
    assert result.exit_code == 1 and len(errors) == 1 and "Hint: pull again" in errors[0]
    registry.faults.wrong_bytes = None
    assert fromregistry.pull("tiny:1b").recipe.name == "tiny:1b"


@pytest.mark.parametrize(
    ("status", "error", "needle"),
    [
        (401, RegistryError, "refused access"),
        (500, RegistryError, "HTTP 500"),
        (404, ModelNotFoundError, "neither in localrun's library nor on the registry"),
    ],
)
def test_registry_refusals_are_one_line(
    registry: FakeRegistry, cli: Any, status: int, error: type, needle: str
) -> None:
    registry.faults.status = status
    with pytest.raises(error, match=needle):
        fromregistry.pull("ollama.com/library/tiny:1b")
    result = cli(["pull", "ollama.com/library/tiny:1b"])
    assert result.exit_code == 1
    assert result.stderr.count("\n") == 1 and needle in result.stderr and "Hint:" in result.stderr


def test_a_name_in_neither_says_so_with_the_names_close_to_it(
    registry: FakeRegistry, cli: Any
) -> None:
    result = cli(["pull", "llama3.3"])  # not in the library, and not in this registry
    assert result.exit_code == 1
    assert "neither in localrun's library nor on the registry" in result.stderr
    assert "did you mean llama3.2:3b" in result.stderr


def test_an_unreachable_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOCALRUN_REGISTRY", "http://127.0.0.1:9")
    with pytest.raises(NetworkError, match=r"cannot reach the registry at http://127\.0\.0\.1:9"):
        fromregistry.pull("ollama.com/library/tiny:1b")


def test_run_pulls_a_registry_name_first(
    registry: FakeRegistry, chat_bytes: bytes, cli: Any
) -> None:
    publish_chat(registry, "library/tiny:1b", chat_bytes)
    result = cli(["run", "ollama.com/library/tiny:1b", "-n", "2", "hi"])
    assert result.exit_code == 0, result.stderr
    assert recipes.find("ollama.com/library/tiny:1b") is not None


@pytest.mark.slow
def test_killed_registry_pull_resumes(
    registry: FakeRegistry, localrun_home: Path, hub: FakeHub
) -> None:
    data = fake_gguf(24 * MiB, seed=3)
    registry.publish("library/big:1", {"model": data, "template": GO_CHATML})
    registry.faults.stall_after = 21 * MiB
    part = store.partial_dir() / f"sha256-{digest_of(data)[7:]}.part"
    proc = localrun_cmd(localrun_home, hub, "pull", "ollama.com/library/big:1")
    try:
        assert registry.stalled.wait(60)
        wait_for(lambda: part.exists() and part.stat().st_size >= 21 * MiB)
    finally:
        proc.kill()
        proc.wait()
    registry.faults.stall_after = None
    result = fromregistry.pull("ollama.com/library/big:1")
    assert result.resumed_bytes == 21 * MiB
    assert registry.gets(digest_of(data))[-1].headers["Range"] == f"bytes={21 * MiB}-"
    recipe = recipes.find("ollama.com/library/big:1")
    assert recipe is not None and Path(recipe.modelfile.from_).read_bytes() == data


# -- where models came from, and whether they are outdated ------------------------------------


def test_outdated_after_the_registry_publishes_and_pull_all(
    registry: FakeRegistry, chat_bytes: bytes, tiny_bytes: bytes, cli: Any
) -> None:
    first = publish_chat(registry, "library/tiny:1b", chat_bytes)
    assert cli(["pull", "tiny:1b"]).exit_code == 0
    listed = cli(["list", "--outdated"])
    assert listed.exit_code == 0 and "all 1 pulled models are up to date" in listed.stderr
    newer = publish_chat(registry, "library/tiny:1b", tiny_bytes)
    before = len(registry.requests)
    listed = cli(["list", "--outdated"])
    assert listed.exit_code == 0, listed.stderr
    assert "tiny:1b" in listed.stdout and newer[:19] in listed.stdout
    assert first[:19] in listed.stdout
    assert all(not r.path.startswith("/cdn/") for r in registry.requests[before:])  # no download
    data = json.loads(cli(["list", "--outdated", "--json"]).stdout)
    assert data[0]["outdated"] is True and data[0]["latest"] == newer
    done = cli(["pull", "--all"])
    assert done.exit_code == 0 and "tiny:1b: updated" in done.stderr
    assert resolve("tiny:1b").path.read_bytes() == tiny_bytes
    assert not store.upload_path(digest_of(chat_bytes)).exists()  # the old weights went
    assert "up to date" in cli(["list", "--outdated"]).stderr
    assert "tiny:1b: up to date" in cli(["pull", "--all"]).stderr


def test_outdated_hub_model_and_pull_all(hub: FakeHub, cli: Any) -> None:
    old, new = fake_gguf(2000, seed=1), fake_gguf(2000, seed=2)
    first = hub.add_repo("org/m", {"m-Q4_K_M.gguf": old, "README.md": b"a"})
    assert cli(["pull", "hf.co/org/m"]).exit_code == 0
    hub.add_repo("org/m", {"m-Q4_K_M.gguf": old, "README.md": b"b"})  # a commit, same weights
    assert updates.check(updates.sources()[0]).outdated is False
    second = hub.add_repo("org/m", {"m-Q4_K_M.gguf": new, "README.md": b"b"})
    listed = cli(["list", "--outdated"])
    assert "hf.co/org/m" in listed.stdout and first[:12] in listed.stdout
    assert second[:12] in listed.stdout
    assert cli(["pull", "--all"]).exit_code == 0
    manifest = store.load("hf.co/org/m")
    assert manifest is not None and manifest.commit == second
    assert manifest.model_path.read_bytes() == new
    entry = json.loads(cli(["list", "--json"]).stdout)[0]
    assert entry["revision"] == second and entry["pulled_at"] > 0


def test_pull_all_updates_a_copy_without_listing_its_hub_name(hub: FakeHub, cli: Any) -> None:
    old, new = fake_gguf(2000, seed=1), fake_gguf(2000, seed=2)
    hub.add_repo("org/m", {"m-Q4_K_M.gguf": old})
    assert cli(["pull", "hf.co/org/m"]).exit_code == 0
    assert cli(["cp", "hf.co/org/m", "mine"]).exit_code == 0
    assert cli(["rm", "hf.co/org/m"]).exit_code == 0
    hub.add_repo("org/m", {"m-Q4_K_M.gguf": new})
    assert [c.outdated for c in map(updates.check, updates.sources())] == [True]
    assert cli(["pull", "--all"]).exit_code == 0
    assert [m.name for m in store.all_manifests()] == ["mine"]
    mine = store.load("mine")
    assert mine is not None and mine.model_path.read_bytes() == new


def test_a_source_that_cannot_be_asked_is_said(
    registry: FakeRegistry, chat_bytes: bytes, cli: Any
) -> None:
    publish_chat(registry, "library/tiny:1b", chat_bytes)
    assert cli(["pull", "tiny:1b"]).exit_code == 0
    registry.faults.status = 500
    listed = cli(["list", "--outdated"])
    assert listed.exit_code == 0 and "tiny:1b: cannot ask its source" in listed.stderr
    failed = cli(["pull", "--all"])
    assert failed.exit_code == 1 and "1 of 1 models could not be updated" in failed.stderr
    assert resolve("tiny:1b").path.read_bytes() == chat_bytes  # the old one still runs


def test_show_says_where_a_model_came_from(
    registry: FakeRegistry, hub: FakeHub, chat_bytes: bytes, cli: Any
) -> None:
    digest = publish_chat(registry, "library/tiny:1b", chat_bytes)
    commit = hub.add_repo("org/tiny", {"tiny-Q4_K_M.gguf": chat_bytes})
    assert cli(["pull", "tiny:1b", "hf.co/org/tiny"]).exit_code == 0
    shown = cli(["show", "tiny:1b"]).stdout
    assert digest in shown and "registry.ollama.ai/library/tiny:1b" in shown
    assert "pulled" in shown
    shown = cli(["show", "hf.co/org/tiny"]).stdout
    assert "hf.co/org/tiny at main" in shown and commit in shown and "tiny-Q4_K_M.gguf" in shown
    origin = json.loads(cli(["show", "tiny:1b", "--json"]).stdout)["origin"]
    assert origin["manifest"] == digest and origin["pulled_at"] > 0


def test_projector_adapter_and_draft_layers_become_the_models_files(
    registry: FakeRegistry, chat_bytes: bytes, tmp_path: Path, cli: Any
) -> None:
    from tests.tinygguf import write_tiny_lora, write_tiny_projector

    projector = write_tiny_projector(tmp_path / "mmproj.gguf").read_bytes()
    lora = write_tiny_lora(tmp_path / "lora.gguf").read_bytes()
    registry.publish("me/vis:1", {"model": chat_bytes, "projector": projector,
                                  "adapter": lora, "draft": chat_bytes})  # fmt: skip
    result = fromregistry.pull("me/vis:1")
    mf = result.recipe.modelfile
    assert mf.projector is not None and Path(mf.projector).read_bytes() == projector
    assert [Path(a).read_bytes() for a in mf.adapters] == [lora]
    assert Path(str(mf.parameters["draft"])).read_bytes() == chat_bytes
    assert resolve("me/vis:1").settings.projector == Path(mf.projector)
    assert result.downloaded_bytes == len(chat_bytes) + len(projector) + len(lora)  # one draft
    removed = cli(["rm", "me/vis:1"])
    assert removed.exit_code == 0, removed.stderr
    assert not store.upload_path(digest_of(projector)).exists()
    assert not store.upload_path(digest_of(chat_bytes)).exists()


def test_tensor_manifests_and_models_too_big_are_refused(
    registry: FakeRegistry, chat_bytes: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    registry.publish("library/mlx:1", {"tensor": b"x" * 100, "template": GO_CHATML})
    with pytest.raises(RegistryError, match="safetensors tensors"):
        fromregistry.pull("mlx:1")
    registry.publish("library/tiny:1b", {"model": chat_bytes})
    monkeypatch.setattr("localrun.system.physical_memory", lambda: 1000)
    with pytest.raises(InsufficientSpaceError, match="more than this machine's"):
        fromregistry.pull("tiny:1b")
    assert fromregistry.pull("tiny:1b", force=True).recipe.name == "tiny:1b"


def test_a_template_that_does_not_translate_is_left_out_with_a_note(
    registry: FakeRegistry, chat_bytes: bytes
) -> None:
    registry.publish("library/tiny:1b", {"model": chat_bytes,
                                         "template": "{{ .Prompt | unknownfunc }}"})  # fmt: skip
    notes: list[str] = []

    class Notes:
        def note(self, text: str) -> None:
            notes.append(text)

        def start_file(self, name: str, total: int, done: int) -> None:
            pass

        def advance(self, n: int) -> None:
            pass

        def end_file(self) -> None:
            pass

    assert fromregistry.pull("tiny:1b", reporter=Notes()).recipe.modelfile.template is None
    assert any("does not translate" in n for n in notes)


@pytest.mark.slow
def test_ollamas_client_pulls_a_registry_name_through_the_server(
    registry: FakeRegistry, chat_bytes: bytes, tmp_path: Path
) -> None:
    import ollama

    from tests.served import serving

    publish_chat(registry, "library/tiny:1b", chat_bytes)
    with serving(tmp_path / "home") as s:  # inherits LOCALRUN_REGISTRY: the stand-in
        client = ollama.Client(host=s.url)
        updates = list(client.pull("tiny:1b", stream=True))
        assert updates[0].status == "pulling manifest" and updates[-1].status == "success"
        assert "tiny:1b" in [m.model for m in client.list().models]
        answer = client.chat(model="tiny:1b", messages=[{"role": "user", "content": "hi"}],
                             options={"num_predict": 3})  # fmt: skip
        assert answer.eval_count == 3
        with pytest.raises(ollama.ResponseError) as e:
            client.pull("ollama.com/library/missing:1")
        assert e.value.status_code == 404 and "neither in localrun's library" in e.value.error


def test_a_manifest_naming_a_blob_the_registry_lacks(
    registry: FakeRegistry, chat_bytes: bytes
) -> None:
    publish_chat(registry, "library/tiny:1b", chat_bytes)
    del registry.blobs[digest_of(GO_CHATML.encode())]
    with pytest.raises(RegistryError, match="lacks a layer that the manifest"):
        fromregistry.pull("tiny:1b")
    assert recipes.find("tiny:1b") is None
    assert not store.upload_path(digest_of(chat_bytes)).exists()  # nothing placed


def test_layers_as_a_modelfile_keep_what_localrun_can_use() -> None:
    notes: list[str] = []
    params = json.dumps({"stop": [], "top_k": [], "num_ctx": 4096.5, "seed": 7, "think": True})
    texts = [
        ("params", params),
        (
            "messages",
            json.dumps([{"role": "tool", "content": "x"}, {"role": "user", "content": "q"}]),
        ),
    ]
    mf = fromregistry.modelfile_of([("model", "/m.gguf")], texts, "x:1", notes.append)
    assert mf.from_ == "/m.gguf" and mf.stop == [] and mf.messages == [("user", "q")]
    assert mf.parameters == {"seed": 7, "think": "true"}
    assert notes == ["parameter 'num_ctx' left out: num_ctx must be a whole number, not '4096.5'"]
    with pytest.raises(RegistryError, match="params layer of x:1 is not JSON"):
        fromregistry.modelfile_of([], [("params", "{")], "x:1", notes.append)
