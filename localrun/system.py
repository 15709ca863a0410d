"""Facts about this machine that choose good defaults."""

from __future__ import annotations

import os
import time
from pathlib import Path


def physical_cores() -> int:
    """The number of physical CPU cores this process may run on.

    Decode speed peaks at one thread per physical core: hyper-threads share the
    core's execution units and only add contention. psutil knows this too, but is
    not worth a dependency for ten lines of /proc parsing; elsewhere we fall back to
    the number of usable logical CPUs.
    """
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    logical = usable or os.cpu_count() or 1
    cores: set[tuple[str, str]] = set()
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return logical
    physical = core = ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "physical id":
            physical = value.strip()
        elif key == "core id":
            core = value.strip()
        elif not line.strip() and core:
            cores.add((physical, core))
            physical = core = ""
    if core:
        cores.add((physical, core))
    return max(1, min(len(cores), logical)) if cores else logical


def busy_elsewhere(reads: int = 3) -> int:
    """How many cores other processes keep busy now: the tasks ready to run besides this one
    (the fourth field of /proc/loadavg), the least of a few reads 2 ms apart, so that a task
    that runs for an instant is not taken for a busy core. 0 where the OS does not say."""
    least = None
    for i in range(reads):
        try:
            running = int(Path("/proc/loadavg").read_text().split()[3].split("/")[0])
        except (OSError, ValueError, IndexError):
            return 0
        others = running - 1  # this process is running while it reads
        least = others if least is None else min(least, others)
        if i + 1 < reads:
            time.sleep(0.002)
    return max(0, least or 0)


def run_threads() -> tuple[int, int]:
    """The threads a single answer should use by default, and the cores found busy.

    One per physical core on an idle machine; a core fewer for each that other processes keep
    busy. llama.cpp's threads wait for each other at every step, so one that must share its
    core slows them all: beside one busy process on 2 cores, 2 threads decoded at 0.46x the
    speed of 1 thread (and at 1.7x when the machine was idle), docs/performance.md.
    """
    cores = physical_cores()
    allowed = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    if allowed is not None and allowed < (os.cpu_count() or allowed):
        # Held to some CPUs (taskset, a container's cpuset): /proc/loadavg counts the tasks
        # of every CPU, so it cannot say how busy ours are. Take them all, as before.
        return cores, 0
    busy = min(busy_elsewhere(), cores - 1)
    return cores - busy, busy


def physical_memory() -> int | None:
    """Bytes of memory this machine has, if the OS says."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def available_memory() -> int | None:
    """Bytes of memory free for a new process now (Linux's MemAvailable: free memory and the
    caches it can drop), if the OS says; else the total."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return physical_memory()
