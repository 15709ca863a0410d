"""numpy is imported beside a model load without rewriting the C environment that llama.cpp
reads meanwhile (a getenv that met numpy's putenv crashed one load in a thousand)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# In a fresh process: the C environment's array and its entries before the import thread
# starts and after it has ended. setenv of a new name moves the array; unsetenv rewrites it.
SCRIPT = """
import ctypes, json, sys
from localrun.backend.llamacpp import sampler

libc = ctypes.CDLL(None)

def environment():
    array = ctypes.c_void_p.in_dll(libc, "environ").value
    entries = ctypes.cast(array, ctypes.POINTER(ctypes.c_char_p))
    found, i = [], 0
    while entries[i] is not None:
        found.append(entries[i].decode(errors="replace"))
        i += 1
    return [array, found]

assert "numpy" not in sys.modules, "numpy came with the backend's import"
sampler.numpy_environment()
before = environment()
sampler.preload().join()
assert "numpy" in sys.modules
print(json.dumps({"before": before, "after": environment()}))
"""


def test_importing_numpy_in_the_background_leaves_the_c_environment_as_it_was() -> None:
    env = {k: v for k, v in os.environ.items() if not k.endswith("_MAIN_FREE")}
    env["PYTHONPATH"] = str(ROOT)
    done = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True,
                          env=env, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout)
    assert seen["after"] == seen["before"]
    assert "OPENBLAS_MAIN_FREE=1" in seen["before"][1]  # numpy's own setting, made first
