"""Import llama-cpp-python's ctypes bindings without the rest of its package.

localrun calls llama.cpp through the low-level bindings alone (``llama_cpp.llama_cpp``). But
``import llama_cpp.llama_cpp`` first runs the package's ``__init__``, which also imports the
high-level ``Llama`` class and, with it, numpy and the chat formats: 0.13-0.3 s on every run
here, against 0.04 s for the bindings. :func:`register` puts the package in ``sys.modules``
without running its ``__init__``, so that importing the bindings costs only the bindings; the
first use of anything else from the package (``from llama_cpp import Llama``) runs the
``__init__`` then, so other code in the same process sees the whole package as usual.

Call :func:`register` before the first ``import llama_cpp...``; where the package is already
imported, it does nothing.
"""

from __future__ import annotations

import ctypes
import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

from localrun.errors import ModelLoadError


class _Unrun(ModuleType):
    """The ``llama_cpp`` package before its ``__init__`` has run; a missing name runs it."""

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") and name.endswith("__"):
            raise AttributeError(name)  # the import system's probes must not run the package
        spec = self.__spec__
        assert spec is not None and spec.loader is not None
        self.__class__ = ModuleType  # type: ignore[assignment] # an ordinary module from now on
        spec.loader.exec_module(self)
        return getattr(self, name)


def register() -> None:
    """Make ``import llama_cpp.llama_cpp`` load the bindings alone."""
    if "llama_cpp" in sys.modules:
        return
    spec = importlib.util.find_spec("llama_cpp")
    if spec is None or spec.loader is None:
        raise ModelLoadError("llama-cpp-python is not installed", "install localrun again with pip")
    package = importlib.util.module_from_spec(spec)
    package.__class__ = _Unrun
    sys.modules["llama_cpp"] = package


def load_library(name: str) -> ctypes.CDLL:
    """One of the shared libraries llama-cpp-python ships (``ggml``, ``ggml-base``, ...): the
    very copy its libllama uses.

    The wheel holds each library under several names (``libggml.so``, ``libggml.so.0``...)
    as separate files, not links: opening another name than libllama's would load a second
    ggml, with its own registry of devices and its own abort handler, which llama.cpp never
    sees. So the copy already loaded is looked up first (``RTLD_NOLOAD``).
    """
    register()
    import llama_cpp.llama_cpp  # noqa: F401 - loads libllama and the ggml libraries it links

    spec = importlib.util.find_spec("llama_cpp")
    assert spec is not None and spec.origin is not None
    lib_dir = Path(spec.origin).parent / "lib"
    others = (lib_dir / f"lib{name}.dylib", lib_dir / f"{name}.dll")
    names = [*sorted(lib_dir.glob(f"lib{name}.so*")), *others]
    noload = getattr(os, "RTLD_NOLOAD", 0)
    if noload:
        for path in names:
            if path.exists():
                try:
                    return ctypes.CDLL(str(path), mode=noload | os.RTLD_NOW)
                except OSError:
                    continue  # a name libllama did not load
    for path in names:
        if path.exists():
            return ctypes.CDLL(str(path))
    return ctypes.CDLL(f"lib{name}.so")  # a system-wide install
