"""Choosing a quantization before pulling: ``pull REPO:auto``, ``--dry-run``, ``show --quants``.

The repository is on the test Hub (the real huggingface_hub client talks to it); its files are
a tiny model at F32 and its Q8_0 and Q4_0 quantizations, made here with llama.cpp's quantizer.
Each file's header is read over HTTP ranges and must size the KV cache as the local file does.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from localrun.backend import context_size
from localrun.backend.llamacpp.offload import COMPUTE_RESERVE, model_sizes
from localrun.engine import fit
from localrun.engine.quantize import quantize
from localrun.errors import InsufficientSpaceError
from localrun.gguf.reader import read_gguf
from localrun.hub import pull, store
from tests.hub import FakeHub

REPO = "org/tiny-GGUF"


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("quants")
    made = {"tiny-F32.gguf": tiny_model}
    for kind in ("Q8_0", "Q4_0"):
        out = folder / f"tiny-{kind}.gguf"
        quantize(tiny_model, out, kind, threads=1)
        made[out.name] = out
    return made


@pytest.fixture
def repo(hub: FakeHub, files: dict[str, Path]) -> FakeHub:
    hub.add_repo(REPO, {name: path.read_bytes() for name, path in files.items()})
    return hub


def test_each_file_is_sized_from_its_remote_header(
    repo: FakeHub, files: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pull, "HEADER_READ", 256)  # the first read ends inside the header
    ref, commit, offered = pull.offers(f"hf.co/{REPO}")
    assert {o.choice.quant: o.size for o in offered} == {
        "F32": files["tiny-F32.gguf"].stat().st_size,
        "Q8_0": files["tiny-Q8_0.gguf"].stat().st_size,
        "Q4_0": files["tiny-Q4_0.gguf"].stat().st_size,
    }
    room = fit.Room(gpu=0, gpus=(), ram=10**12)
    fits = fit.judge(ref, commit, offered, room)
    assert [f.quant for f in fits] == ["Q4_0", "Q8_0", "F32"]  # smallest first
    local = read_gguf(files["tiny-Q8_0.gguf"])
    n_ctx = context_size(None, int(local.arch_value("context_length")))
    q8 = next(f for f in fits if f.quant == "Q8_0")
    assert q8.n_ctx == n_ctx and q8.kv == sum(model_sizes(local, n_ctx).kv_per_layer)
    assert all(f.where == fit.ON_CPU for f in fits)


def test_auto_takes_the_largest_that_fits_the_gpu_else_the_memory(repo: FakeHub) -> None:
    ref, commit, offered = pull.offers(f"hf.co/{REPO}")
    sized = {f.quant: f for f in fit.judge(ref, commit, offered, fit.Room(0, (), 10**12))}
    q8 = sized["Q8_0"]
    # Memory for Q8_0 and what it needs besides, not for F32: Q8_0, and why.
    room = fit.Room(gpu=0, gpus=(), ram=q8.needed + 1000)
    chosen, why = fit.pick(ref, fit.judge(ref, commit, offered, room), room)
    assert chosen.quant == "Q8_0"
    assert "Q8_0:" in why and "(on the CPU)" in why and "F32" in why and "would not" in why
    # A GPU that holds Q4_0 only, plenty of memory: the GPU decides.
    gpu = fit.Room(gpu=sized["Q4_0"].weights + sized["Q4_0"].kv, gpus=("Sim GPU",), ram=10**12)
    judged = fit.judge(ref, commit, offered, gpu)
    assert {f.quant: f.where for f in judged} == {
        "Q4_0": fit.ON_GPU, "Q8_0": fit.PART_GPU, "F32": fit.PART_GPU,
    }  # fmt: skip
    assert fit.pick(ref, judged, gpu)[0].quant == "Q4_0"
    # Nothing fits: said in one error, with the smallest's needs.
    none = fit.Room(gpu=0, gpus=(), ram=COMPUTE_RESERVE)
    with pytest.raises(InsufficientSpaceError, match="no model of org/tiny-GGUF fits here"):
        fit.pick(ref, fit.judge(ref, commit, offered, none), none)


def test_pull_auto_dry_run_only_says(repo: FakeHub, cli: Any) -> None:
    said = cli(["pull", f"hf.co/{REPO}:auto", "--dry-run"])
    assert said.exit_code == 0, said.stderr
    assert "auto: F32:" in said.stderr  # this machine has room for the largest
    assert f"would pull hf.co/{REPO}:F32" in said.stderr
    assert store.find(f"hf.co/{REPO}:F32") is None
    pulled = cli(["pull", f"hf.co/{REPO}", "--quant", "auto", "--json"])
    assert pulled.exit_code == 0, pulled.stderr
    record = json.loads(pulled.stdout.strip().splitlines()[-1])
    assert record["quant"] == "F32" and record["name"] == f"hf.co/{REPO}:F32"
    named = cli(["pull", f"hf.co/{REPO}:Q4_0", "--quant", "auto"])
    assert named.exit_code == 2 and "names its file already" in named.stderr


def test_show_quants_lists_files_and_where_each_runs(repo: FakeHub, cli: Any) -> None:
    shown = cli(["show", f"hf.co/{REPO}", "--quants", "--json"])
    assert shown.exit_code == 0, shown.stderr
    rows = json.loads(shown.stdout)
    assert [r["quant"] for r in rows] == ["Q4_0", "Q8_0", "F32"]
    assert all(r["runs"] in (fit.ON_GPU, fit.PART_GPU, fit.ON_CPU) for r in rows)
    assert all(r["needed"] == r["size"] + r["kv_cache"] + COMPUTE_RESERVE for r in rows)
    table = cli(["show", f"hf.co/{REPO}", "--quants"])
    assert "QUANT" in table.stdout and "tiny-Q8_0.gguf" in table.stdout
    local = cli(["show", "demo", "--quants"])
    assert local.exit_code == 2 and "'demo' comes in the Python package" in local.stderr


def test_auto_counts_a_vision_models_projector(hub: FakeHub, files: dict[str, Path]) -> None:
    projector = b"GGUF" + bytes(300_000)  # its size is all that is read
    hub.add_repo(
        REPO,
        {**{name: path.read_bytes() for name, path in files.items()}, "mmproj-F16.gguf": projector},
    )
    ref, commit, offered = pull.offers(f"hf.co/{REPO}")
    assert {o.projector for o in offered} == {len(projector)}
    sized = {f.quant: f for f in fit.judge(ref, commit, offered, fit.Room(0, (), 10**12))}
    q8 = sized["Q8_0"]
    assert q8.needed == q8.weights + len(projector) + q8.kv + COMPUTE_RESERVE
    # Room for the Q8_0 weights and cache, but not with its projector: the smaller one.
    room = fit.Room(gpu=0, gpus=(), ram=q8.needed - 1)
    assert q8.needed - len(projector) <= room.ram
    chosen, why = fit.pick(ref, fit.judge(ref, commit, offered, room), room)
    assert chosen.quant == "Q4_0" and "of projector" in why
