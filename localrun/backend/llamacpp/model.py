"""The llama.cpp backend, through llama-cpp-python's low-level ctypes API.

The high-level ``llama_cpp.Llama`` class is not used: it keeps a Python-side copy of
the logits, makes its context with a fixed thread default, and prints to stderr. Here the
model offers steps to the batching engine (:mod:`localrun.engine.batch`): decode one
``llama_batch`` of rows from several sequences, then sample the rows that asked for logits
with each sequence's native sampler chain (:mod:`.sampler`).

Over 400 lines because it is one adapter over one llama.cpp model and context: its loading,
tokens, pictures, steps and cache calls all hold the same ctypes pointers, which ``close``
frees in one order; the sampler, the vision projector, the logs and the devices are apart.
"""

from __future__ import annotations

import ctypes
import re
import signal
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from localrun.backend import (
    MAX_THREADS,
    N_BATCH,
    ImageChunk,
    ImageCost,
    LoadOptions,
    SamplingParams,
    context_size,
)
from localrun.backend.llamacpp import bindings, embedding, logs, sampler
from localrun.backend.llamacpp.sampler import Chain, sampler_chain
from localrun.backend.llamacpp.vocab import VocabularyCalls, read_metadata
from localrun.errors import (
    GenerationError,
    ModelLoadError,
    NoVisionError,
    UsageError,
)
from localrun.gguf.reader import type_number

bindings.register()  # the ctypes bindings alone: 0.04 s instead of 0.13-0.3 s

import llama_cpp.llama_cpp as lc  # noqa: E402

lc.llama_backend_init()

if TYPE_CHECKING:
    from localrun.backend.llamacpp.vision import Projector
    from localrun.images import Image


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


class LlamaCppModel(VocabularyCalls):
    """A llama.cpp model and context implementing :class:`localrun.backend.Model`."""

    def __init__(self, options: LoadOptions) -> None:
        if not 1 <= options.n_threads <= MAX_THREADS:
            raise ModelLoadError(
                f"{options.n_threads} threads is more than llama.cpp can run",
                f"use --threads between 1 and {MAX_THREADS}",
            )
        logs.start()
        sampler.preload()
        model, ctx, kv_lines = self._open(options)
        self._ctx = ctx
        self.kv_type = options.kv_type
        # What llama.cpp allocated for the KV cache (one line per cache: SWA layers apart).
        self.kv_bytes = kv_buffer_bytes(kv_lines)
        # The largest batch one llama_decode takes: prompts are fed in chunks of this size.
        self._n_batch = int(lc.llama_n_batch(ctx))
        self._adapters = [self._lora(model, path) for path in options.lora]
        self._adapter_paths = list(options.lora)
        if self._adapters:
            arr = (lc.llama_adapter_lora_p_ctypes * len(self._adapters))(*self._adapters)
            scales = (ctypes.c_float * len(self._adapters))(*([1.0] * len(self._adapters)))
            lc.llama_set_adapters_lora(ctx, arr, len(self._adapters), scales)
        self._mem = lc.llama_get_memory(ctx)
        # llama.cpp rounds the context up (to a multiple of 256): read what it made.
        self._n_ctx = int(lc.llama_n_ctx(ctx))
        self._pieces: dict[int, bytes] = {}
        self._metadata: dict[str, str] | None = None
        self._n_seq_max = int(lc.llama_n_seq_max(ctx))
        self._n_swa = int(lc.llama_model_n_swa(model))  # 0: no sliding-window layers
        # A recurrent state (Mamba, RWKV; hybrids have one too) is one per sequence: it cannot
        # be cut at a position or copied in part.
        self._recurrent = bool(lc.llama_model_is_recurrent(model)) or bool(
            lc.llama_model_is_hybrid(model)
        )
        self._batch: Any = None  # the step API's llama_batch, made on first use
        self._projector: Projector | None = None
        if options.projector is not None:
            self._attach_projector(options)
        raw = lc.llama_model_chat_template(model, None)
        self._chat_template = raw.decode("utf-8", errors="replace") if raw else None
        self._warm_up(options.n_threads)

    def _open(self, options: LoadOptions) -> tuple[Any, Any, list[str]]:
        """The model and its context, and llama.cpp's lines about its KV buffers. Ctrl-C
        stops the load (KeyboardInterrupt) once llama.cpp has returned."""
        options = replace(options, flash_attn=_flash_attn(options))
        mparams = lc.llama_model_default_params()
        mparams.n_gpu_layers = options.n_gpu_layers
        mparams.use_extra_bufts = options.repack
        if options.cpu_moe:
            self._overrides = _experts_on_cpu(options.cpu_moe)
            mparams.tensor_buft_overrides = ctypes.addressof(self._overrides)
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
                raise logs.load_failure(options.path)
            self._model = model
            self._vocab = lc.llama_model_get_vocab(model)
            self._special_texts: list[tuple[int, str]] | None = None
            self._n_ctx_train = int(lc.llama_model_n_ctx_train(model))
            self.n_layer = int(lc.llama_model_n_layer(model))
            # An embedding model (its GGUF names a pooling type) gets an embedding context.
            self.pooling = embedding.pooling_of(model)
            requested = context_size(options.n_ctx, self._n_ctx_train)
            ctx, kv_lines = self._new_context(model, requested, options, self.pooling)
            if stop.is_set():
                if ctx:
                    lc.llama_free(ctx)
                lc.llama_model_free(model)
                self._model = None
                raise KeyboardInterrupt
        if not ctx:
            lc.llama_model_free(model)
            raise logs.context_failure(requested)
        return model, ctx, kv_lines

    def _attach_projector(self, options: LoadOptions) -> None:
        """The vision projector (mmproj) beside the model; a failure frees the model too."""
        from localrun.backend.llamacpp.vision import Projector

        assert options.projector is not None
        try:
            self._projector = Projector(
                options.projector, self._model, self._ctx,
                n_threads=options.n_threads, gpu=options.n_gpu_layers > 0,
            )  # fmt: skip
        except BaseException:
            self.close()
            raise

    def _warm_up(self, n_threads: int) -> None:
        """As llama.cpp's own tools do, one token through the model now: the weights are paged
        in while loading, not during the first prompt (whose TTFT it would otherwise add to)."""
        # On one thread: llama.cpp's threads are OpenMP's, and a parallel region here would
        # give the loading thread a team of its own beside the engine thread's. With more of
        # OpenMP's threads than cores, libgomp spins 1,000 times instead of 300,000 before a
        # worker sleeps, so every decode step woke its workers from sleep: decode on 2 threads
        # ran at 0.6 of llama-bench's (27.5 against 45.7 tokens/s), no faster than on 1.
        lc.llama_set_n_threads(self._ctx, 1, 1)
        self.decode_rows([self.bos_token or 0], [0], [0], [False])
        self.forget(0)
        lc.llama_set_n_threads(self._ctx, n_threads, n_threads)

    @staticmethod
    def _new_context(
        model: Any, n_ctx: int, options: LoadOptions, pooling: str | None
    ) -> tuple[Any, list[str]]:
        """The context, and llama.cpp's lines about its KV buffers."""
        cparams = lc.llama_context_default_params()
        cparams.n_ctx = n_ctx
        cparams.n_batch = min(N_BATCH, n_ctx)
        cparams.n_ubatch = min(N_BATCH, n_ctx)
        cparams.n_seq_max = options.n_seq
        # One cache for all sequences: each may use as much of it as is free.
        cparams.kv_unified = options.n_seq > 1
        cparams.n_threads = options.n_threads
        cparams.n_threads_batch = options.n_threads
        cparams.type_k = cparams.type_v = type_number(options.kv_type)
        cparams.flash_attn_type = {"auto": -1, "off": 0, "on": 1}[options.flash_attn]
        if pooling is not None:
            embedding.embedding_context(cparams, model, n_ctx)
        logs.start()
        seen: list[str] = []
        with logs.following(lambda line: seen.append(line) if "KV buffer" in line else None):
            ctx = lc.llama_init_from_model(model, cparams)
        return ctx, seen

    def _lora(self, model: Any, path: Path) -> Any:
        logs.start()
        adapter = lc.llama_adapter_lora_init(model, str(path).encode())
        if not adapter:
            errors = logs.recent_errors()
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
            self._metadata = read_metadata(self._model)
        return self._metadata

    # -- images -----------------------------------------------------------------

    @property
    def vision(self) -> bool:
        return self._projector is not None and self._projector.vision

    @property
    def projector(self) -> Path | None:
        """The projector file loaded beside the model, if any."""
        return self._projector.path if self._projector is not None else None

    def tokenize_images(
        self, texts: Sequence[str], images: Sequence[Image], *, parse_special: bool
    ) -> tuple[list[int], dict[int, ImageChunk]]:
        if self._projector is None:
            raise NoVisionError()
        return self._projector.tokenize(texts, images, parse_special=parse_special)

    def eval_image(self, chunk: ImageChunk, seq: int, pos: int) -> ImageCost:
        assert self._projector is not None
        cost = self._projector.evaluate(chunk, seq, pos, self._n_batch)
        if not cost.ok and not self.trim(seq, pos):  # a large image may have been put in part
            self.forget(seq)
            return ImageCost(cost.encode_s, ok=False, lost=True)
        return cost

    # -- steps: several sequences, for the batching engine ---------------------------

    @property
    def n_seq_max(self) -> int:
        return self._n_seq_max

    @property
    def n_batch(self) -> int:
        return self._n_batch

    def decode_rows(
        self, tokens: list[int], positions: list[int], seqs: list[int], logits: list[bool]
    ) -> int:
        n = len(tokens)
        if self._batch is None:
            self._batch = lc.llama_batch_init(self._n_batch, 0, 1)
        batch = self._batch
        batch.n_tokens = n
        token, pos, n_seq_id, seq_id, out = (
            batch.token,
            batch.pos,
            batch.n_seq_id,
            batch.seq_id,
            batch.logits,
        )
        for i in range(n):
            token[i] = tokens[i]
            pos[i] = positions[i]
            n_seq_id[i] = 1
            seq_id[i][0] = seqs[i]
            out[i] = logits[i]
        rc = int(lc.llama_decode(self._ctx, batch))
        if rc < 0 or rc > 1:
            raise GenerationError(
                f"llama.cpp failed to evaluate a batch of {n} tokens (code {rc})",
                "LOCALRUN_DEBUG=1 shows llama.cpp's log",
            )
        return rc

    def new_sampler(
        self, sampling: SamplingParams, history: list[int], grammar: object | None = None
    ) -> Chain:
        return sampler_chain(
            sampling,
            history,
            n_vocab=self.n_vocab,
            n_ctx=self._n_ctx,
            vocab=self._vocab,
            grammar=grammar,
            specials=self._specials() if sampling.grammar is not None else (),
        )

    def _specials(self) -> list[tuple[int, str]]:
        """The control, unknown and unused tokens that do not end an answer, with their
        texts: what a grammar must not let through unless it spells them out. Found once
        (a 262,144-token vocabulary takes a fraction of a second)."""
        if self._special_texts is None:
            odd = lc.LLAMA_TOKEN_ATTR_CONTROL | lc.LLAMA_TOKEN_ATTR_UNKNOWN
            odd |= lc.LLAMA_TOKEN_ATTR_UNUSED
            vocab = self._vocab
            self._special_texts = [
                (t, self.piece(t, True).decode("utf-8", "replace"))
                for t in range(self.n_vocab)
                if lc.llama_vocab_get_attr(vocab, t) & odd and not lc.llama_vocab_is_eog(vocab, t)
            ]
        return self._special_texts

    def compile_grammar(self, grammar: str) -> object:
        logged: list[str] = []
        with logs.stderr_text() as printed:
            handle = sampler.new_grammar(self._vocab, grammar, logged)
        if handle is not None:
            self._specials()  # found here, in the caller's thread, not on the engine's
            return handle
        lines = [line.strip() for text in printed + logged for line in text.splitlines()]
        found = next((line for line in lines if "error parsing grammar: " in line), None)
        if found is not None:
            reason = found.split("error parsing grammar: ", 1)[1]
        else:  # parsed, but refused: an undefined rule, left recursion, no root
            reason = next((line for line in logged if "failed to parse" not in line), "")
            reason = reason.removeprefix("llama_grammar_init_impl: ") or "it does not parse"
        reason = reason if len(reason) <= 80 else reason[:77] + "..."
        raise UsageError(
            f"llama.cpp cannot use the grammar: {reason}", "see llama.cpp's GBNF guide"
        )

    def free_grammar(self, grammar: object) -> None:
        lc.llama_sampler_free(grammar)

    def logits(self, row: int) -> Sequence[float]:
        pointer = lc.llama_get_logits_ith(self._ctx, row)
        view = (ctypes.c_float * self.n_vocab).from_address(ctypes.addressof(pointer.contents))
        return cast(Sequence[float], view)  # a ctypes array indexes like a sequence

    def target_log_probs(self, targets: Sequence[int]) -> list[float]:
        import numpy as np

        pointer = lc.llama_get_logits(self._ctx)
        rows = np.ctypeslib.as_array(pointer, shape=(len(targets), self.n_vocab))
        return log_probs_at(rows, np.asarray(targets, dtype=np.int64))

    def best(self, row: int) -> tuple[int, float]:
        return sampler.best(self._ctx, row, self.n_vocab)

    def sample(self, chain: object, row: int) -> int:
        return sampler.sample(cast(Chain, chain), self._ctx, row, self.n_vocab)

    def free_sampler(self, chain: object) -> None:
        sampler.free(cast(Chain, chain))

    def is_end(self, token: int) -> bool:
        return bool(lc.llama_vocab_is_eog(self._vocab, token))

    def forget(self, seq: int) -> None:
        lc.llama_memory_seq_rm(self._mem, seq, -1, -1)

    def seq_state(self, seq: int) -> bytes:
        size = int(lc.llama_state_seq_get_size(self._ctx, seq))
        buffer = (ctypes.c_uint8 * size)()
        written = int(lc.llama_state_seq_get_data(self._ctx, buffer, size, seq))
        return bytes(memoryview(buffer)[:written])

    def set_seq_state(self, seq: int, state: bytes | memoryview) -> bool:
        self.forget(seq)
        if isinstance(state, memoryview) and not state.readonly:
            buffer = (ctypes.c_uint8 * len(state)).from_buffer(state)  # read in place
        else:
            buffer = (ctypes.c_uint8 * len(state)).from_buffer_copy(state)
        read = int(lc.llama_state_seq_set_data(self._ctx, buffer, len(state), seq))
        if read == 0:
            self.forget(seq)
            return False
        return True

    def layout(self) -> dict[str, object]:
        """What decides whether a sequence's saved cells fit this context: the model's shape,
        the cache's types and window, the adapters, and llama.cpp's version."""
        import importlib.metadata

        return {
            "llama_cpp_python": importlib.metadata.version("llama-cpp-python"),
            "n_layer": self.n_layer,
            "n_embd": int(lc.llama_model_n_embd(self._model)),
            "n_vocab": self.n_vocab,
            "n_swa": self._n_swa,
            "recurrent": self._recurrent,
            "kv_unified": self._n_seq_max > 1,
            "adapters": [str(p) for p in self._adapter_paths],
            "kv_type": self.kv_type,  # a q8_0 cache's cells are not an f16 cache's
            # An image's cells are its projector's: another projector, other cells.
            **({"projector": str(self.projector)} if self.projector is not None else {}),
        }

    # -- embeddings (localrun.backend.llamacpp.embedding) ------------------------------

    def embed(self, tokens: list[int], seq: int) -> list[float]:
        return embedding.mean_of_states(self, tokens, seq)

    def embed_batch(self, texts: Sequence[Sequence[int]]) -> list[list[float]]:
        return embedding.pooled(self, texts)

    def pair_tokens(self, query: str, document: str) -> list[int]:
        return embedding.pair_tokens(self, query, document)

    def copy_prefix(self, src: int, dst: int, n: int, src_len: int) -> bool:
        if (self._n_swa or self._recurrent) and src_len > n:
            return False  # the window moved on, or a recurrent state: no prefix to copy
        lc.llama_memory_seq_cp(self._mem, src, dst, 0, n)
        return True

    def trim(self, seq: int, keep: int) -> bool:
        return bool(lc.llama_memory_seq_rm(self._mem, seq, keep, -1))

    def close(self) -> None:
        projector = getattr(self, "_projector", None)  # absent if __init__ failed early
        if projector is not None:
            projector.close()
            self._projector = None
        if getattr(self, "_batch", None) is not None:  # absent if __init__ failed early
            lc.llama_batch_free(self._batch)
            self._batch = None
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


_ROWS_AT_ONCE = 16  # rows a thread works on at a time: 16 MiB of a 262,144-token vocabulary


def log_probs_at(rows: Any, targets: Any) -> list[float]:
    """``log softmax(rows[i])[targets[i]]`` for each row, as llama-perplexity computes it (the
    sum of exponentials in double precision), on two threads (numpy releases the GIL)."""
    import numpy as np

    out = np.empty(len(targets), dtype=np.float64)

    def part(lo: int, hi: int) -> None:
        for start in range(lo, hi, _ROWS_AT_ONCE):  # a bounded temporary, not a copy of all
            end = min(hi, start + _ROWS_AT_ONCE)
            block = rows[start:end]
            top = block.max(axis=1)
            shifted = np.subtract(block, top[:, None])
            np.exp(shifted, out=shifted)
            total = shifted.sum(axis=1, dtype=np.float64)
            picked = block[np.arange(end - start), targets[start:end]]
            out[start:end] = picked.astype(np.float64) - top - np.log(total)

    half = len(targets) // 2
    other = threading.Thread(target=part, args=(half, len(targets)))
    other.start()
    part(0, half)
    other.join()
    return [float(v) for v in out]


_KV_BUFFER = re.compile(r"KV buffer size\s*=\s*([\d.]+) MiB")


def kv_buffer_bytes(lines: Iterable[str]) -> int:
    """The KV cache's bytes, from llama.cpp's log of the context it just made."""
    return int(
        sum(float(m.group(1)) for line in lines if (m := _KV_BUFFER.search(line))) * (1 << 20)
    )


class _Override(ctypes.Structure):
    """llama.cpp's ``llama_model_tensor_buft_override``: tensors whose name matches a
    pattern, and the buffer type they go to."""

    _fields_ = [("pattern", ctypes.c_char_p), ("buft", ctypes.c_void_p)]


def _experts_on_cpu(n: int) -> ctypes.Array[_Override]:
    """Overrides that keep a MoE model's experts in the CPU's memory: every layer's (``n``
    -1), or the first ``n`` layers' (llama.cpp's --cpu-moe and --n-cpu-moe patterns); the
    list ends with an empty entry, as llama.cpp reads it."""
    from localrun.backend.llamacpp.devices import cpu_buffer_type

    experts = r"\.ffn_(up|down|gate)_(ch|)exps"
    patterns = [experts] if n < 0 else [rf"blk\.{i}{experts}" for i in range(n)]
    overrides = (_Override * (len(patterns) + 1))()
    cpu = cpu_buffer_type()
    for i, pattern in enumerate(patterns):
        overrides[i].pattern, overrides[i].buft = pattern.encode(), cpu
    return overrides


def _flash_attn(options: LoadOptions) -> str:
    """The flash-attention setting llama.cpp gets: ``auto`` is off where layers go to a
    device whose driver its kernels crash (:data:`devices.FLASH_ATTN_CRASHES`), and ``on``
    there is refused rather than crashing the process."""
    if options.flash_attn == "off" or options.n_gpu_layers == 0:
        return options.flash_attn
    from localrun.backend.llamacpp.devices import flash_attn_crashes

    device = flash_attn_crashes()
    if device is None:
        return options.flash_attn
    if options.flash_attn == "on":
        raise ModelLoadError(
            f"flash attention crashes the driver of {device} (Mesa's lavapipe)",
            "use --flash-attn off or auto there",
        )
    return "off"
