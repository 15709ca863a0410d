"""localrun's GPU paths on a real Vulkan driver, Mesa's lavapipe (see ``tests/test_vulkan.py``
for the build and the greedy text): the planner's partial fit, the out-of-memory retry on a
real allocation failure, flash attention, the server's batching, and an RPC worker whose
device is lavapipe.

lavapipe runs its kernels on the CPU, slowly, and compiles each shader the first time it is
used (Mesa keeps them in its disk cache after): the tests use small contexts and few tokens.
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
from pathlib import Path

import httpx
import pytest

from localrun.backend.llamacpp import offload
from localrun.backend.llamacpp.offload import model_sizes
from localrun.gguf.reader import read_gguf
from tests.lavapipe import VulkanDevice, in_vulkan_build, layers_placed, vulkan_env, vulkan_vars
from tests.served import LOCALRUN, Background, create_model, free_port, serving, wait_for
from tests.tinygguf import write_tiny_model

pytestmark = pytest.mark.slow
MiB = 1 << 20
PROMPT = "Why is the sky blue?"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_model(tmp_path_factory.mktemp("vulkan-device") / "tiny.gguf")


def localrun_on(
    python: Path, device: VulkanDevice, home: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``localrun ARGS`` on the Vulkan build, lavapipe visible, llama.cpp's log on stderr."""
    return in_vulkan_build(python, device, "-m", "localrun", *args,
                           env={"LOCALRUN_HOME": str(home), **(env or {})})  # fmt: skip


def test_a_gpu_memory_budget_makes_a_partial_fit_that_llama_cpp_places_as_planned(
    lavapipe: VulkanDevice, vulkan_python: Path, demo_path: Path, tmp_path: Path
) -> None:
    # A budget that holds the demo model's last 10 layers of 19 (the output layer counted),
    # by the planner's own sizes: lavapipe's 2 GiB would hold them all.
    sizes = model_sizes(read_gguf(demo_path), 512)
    budget = offload.COMPUTE_RESERVE + offload._cost(sizes, 10) + MiB
    done = localrun_on(vulkan_python, lavapipe, tmp_path, "run", str(demo_path), "--ctx", "512",
                       "--max-tokens", "4", "--temperature", "0", "--verbose",
                       "--no-prompt-cache", PROMPT,
                       env={"LOCALRUN_GPU_MEMORY": str(budget)})  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip()
    on = re.escape(lavapipe.name)
    stated = re.search(rf"layers: +GPU: (\d+)/19 layers on {on}, .*\((.*)\)", done.stderr)
    assert stated is not None, done.stderr[-3000:]
    assert int(stated.group(1)) == 10 and "LOCALRUN_GPU_MEMORY" in stated.group(2)
    # llama.cpp's own log: the first 9 layers on the CPU, the last 9 and the output on lavapipe.
    placed = layers_placed(done.stderr)
    assert placed == {layer: "CPU" if layer < 9 else "Vulkan0" for layer in range(19)}


# Loads a model with the planner's choice under a cap on the process's data (RLIMIT_DATA):
# lavapipe's "device memory" is the process's own, so the cap makes the driver's allocation
# fail (vkAllocateMemory: VK_ERROR_OUT_OF_DEVICE_MEMORY) where the planner, reading lavapipe's
# 2 GiB heap, expects all layers to fit. Prints the data the loaded process holds.
LOAD = """
import json, resource, sys
from pathlib import Path
from localrun.engine.load import load_model

path, layers, limit = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
if limit:
    resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))
loaded = load_model(str(path), path=path, n_ctx=512, n_threads=2,
                    gpu_layers=int(layers) if layers.isdigit() else layers)
data = next(int(line.split()[1]) * 1024 for line in open("/proc/self/status")
            if line.startswith("VmData:"))
tokens = loaded.model.tokenize("why is the sky blue", add_special=True, parse_special=False)
n = len(tokens)
assert loaded.model.decode_rows(tokens, list(range(n)), [0] * n, [False] * (n - 1) + [True]) == 0
print(json.dumps({"data": data, "notes": loaded.notes, "layers": loaded.plan.n_gpu_layers,
                  "plan": loaded.plan.describe()}))
loaded.close()
"""


def test_running_out_of_device_memory_retries_with_half_the_layers_and_remembers(
    lavapipe: VulkanDevice, vulkan_python: Path, tmp_path: Path
) -> None:
    # Wide f32 layers (67 MB each) and a small vocabulary: the device's share of the memory is
    # the layers', not the compute buffers'.
    wide = write_tiny_model(tmp_path / "wide.gguf", n_embd=1024, n_ff=4096)
    env = {"LOCALRUN_HOME": str(tmp_path / "home")}

    def load(layers: str, limit: int = 0) -> dict[str, object]:
        done = in_vulkan_build(vulkan_python, lavapipe, "-c", LOAD, str(wide), layers, str(limit),
                               env=env)  # fmt: skip
        assert done.returncode == 0, done.stderr[-3000:]
        result: dict[str, object] = json.loads(done.stdout.splitlines()[-1])
        result["log"] = done.stderr
        return result

    cpu, gpu = load("0"), load("all")
    assert gpu["layers"] == 3 and "everything fits" not in str(gpu["plan"])  # "as asked"
    on_device = int(str(gpu["data"])) - int(str(cpu["data"]))
    assert on_device > 100 * MiB  # the two layers' weights, copied to lavapipe
    # Room for one of the two layers on the device, not for both.
    capped = load("auto", int(str(cpu["data"])) + on_device * 3 // 4)
    log = str(capped["log"])
    assert "ErrorOutOfDeviceMemory" in log  # the driver's own refusal
    assert capped["layers"] == 1
    assert capped["notes"] == [
        "out of GPU memory: retried with 1 GPU layers",
        "remembered 1 GPU layers for this model, context and device",
    ]
    assert "(after an out-of-memory retry)" in str(capped["plan"])
    placed = layers_placed(log)
    assert placed == {0: "CPU", 1: "CPU", 2: "Vulkan0"}
    # The next load starts from the count that worked.
    again = load("auto", int(str(cpu["data"])) + on_device * 3 // 4)
    assert again["layers"] == 1 and "ErrorOutOfDeviceMemory" not in str(again["log"])
    assert "remembered from an earlier out-of-memory retry" in str(again["plan"])


def test_flash_attention_auto_is_off_on_lavapipe_and_on_is_refused_in_one_line(
    lavapipe: VulkanDevice, vulkan_python: Path, tiny: Path, tmp_path: Path
) -> None:
    args = ("run", str(tiny), "--max-tokens", "4", "--ctx", "256", "--no-prompt-cache", PROMPT)
    auto = localrun_on(vulkan_python, lavapipe, tmp_path, *args)
    assert auto.returncode == 0, auto.stderr[-3000:]
    assert re.search(r"flash_attn += disabled", auto.stderr)  # llama.cpp's own word
    env = {**vulkan_env(lavapipe, debug=False), "LOCALRUN_HOME": str(tmp_path)}
    on = subprocess.run([str(vulkan_python), "-m", "localrun", *args, "--flash-attn", "on"],
                        capture_output=True, text=True, env=env, timeout=300)  # fmt: skip
    assert on.returncode == 1 and on.stdout == ""
    assert on.stderr.strip().splitlines() == [
        f"Error: flash attention crashes the driver of {lavapipe.name} (Mesa's lavapipe). "
        "Hint: use --flash-attn off or auto there"
    ]
    # A quantized V cache needs flash attention: without it there, the cache is f16, said so.
    kv = localrun_on(vulkan_python, lavapipe, tmp_path, *args, "--kv-type", "q8_0", "--verbose")
    assert kv.returncode == 0, kv.stderr[-3000:]
    assert "cannot run a q8_0 KV cache (no flash attention for it here): f16 instead" in kv.stderr
    assert re.search(r"KV cache: +\S+ \S+ f16, 256 cells", kv.stderr)
    # The CPU's flash attention is another thing: with no layers on lavapipe it runs.
    cpu = subprocess.run([str(vulkan_python), "-m", "localrun", *args, "--flash-attn", "on",
                          "--gpu-layers", "0"], capture_output=True, text=True, env=env,
                         timeout=300)  # fmt: skip
    assert cpu.returncode == 0, cpu.stderr


def test_the_server_batches_requests_on_lavapipe(
    lavapipe: VulkanDevice, vulkan_python: Path, tiny: Path, tmp_path: Path
) -> None:
    prompts = ["the sky is", "a cat sat on", "why is the sea"]
    env = vulkan_vars(lavapipe)
    program = (str(vulkan_python), "-m", "localrun")
    create_model(tmp_path, "tiny", f"FROM {tiny}\n")
    with serving(tmp_path, "--parallel", "4", "--metrics", env=env, program=program) as server:

        def generate(prompt: str) -> dict[str, object]:
            body = {"model": "tiny", "prompt": prompt, "stream": False, "raw": True,
                    "options": {"temperature": 0, "num_predict": 24, "num_ctx": 256}}  # fmt: skip
            reply = httpx.post(server.url + "/api/generate", json=body, timeout=300)
            assert reply.status_code == 200, reply.text
            answer: dict[str, object] = reply.json()
            return answer

        alone = [generate(p) for p in prompts]  # loads the model, then one at a time
        running: list[int] = []

        async def together() -> list[dict[str, object]]:
            async def watch() -> None:
                async with httpx.AsyncClient() as client:
                    while len(running) < 400:
                        text = (await client.get(server.url + "/metrics")).text
                        found = re.search(r"^localrun_requests_running\S* (\d+)", text, re.M)
                        running.append(int(float(found.group(1))) if found else 0)
                        await asyncio.sleep(0.05)

            watcher = asyncio.create_task(watch())
            answers = await asyncio.gather(*(asyncio.to_thread(generate, p) for p in prompts))
            watcher.cancel()
            return list(answers)

        batched = asyncio.run(together())
        ps = httpx.get(server.url + "/api/ps", timeout=30).json()
    assert max(running) == 3  # all three decoded in the same steps
    assert [a["eval_count"] for a in batched] == [24, 24, 24]
    # The same greedy text as one at a time, as on the CPU (the tiny model's logits are
    # far apart at these prompts: no near-tie to tip).
    assert [a["response"] for a in batched] == [a["response"] for a in alone]
    (model,) = ps["models"]
    assert model["placement"] == "GPU 3/3" and model["size_vram"] > 0  # all on lavapipe


def test_an_rpc_worker_lends_lavapipe_to_a_cpu_client(
    lavapipe: VulkanDevice, vulkan_python: Path, tiny: Path, tmp_path: Path
) -> None:
    port = free_port()
    program = (str(vulkan_python), "-m", "localrun")
    worker = Background(tmp_path / "worker", "worker", "--port", str(port), "--threads", "2",
                        env=vulkan_vars(lavapipe), program=program)  # fmt: skip
    try:
        wait_for(lambda: "worker listening on" in worker.stderr or worker.proc.poll() is not None,
                 timeout=120)  # fmt: skip
        assert worker.proc.poll() is None, worker.stderr
        assert re.search(rf"lends Vulkan0 \({re.escape(lavapipe.name)}\)", worker.stderr)
        # The client cannot see the worker's driver, whose flash attention crashes: it says so.
        assert "clients must run with --flash-attn off" in worker.stderr
        endpoint = f"127.0.0.1:{port}"
        env = {"LOCALRUN_HOME": str(tmp_path / "client"), "LOCALRUN_DEBUG": "1"}
        done = subprocess.run(
            [LOCALRUN, "run", str(tiny), "--rpc", endpoint, "--gpu-layers", "all", "--ctx",
             "256", "--max-tokens", "8", "--temperature", "0", "--verbose", "--no-prompt-cache",
             "--flash-attn", "off", PROMPT],
            capture_output=True, text=True, env={**vulkan_env(None, debug=True), **env},
            timeout=300,
        )  # fmt: skip
    finally:
        worker.stop(timeout=30)
    assert done.returncode == 0, done.stderr[-3000:]
    assert re.search(rf"layers: +RPC: 3/3 layers on worker {endpoint}", done.stderr)
    placed = layers_placed(done.stderr)
    assert len(placed) == 3 and all(d.startswith("RPC") for d in placed.values()), placed
    assert "client connected" in worker.stderr
