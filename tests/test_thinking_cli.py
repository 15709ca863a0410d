"""A thinking model's trace on the command line: run's --think and --hidethinking, the
plain, JSON and live outputs, the chat's /set think and /show thinking, the --verbose
figures, a --batch line's "think" and a Modelfile's PARAMETER think. The answerer is a
fake that writes a trace, then the answer (no weights)."""

from __future__ import annotations

import io
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from localrun import engine
from localrun.cli.answer import _plain
from localrun.cli.chat import ChatUI
from localrun.cli.chatview import AnswerState, AnswerView, summary_line
from localrun.engine import Finished, LoadedModel, Request, Stats, TextDelta
from localrun.engine.answerer import LocalAnswerer
from localrun.engine.chat import ChatSession
from localrun.engine.figures import remote_figures
from localrun.engine.jobs import parse_line
from localrun.engine.types import FirstToken, ThinkingDelta
from localrun.errors import UsageError
from localrun.models.modelfile import parse
from localrun.models.resolve import Resolved, Settings
from tests.scripted import ScriptedModel

DIM = "\x1b[2m"
TRACE = ("The user greets me. ", "I greet back.")
STATS = Stats(
    prompt_tokens=5,
    prompt_evaluated=5,
    completion_tokens=6,
    ttft_s=0.2,
    thinking_tokens=4,
    first_answer_s=1.5,
)


def thinking_events() -> Iterator[engine.Event | ThinkingDelta]:
    yield FirstToken(0.2)
    yield ThinkingDelta(TRACE[0], 2)
    yield ThinkingDelta(TRACE[1], 4)
    yield TextDelta("Hello", 5, 1.5)
    yield TextDelta(" there", 6, 1.6)
    yield Finished(STATS)


class Recorder:
    def __init__(self) -> None:
        self.requests: list[Request] = []


@pytest.fixture
def thinker(monkeypatch: pytest.MonkeyPatch) -> Recorder:
    """run and the chat over a LocalAnswerer whose answers are thinking_events()."""
    rec = Recorder()

    def load_model(ref: str, **kwargs: Any) -> LoadedModel:
        return LoadedModel(name=ref, path=Path(ref), model=ScriptedModel([]), load_s=0.25)

    def start(_: LocalAnswerer, request: Request, **__: Any) -> Iterator[Any]:
        rec.requests.append(request)
        yield from thinking_events()

    monkeypatch.setattr(
        "localrun.models.resolve.resolve", lambda ref: Resolved(ref, (Path("/m") / ref,))
    )
    monkeypatch.setattr(engine, "load_model", load_model)
    monkeypatch.setattr(LocalAnswerer, "start", start)
    monkeypatch.setattr("localrun.system.physical_cores", lambda: 2)
    monkeypatch.setattr("localrun.system.busy_elsewhere", lambda: 0)
    return rec


# -- run --------------------------------------------------------------------------------


def test_piped_stdout_is_the_answer_alone(cli: Any, thinker: Recorder) -> None:
    result = cli(["run", "m.gguf", "hi"])
    assert result.exit_code == 0
    assert result.stdout == "Hello there\n"
    assert "greet" not in result.stderr  # stderr is no terminal here either
    assert thinker.requests[0].think is None  # the model's default


def test_json_has_the_trace_beside_the_response(cli: Any, thinker: Recorder) -> None:
    result = cli(["run", "m.gguf", "hi", "--format", "json", "--hidethinking"])
    data = json.loads(result.stdout)
    assert data["response"] == "Hello there"
    assert data["thinking"] == "".join(TRACE)
    assert data["stats"]["thinking_tokens"] == 4
    assert data["stats"]["first_answer_s"] == 1.5


def test_json_leaves_out_an_empty_trace(
    cli: Any, thinker: Recorder, monkeypatch: pytest.MonkeyPatch
) -> None:
    def start(_: LocalAnswerer, request: Request, **__: Any) -> Iterator[Any]:
        yield TextDelta("Hi", 1)
        yield Finished(Stats(completion_tokens=1))

    monkeypatch.setattr(LocalAnswerer, "start", start)
    data = json.loads(cli(["run", "m.gguf", "hi", "--format", "json"]).stdout)
    assert "thinking" not in data and data["response"] == "Hi"


@pytest.mark.parametrize(
    ("args", "think", "prompt"),
    [
        (["--think", "why", "so"], True, "why so"),  # bare: on, and the prompt is kept
        (["why", "--think"], True, "why"),
        (["--think=false", "why"], False, "why"),
        (["--think=FALSE", "why"], False, "why"),
        (["--think=true", "why"], True, "why"),
        (["--think=high", "why"], "high", "why"),
        (["--hidethinking", "why"], None, "why"),
        (["--", "--think"], None, "--think"),  # after --, a prompt's word
    ],
)
def test_think_flag_reaches_the_request(
    cli: Any, thinker: Recorder, args: list[str], think: bool | str | None, prompt: str
) -> None:
    result = cli(["run", "m.gguf", *args])
    assert result.exit_code == 0, result.stderr
    request = thinker.requests[0]
    assert request.think == think
    assert request.messages[-1].content == prompt


def test_a_bad_think_value_is_a_usage_error_before_the_load(cli: Any, thinker: Recorder) -> None:
    result = cli(["run", "m.gguf", "--think=lots", "hi"])
    assert result.exit_code == 2
    assert "--think cannot be 'lots'" in result.stderr
    assert "low, medium or high" in result.stderr
    assert thinker.requests == []


def test_verbose_names_the_trace_and_the_first_answer_token(cli: Any, thinker: Recorder) -> None:
    result = cli(["run", "m.gguf", "hi", "--verbose"])
    assert result.stdout == "Hello there\n"
    assert "thinking tokens:" in result.stderr and "4 (of the generated tokens)" in result.stderr
    assert "time to first answer token:" in result.stderr and "1.500 s" in result.stderr


def test_remote_figures_name_the_trace_only_when_there_was_one() -> None:
    names = dict(remote_figures(STATS))
    assert names["thinking tokens"].startswith("4 ")
    assert names["time to first answer token"] == "1.500 s"
    plain = dict(remote_figures(Stats(completion_tokens=3)))
    assert "thinking tokens" not in plain and "time to first answer token" not in plain


def test_plain_writes_the_trace_to_stderr_when_asked(capsys: pytest.CaptureFixture[str]) -> None:
    """A terminal on stderr (the caller decides): the trace goes there, the answer to stdout."""
    stats = _plain(thinking_events(), None, True)
    out, err = capsys.readouterr()
    assert out == "Hello there\n"
    assert err == "Thinking…\n" + "".join(TRACE) + "\n\n"  # a blank line before the answer
    assert stats.thinking_tokens == 4
    _plain(thinking_events(), None, False)
    out, err = capsys.readouterr()
    assert out == "Hello there\n" and err == ""


def test_modelfile_think_is_a_default_that_the_flag_overrides() -> None:
    mf = parse("FROM x\nPARAMETER think false\n")
    settings = Settings(parameters=mf.parameters)
    assert engine.run_options(settings).think is False
    assert engine.run_options(settings, think="low").think == "low"
    assert engine.run_options(Settings()).think is None
    with pytest.raises(Exception, match="think must be one of true, false, low"):
        parse("FROM x\nPARAMETER think maybe\n")


def test_a_batch_line_has_its_own_think() -> None:
    defaults = engine.run_options(Settings(), think=False)
    assert parse_line('{"prompt": "x"}', 1, defaults).request.think is False
    assert parse_line('{"prompt": "x", "think": true}', 1, defaults).request.think is True
    assert parse_line('{"prompt": "x", "think": "high"}', 1, defaults).request.think == "high"
    with pytest.raises(UsageError, match="line 3: 'think' must be true, false"):
        parse_line('{"prompt": "x", "think": "lots"}', 3, defaults)


# -- the live view ------------------------------------------------------------------------


def terminal(height: int = 25) -> Console:
    return Console(
        file=io.StringIO(),
        force_terminal=True,
        width=60,
        height=height,
        color_system="standard",
    )


def plain(text: str) -> str:
    return re.sub(r"\x1b\[[0-9;]*m", "", text)


def written(console: Console) -> str:
    assert isinstance(console.file, io.StringIO)
    return console.file.getvalue()


def test_the_live_view_shows_the_trace_dim_then_folds_it() -> None:
    console = terminal()
    view = AnswerView(console, AnswerState("CPU", 256), markdown=True, live=True)
    events = list(thinking_events())
    for event in events[:3]:  # the trace so far
        view.handle(event)
    console.print(view)  # the live region, drawn once
    region = written(console)
    lines = plain(region).splitlines()
    assert lines[:2] == ["Thinking…", "The user greets me. I greet back."]
    assert lines[2].startswith("thinking · TTFT 0.20 s")  # the status line's phase
    assert DIM + "The user greets me." in region
    console.file = io.StringIO()
    for event in events[3:]:
        view.handle(event)
    view.__exit__(None, None, None)
    after = written(console)
    assert "Thought for 4 tokens," in after and "greet" not in after
    assert after.index("Thought for") < after.index("Hello there")
    assert view.trace == "".join(TRACE)


def test_a_long_trace_shows_its_last_lines_within_the_screen() -> None:
    console = terminal(height=8)
    view = AnswerView(console, AnswerState("CPU", 256))
    view.handle(ThinkingDelta("".join(f"step {i}\n" for i in range(30)), 60))
    console.print(view)
    lines = plain(written(console)).splitlines()
    assert lines[0] == "Thinking…" and lines[1:-1] == [f"step {i}" for i in range(26, 30)]
    assert len(lines) <= 8


def test_without_a_live_region_the_trace_is_printed_dim_as_it_comes() -> None:
    console = terminal()
    view = AnswerView(console, AnswerState("CPU", 256), markdown=False, live=False)
    with view:
        for event in thinking_events():
            view.handle(event)
    out = written(console)
    label, trace, fold, answer = (
        out.index("Thinking…"),
        out.index("I greet back."),
        out.index("Thought for 4 tokens"),
        out.index("Hello there"),
    )
    assert label < trace < fold < answer
    assert DIM + "The user greets me." in out


def test_hidden_thinking_draws_nothing_of_the_trace() -> None:
    console = terminal()
    view = AnswerView(console, AnswerState("CPU", 256), markdown=False, live=False, thinking=False)
    events = list(thinking_events())
    for event in events[:3]:
        view.handle(event)
    console.print(view)
    assert "thinking" in written(console) and "greet" not in written(console)
    for event in events[3:]:
        view.handle(event)
    view.__exit__(None, None, None)
    out = written(console)
    assert "greet" not in out and "Thought for" not in out and "Hello there" in out


def test_the_summary_line_gives_the_first_answer_token_beside_ttft() -> None:
    line = summary_line(STATS).plain
    assert line.startswith("TTFT 0.20 s · first answer token 1.50 s · ")
    assert "6 tokens (4 thinking)" in line
    assert "first answer" not in summary_line(Stats(completion_tokens=2)).plain


# -- the chat -----------------------------------------------------------------------------


def chat_ui(thinker: Recorder) -> tuple[ChatUI, Console]:
    loaded = LoadedModel(name="m", path=Path("m.gguf"), model=ScriptedModel([]), load_s=0.1)
    console = Console(file=io.StringIO(), width=80)
    return ChatUI(ChatSession(LocalAnswerer(loaded)), console, live=False), console


def test_set_think_and_nothink_reach_the_request(thinker: Recorder) -> None:
    ui, console = chat_ui(thinker)
    for line, think in [
        ("/set think", True),
        ("/set nothink", False),
        ("/set think high", "high"),
        ("/set think LOW", "low"),
    ]:
        ui.command(line)
        list(ui.session.ask("q"))
        assert thinker.requests[-1].think == think, line
    out = written(console)
    assert "Set 'think' mode." in out and "Set 'nothink' mode." in out
    assert "Set 'think' mode (high effort)." in out
    ui.command("/set think lots")
    ui.command("/set nothink please")
    assert "/set think cannot be 'lots'" in written(console)
    assert "/set nothink takes no value" in written(console)
    assert ui.session.think == "low"
    ui.command("/show parameters")
    assert "  think           low" in written(console)


def test_the_history_keeps_the_answer_and_show_thinking_the_trace(thinker: Recorder) -> None:
    ui, console = chat_ui(thinker)
    ui.command("/show thinking")
    assert "No reasoning in the last answer." in written(console)
    ui.answer(lambda: ui.session.ask("hi"))
    assert ui.session.messages[-1].content == "Hello there"
    assert ui.session.last_thinking == "".join(TRACE)
    out = written(console)
    assert "Thought for 4 tokens" in out and "I greet back." in out  # printed, no live region
    assert "first answer token 1.50 s" in out
    console.file = io.StringIO()
    ui.command("/thinking")
    assert written(console) == "".join(TRACE) + "\n"


# -- a model that cannot stop thinking ----------------------------------------------------

# A trace the template always opens, with no switch to turn it off (as DeepSeek R1 Distill
# Llama's): asked not to think, the model thinks anyway, and the user is told.
ALWAYS = "{% for m in messages %}{{ m.content }}</think>{% endfor %}<think>\n"


def test_run_says_once_when_thinking_cannot_be_turned_off(
    cli: Any, thinker: Recorder, monkeypatch: pytest.MonkeyPatch
) -> None:
    def load_model(ref: str, **kwargs: Any) -> LoadedModel:
        return LoadedModel(
            name=ref,
            path=Path(ref),
            model=ScriptedModel([]),
            load_s=0.1,
            template_override=ALWAYS,
        )

    monkeypatch.setattr(engine, "load_model", load_model)
    result = cli(["run", "m.gguf", "--think=false", "hi"])
    assert result.exit_code == 0 and result.stdout == "Hello there\n"
    assert result.stderr.count("has no switch for thinking") == 1
    assert cli(["run", "m.gguf", "--think", "hi"]).stderr == ""


def test_the_chat_says_it_on_set_nothink(thinker: Recorder) -> None:
    loaded = LoadedModel(
        name="m",
        path=Path("m.gguf"),
        model=ScriptedModel([]),
        load_s=0.1,
        template_override=ALWAYS,
    )
    console = Console(file=io.StringIO(), width=200)
    ui = ChatUI(ChatSession(LocalAnswerer(loaded)), console, live=False)
    ui.command("/set think")
    assert "no switch" not in written(console)
    ui.command("/set nothink")
    assert "m's chat template has no switch for thinking: its trace is hidden" in written(console)
