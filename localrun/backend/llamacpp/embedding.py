"""Embeddings and rerank scores from a llama.cpp model, as the model means them.

A model whose GGUF names a pooling type (``<arch>.pooling_type``: mean, CLS, last, rank) is an
embedding model: BERT-style encoders (bert, nomic-bert, jina-bert, XLM-RoBERTa) and decoders
made for it (Qwen3-Embedding's last-token pooling, Qwen3-Reranker's rank). Its context is made
with llama.cpp's ``embeddings`` on and the model's own pooling, and many texts are read in one
pass as separate sequences (:func:`pooled`), as ``llama-embedding`` does: an encoder (no KV
cache) through ``llama_encode``, the pooled vector of each sequence read with
``llama_get_embeddings_seq``. An encoder reads a text in one micro-batch, so its context's
micro-batch is as long as the longest text; a causal model pooled by its last token
(Qwen3-Embedding, Qwen3-Reranker) keeps an ordinary micro-batch and reads a longer text over
several decodes into its KV cache (:func:`reads_in_chunks`). A generative model has no
pooling type: its texts are the mean of its last hidden states (:func:`mean_of_states`), what
Ollama gives for such a model.

Scaling to length 1 (``llama-embedding``'s default ``--embd-normalize 2``) and Matryoshka cuts
are the caller's (:func:`normalized`): a rank model's score is read raw.
"""

from __future__ import annotations

import ctypes
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from localrun.backend import N_BATCH
from localrun.backend.llamacpp import bindings
from localrun.errors import GenerationError

bindings.register()  # the ctypes bindings alone, as model.py loads them

import llama_cpp.llama_cpp as lc  # noqa: E402

if TYPE_CHECKING:
    from localrun.backend.llamacpp.model import LlamaCppModel

POOLING = {1: "mean", 2: "cls", 3: "last", 4: "rank"}  # llama_pooling_type; 0 is none
# Sequences one embedding context holds: as many texts are read in one decode, if they fit.
EMBED_SEQS = 64
# What one decode's output rows may hold while embedding. llama.cpp keeps a row of logits
# beside each output row's embedding, in a buffer sized for the most rows one decode has
# asked for that never shrinks: 512 rows of a 262,144-token vocabulary held 1 GB for as long
# as the model stayed loaded. A decode takes no more texts than this allows (one at least):
# a whole 512-token batch of a BERT's 30,522-token vocabulary, 100 rows of Qwen3's 151,669.
EMBED_OUTPUT_BYTES = 64 << 20


def pooling_of(model: Any) -> str | None:
    """The pooling type the GGUF of a loaded llama.cpp model names (None: none, a generative
    model)."""
    arch = _meta(model, "general.architecture")
    value = _meta(model, f"{arch}.pooling_type") if arch else None
    try:
        return POOLING.get(int(value)) if value is not None else None
    except ValueError:
        return None


def _meta(model: Any, key: str) -> str | None:
    buffer = ctypes.create_string_buffer(256)
    n = int(lc.llama_model_meta_val_str(model, key.encode(), buffer, len(buffer)))
    return buffer.value.decode("utf-8", "replace") if n >= 0 else None


def reads_in_chunks(model: Any) -> bool:
    """Whether a text longer than a micro-batch can be read over several decodes: a causal
    model (its GGUF does not say ``<arch>.attention.causal`` false) pooled by its last token
    (``last``, or ``rank``, which llama.cpp takes from the last token of a causal model). Its
    KV cache keeps what the earlier decodes read, and the last decode's pooled row is the
    text's. Mean and CLS pooling are per micro-batch in llama.cpp: those read a text whole."""
    arch = _meta(model, "general.architecture")
    causal = _meta(model, f"{arch}.attention.causal") if arch else None
    return pooling_of(model) in ("last", "rank") and causal != "false"


def embedding_context(cparams: Any, model: Any, n_ctx: int) -> None:
    """Set what a context for an embedding model needs: embeddings on with the model's own
    pooling, a batch as long as the longest text the model was trained on (what one call
    reads), and many sequences in one cache. An encoder's micro-batch is as long (it attends
    to the whole text at once: llama.cpp refuses a text split over two, and sizes its compute
    buffers for it); a model that :func:`reads_in_chunks` keeps llama.cpp's ordinary one, as
    llama-embedding does for a causal model: a decoder trained on 32,768 tokens would
    otherwise get compute buffers for 32,768 tokens at once."""
    cparams.embeddings = True
    cparams.pooling_type = lc.LLAMA_POOLING_TYPE_UNSPECIFIED  # the GGUF's
    trained = int(lc.llama_model_n_ctx_train(model))
    cparams.n_batch = min(n_ctx, trained) if trained > 0 else n_ctx
    cparams.n_ubatch = min(N_BATCH, cparams.n_batch) if reads_in_chunks(model) else cparams.n_batch
    cparams.n_seq_max = EMBED_SEQS
    cparams.kv_unified = True


def groups(lengths: Sequence[int], *, n_batch: int, n_seq: int, max_rows: int) -> list[range]:
    """The texts read together, in order: at most ``n_seq`` texts, ``n_batch`` tokens and
    ``max_rows`` rows in one decode (a text alone may pass ``max_rows``)."""
    out: list[range] = []
    start, tokens = 0, 0
    for i, n in enumerate(lengths):
        count = i - start
        if count and (count == n_seq or tokens + n > min(n_batch, max(max_rows, 1))):
            out.append(range(start, i))
            start, tokens = i, 0
        tokens += n
    if start < len(lengths):
        out.append(range(start, len(lengths)))
    return out


def pooled(model: LlamaCppModel, texts: Sequence[Sequence[int]]) -> list[list[float]]:
    """Each text's pooled vector, as the model's pooling gives it (not scaled): for a rank
    model, its classifier's outputs (the first is the relevance score). Texts are read many
    a decode; a model that :func:`reads_in_chunks` reads a text longer than its micro-batch
    alone, a micro-batch a decode, and the last decode gives its vector."""
    ctx, handle = model._ctx, model._model
    width = int(lc.llama_model_n_embd_out(handle))
    if model.pooling == "rank":
        width = min(width, max(1, int(lc.llama_model_n_cls_out(handle))))
    max_rows = EMBED_OUTPUT_BYTES // ((model.n_vocab + int(lc.llama_model_n_embd_out(handle))) * 4)
    memory = lc.llama_get_memory(ctx)  # None for an encoder: it has no KV cache
    n_ubatch = int(lc.llama_n_ubatch(ctx))
    # What the context does, not what the GGUF said: llama.cpp makes some archs non-causal.
    chunked = bool(memory) and bool(lc.llama_get_causal_attn(ctx))
    chunked = chunked and model.pooling in ("last", "rank")
    # In chunks, a decode is no longer than the rows it may output either (a long text of a
    # long vocabulary would otherwise keep a row of logits a token, for good).
    step = max(1, min(n_ubatch, max_rows)) if chunked else n_ubatch
    if not chunked and (longest := max((len(t) for t in texts), default=0)) > n_ubatch:
        raise GenerationError(
            f"a text to embed is {longest} tokens but this model reads at most {n_ubatch} at once",
            "embed a shorter text",
        )
    plan = groups([len(t) for t in texts], n_batch=step, n_seq=model.n_seq_max, max_rows=max_rows)
    batch = lc.llama_batch_init(step, 0, 1)  # freed below: nothing kept
    vectors: list[list[float]] = []
    try:
        for group in plan:
            if memory:
                lc.llama_memory_clear(memory, True)
            if len(texts[group[0]]) > step:  # alone in its group (groups() keeps it so)
                tokens = texts[group[0]]
                for start in range(0, len(tokens), step):
                    _fill(batch, [tokens[start : start + step]], start)
                    _decode(ctx, batch, memory, 1)
            else:
                _fill(batch, [texts[i] for i in group])
                _decode(ctx, batch, memory, len(group))
            for seq in range(len(group)):
                vectors.append(_row(lc.llama_get_embeddings_seq(ctx, seq), width))
    finally:
        lc.llama_batch_free(batch)
        if memory:
            lc.llama_memory_clear(memory, True)
    return vectors


def _decode(ctx: Any, batch: Any, memory: Any, n_texts: int) -> None:
    rc = int(lc.llama_decode(ctx, batch) if memory else lc.llama_encode(ctx, batch))
    if rc != 0:
        raise GenerationError(
            f"llama.cpp failed to read {n_texts} texts to embed (code {rc})",
            "LOCALRUN_DEBUG=1 shows llama.cpp's log",
        )


def _fill(batch: Any, texts: Sequence[Sequence[int]], first: int = 0) -> None:
    """The batch: each text a sequence of its own from position ``first`` (a later chunk of
    a text goes on where the last left off), every row an output row."""
    i = 0
    for seq, tokens in enumerate(texts):
        for pos, token in enumerate(tokens, first):
            batch.token[i] = token
            batch.pos[i] = pos
            batch.n_seq_id[i] = 1
            batch.seq_id[i][0] = seq
            batch.logits[i] = True
            i += 1
    batch.n_tokens = i


def _row(pointer: Any, width: int) -> list[float]:
    address = ctypes.cast(pointer, ctypes.c_void_p).value
    if not address:
        raise GenerationError(
            "llama.cpp gave no pooled embedding for this model", "use another model to embed"
        )
    return list((ctypes.c_float * width).from_address(address))


def mean_of_states(model: LlamaCppModel, tokens: list[int], seq: int) -> list[float]:
    """A generative model's embedding of ``tokens``: the mean of its last hidden states, scaled
    to length 1, read in sequence ``seq`` (emptied before and after), as Ollama does for such
    a model. The context is switched to embeddings only for this, a few rows a decode: every
    row read so is an output row, with its row of logits (see EMBED_OUTPUT_BYTES)."""
    import numpy as np

    ctx = model._ctx
    n_embd = int(lc.llama_model_n_embd(model._model))
    per_row = (model.n_vocab + n_embd) * 4
    step = max(1, min(model.n_batch, EMBED_OUTPUT_BYTES // per_row))
    total = np.zeros(n_embd, dtype=np.float64)
    model.forget(seq)
    lc.llama_set_embeddings(ctx, True)
    try:
        for start in range(0, len(tokens), step):
            chunk = tokens[start : start + step]
            n = len(chunk)
            if model.decode_rows(chunk, list(range(start, start + n)), [seq] * n, [True] * n):
                raise GenerationError(
                    "no room in the model's cache for the text to embed",
                    "retry when fewer requests are running, or embed a shorter text",
                )
            address = ctypes.cast(lc.llama_get_embeddings(ctx), ctypes.c_void_p).value
            if not address:
                raise GenerationError(
                    "llama.cpp gave no embeddings for this model",
                    "use another model for embeddings",
                )
            rows: Any = (ctypes.c_float * (n * n_embd)).from_address(address)
            total += np.frombuffer(rows, np.float32).reshape(n, n_embd).sum(axis=0)
    finally:
        lc.llama_set_embeddings(ctx, False)
        model.forget(seq)
    return normalized([float(x) for x in total / max(len(tokens), 1)])


def pair_tokens(model: LlamaCppModel, query: str, document: str) -> list[int]:
    """A reranker's input for one query and document, as llama-server builds it: the model's
    ``rerank`` template when its GGUF has one (Qwen3-Reranker's), else
    ``BOS query EOS SEP document EOS`` with the tokens its vocabulary adds."""
    vocab = model._vocab
    raw = lc.llama_model_chat_template(model._model, b"rerank")
    if raw:
        text = raw.decode("utf-8", "replace").replace("{query}", query)
        return model.tokenize(
            text.replace("{document}", document), add_special=False, parse_special=True
        )
    eos = int(lc.llama_vocab_eos(vocab))
    if eos < 0:
        eos = int(lc.llama_vocab_sep(vocab))
    add_eos = bool(lc.llama_vocab_get_add_eos(vocab))
    tokens: list[int] = []
    if lc.llama_vocab_get_add_bos(vocab):
        tokens.append(int(lc.llama_vocab_bos(vocab)))
    tokens += model.tokenize(query, add_special=False, parse_special=False)
    tokens += [eos] if add_eos else []
    tokens += [int(lc.llama_vocab_sep(vocab))] if lc.llama_vocab_get_add_sep(vocab) else []
    tokens += model.tokenize(document, add_special=False, parse_special=False)
    return tokens + ([eos] if add_eos else [])


def normalized(vector: list[float], dimensions: int | None = None) -> list[float]:
    """``vector`` cut to its first ``dimensions`` (Matryoshka), then scaled to length 1."""
    if dimensions is not None and dimensions < len(vector):
        vector = vector[:dimensions]
    norm = math.sqrt(sum(x * x for x in vector))
    return [x / norm for x in vector] if norm else vector
