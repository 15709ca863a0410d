"""The chat session (engine side) with a scripted model: history, retry, context, files;
and the chat loop's commands, driven with a scripted read function."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from localrun.backend import SamplingParams
from localrun.cli.chat import ChatUI, is_chat_file
from localrun.engine import Finished, LoadedModel, Request, TextDelta
from localrun.engine.answerer import LocalAnswerer
from localrun.engine.chat import ChatSession, LoadSettings, Options, Trimmed
from localrun.errors import LocalrunError, PromptTooLongError, UsageError
from localrun.models import recipes
from localrun.models.modelfile import Modelfile
from localrun.models.resolve import resolve
from localrun.prompt.template import Message
from localrun.system import physical_cores
from tests.scripted import ScriptedModel
from tests.tinygguf import CHATML_TEMPLATE


def session(model: ScriptedModel, **kwargs: object) -> ChatSession:
    loaded = LoadedModel(name="m", path=Path("m.gguf"), model=model, load_s=0.1)
    return ChatSession(local(loaded, kwargs), **kwargs)  # type: ignore[arg-type]


def local(loaded: LoadedModel, kwargs: dict[str, object]) -> LocalAnswerer:
    """The model loaded here, with the load settings in ``kwargs`` (taken out of them)."""
    how = kwargs.pop("load", None)
    assert how is None or isinstance(how, LoadSettings)
    return LocalAnswerer(loaded, how)


def loaded_of(session: ChatSession) -> LoadedModel:
    assert isinstance(session.model, LocalAnswerer)
    return session.model.loaded


def text_of(events: object) -> str:
    return "".join(e.text for e in events if isinstance(e, TextDelta))  # type: ignore[attr-defined]


def chat_model(**kwargs: object) -> ScriptedModel:
    return ScriptedModel([b"Hi", b" there"], chat_template=CHATML_TEMPLATE, **kwargs)  # type: ignore[arg-type]


def test_turns_accumulate_and_render_through_the_template() -> None:
    model = chat_model()
    s = session(model, system="Be brief.")
    assert text_of(s.ask("first")) == "Hi there"
    assert text_of(s.ask("second")) == "Hi there"
    assert s.messages == [
        Message("user", "first"),
        Message("assistant", "Hi there"),
        Message("user", "second"),
        Message("assistant", "Hi there"),
    ]
    prompt = bytes(t - 3 for t in model.prompts[1][1:]).decode()
    assert prompt.startswith("<|im_start|>system\nBe brief.<|im_end|>")
    assert "<|im_start|>assistant\nHi there<|im_end|>\n<|im_start|>user\nsecond" in prompt
    assert s.last_stats is not None and s.last_stats.completion_tokens == 2


def test_completion_mode_continues_the_transcript() -> None:
    model = ScriptedModel([b" blue."])
    s = session(model)
    list(s.ask("The sky is"))
    list(s.ask("Grass is"))
    assert bytes(t - 3 for t in model.prompts[1][1:]) == b"The sky is blue.\n\nGrass is"


def test_retry_replaces_the_last_answer() -> None:
    s = session(chat_model())
    list(s.ask("q"))
    list(s.retry())
    assert [m.role for m in s.messages] == ["user", "assistant"]
    s.clear()
    with pytest.raises(UsageError, match="no message"):
        s.retry()


def test_interrupted_answer_is_kept() -> None:
    s = session(ScriptedModel([b"partial", b" more"] * 20, chat_template=CHATML_TEMPLATE))
    with pytest.raises(KeyboardInterrupt):
        for event in s.ask("q"):
            if isinstance(event, TextDelta) and event.text:
                raise KeyboardInterrupt  # Ctrl-C while the answer streams
    assert s.messages == [Message("user", "q"), Message("assistant", "partial")]
    # The engine freed the sequence: the chat goes on.
    assert isinstance(list(s.ask("again"))[-1], Finished)


def test_old_turns_are_dropped_when_the_context_fills() -> None:
    # Scripted tokens are one per byte: a 256-token context holds little.
    model = ScriptedModel([b"ok"], chat_template=CHATML_TEMPLATE, n_ctx=256)
    s = session(model, system="SYS")
    for i in range(3):
        list(s.ask(f"message {i} " + "x" * 40))
    events = list(s.ask("last " + "y" * 40))
    trimmed = [e for e in events if isinstance(e, Trimmed)]
    assert trimmed and trimmed[0].dropped >= 2 and trimmed[0].dropped % 2 == 0
    assert s.messages[0].role == "user" and s.messages[-2].content.startswith("last")
    assert isinstance(events[-1], Finished)
    prompt = bytes(t - 3 for t in model.prompts[-1][1:]).decode()
    assert "SYS" in prompt  # the system prompt stays
    assert len(model.prompts[-1]) + 64 <= 256


def test_trimming_keeps_a_system_message_that_opens_the_conversation() -> None:
    """A Modelfile's MESSAGE system (no SYSTEM): the turns after it go, as they went from what
    the model was sent, and the history stays what the model reads."""
    model = ScriptedModel([b"ok"], chat_template=CHATML_TEMPLATE, n_ctx=256)
    s = session(model, messages=[Message("system", "SYS")])
    for i in range(3):
        list(s.ask(f"message {i} " + "x" * 40))
    events = list(s.ask("last " + "y" * 40))
    assert any(isinstance(e, Trimmed) for e in events)
    assert s.messages[0] == Message("system", "SYS")
    assert [m.role for m in s.messages[1:]] == ["user", "assistant"] * (len(s.messages) // 2)
    sent = bytes(t - 3 for t in model.prompts[-1][1:]).decode()
    kept = [m.content for m in s.messages[1:-1]]  # the answer came after the prompt was sent
    assert all(text in sent for text in kept) and "message 0" not in sent


def test_a_batch_answer_does_not_count_the_load() -> None:
    from localrun.cli.batchrun import _collect

    s = session(ScriptedModel([b"ok"]))
    assert isinstance(s.model, LocalAnswerer)
    s.model.loaded.load_s = 30.0
    text, _, stats = _collect(s.model.start(Request.of("hi"), keep=False))
    assert text == "ok" and stats.load_s == 0.0 and stats.total_s < 30.0


def test_a_message_too_long_for_the_context_is_refused_and_the_chat_goes_on() -> None:
    model = ScriptedModel([b"ok"], chat_template=CHATML_TEMPLATE, n_ctx=256)
    s = session(model)
    list(s.ask("hello"))
    with pytest.raises(PromptTooLongError, match="too long for the context"):
        s.ask("z" * 600)
    assert s.messages == [Message("user", "hello"), Message("assistant", "ok")]
    assert text_of(s.ask("again")) == "ok"


def test_set_parameter_validates_and_accepts_ollama_names() -> None:
    s = session(chat_model())
    assert s.set_parameter("temperature", "0.2") == "temperature"
    assert s.set_parameter("top-k", "7") == "top_k"
    assert s.set_parameter("num_predict", "5") == "max_tokens"
    s.set_parameter("stop", "###")
    s.set_parameter("seed", "42")
    p = s.parameters()
    assert (p["temperature"], p["top_k"], p["max_tokens"], p["stop"], p["seed"]) == (
        0.2, 7, 5, ["###"], 42,
    )  # fmt: skip
    for name, value, needle in [
        ("warmth", "1", "unknown parameter"),
        ("temperature", "hot", "temperature must be a number, not 'hot'"),
        ("top_p", "1.5", "between 0 and 1"),
    ]:
        with pytest.raises(UsageError, match=needle):
            s.set_parameter(name, value)


def test_save_and_load_round_trip(tmp_path: Path) -> None:
    s = session(chat_model(), system="S", options=Options(SamplingParams(temperature=0.3)))
    list(s.ask("q1"))
    s.set_parameter("stop", "END")
    path = tmp_path / "chat.json"
    s.save(path)
    data = json.loads(path.read_text())
    assert data["format"] == "localrun-chat/1" and data["system"] == "S"
    assert data["messages"][0] == {"role": "user", "content": "q1"}
    other = session(chat_model())
    other.load(path)
    assert other.messages == s.messages and other.system == "S"
    assert other.parameters() == s.parameters()


def test_load_errors(tmp_path: Path) -> None:
    s = session(chat_model())
    with pytest.raises(LocalrunError, match="no such file"):
        s.load(tmp_path / "absent.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(LocalrunError, match="not a saved localrun chat"):
        s.load(bad)
    list(s.ask("kept"))
    assert len(s.messages) == 2  # a failed load changes nothing


# -- the chat loop and its commands, driven with a scripted read (issue 30) ---------------


def console() -> Console:
    return Console(width=120, record=True, color_system=None, force_terminal=False)


def reader(*lines: str | type[BaseException]) -> Callable[[str], str]:
    """A read function that gives ``lines`` in turn (an exception class is raised, as
    Ctrl-C and Ctrl-D raise them from input), then Ctrl-D; it echoes like a terminal."""
    feed = iter(lines)

    def read(prompt: str) -> str:
        line = next(feed, EOFError)
        if isinstance(line, type):
            print(prompt + "^C" if line is KeyboardInterrupt else prompt)
            raise line
        print(prompt + line)
        return line

    return read


def chat_ui(
    model: ScriptedModel | None = None, *, name: str = "m", load_s: float = 0.1, **kwargs: object
) -> tuple[ChatUI, Console]:
    model = model or chat_model(n_ctx=2048)
    loaded = LoadedModel(name=name, path=Path(name), model=model, load_s=load_s)
    c = console()
    return ChatUI(ChatSession(local(loaded, kwargs), **kwargs), c, live=False), c  # type: ignore[arg-type]


def test_ctrl_c_at_the_prompt_drops_the_line_and_the_chat_goes_on() -> None:
    ui, c = chat_ui()
    ui.run(reader("first", KeyboardInterrupt, KeyboardInterrupt, "second"))
    text = c.export_text()
    assert text.count("Use Ctrl + d or /bye to exit.") == 1  # said once, not at every Ctrl-C
    assert [m.content for m in ui.session.messages] == ["first", "Hi there", "second", "Hi there"]


def test_ctrl_c_in_a_multi_line_message_abandons_it() -> None:
    ui, _ = chat_ui()
    ui.run(reader('"""one', "two", KeyboardInterrupt, "after"))
    assert [m.content for m in ui.session.messages] == ["after", "Hi there"]


def test_ctrl_c_during_an_answer_stops_it_and_keeps_the_chat() -> None:
    model = ScriptedModel([b"partial", b" more"] * 20, chat_template=CHATML_TEMPLATE)
    ui, c = chat_ui(model)
    real = ui.session.ask

    def ask(text: str, images: object = ()) -> Iterator[object]:
        for event in real(text):
            yield event
            if isinstance(event, TextDelta) and event.text and text == "stop me":
                raise KeyboardInterrupt

    ui.session.ask = ask  # type: ignore[method-assign, assignment]
    ui.run(reader("stop me", "next"))
    assert "(stopped: the answer so far is kept)" in c.export_text()
    assert [m.content for m in ui.session.messages][:2] == ["stop me", "partial"]
    assert ui.session.messages[2].content == "next"


def test_only_the_first_answer_counts_the_load_time() -> None:
    s = session(chat_model())
    loaded_of(s).load_s = 30.0  # far more than a scripted answer takes
    list(s.ask("one"))
    first = s.last_stats
    list(s.ask("two"))
    second = s.last_stats
    assert first is not None and second is not None
    assert first.load_s == 30.0 and first.total_s > 30.0
    assert second.load_s == 0.0 and second.total_s < 30.0


def test_show_stats_names_the_threads_and_the_load_of_the_first_answer_only() -> None:
    ui, c = chat_ui(load=LoadSettings(n_threads=3))
    ui.run(reader("one", "/show stats", "two", "/show stats"))
    blocks = c.export_text().split("mode:")[1:]
    assert len(blocks) == 2
    assert all(re.search(r"^threads: +3$", b, re.M) for b in blocks), blocks
    assert re.search(r"^load time: +0\.100 s$", blocks[0], re.M)
    assert re.search(r"^load time: +- \(loaded for an earlier answer\)$", blocks[1], re.M)


def test_threads_default_to_runs_rule() -> None:
    assert session(chat_model()).threads == physical_cores()  # "m" has no Modelfile


def test_set_format_json_holds_answers_to_a_json_object_and_noformat_frees_them() -> None:
    ui, c = chat_ui()
    ui.run(reader("/set format json"))
    sampling = ui.session.options.sampling
    assert sampling.grammar and sampling.schema == '{"type": "object"}'
    ui.run(reader("/set noformat", "/set format yaml"))
    assert ui.session.options.sampling.grammar is None
    assert ui.session.options.sampling.schema is None
    text = c.export_text()
    assert "Set format to 'json' mode." in text and "Disabled format." in text
    assert "Error: unknown format 'yaml'. Hint: /set format json, or /set noformat" in text


def test_set_wordwrap_verbose_quiet() -> None:
    ui, c = chat_ui(ScriptedModel([b"# not a title"], chat_template=CHATML_TEMPLATE))
    ui.run(reader("/set nowordwrap", "q", "/set verbose", "/set quiet", "/set wordwrap"))
    text = c.export_text()
    assert "Set 'nowordwrap' mode." in text and "Set 'wordwrap' mode." in text
    assert "# not a title" in text  # raw text, not a Markdown heading
    assert "Set 'verbose' mode." in text and "Set 'quiet' mode." in text
    assert ui.wordwrap and not ui.verbose


def test_help_names_every_command() -> None:
    ui, c = chat_ui()
    ui.run(reader("/?"))
    text = c.export_text()
    for needle in ("/set format json", "/set noformat", "nowordwrap", "num_ctx", "modelfile",
                   "/save NAME", "/load NAME", "/save FILE, /load FILE", "Ctrl-C"):  # fmt: skip
        assert needle in text, needle


def test_chat_file_or_model_name() -> None:
    assert is_chat_file("chat.json") and is_chat_file("./chat") and is_chat_file("/tmp/x")
    assert not is_chat_file("mychat") and not is_chat_file("my-chat:v2")


def saved_chat(tiny_chat_model: Path, name: str = "mychat") -> tuple[ChatUI, Console]:
    """A chat with two exchanges, a system prompt and two parameters, saved as ``name``."""
    ui, c = chat_ui(name=str(tiny_chat_model))
    ui.run(reader("/set system Be brief.", "/set parameter temperature 0.3",
                  "/set parameter stop END", "hello", "again", f"/save {name}"))  # fmt: skip
    return ui, c


def test_save_name_creates_a_model_from_this_one(
    tiny_chat_model: Path, cli: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    _, c = saved_chat(tiny_chat_model)
    assert "Created new model 'mychat' with 4 messages" in c.export_text()
    assert not (tmp_path / "mychat").exists()  # a model, not a file in the current folder
    recipe = recipes.find("mychat")
    assert recipe is not None and recipe.source == "created"
    mf = recipe.modelfile
    assert mf.from_ == str(tiny_chat_model)
    assert mf.system == "Be brief." and mf.parameters == {"temperature": 0.3}
    assert mf.stop == ["END"]
    assert mf.messages == [("user", "hello"), ("assistant", "Hi there")] * 1 + [
        ("user", "again"), ("assistant", "Hi there"),
    ]  # fmt: skip
    # It runs: resolving it gives the weights and the conversation.
    settings = resolve("mychat").settings
    assert [m.content for m in settings.messages] == ["hello", "Hi there", "again", "Hi there"]
    assert settings.system == "Be brief."
    listed = cli(["list"])
    assert listed.exit_code == 0 and "mychat" in listed.stdout


def test_save_name_asks_before_replacing_a_created_model(tiny_chat_model: Path) -> None:
    ui, c = saved_chat(tiny_chat_model)
    ui.run(reader("third", "/save mychat", "n"))
    assert "Not saved." in c.export_text()
    assert len(resolve("mychat").settings.messages) == 4
    ui.run(reader("/save mychat", "y"))
    assert len(resolve("mychat").settings.messages) == 6


def test_save_name_refuses_a_library_models_name(tiny_chat_model: Path) -> None:
    ui, c = chat_ui(name=str(tiny_chat_model))
    ui.run(reader("hi", "/save demo"))
    assert "Error: 'demo' is the name of a library model" in c.export_text()
    assert recipes.created() == []


def test_load_name_finds_a_draft_model_only_to_load_the_weights_again(
    tiny_chat_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_load(*args: object, **kwargs: object) -> LoadedModel:
        raise AssertionError("the same weights were loaded again")

    monkeypatch.setattr("localrun.engine.reload.load_model", no_load)
    mf = Modelfile(from_=str(tiny_chat_model))
    mf.parameters["draft"] = "no-such-draft"
    recipes.record("drafted", mf, Path.cwd())
    ui, c = chat_ui(name=str(tiny_chat_model))
    ui.run(reader("/load drafted"))
    assert "Error" not in c.export_text() and ui.session.name == "drafted"


def test_load_name_goes_on_with_the_saved_model_without_loading_it_again(
    tiny_chat_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    saved_chat(tiny_chat_model)

    def no_load(*args: object, **kwargs: object) -> LoadedModel:
        raise AssertionError("the same weights were loaded again")

    monkeypatch.setattr("localrun.engine.reload.load_model", no_load)
    ui, c = chat_ui(name=str(tiny_chat_model))
    ui.run(reader("/load mychat", "/show system", "/show parameters", "more"))
    s = ui.session
    assert s.name == "mychat" and s.system == "Be brief."
    assert s.options.sampling.temperature == 0.3 and s.options.stop == ("END",)
    assert [m.content for m in s.messages][:5] == ["hello", "Hi there", "again", "Hi there",
                                                    "more"]  # fmt: skip
    text = c.export_text()
    assert "Loaded model 'mychat' with 4 messages." in text
    assert ">>> again\nHi there\n" in text  # the conversation is shown, as Ollama shows it


def test_load_name_of_other_weights_loads_them_in_place(
    tiny_chat_model: Path, tiny_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    loads: list[dict[str, object]] = []
    new_model = ScriptedModel([b"new"])

    def fake_load(name: str, **kwargs: object) -> LoadedModel:
        loads.append({"name": name, **kwargs})
        return LoadedModel(name=name, path=Path(str(kwargs["path"])), model=new_model, load_s=2.0)

    monkeypatch.setattr("localrun.engine.reload.load_model", fake_load)
    ui, c = chat_ui(name=str(tiny_chat_model), load=LoadSettings(n_threads=5, n_ctx=256))
    old_model = loaded_of(ui.session).model
    loaded = loaded_of(ui.session)
    ui.run(reader("hi", f"/load {tiny_model}"))
    assert "Loaded model" not in c.export_text()  # a path: the file form, not a model
    ui.run(reader("/load tiny-base"))
    assert "Error: unknown model 'tiny-base'" in c.export_text()
    recipes.record("tiny-base", Modelfile(from_=str(tiny_model)), Path.cwd())
    ui.run(reader("/load tiny-base", "go on"))
    assert old_model.closed  # type: ignore[attr-defined]
    assert (
        loaded_of(ui.session) is loaded and loaded.model is new_model
    )  # whoever loaded it closes it
    assert [(x["name"], x["path"], x["n_threads"]) for x in loads] == [("tiny-base", tiny_model, 5)]
    assert [m.content for m in ui.session.messages] == ["go on", "new"]
    assert "completion mode" in c.export_text()  # the tiny base model has no chat template


def test_num_ctx_loads_again_and_keeps_the_conversation(
    tiny_chat_model: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    asked: list[object] = []

    def fake_load(name: str, **kwargs: object) -> LoadedModel:
        asked.append(kwargs["n_ctx"])
        if kwargs["n_ctx"] == 99999:
            raise LocalrunError("no room for that context", "ask for less")
        model = chat_model(n_ctx=int(str(kwargs["n_ctx"])))
        return LoadedModel(name=name, path=Path(str(kwargs["path"])), model=model, load_s=1.5)

    monkeypatch.setattr("localrun.engine.reload.load_model", fake_load)
    monkeypatch.chdir(tmp_path)
    ui, c = chat_ui(name=str(tiny_chat_model))
    ui.run(reader("hello", "/set parameter num_ctx 512", "/set parameter num_ctx lots",
                  "/set parameter num_ctx 99999", "again", "/save sized"))  # fmt: skip
    text = " ".join(c.export_text().split())
    assert ("Set parameter 'num_ctx' to '512': the model was loaded again in 1.50 s, with a "
            "context of 512 tokens; the conversation is kept.") in text  # fmt: skip
    assert "Error: num_ctx must be a whole number, not 'lots'" in text
    assert "Error: no room for that context. Hint: ask for less" in text
    assert asked == [512, 99999, 512]  # the failed load put the one there was back
    assert [m.content for m in ui.session.messages] == ["hello", "Hi there", "again", "Hi there"]
    assert ui.session.last_stats is not None and ui.session.last_stats.load_s == 1.5
    found = recipes.find("sized")
    assert found is not None and found.modelfile.parameters == {"num_ctx": 512}


def test_show_modelfile_prints_what_show_modelfile_prints(tiny_chat_model: Path, cli: Any) -> None:
    ui, c = chat_ui(name=str(tiny_chat_model))
    ui.run(reader("/show modelfile"))
    shown = cli(["show", str(tiny_chat_model), "--modelfile"])
    assert shown.exit_code == 0 and shown.stdout.startswith(f"FROM {tiny_chat_model}\n")
    assert shown.stdout in c.export_text()


def test_save_over_the_model_in_use_keeps_what_it_was_made_of(
    tiny_chat_model: Path, tmp_path: Path
) -> None:
    weights = tmp_path / "own.gguf"
    weights.write_bytes(tiny_chat_model.read_bytes())
    base = Modelfile(from_=str(tiny_chat_model), parameters={"top_k": 7})
    recipes.set_weights(recipes.record("mine", base, tmp_path), weights)
    other = tmp_path / "other.gguf"
    other.write_bytes(b"")
    recipes.set_weights(recipes.record("other", Modelfile(from_=str(tiny_chat_model)), tmp_path),
                        other)  # fmt: skip
    ui, _ = chat_ui(name="mine")
    ui.run(reader("hello", "/save mine", "y", "/save other", "y"))
    mine = recipes.find("mine")
    assert mine is not None and mine.modelfile.from_ == str(tiny_chat_model)  # not FROM itself
    assert mine.modelfile.parameters == {"top_k": 7} and mine.weights == str(weights)
    assert len(mine.modelfile.messages) == 2 and weights.exists()
    replaced = recipes.find("other")
    assert replaced is not None and replaced.modelfile.from_ == "mine"
    assert replaced.weights is None and not other.exists()  # its own weights went with it
