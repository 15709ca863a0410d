"""The inference backend interface.

A backend loads a model (:class:`Model`: tokens, template, metadata) whose context holds one
or more sequences, and executes steps for the batching engine (:class:`StepModel`): decode a
batch of rows, sample a row, drop or trim a sequence's cache. Everything above this line
(scheduling, prompts, stop strings, UTF-8, statistics) is backend-independent.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from localrun.images import Image

DEFAULT_MAX_CTX = 4096  # without --ctx: the trained context, at most this
CTX_ALIGN = 256  # llama.cpp rounds a context up to a multiple of this
N_BATCH = 512  # prompt tokens per decode: also bounds how long Ctrl-C waits during a prefill
MAX_THREADS = 512  # ggml's GGML_MAX_N_THREADS: more aborts the process


def context_size(requested: int | None, n_ctx_train: int) -> int:
    """The context a model gets: the request (or the default), rounded up to 256.

    Rounding here, not in llama.cpp, matters: llama.cpp caps its batch at the context it
    was asked for before rounding, and a prompt chunk larger than the batch aborts it.
    """
    n = requested or min(n_ctx_train or DEFAULT_MAX_CTX, DEFAULT_MAX_CTX)
    return max(CTX_ALIGN, -(-n // CTX_ALIGN) * CTX_ALIGN)


@dataclass(frozen=True)
class LoadOptions:
    """How to load a model."""

    path: Path
    n_ctx: int | None = None  # None: the smaller of the trained context and DEFAULT_MAX_CTX
    n_threads: int = 1
    n_gpu_layers: int = 0
    tensor_split: tuple[float, ...] | None = None  # share of layers per GPU
    lora: tuple[Path, ...] = ()  # LoRA adapters (GGUF) applied at load
    n_seq: int = 1  # sequences the context holds at once (one KV cache, shared)
    # Weights on the CPU repacked into the layout of llama.cpp's fastest kernels for this
    # CPU. False keeps the file's layout: the arithmetic of an RPC worker, which cannot repack.
    repack: bool = True
    kv_type: str = "f16"  # the KV cache's keys and values: f16, q8_0 or q4_0 (KV_TYPES)
    flash_attn: str = "auto"  # auto, on or off (a quantized V cache needs it)
    projector: Path | None = None  # a vision model's mmproj file, loaded beside it
    # A mixture-of-experts model's experts kept in the CPU's memory for the first this many
    # layers (-1: every layer), the rest of those layers on the GPU (llama.cpp's --n-cpu-moe).
    cpu_moe: int = 0


KV_TYPES = ("f16", "q8_0", "q4_0")


@dataclass(eq=False)
class ImageChunk:
    """One image of one prompt, made ready by the model: what the engine evaluates.

    In the prompt's token list it stands as ``n_pos`` copies of ``token``, a negative id
    that only this picture has (see :mod:`localrun.backend.llamacpp.vision`).
    """

    digest: str  # sha256 of the image's bytes
    token: int  # the negative id that stands for it in the prompt's token list
    n_tokens: int  # embeddings it gives
    n_pos: int  # positions it takes (fewer than its tokens for M-RoPE models)
    name: str  # where it came from, for messages
    handle: object = field(repr=False)  # the backend's own chunk


def image_counts(
    tokens: Sequence[int], images: Mapping[int, ImageChunk]
) -> list[tuple[ImageChunk, int]]:
    """Each picture of ``images`` (by id) and how many times ``tokens`` hold it."""
    return [(c, tokens.count(c.token) // c.n_pos) for c in images.values()]


def cells(tokens: Sequence[int], images: Mapping[int, ImageChunk]) -> int:
    """The KV cache cells ``tokens`` fill: a picture may fill more cells than the positions
    it takes (M-RoPE models, such as Qwen2.5-VL's)."""
    return len(tokens) + sum(n * (c.n_tokens - c.n_pos) for c, n in image_counts(tokens, images))


@dataclass(frozen=True)
class ImageCost:
    """What evaluating one image took."""

    encode_s: float  # the vision encoder (0 when the picture's embeddings were kept)
    ok: bool = True  # False: the KV cache had no room (the picture's cells were dropped)
    lost: bool = False  # and the sequence's other cells too (a cache that cannot be cut)


FLASH_ATTN = ("auto", "on", "off")


@dataclass(frozen=True)
class SamplingParams:
    """Sampling settings; the defaults are Ollama's."""

    temperature: float = 0.8
    top_k: int = 40
    top_p: float = 0.9
    min_p: float = 0.0
    repeat_penalty: float = 1.1
    repeat_last_n: int = 64
    seed: int | None = None  # None: a fresh random seed
    # OpenAI's penalties on the last repeat_last_n tokens: each time a token appeared, and
    # once for having appeared (0: none; below 0, recent tokens are favoured).
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    typical_p: float = 1.0  # locally typical sampling (1: off)
    # DRY ("don't repeat yourself"): a token that would extend a repeat of at least
    # dry_allowed_length tokens loses dry_multiplier * dry_base ** (length - allowed).
    dry_multiplier: float = 0.0  # 0: off
    dry_base: float = 1.75
    dry_allowed_length: int = 2
    dry_penalty_last_n: int = -1  # tokens looked back at; -1: the whole context
    # XTC ("exclude top choices"): with this probability, the tokens above xtc_threshold,
    # but the least likely of them, are left out.
    xtc_probability: float = 0.0  # 0: off
    xtc_threshold: float = 0.1
    # Added to tokens' logits before any other sampler (OpenAI's logit_bias: -100 to 100;
    # -100 bans a token, 100 all but forces it): (token id, bias) pairs.
    logit_bias: tuple[tuple[int, float], ...] = ()
    grammar: str | None = None  # GBNF (root rule "root"): the answer can only match it
    schema: str | None = (
        None  # the JSON schema (as JSON) that grammar enforces, if it came from one
    )


class Model(Protocol):
    """A loaded model with its context (KV cache)."""

    @property
    def n_ctx(self) -> int:
        """Context size actually allocated (llama.cpp may round the request up)."""

    @property
    def n_ctx_train(self) -> int:
        """Context length the model was trained with."""

    @property
    def metadata(self) -> Mapping[str, str]:
        """GGUF metadata as strings."""

    @property
    def chat_template(self) -> str | None:
        """The model's Jinja chat template, if it has one."""

    def token_text(self, token: int) -> str:
        """The text of a (special) token, for template variables such as ``bos_token``."""

    @property
    def bos_token(self) -> int | None:
        """The beginning-of-sequence token id, if the model has one."""

    @property
    def eos_token(self) -> int | None:
        """The end-of-sequence token id, if the model has one."""

    @property
    def fim_tokens(self) -> tuple[int, int, int] | None:
        """The fill-in-the-middle tokens (prefix, suffix, middle), if the model has them."""

    def tokenize(self, text: str, *, add_special: bool, parse_special: bool) -> list[int]:
        """Turn text into token ids."""

    @property
    def vision(self) -> bool:
        """Whether the model reads images (a projector was loaded beside it)."""

    def tokenize_images(
        self, texts: Sequence[str], images: Sequence[Image], *, parse_special: bool
    ) -> tuple[list[int], dict[int, ImageChunk]]:
        """``texts[0]``, ``images[0]``, ``texts[1]``, ... as one token list (each image a run
        of its negative id), and the images' chunks by id."""

    @property
    def n_vocab(self) -> int:
        """Tokens in the vocabulary."""

    def close(self) -> None:
        """Free the model and its context."""


class StepModel(Model, Protocol):
    """A model whose context holds several sequences, driven one batch at a time.

    The batching engine owns it from one thread: each step decodes rows (a token of some
    sequence at some position, with or without logits), then samples the rows that asked for
    logits, each with its own sampler chain.
    """

    # The pooling type its GGUF names ("mean", "cls", "last", "rank"): an embedding model
    # (or a reranker, "rank"), loaded for that alone. None: a generative model.
    pooling: str | None

    @property
    def n_seq_max(self) -> int:
        """How many sequences the context holds."""

    @property
    def n_batch(self) -> int:
        """The most rows one step may decode."""

    def decode_rows(
        self, tokens: list[int], positions: list[int], seqs: list[int], logits: list[bool]
    ) -> int:
        """Decode one batch; 0 when done, 1 when the KV cache had no room (nothing changed)."""

    def new_sampler(
        self, sampling: SamplingParams, history: list[int], grammar: object | None = None
    ) -> object:
        """A sampler chain for one sequence, primed with its recent tokens; with ``grammar``
        (from :meth:`compile_grammar`, owned by the chain from then on) for
        ``sampling.grammar``, which is otherwise compiled now."""

    def compile_grammar(self, grammar: str) -> object:
        """``grammar`` (GBNF) made ready to sample with, in the caller's thread (any thread);
        a UsageError says why llama.cpp cannot use it with this vocabulary."""

    def free_grammar(self, grammar: object) -> None:
        """Free a compiled grammar that no sampler chain took."""

    def logits(self, row: int) -> Sequence[float]:
        """The logits of ``row`` of the last batch (a view: valid until the next step)."""

    def best(self, row: int) -> tuple[int, float]:
        """The most likely token of ``row`` of the last batch, and its probability."""

    def target_log_probs(self, targets: Sequence[int]) -> list[float]:
        """The log-probability of ``targets[i]`` in output row ``i`` of the last batch (its
        rows with logits, in order): perplexity's measure."""

    def sample(self, sampler: object, row: int) -> int:
        """Sample from the logits of ``row`` of the last batch (the chain accepts the token)."""

    def free_sampler(self, sampler: object) -> None:
        """Free a sampler chain."""

    def is_end(self, token: int) -> bool:
        """Whether ``token`` ends generation (end of turn, end of text)."""

    def piece(self, token: int, special: bool = False) -> bytes:
        """The raw bytes of a token (with ``special``, a control token's text too)."""

    def eval_image(self, chunk: ImageChunk, seq: int, pos: int) -> ImageCost:
        """Put an image's embeddings into sequence ``seq`` from position ``pos`` (encoded
        first unless the same picture's embeddings are kept)."""

    def forget(self, seq: int) -> None:
        """Drop every cached position of sequence ``seq``."""

    def seq_state(self, seq: int) -> bytes:
        """A copy of sequence ``seq``'s cells in the cache (llama.cpp's own format)."""

    def set_seq_state(self, seq: int, state: bytes | memoryview) -> bool:
        """Put a copy made by :meth:`seq_state` into sequence ``seq`` (emptied first);
        False, and ``seq`` left empty, if this context cannot take it."""

    def layout(self) -> dict[str, object]:
        """What decides whether saved cells fit this context (for the prompt cache's key)."""

    def embed(self, tokens: list[int], seq: int) -> list[float]:
        """A generative model's embedding of a text: its last hidden states averaged over its
        tokens and scaled to length 1, read in sequence ``seq`` (emptied before and after)."""

    def embed_batch(self, texts: Sequence[Sequence[int]]) -> list[list[float]]:
        """An embedding model's vectors of many texts (as many a decode as fit), pooled as
        the model says and not scaled; a reranker's (``rank``) classifier outputs."""

    def pair_tokens(self, query: str, document: str) -> list[int]:
        """A reranker's input for one query and one document."""

    def copy_prefix(self, src: int, dst: int, n: int, src_len: int) -> bool:
        """Give empty sequence ``dst`` the first ``n`` positions of ``src`` (which holds
        ``src_len``), sharing their cells; False if that would not be faithful (a sliding
        window has dropped cells of ``src`` that ``dst`` would still need)."""

    def trim(self, seq: int, keep: int) -> bool:
        """Keep the first ``keep`` positions of ``seq``; False if the cache cannot (then
        nothing changed: a sliding-window cache cannot always drop a suffix)."""


def load(options: LoadOptions) -> Model:
    """Load a model with the llama.cpp backend (imported only now: it is slow to import)."""
    from localrun.backend.llamacpp.model import LlamaCppModel

    return LlamaCppModel(options)


__all__ = [
    "CTX_ALIGN",
    "DEFAULT_MAX_CTX",
    "MAX_THREADS",
    "N_BATCH",
    "ImageChunk",
    "ImageCost",
    "LoadOptions",
    "Model",
    "SamplingParams",
    "StepModel",
    "cells",
    "context_size",
    "image_counts",
    "load",
]
