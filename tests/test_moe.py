"""A mixture-of-experts model's experts kept in the CPU's memory (llama.cpp's --cpu-moe and
--n-cpu-moe): the planner counts the rest of each layer for the GPU, and llama.cpp's own log
says where each expert tensor went. The model is a tiny MoE (llama's architecture with
experts, as Mixtral's) written by the suite."""

from __future__ import annotations

from pathlib import Path

import pytest

from localrun.backend import LoadOptions, load
from localrun.backend.llamacpp import logs, offload
from localrun.backend.llamacpp.offload import GPU, model_sizes
from localrun.gguf.reader import read_gguf
from tests.tinygguf import N_LAYER, write_tiny_model


@pytest.fixture(scope="module")
def moe(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_model(tmp_path_factory.mktemp("moe") / "moe.gguf", experts=4)


def _overridden(path: Path, cpu_moe: int) -> set[str]:
    """The tensors llama.cpp's log says it put in the CPU's memory by override."""
    seen: list[str] = []
    logs.start()
    with logs.following(seen.append):
        model = load(LoadOptions(path, n_ctx=256, n_threads=1, cpu_moe=cpu_moe))
    model.close()
    return {line.split()[1] for line in seen if "buffer type overridden to CPU" in line}


def test_the_log_says_which_experts_stay_on_the_cpu(moe: Path) -> None:
    parts = ("gate", "up", "down")
    first = {f"blk.0.ffn_{p}_exps.weight" for p in parts}
    every = {f"blk.{i}.ffn_{p}_exps.weight" for i in range(N_LAYER) for p in parts}
    assert _overridden(moe, 1) == first
    assert _overridden(moe, -1) == every
    assert _overridden(moe, 0) == set()


def test_the_planner_counts_the_rest_of_each_layer(moe: Path) -> None:
    sizes = model_sizes(read_gguf(moe), 256)
    experts = [t for t in read_gguf(moe).tensors if "_exps." in t.name]
    assert sum(sizes.experts) == sum(t.n_bytes for t in experts) > 0
    first = sizes.experts_on_cpu(1)
    assert first.layers[0] == sizes.layers[0] - sizes.experts[0]
    assert first.layers[1:] == sizes.layers[1:]
    assert sum(sizes.experts_on_cpu(-1).layers) == sum(sizes.layers) - sum(sizes.experts)
    # A GPU that holds every layer without its experts, and not with them: all the layers
    # go to it only when the experts stay behind.
    split_sizes = sizes.experts_on_cpu(-1)
    need = offload._cost(split_sizes, N_LAYER + 1)
    assert offload._cost(sizes, N_LAYER + 1) > need
    free = need + offload.COMPUTE_RESERVE + offload.MIN_MARGIN
    gpu = GPU("Sim GPU", free, free)
    assert offload.plan(split_sizes, [gpu]).n_gpu_layers == N_LAYER + 1
    assert offload.plan(sizes, [gpu]).n_gpu_layers < N_LAYER + 1


def test_the_flags(moe: Path, cli: object) -> None:
    done = cli(["run", str(moe), "--n-cpu-moe", "1", "-n", "2", "hi"])  # type: ignore[operator]
    assert done.exit_code == 0, done.stderr
    both = cli(["run", str(moe), "--cpu-moe", "--n-cpu-moe", "1", "hi"])  # type: ignore[operator]
    assert both.exit_code == 2
    assert "--cpu-moe and --n-cpu-moe cannot go together" in both.stderr
