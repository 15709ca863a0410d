"""The llama.cpp backend, through llama-cpp-python's low-level ctypes API.

The high-level ``llama_cpp.Llama`` class is not used: it keeps a Python-side copy of
the logits, makes its context with a fixed thread default, and prints to stderr. Here
the loop is llama.cpp's own: ``llama_decode`` for the prompt and each token, and the
native sampler chain (``llama_sampler_sample``) to choose the next token.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Generator, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from localrun.backend import BackendEvent, LoadOptions, Prefilled, SamplingParams, Token
from localrun.backend.llamacpp import bindings
from localrun.errors import (
    GenerationError,
    InvalidModelError,
    LocalrunError,
    ModelLoadError,
    OutOfMemoryError,
)

bindings.register()  # the ctypes bindings alone: 0.04 s instead of 0.13-0.3 s

import llama_cpp.llama_cpp as lc  # noqa: E402

DEFAULT_MAX_CTX = 4096
N_BATCH = 512  # prompt chunk size: also bounds how long Ctrl-C waits during a prefill
CTX_ALIGN = 256  # llama.cpp rounds a context up to a multiple of this
MAX_THREADS = 512  # ggml's GGML_MAX_N_THREADS: more aborts the process

# llama.cpp logs through one process-wide callback. Keep its recent lines so that a
# failed load can say why, and keep them off the user's stderr unless debugging.
_LOG: deque[str] = deque(maxlen=200)
_LOG_TO_STDERR = os.environ.get("LOCALRUN_DEBUG") == "1"


@lc.llama_log_callback  # type: ignore[untyped-decorator]
def _log_callback(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
    line = text.decode("utf-8", errors="replace")
    _LOG.append(line)
    if _LOG_TO_STDERR:
        sys.stderr.write(line)


lc.llama_log_set(_log_callback, ctypes.c_void_p(0))


# When llama.cpp meets a state it cannot handle (a failed GGML_ASSERT), it aborts the
# process. Inputs are checked before they reach it; should one still slip through, the user
# gets one line on stderr in localrun's words, not a debugger's backtrace on stdout (ggml
# runs gdb for one unless GGML_NO_BACKTRACE is set; LOCALRUN_DEBUG=1 keeps it).
_ABORT_CALLBACK = ctypes.CFUNCTYPE(None, ctypes.c_char_p)


@_ABORT_CALLBACK  # type: ignore[untyped-decorator]
def _on_abort(message: bytes) -> None:
    text = (message or b"").decode("utf-8", "replace").strip()
    os.write(
        2,
        f"Error: llama.cpp stopped the process ({text}). Hint: this is a bug in localrun; "
        "run again with LOCALRUN_DEBUG=1 and report it\n".encode(),
    )


if not _LOG_TO_STDERR:
    os.environ.setdefault("GGML_NO_BACKTRACE", "1")
    _ggml_base = bindings.load_library("ggml-base")
    _ggml_base.ggml_set_abort_callback.restype = ctypes.c_void_p
    _ggml_base.ggml_set_abort_callback.argtypes = [_ABORT_CALLBACK]
    _ggml_base.ggml_set_abort_callback(_on_abort)
lc.llama_backend_init()


@contextmanager
def _interruptible() -> Iterator[threading.Event]:
    """Let Ctrl-C stop a model load, which runs inside llama.cpp.

    Python's default handler would raise KeyboardInterrupt inside llama.cpp's log callback,
    where ctypes can only print and drop it: the load (and the answer) would go on. Here
    Ctrl-C only sets the event; the progress callback then tells llama.cpp to stop, and the
    caller raises KeyboardInterrupt once llama.cpp has returned.
    """
    stop = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return
    previous = signal.signal(signal.SIGINT, lambda signum, frame: stop.set())
    try:
        yield stop
    finally:
        signal.signal(signal.SIGINT, previous)


def recent_log_errors() -> list[str]:
    """The error-looking lines llama.cpp logged since the last load, oldest first."""
    lines = [line.strip() for line in _LOG if line.strip()]
    return [line for line in lines if "error" in line.lower() or "failed" in line.lower()]


# Log text that means a device ran out of memory (CUDA, Metal, Vulkan, ggml allocators).
_OOM_MARKERS = ("out of memory", "failed to allocate", "unable to allocate", "cudaMalloc failed")
# Log text that means the file ends too early or its offsets point outside it.
_DAMAGE_MARKERS = ("not within the file bounds", "failed to read", "unexpectedly reached end")


def _load_failure(path: Path) -> LocalrunError:
    """Turn llama.cpp's log of a failed load into one error that names the cause."""
    errors = recent_log_errors()
    if any(m in line.lower() for line in errors for m in _OOM_MARKERS):
        return OutOfMemoryError(
            f"not enough device memory to load {path}",
            "use fewer GPU layers (--gpu-layers N) or a smaller context (--ctx)",
        )
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


def context_size(requested: int | None, n_ctx_train: int) -> int:
    """The context llama.cpp will make: the request (or the default), rounded up to 256.

    Rounding here, not in llama.cpp, matters: llama.cpp caps the batch at the context it
    was asked for before rounding, and a prompt chunk larger than the batch aborts it.
    """
    n = requested or min(n_ctx_train or DEFAULT_MAX_CTX, DEFAULT_MAX_CTX)
    return max(CTX_ALIGN, -(-n // CTX_ALIGN) * CTX_ALIGN)


class LlamaCppModel:
    """A llama.cpp model and context implementing :class:`localrun.backend.Model`."""

    def __init__(self, options: LoadOptions) -> None:
        if not 1 <= options.n_threads <= MAX_THREADS:
            raise ModelLoadError(
                f"{options.n_threads} threads is more than llama.cpp can run",
                f"use --threads between 1 and {MAX_THREADS}",
            )
        _LOG.clear()
        mparams = lc.llama_model_default_params()
        mparams.n_gpu_layers = options.n_gpu_layers
        if options.tensor_split:
            self._split = (ctypes.c_float * len(options.tensor_split))(*options.tensor_split)
            mparams.tensor_split = self._split
        with _interruptible() as stop:
            # llama.cpp asks this between tensors whether to go on loading.
            self._progress = lc.llama_progress_callback(lambda p, data: not stop.is_set())
            mparams.progress_callback = self._progress
            model = lc.llama_model_load_from_file(str(options.path).encode(), mparams)
            if stop.is_set():
                if model:
                    lc.llama_model_free(model)
                raise KeyboardInterrupt
            if not model:
                raise _load_failure(options.path)
            self._model = model
            self._vocab = lc.llama_model_get_vocab(model)
            self._n_ctx_train = int(lc.llama_model_n_ctx_train(model))
            self.n_layer = int(lc.llama_model_n_layer(model))
            requested = context_size(options.n_ctx, self._n_ctx_train)
            ctx = self._new_context(model, requested, options.n_threads)
            if stop.is_set():
                if ctx:
                    lc.llama_free(ctx)
                lc.llama_model_free(model)
                self._model = None
                raise KeyboardInterrupt
        if not ctx:
            lc.llama_model_free(model)
            errors = recent_log_errors()
            if any(m in line.lower() for line in errors for m in _OOM_MARKERS):
                raise OutOfMemoryError(
                    f"not enough memory for a context of {requested} tokens",
                    "use fewer GPU layers (--gpu-layers N) or a smaller context (--ctx)",
                )
            raise ModelLoadError(
                f"llama.cpp could not create a context of {requested} tokens"
                + (f": {errors[-1]}" if errors else ""),
                "try a smaller context with --ctx",
            )
        self._ctx = ctx
        # The largest batch one llama_decode takes: prompts are fed in chunks of this size.
        self._n_batch = int(lc.llama_n_batch(ctx))
        self._adapters = [self._lora(model, path) for path in options.lora]
        if self._adapters:
            arr = (lc.llama_adapter_lora_p_ctypes * len(self._adapters))(*self._adapters)
            scales = (ctypes.c_float * len(self._adapters))(*([1.0] * len(self._adapters)))
            lc.llama_set_adapters_lora(ctx, arr, len(self._adapters), scales)
        self._mem = lc.llama_get_memory(ctx)
        # llama.cpp rounds the context up (to a multiple of 256): read what it made.
        self._n_ctx = int(lc.llama_n_ctx(ctx))
        self._cached: list[int] = []  # tokens whose keys and values are in the KV cache
        self._pieces: dict[int, bytes] = {}
        self._metadata: dict[str, str] | None = None
        self._one = (lc.llama_token * 1)()
        raw = lc.llama_model_chat_template(model, None)
        self._chat_template = raw.decode("utf-8", errors="replace") if raw else None

    @staticmethod
    def _new_context(model: Any, n_ctx: int, n_threads: int) -> Any:
        cparams = lc.llama_context_default_params()
        cparams.n_ctx = n_ctx
        cparams.n_batch = min(N_BATCH, n_ctx)
        cparams.n_ubatch = min(N_BATCH, n_ctx)
        cparams.n_seq_max = 1
        cparams.n_threads = n_threads
        cparams.n_threads_batch = n_threads
        return lc.llama_init_from_model(model, cparams)

    def _lora(self, model: Any, path: Path) -> Any:
        _LOG.clear()
        adapter = lc.llama_adapter_lora_init(model, str(path).encode())
        if not adapter:
            errors = recent_log_errors()
            raise ModelLoadError(
                f"cannot apply the LoRA adapter {path}"
                + (f": {errors[0].split(': ')[-1]}" if errors else ""),
                "ADAPTER needs a LoRA in GGUF made for this base model",
            )
        return adapter

    # -- properties -------------------------------------------------------------

    @property
    def n_ctx(self) -> int:
        return self._n_ctx

    @property
    def n_ctx_train(self) -> int:
        return self._n_ctx_train

    @property
    def metadata(self) -> Mapping[str, str]:
        if self._metadata is None:
            self._metadata = self._read_metadata()
        return self._metadata

    @property
    def chat_template(self) -> str | None:
        return self._chat_template

    @property
    def bos_token(self) -> int | None:
        token = int(lc.llama_vocab_bos(self._vocab))
        return token if token >= 0 else None

    @property
    def eos_token(self) -> int | None:
        token = int(lc.llama_vocab_eos(self._vocab))
        return token if token >= 0 else None

    def token_text(self, token: int) -> str:
        return bytes(lc.llama_vocab_get_text(self._vocab, token)).decode("utf-8", "replace")

    def _read_metadata(self) -> dict[str, str]:
        result: dict[str, str] = {}
        buf = ctypes.create_string_buffer(1024)
        for i in range(int(lc.llama_model_meta_count(self._model))):
            n = lc.llama_model_meta_key_by_index(self._model, i, buf, len(buf))
            key = buf.value[:n].decode("utf-8", "replace")
            n = lc.llama_model_meta_val_str_by_index(self._model, i, buf, len(buf))
            result[key] = buf.value[:n].decode("utf-8", "replace")
        return result

    # -- tokens -----------------------------------------------------------------

    def tokenize(self, text: str, *, add_special: bool, parse_special: bool) -> list[int]:
        data = text.encode("utf-8")
        capacity = len(data) + 8
        buf = (lc.llama_token * capacity)()
        n = lc.llama_tokenize(
            self._vocab, data, len(data), buf, capacity, add_special, parse_special
        )
        if n < 0:
            capacity = -n
            buf = (lc.llama_token * capacity)()
            n = lc.llama_tokenize(
                self._vocab, data, len(data), buf, capacity, add_special, parse_special
            )
        return list(buf[:n])

    def _piece(self, token: int) -> bytes:
        piece = self._pieces.get(token)
        if piece is None:
            buf = ctypes.create_string_buffer(64)
            n = lc.llama_token_to_piece(self._vocab, token, buf, len(buf), 0, False)
            if n < 0:
                buf = ctypes.create_string_buffer(-n)
                n = lc.llama_token_to_piece(self._vocab, token, buf, len(buf), 0, False)
            piece = buf.raw[:n]
            self._pieces[token] = piece
        return piece

    # -- generation -------------------------------------------------------------

    def _decode(self, tokens: list[int]) -> None:
        if len(tokens) == 1:
            self._one[0] = tokens[0]
            arr: Any = self._one
        else:
            arr = (lc.llama_token * len(tokens))(*tokens)
        rc = lc.llama_decode(self._ctx, lc.llama_batch_get_one(arr, len(tokens)))
        if rc != 0:
            raise GenerationError(
                f"llama.cpp failed to evaluate {len(tokens)} tokens (code {rc})",
                "try a smaller --ctx, or LOCALRUN_DEBUG=1 for llama.cpp's log",
            )
        self._cached.extend(tokens)

    def _reuse_prefix(self, prompt: list[int]) -> int:
        """Keep the longest cached prefix of ``prompt``; return its length."""
        common = 0
        for a, b in zip(self._cached, prompt, strict=False):
            if a != b:
                break
            common += 1
        # The last prompt token must be evaluated again to get logits to sample from.
        common = min(common, len(prompt) - 1)
        if common < len(self._cached):
            # Sliding-window and recurrent caches cannot always drop a suffix.
            if not lc.llama_memory_seq_rm(self._mem, 0, common, -1):
                lc.llama_memory_clear(self._mem, True)
                common = 0
            del self._cached[common:]
        return common

    def _sampler(self, sampling: SamplingParams, history: list[int]) -> Any:
        """llama.cpp's sampler chain: penalties, top-k, top-p, min-p, temperature, seeded draw.

        llama.cpp's repetition penalty looks every candidate up in a hash map: 262,144
        look-ups a token for a Gemma vocabulary, about a fifth of the decode time here.
        At most ``last_n`` tokens are penalised and a penalty only lowers a logit, so the
        top k after penalties are always among the top ``k + last_n`` before them: a
        first top-k cut to ``k + last_n`` makes the penalty pass cheap and changes nothing.
        """
        chain = lc.llama_sampler_chain_init(lc.llama_sampler_chain_default_params())
        add = lc.llama_sampler_chain_add
        greedy = sampling.temperature <= 0
        keep = 1 if greedy else sampling.top_k  # how many candidates survive the top-k cut
        if sampling.repeat_penalty != 1.0 and sampling.repeat_last_n != 0:
            last_n = sampling.repeat_last_n if sampling.repeat_last_n > 0 else self._n_ctx
            if keep > 0 and sampling.repeat_last_n > 0:
                add(chain, lc.llama_sampler_init_top_k(keep + last_n))
            penalties = lc.llama_sampler_init_penalties(
                self.n_vocab, last_n, sampling.repeat_penalty, 0.0, 0.0
            )
            add(chain, penalties)
        if greedy:
            add(chain, lc.llama_sampler_init_greedy())
        else:
            if sampling.top_k > 0:
                add(chain, lc.llama_sampler_init_top_k(sampling.top_k))
            if sampling.top_p < 1.0:
                add(chain, lc.llama_sampler_init_top_p(sampling.top_p, 1))
            if sampling.min_p > 0.0:
                add(chain, lc.llama_sampler_init_min_p(sampling.min_p, 1))
            add(chain, lc.llama_sampler_init_temp(sampling.temperature))
            seed = lc.LLAMA_DEFAULT_SEED if sampling.seed is None else sampling.seed & 0xFFFFFFFF
            add(chain, lc.llama_sampler_init_dist(seed))
        # Repetition penalties look at recent tokens, the prompt's included.
        if sampling.repeat_last_n:
            for token in history[-max(sampling.repeat_last_n, 0) or None :]:
                lc.llama_sampler_accept(chain, token)
        return chain

    @property
    def n_vocab(self) -> int:
        return int(lc.llama_vocab_n_tokens(self._vocab))

    def generate(
        self, prompt: list[int], sampling: SamplingParams, *, stop_at_eog: bool = True
    ) -> Generator[BackendEvent, None, None]:
        if not prompt:
            raise GenerationError("the prompt has no tokens", "give a non-empty prompt")
        start = time.perf_counter()
        common = self._reuse_prefix(prompt)
        todo = prompt[common:]
        for i in range(0, len(todo), self._n_batch):
            self._decode(todo[i : i + self._n_batch])
        yield Prefilled(evaluated=len(todo), seconds=time.perf_counter() - start)

        chain = self._sampler(sampling, prompt)
        try:
            while True:
                token = int(lc.llama_sampler_sample(chain, self._ctx, -1))
                eog = stop_at_eog and bool(lc.llama_vocab_is_eog(self._vocab, token))
                yield Token(token, b"" if eog else self._piece(token), eog)
                if eog or len(self._cached) >= self._n_ctx:
                    return
                self._decode([token])
        finally:
            lc.llama_sampler_free(chain)

    def close(self) -> None:
        if self._ctx:
            lc.llama_free(self._ctx)
            self._ctx = None
        if self._model:
            lc.llama_model_free(self._model)
            self._model = None

    def __del__(self) -> None:
        # Runs at interpreter exit too; llama.cpp frees its buffers then, so do nothing
        # if the module globals are already gone.
        if lc is not None and getattr(self, "_ctx", None) is not None:
            self.close()
