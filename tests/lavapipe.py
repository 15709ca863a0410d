"""Mesa's lavapipe (a Vulkan driver on the CPU) and the Vulkan build of llama-cpp-python, for
the tests that run localrun on a real GPU driver (``tests/test_vulkan*.py``).

llama.cpp leaves devices of type CPU out unless ``GGML_VK_VISIBLE_DEVICES`` names them, so
:func:`vulkan_env` names lavapipe's index. The fixtures skip with one line where the Debian
packages, the build or the driver cannot be had.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests import vulkan_build

ROOT = Path(__file__).resolve().parent.parent
Done = subprocess.CompletedProcess[str]


@dataclass(frozen=True)
class VulkanDevice:
    """A physical device as ``vulkaninfo`` reports it."""

    index: int  # the driver's order: what GGML_VK_VISIBLE_DEVICES counts
    name: str
    device_local_bytes: int  # the heaps llama.cpp adds up as the device's memory


def vulkaninfo_devices(text: str) -> list[VulkanDevice]:
    """The devices of ``vulkaninfo``'s full output, with their device-local heaps."""
    found = []
    for index, block in re.findall(r"^GPU(\d+):\n(.*?)(?=^GPU\d+:|\Z)", text, re.M | re.S):
        name = re.search(r"deviceName\s*=\s*(.+)", block)
        heaps = block.split("memoryHeaps:", 1)[-1].split("memoryTypes:", 1)[0]
        each = re.findall(r"size\s*=\s*(\d+).*?flags:(.*?)(?=memoryHeaps\[|\Z)", heaps, re.S)
        local = sum(int(size) for size, flags in each if "DEVICE_LOCAL" in flags)
        found.append(VulkanDevice(int(index), name.group(1).strip() if name else "?", local))
    return found


@pytest.fixture(scope="session")
def lavapipe() -> VulkanDevice:
    """Mesa's lavapipe as the Vulkan loader finds it."""
    if shutil.which("vulkaninfo") is None:
        pytest.skip(f"no vulkaninfo (Debian: apt-get install {vulkan_build.PACKAGES})")
    info = subprocess.run(["vulkaninfo"], capture_output=True, text=True, timeout=60)
    devices = [d for d in vulkaninfo_devices(info.stdout) if d.name.startswith("llvmpipe")]
    if not devices:
        pytest.skip("no lavapipe in vulkaninfo (Debian: apt-get install mesa-vulkan-drivers)")
    return devices[0]


@pytest.fixture(scope="session")
def vulkan_python() -> Path:
    """The Python of the Vulkan build (built the first time)."""
    try:
        return vulkan_build.vulkan_python()
    except vulkan_build.Unavailable as e:
        pytest.skip(str(e))


def vulkan_vars(device: VulkanDevice | None) -> dict[str, str]:
    """What runs this clone's code on the Vulkan build with ``device`` visible to llama.cpp
    (None: no device named, as on a user's machine with only lavapipe)."""
    named = {"GGML_VK_VISIBLE_DEVICES": str(device.index)} if device is not None else {}
    return {"PYTHONPATH": str(ROOT), **named}


def vulkan_env(device: VulkanDevice | None, debug: bool = True) -> dict[str, str]:
    """This environment with :func:`vulkan_vars`, and llama.cpp's log on stderr (where the
    layers went) unless ``debug`` is False."""
    env = {**os.environ}
    env.pop("GGML_VK_VISIBLE_DEVICES", None)
    env.pop("LOCALRUN_DEBUG", None)
    env.update(vulkan_vars(device))
    if debug:
        env["LOCALRUN_DEBUG"] = "1"
    return env


def in_vulkan_build(
    python: Path,
    device: VulkanDevice | None,
    *args: str,
    env: dict[str, str] | None = None,
    timeout: float = 300,
) -> Done:
    """This clone's code run by the Vulkan build's Python, with lavapipe visible to llama.cpp."""
    return subprocess.run([str(python), *args], capture_output=True, text=True,
                          env={**vulkan_env(device), **(env or {})}, timeout=timeout,
                          cwd=ROOT)  # fmt: skip


def layers_placed(log: str) -> dict[int, str]:
    """llama.cpp's own word on where each layer went (its debug log), the last load's."""
    found = re.findall(r"layer +(\d+) assigned to device (\S+?),", log)
    placed: dict[int, str] = {}
    for layer, device in found:
        if int(layer) in placed and int(layer) == 0:
            placed = {}  # a later load's list begins
        placed[int(layer)] = device
    return placed
