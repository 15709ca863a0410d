"""The GPU fit planner on real tensor tables with simulated devices, and the CPU path."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from localrun import backend, engine
from localrun.backend.llamacpp import offload
from localrun.backend.llamacpp.offload import GPU, ModelSizes, model_sizes, plan
from localrun.errors import OutOfMemoryError, UsageError
from localrun.files import human_size
from localrun.gguf.reader import read_gguf

GB = 10**9
MiB = 1 << 20


@pytest.fixture(scope="module")
def demo_sizes(demo_path: Path) -> ModelSizes:
    return model_sizes(read_gguf(demo_path), 4096)


@pytest.mark.slow
def test_sizes_from_the_demo_models_tensor_table(demo_sizes: ModelSizes, demo_path: Path) -> None:
    info = read_gguf(demo_path)
    assert demo_sizes.n_layer == 18
    assert demo_sizes.n_vocab == 262144
    # Every tensor is counted once: layers plus output (which is the tied embedding here).
    embd = next(t.n_bytes for t in info.tensors if t.name == "token_embd.weight")
    norm = next(t.n_bytes for t in info.tensors if t.name == "output_norm.weight")
    assert demo_sizes.output == embd + norm
    assert sum(demo_sizes.layers) + norm + embd == sum(t.n_bytes for t in info.tensors)
    # Gemma 3 270M: 1 KV head of 256 for keys and values, f16, 4096 positions.
    assert demo_sizes.kv_per_layer == (4096 * 1 * (256 + 256) * 2,) * 18


def test_sizes_from_a_generated_model(tiny_model: Path) -> None:
    sizes = model_sizes(read_gguf(tiny_model), 1024)
    assert sizes.n_layer == 2 and sizes.layers[0] == sizes.layers[1] > 0
    assert sizes.kv_per_layer == (1024 * 4 * (16 + 16) * 2,) * 2  # 4 heads of 16


def cost(sizes: ModelSizes, k: int) -> int:
    return offload._cost(sizes, k)


def gpu_with(usable: int, name: str = "GPU0") -> GPU:
    """A device whose usable memory, after margin and compute reserve, is ``usable``."""
    total = 80 * GB
    margin = max(offload.MIN_MARGIN, int(total * offload.MARGIN_FRACTION))
    return GPU(name, usable + margin + offload.COMPUTE_RESERVE, total)


def test_everything_fits(demo_sizes: ModelSizes) -> None:
    p = plan(demo_sizes, [gpu_with(10 * GB, "NVIDIA H100")])
    assert p.n_gpu_layers == 19 and p.offloaded == 19
    assert p.placement == "GPU 19/19"
    assert p.describe().startswith("GPU: 19/19 layers on NVIDIA H100, ")
    assert "everything fits" in p.describe()


def test_partial_fit_takes_as_many_as_fit(demo_sizes: ModelSizes) -> None:
    room = cost(demo_sizes, 10) + 1
    p = plan(demo_sizes, [gpu_with(room)])
    assert p.n_gpu_layers == 10
    assert cost(demo_sizes, p.n_gpu_layers) <= room < cost(demo_sizes, 11)
    assert p.reason == "10 of 19 fit in the free GPU memory"


def test_a_gpu_memory_budget_caps_each_local_gpu_but_not_a_worker(
    demo_sizes: ModelSizes, monkeypatch: pytest.MonkeyPatch
) -> None:
    budget = cost(demo_sizes, 7) + offload.COMPUTE_RESERVE + 1
    monkeypatch.setenv(offload.BUDGET_ENV, str(budget))
    big = gpu_with(10 * GB, "NVIDIA H100")
    capped = plan(demo_sizes, [big])
    assert capped.n_gpu_layers == 7
    assert capped.reason == f"7 of 19 fit in the {human_size(budget)} of LOCALRUN_GPU_MEMORY"
    worker = GPU("worker 10.0.0.2:50052", big.free_bytes, big.total_bytes, remote=True)
    assert plan(demo_sizes, [worker]).n_gpu_layers == 19  # another machine's card
    monkeypatch.setenv(offload.BUDGET_ENV, "1.5G")
    assert offload.budget() == 1_500_000_000
    monkeypatch.setenv(offload.BUDGET_ENV, "half")
    with pytest.raises(UsageError, match=r"LOCALRUN_GPU_MEMORY.*not a size"):
        plan(demo_sizes, [big])


def test_nothing_fits(demo_sizes: ModelSizes) -> None:
    p = plan(demo_sizes, [GPU("small", 300 * MiB, 512 * MiB)])
    assert p.n_gpu_layers == 0 and p.placement == "CPU"
    assert "not even one layer fits" in p.describe()


def test_two_devices_share_the_layers(demo_sizes: ModelSizes) -> None:
    half = cost(demo_sizes, 19) // 2 + 50 * MiB
    one = plan(demo_sizes, [gpu_with(half, "A")])
    two = plan(demo_sizes, [gpu_with(half, "A"), gpu_with(half * 2, "B")])
    assert one.n_gpu_layers < 19 and two.n_gpu_layers == 19
    assert two.devices == ("A", "B")
    assert two.split is not None and two.split[1] == pytest.approx(2 * two.split[0], rel=0.05)
    assert "on A + B" in two.describe()


def test_explicit_requests(demo_sizes: ModelSizes) -> None:
    tiny = [GPU("small", 300 * MiB, 512 * MiB)]
    assert plan(demo_sizes, tiny, "all").n_gpu_layers == 19
    assert plan(demo_sizes, tiny, 5).n_gpu_layers == 5
    assert plan(demo_sizes, tiny, 500).n_gpu_layers == 19
    assert plan(demo_sizes, [gpu_with(10 * GB)], 0).describe() == (
        "CPU: --gpu-layers 0 keeps every layer on the CPU"
    )


def test_no_gpu_backend_says_so(demo_sizes: ModelSizes) -> None:
    p = plan(demo_sizes, [], offload_supported=False)
    assert p.describe() == "CPU: this llama.cpp build has no GPU backend, see docs/gpu.md"


def test_auto_on_this_machine_places_layers_where_its_devices_allow(tiny_model: Path) -> None:
    """Whatever this machine is: CPU with the reason when it has no GPU, else GPU layers."""
    from localrun.backend.llamacpp import devices

    loaded = engine.load_model(str(tiny_model), n_threads=1)
    try:
        if devices.supports_offload() and devices.gpus():
            assert loaded.placement.startswith("GPU") and loaded.plan.n_gpu_layers > 0
        else:
            assert loaded.placement == "CPU" and loaded.plan.n_gpu_layers == 0
            assert "no GPU backend" in loaded.plan.describe() or "no GPU" in loaded.plan.describe()
    finally:
        loaded.close()


SIM_GPU = "Sim GPU"


@pytest.fixture
def simulated_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """One 10 GB GPU, as ggml's device registry would report it (its public functions)."""
    from localrun.backend.llamacpp import devices

    gpu = devices.Device("SIM0", SIM_GPU, "gpu", 10 * GB, 12 * GB)
    monkeypatch.setattr(devices, "supports_offload", lambda: True)
    monkeypatch.setattr(devices, "gpus", lambda: [gpu])


def test_out_of_memory_halves_and_remembers(
    tiny_model: Path, monkeypatch: pytest.MonkeyPatch, simulated_gpu: None
) -> None:
    tried: list[int] = []
    real_load = backend.load

    def load(options: backend.LoadOptions) -> Any:
        tried.append(options.n_gpu_layers)
        if options.n_gpu_layers > 1:
            raise OutOfMemoryError("not enough device memory", "fewer layers")
        return real_load(backend.LoadOptions(options.path, options.n_ctx, options.n_threads))

    monkeypatch.setattr(backend, "load", load)
    loaded = engine.load_model(str(tiny_model), n_threads=1)
    loaded.close()
    # The tiny model's 2 layers and its output layer all fit the planner's 10 GB: 3, then half.
    assert tried == [3, 1]
    assert loaded.plan.n_gpu_layers == 1 and loaded.placement == "GPU 1/3"
    assert loaded.notes[-1] == "remembered 1 GPU layers for this model, context and device"
    key = offload.memory_key(tiny_model, 2048, (SIM_GPU,))
    assert offload.remembered(key) == 1
    tried.clear()
    engine.load_model(str(tiny_model), n_threads=1).close()
    assert tried == [1]  # the next load starts from what worked
