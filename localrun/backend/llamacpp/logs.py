"""llama.cpp's log, captured per thread, and what a failed load's log means.

llama.cpp logs through one process-wide callback. Its lines are kept per thread, so that a
load that fails in one thread reports its own cause even while another thread loads; they
stay off the user's stderr unless ``LOCALRUN_DEBUG=1``. Should llama.cpp abort the process
(a failed GGML_ASSERT), the user gets one line on stderr in localrun's words, not a
debugger's backtrace on stdout (ggml runs gdb for one unless GGML_NO_BACKTRACE is set).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import sys
import tempfile
import threading
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path

from localrun.backend.llamacpp import bindings
from localrun.errors import InvalidModelError, LocalrunError, ModelLoadError, OutOfMemoryError

bindings.register()

import llama_cpp.llama_cpp as lc  # noqa: E402

_KEEP = 200  # lines per thread
_ERROR, _CONTINUED = 4, 5  # ggml's GGML_LOG_LEVEL_ERROR and GGML_LOG_LEVEL_CONT
_LOGS: dict[int, deque[tuple[int, str]]] = {}
_LISTENERS: dict[int, Callable[[str], None]] = {}  # a thread's own reader of its lines
_TO_STDERR = os.environ.get("LOCALRUN_DEBUG") == "1"


@lc.llama_log_callback  # type: ignore[untyped-decorator]
def _log_callback(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
    line = text.decode("utf-8", errors="replace")
    lines = _LOGS.get(threading.get_ident())
    if lines is None:
        lines = _LOGS.setdefault(threading.get_ident(), deque(maxlen=_KEEP))
    if level == _CONTINUED and lines:
        level = lines[-1][0]  # a continued line has the level of the line it continues
    lines.append((level, line))
    listener = _LISTENERS.get(threading.get_ident())
    if listener is not None:
        listener(line)
    if _TO_STDERR:
        sys.stderr.write(line)


lc.llama_log_set(_log_callback, ctypes.c_void_p(0))

_ABORT_CALLBACK = ctypes.CFUNCTYPE(None, ctypes.c_char_p)


# What llama.cpp's RPC client aborts with when a worker is gone or breaks off mid-step.
_RPC_ABORTS = ("Failed to connect to", "RPC handshake failed", "Remote RPC server crashed")


@_ABORT_CALLBACK  # type: ignore[untyped-decorator]
def _on_abort(message: bytes) -> None:
    text = (message or b"").decode("utf-8", "replace").strip()
    if any(marker in text for marker in _RPC_ABORTS):
        cause = text.split(": ", 1)[-1].strip()  # without the source file and line
        error = LocalrunError(
            f"lost an RPC worker: {cause}",
            "check that every 'localrun worker' named by --rpc still runs and can be reached",
        )
        os.write(2, (error.line() + "\n").encode())
        os._exit(1)  # not a bug of ours: a handled error's exit status, without a core dump
    os.write(
        2,
        f"Error: llama.cpp stopped the process ({text}). Hint: this is a bug in localrun; "
        "run again with LOCALRUN_DEBUG=1 and report it\n".encode(),
    )


if not _TO_STDERR:
    os.environ.setdefault("GGML_NO_BACKTRACE", "1")
    _ggml_base = bindings.load_library("ggml-base")
    _ggml_base.ggml_set_abort_callback.restype = ctypes.c_void_p
    _ggml_base.ggml_set_abort_callback.argtypes = [_ABORT_CALLBACK]
    _ggml_base.ggml_set_abort_callback(_on_abort)


def start() -> None:
    """Forget this thread's earlier lines: what follows belongs to the next load."""
    _LOGS.pop(threading.get_ident(), None)
    reclaim()


def reclaim() -> None:
    """Importing llama_cpp's high-level package installs its own log callback (printing to
    stderr): take it back."""
    lc.llama_log_set(_log_callback, ctypes.c_void_p(0))


_STDERR_LOCK = threading.Lock()


@contextlib.contextmanager
def stderr_text() -> Iterator[list[str]]:
    """What llama.cpp writes straight to the process's stderr meanwhile (its grammar parser
    does, bypassing the log), kept off the user's screen: the list holds it afterwards."""
    caught: list[str] = []
    with _STDERR_LOCK, tempfile.TemporaryFile() as sink:
        sys.stderr.flush()
        saved = os.dup(2)
        os.dup2(sink.fileno(), 2)
        try:
            yield caught
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            caught.append(sink.read().decode("utf-8", "replace"))


@contextlib.contextmanager
def following(listener: Callable[[str], None]) -> Iterator[None]:
    """Meanwhile, each line llama.cpp logs in this thread also goes to ``listener``."""
    _LISTENERS[threading.get_ident()] = listener
    try:
        yield
    finally:
        _LISTENERS.pop(threading.get_ident(), None)


def recent() -> list[tuple[int, str]]:
    """The lines (with their levels) llama.cpp logged in this thread since :func:`start`."""
    return list(_LOGS.get(threading.get_ident(), ()))


def recent_errors() -> list[str]:
    """The lines llama.cpp logged as errors in this thread since :func:`start`.

    By level, not by wording: a path with "error" in it must not make an info line a cause.
    """
    lines = _LOGS.get(threading.get_ident(), ())
    return [line.strip() for level, line in lines if level == _ERROR and line.strip()]


# Log text that means a device ran out of memory (CUDA, Metal, Vulkan, ggml allocators).
_OOM_MARKERS = ("out of memory", "failed to allocate", "unable to allocate", "cudaMalloc failed")
# Log text that means the file ends too early or its offsets point outside it.
_DAMAGE_MARKERS = ("not within the file bounds", "failed to read", "unexpectedly reached end")
_FEWER = "use fewer GPU layers (--gpu-layers N) or a smaller context (--ctx)"


def out_of_memory(what: str) -> OutOfMemoryError | None:
    """An error saying so, if this thread's log shows a device ran out of memory."""
    if any(m in line.lower() for line in recent_errors() for m in _OOM_MARKERS):
        return OutOfMemoryError(f"not enough device memory for {what}", _FEWER)
    return None


def load_failure(path: Path) -> LocalrunError:
    """Turn llama.cpp's log of a failed load into one error that names the cause."""
    oom = out_of_memory(f"the model {path}")
    if oom is not None:
        return oom
    errors = recent_errors()
    # The first error is the cause; the later ones are each caller giving up in turn.
    cause = errors[0].split(": ")[-1] if errors else "llama.cpp gave no reason"
    for marker in _DAMAGE_MARKERS:
        damaged = next((e for e in errors if marker in e), None)
        if damaged is not None:
            return InvalidModelError(
                f"{path} is truncated or corrupted ({damaged.split(': ', 1)[-1]})",
                "download or copy the model again",
            )
    return ModelLoadError(
        f"llama.cpp could not load {path}: {cause}",
        "check that the file is a GGUF model this llama.cpp version supports "
        "(LOCALRUN_DEBUG=1 shows llama.cpp's log)",
    )


def context_failure(n_ctx: int) -> LocalrunError:
    """Why llama.cpp could not make a context, from this thread's log."""
    oom = out_of_memory(f"a context of {n_ctx} tokens")
    if oom is not None:
        return oom
    errors = recent_errors()
    return ModelLoadError(
        f"llama.cpp could not create a context of {n_ctx} tokens"
        + (f": {errors[-1]}" if errors else ""),
        "try a smaller context with --ctx",
    )
