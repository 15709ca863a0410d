"""Prefill progress: the engine says how far a long prompt's reading has got, chunk by
chunk, and the chat's status line shows it instead of a line that looks hung."""

from __future__ import annotations

import io
import re
import shutil
from collections.abc import Sequence
from pathlib import Path

import pytest
from rich.console import Console

from localrun import engine
from localrun.backend import LoadOptions, SamplingParams, load
from localrun.cli.chatview import AnswerState, AnswerView, status_line
from localrun.engine import Finished, FirstToken, LoadedModel, PromptEvaluated, Request
from localrun.engine.batch import BatchEngine, Job
from localrun.engine.types import PrefillProgress
from tests.scripted import ScriptedModel
from tests.terminal import open_terminal

# The demo model as the test machines keep it; assembled from the package where it is not.
DEMO_CACHED = Path.home() / ".cache/localrun/demo/gemma-3-270m-q4_k_m.gguf"
TEXT = (
    "The river runs past the old mill, where the miller keeps his ledgers and his cats. "
    "Every morning the wheel turns, the stones grind, and the village wakes to the sound. "
)


def demo_path() -> Path:
    if DEMO_CACHED.is_file():
        return DEMO_CACHED
    from localrun.models.demo import demo_model_path

    return demo_model_path()


def progress_of(events: Sequence[object]) -> list[PrefillProgress]:
    return [e for e in events if isinstance(e, PrefillProgress)]


def test_a_long_prompt_sends_progress_chunk_by_chunk_on_the_demo_model() -> None:
    model = load(LoadOptions(demo_path(), n_ctx=512, n_threads=2))
    batch = BatchEngine(model, step_tokens=32)  # type: ignore[arg-type]
    try:
        prompt = model.tokenize(TEXT * 2, add_special=True, parse_special=False)
        assert 64 < len(prompt) < 128
        events = list(batch.submit(Job(prompt, SamplingParams(seed=1), max_tokens=2)))
        progress = progress_of(events)
        chunks = -(-len(prompt) // 32)
        # One event after each chunk but the last, whose end PromptEvaluated says.
        assert [p.done for p in progress] == [32 * i for i in range(1, chunks)]
        assert all(p.total == p.prompt_tokens == len(prompt) for p in progress)
        seconds = [p.seconds for p in progress]
        assert seconds == sorted(seconds) and seconds[0] > 0
        assert all(p.tokens_per_s is not None and p.tokens_per_s > 0 for p in progress)
        # Progress comes first, then the prompt's end, the first token, the text.
        last = events.index(progress[-1])
        read = events[last + 1]
        assert isinstance(read, PromptEvaluated) and read.evaluated == len(prompt)
        assert isinstance(events[last + 2], FirstToken)
        assert isinstance(events[-1], Finished)

        # The status line shows each of them as the view gets them.
        view = AnswerView(Console(file=io.StringIO()), AnswerState("CPU", 512), live=False)
        shown = []
        with view:
            for event in events:
                view.handle(event)
                if isinstance(event, PrefillProgress):
                    shown.append(status_line(view.state).plain)
        assert len(shown) == len(progress)
        for line, p in zip(shown, progress, strict=True):
            assert line.startswith(f"prefill · {p.done}/{len(prompt)} tokens · "), line
            assert re.search(rf"· [\d,]+ tok/s · ctx {p.done}/512 · CPU$", line), line

        # A later turn that starts with the cached prompt counts only what it reads.
        more = model.tokenize(" " + TEXT * 2, add_special=False, parse_special=False)
        turn = prompt + more
        events = list(batch.submit(Job(turn, SamplingParams(seed=1), max_tokens=1)))
        progress = progress_of(events)
        evaluated = next(e for e in events if isinstance(e, PromptEvaluated)).evaluated
        assert evaluated == len(more)  # the first turn's cells were reused
        assert [p.done for p in progress] == [32 * i for i in range(1, -(-evaluated // 32))]
        assert all(p.total == evaluated and p.prompt_tokens == len(turn) for p in progress)

        # A prompt read in one step sends none: a short prompt costs nothing more.
        short = prompt[:20]
        assert (
            progress_of(list(batch.submit(Job(short, SamplingParams(seed=1), max_tokens=1)))) == []
        )
    finally:
        batch.close()
        model.close()


def test_progress_passes_through_generate_and_its_readers_ignore_it() -> None:
    """Through ``engine.generate`` on the default step (the model's n_batch, 512 here):
    a prompt of 1,301 tokens is read in three chunks, so two progress events."""
    model = ScriptedModel([b"ok"], n_ctx=2048)
    loaded = LoadedModel(name="scripted", path=Path("scripted.gguf"), model=model, load_s=0.0)
    try:
        events = list(engine.generate(loaded, Request.of("x" * 1300)))
    finally:
        loaded.close()
    assert [(p.done, p.total) for p in progress_of(events)] == [(512, 1301), (1024, 1301)]
    assert isinstance(events[2], PromptEvaluated)
    # The text and statistics are what they were: readers that know only TextDelta and
    # Finished (run's plain output, the servers, batch) skip the new event.
    assert "".join(e.text for e in events if isinstance(e, engine.TextDelta)) == "ok"
    assert isinstance(events[-1], Finished) and events[-1].stats.prompt_evaluated == 1301


# -- the real terminal --------------------------------------------------------------------

PROGRESS = re.compile(r"^prefill · ([\d,]+)/([\d,]+) tokens · [\d,]+ tok/s · ctx \d+/\d+ · CPU")


@pytest.mark.e2e
def test_the_terminal_shows_a_long_prompts_progress(tmp_path: Path, localrun_home: Path) -> None:
    """``localrun run demo LONG-PROMPT`` in tmux: the status line counts the prompt's tokens
    up while llama.cpp reads it (512 a chunk), instead of showing 0 until the answer."""
    if DEMO_CACHED.is_file():  # the demo model as it is kept, not assembled again (250 MB)
        kept = localrun_home / "cache" / "demo"
        kept.mkdir(parents=True)
        (kept / DEMO_CACHED.name).symlink_to(DEMO_CACHED)
        stamp = DEMO_CACHED.with_name(DEMO_CACHED.name + ".verified")
        if stamp.is_file():
            shutil.copy(stamp, kept / stamp.name)
    prompt = TEXT * 30  # about 1,100 tokens: two chunks and a part
    cmd = ["localrun", "run", "demo", prompt, "--max-tokens", "1", "--threads", "2"]
    seen: list[tuple[int, int]] = []

    def watch(screen: str) -> None:
        for line in screen.splitlines():
            if (m := PROGRESS.match(line.strip())) is not None:
                point = (int(m[1].replace(",", "")), int(m[2].replace(",", "")))
                if point not in seen:
                    seen.append(point)

    with open_terminal(tmp_path) as terminal:
        terminal.start(cmd, {"LOCALRUN_HOME": str(localrun_home)})
        # Generous: the first run may assemble the demo model, and the CPU may be shared.
        assert terminal.wait_exit(timeout=300, watch=watch) == 0, terminal.screen()
        screen = terminal.screen()
    assert seen, f"no prefill progress was shown; the pane:\n{screen}"
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)
    assert all(0 < done < total for done, total in seen)
    assert "prefill ·" not in screen  # the live status line went with the answer
