"""``localrun perplexity``: the figure by its definition, the CLI, and llama-perplexity's figure."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from localrun import engine
from localrun.backend.llamacpp.model import LlamaCppModel
from localrun.engine.perplexity import perplexity
from tests.proc import run

DATA = Path(__file__).parent / "data"
TEXT = DATA / "sotu-1790-washington.txt"
TOOLS = Path.home() / ".cache" / "localrun-tests"


@pytest.fixture
def home(localrun_home: Path) -> Path:
    return localrun_home


def test_the_figure_is_its_definition(tiny_model: Path) -> None:
    """Recomputed here token by token: each window from a fresh cache with BOS first, every
    position's full logits read one at a time, the second half scored with Python's math."""
    n_ctx = 32
    loaded = engine.load_model(str(tiny_model), n_ctx=n_ctx, n_threads=1)
    try:
        text = TEXT.read_text()[:3000]
        result = perplexity(loaded, text, n_ctx, max_windows=3)
        model = loaded.model
        assert isinstance(model, LlamaCppModel) and model.bos_token is not None
        tokens = model.tokenize(text, add_special=True, parse_special=False)
        nll, count = 0.0, 0
        for w in range(3):
            window = tokens[w * n_ctx : (w + 1) * n_ctx]
            window[0] = model.bos_token
            model.forget(0)
            for p, token in enumerate(window):
                model.decode_rows([token], [p], [0], [True])
                if n_ctx // 2 <= p < n_ctx - 1:
                    logits = list(model.logits(0))
                    top = max(logits)
                    total = sum(math.exp(x - top) for x in logits)
                    nll -= logits[window[p + 1]] - top - math.log(total)
                    count += 1
        model.forget(0)
    finally:
        loaded.close()
    assert result.windows == 3 and result.scored == count == 3 * (n_ctx // 2 - 1)
    assert result.ppl == pytest.approx(math.exp(nll / count), rel=1e-4)
    assert result.error > 0


def test_the_command_measures_and_compares(home: Path, tmp_path: Path) -> None:
    done = run(home, "perplexity", "demo", str(TEXT), "--windows", "2", "--json")
    assert done.code == 0, done.stderr
    one = json.loads(done.stdout)
    assert one["windows"] == 2 and one["scored"] == 2 * 255 and one["n_ctx"] == 512
    assert 5 < one["ppl"] < 200 and one["tokens_per_s"] > 0
    small = tmp_path / "q2.gguf"
    assert run(home, "quantize", "demo", str(small), "Q2_K").code == 0
    both = run(home, "perplexity", "demo", str(TEXT), "--windows", "2", "--compare", str(small))
    assert both.code == 0, both.stderr
    lines = both.stdout.strip().splitlines()
    assert lines[0].startswith("demo: PPL = ") and lines[1].startswith(f"{small}: PPL = ")
    ratio = re.search(r"/ demo: ([\d.]+)", lines[2])
    assert ratio is not None and float(ratio.group(1)) > 1.0  # two bits fewer cost something


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: p.write_text("Too short."), "perplexity in windows of 512 needs at least"),
        (lambda p: p.write_bytes(b"\xff\xfe\x00bad"), "not UTF-8 text"),
        (lambda p: None, "No such file"),
    ],
)
def test_a_text_it_cannot_use_is_one_line(
    home: Path, tmp_path: Path, make: Callable[[Path], object], message: str
) -> None:
    text = tmp_path / "t.txt"
    make(text)
    done = run(home, "perplexity", "demo", str(text))
    assert done.code == 2 and message in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_the_figure_is_llama_perplexitys(home: Path) -> None:
    """llama.cpp's own tool, built from the pinned sdist, on the same model, text and window."""
    if shutil.which("cmake") is None:
        if os.environ.get("CI"):
            pytest.fail("cmake is needed to build llama-perplexity")
        pytest.skip("cmake is needed to build llama-perplexity")
    from benchmarks.llama_tools import build_tool
    from localrun.models.demo import demo_model_path

    binary = build_tool("llama-perplexity", cache=TOOLS)
    theirs = subprocess.run(
        [str(binary), "-m", str(demo_model_path()), "-f", str(TEXT), "-c", "512", "-t", "2"],
        capture_output=True, text=True, check=True, timeout=600,
        env={**os.environ, "LD_LIBRARY_PATH": str(binary.parent)},
    )  # fmt: skip
    found = re.search(r"Final estimate: PPL = ([\d.]+)", theirs.stdout + theirs.stderr)
    assert found is not None, theirs.stderr[-2000:]
    ours = run(home, "perplexity", "demo", str(TEXT), "--json", timeout=600)
    assert ours.code == 0, ours.stderr
    assert json.loads(ours.stdout)["ppl"] == pytest.approx(float(found.group(1)), rel=0.005)
