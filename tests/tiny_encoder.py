"""Write tiny embedding models and rerankers (GGUF, random weights) for fast real runs.

As :mod:`tests.tinygguf` writes tiny decoders: a BERT encoder (llama.cpp arch ``bert``) with a
WordPiece vocabulary in the phantom-space form llama.cpp's converter writes (``▁word`` starts a
word, a bare piece continues one), pooled by mean, CLS or last token; the same BERT as a
reranker (rank pooling, with the ``cls`` and ``cls.output`` classifier tensors llama.cpp's
BERT reads); and a llama decoder with a pooling type (Qwen3-Embedding's form: last-token
pooling over a causal model that ends its input with EOS). Each is a few hundred KB.
"""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np

from tests.tinygguf import N_FF, N_HEAD, _vocab

N_EMBD = 64
N_LAYER = 3
N_CTX_TRAIN = 512
POOLING = {"none": 0, "mean": 1, "cls": 2, "last": 3, "rank": 4}

WORDS = [
    "the",
    "sky",
    "is",
    "blue",
    "why",
    "hello",
    "world",
    "river",
    "quiet",
    "cat",
    "dog",
    "sat",
    "on",
    "mat",
    "a",
    "an",
    "of",
    "and",
    "to",
    "in",
    "what",
    "colour",
    "sea",
    "green",
    "grass",
    "red",
    "apple",
    "fruit",
    "tree",
    "rain",
    "cloud",
    "sun",
]


def _wordpiece() -> tuple[list[str], list[int]]:
    """[PAD] [UNK] [CLS] [SEP] [MASK], whole words as ``▁word``, letters as both."""
    control = int(gguf.TokenType.CONTROL)
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    types = [control, int(gguf.TokenType.UNKNOWN), control, control, control]
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)]
    for piece in [*("▁" + w for w in WORDS), *("▁" + c for c in letters), *letters, ".", "?"]:
        if piece not in tokens:
            tokens.append(piece)
            types.append(int(gguf.TokenType.NORMAL))
    return tokens, types


def write_tiny_bert(
    path: Path,
    *,
    pooling: str = "mean",
    seed: int = 0,
    rank_labels: int = 0,
    n_embd: int = N_EMBD,
    n_layer: int = N_LAYER,
    n_head: int = N_HEAD,
    n_vocab: int = 0,
) -> Path:
    """A tiny BERT for embeddings with ``pooling`` ("mean", "cls", "last" or "rank"); a rank
    model gets a classifier head of ``rank_labels`` outputs (1 when not given). The sizes can
    be raised (a benchmark's MiniLM-L6 shape: 384 wide, 6 layers, 12 heads, 30,522 tokens;
    ``n_vocab`` pads the vocabulary with unused pieces)."""
    rng = np.random.default_rng(seed)
    tokens, types = _wordpiece()
    for i in range(len(tokens), n_vocab):
        tokens.append(f"[unused{i}]")
        types.append(int(gguf.TokenType.UNUSED))
    n_ff = 4 * n_embd
    w = gguf.GGUFWriter(str(path), "bert")
    w.add_name(f"tiny-test-bert-{pooling}")
    w.add_context_length(N_CTX_TRAIN)
    w.add_embedding_length(n_embd)
    w.add_block_count(n_layer)
    w.add_feed_forward_length(n_ff)
    w.add_head_count(n_head)
    w.add_layer_norm_eps(1e-12)
    w.add_causal_attention(False)
    w.add_pooling_type(gguf.PoolingType(POOLING[pooling]))
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    w.add_tokenizer_model("bert")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_type_count(2)
    w.add_pad_token_id(0)
    w.add_unk_token_id(1)
    w.add_bos_token_id(2)  # [CLS]
    w.add_sep_token_id(3)
    w.add_mask_token_id(4)
    w.add_add_bos_token(True)
    w.add_add_sep_token(True)
    if pooling == "rank" and rank_labels:
        w.add_classifier_output_labels([f"LABEL_{i}" for i in range(rank_labels)])

    def tensor(name: str, *shape: int, scale: float = 0.3) -> None:
        w.add_tensor(name, (rng.standard_normal(shape) * scale).astype(np.float32))

    def norm(name: str) -> None:
        w.add_tensor(f"{name}.weight", (1 + rng.standard_normal(n_embd) * 0.1).astype(np.float32))
        tensor(f"{name}.bias", n_embd, scale=0.1)

    tensor("token_embd.weight", len(tokens), n_embd)
    tensor("token_types.weight", 2, n_embd)
    tensor("position_embd.weight", N_CTX_TRAIN, n_embd)
    norm("token_embd_norm")
    for i in range(n_layer):
        for part in ("attn_q", "attn_k", "attn_v", "attn_output"):
            tensor(f"blk.{i}.{part}.weight", n_embd, n_embd)
            tensor(f"blk.{i}.{part}.bias", n_embd, scale=0.1)
        norm(f"blk.{i}.attn_output_norm")
        tensor(f"blk.{i}.ffn_up.weight", n_ff, n_embd)
        tensor(f"blk.{i}.ffn_up.bias", n_ff, scale=0.1)
        tensor(f"blk.{i}.ffn_down.weight", n_embd, n_ff)
        tensor(f"blk.{i}.ffn_down.bias", n_embd, scale=0.1)
        norm(f"blk.{i}.layer_output_norm")
    if pooling == "rank":  # RoBERTa's classification head: dense, tanh, out_proj
        tensor("cls.weight", n_embd, n_embd)
        tensor("cls.bias", n_embd, scale=0.1)
        tensor("cls.output.weight", max(rank_labels, 1), n_embd)
        tensor("cls.output.bias", max(rank_labels, 1), scale=0.1)
    return _write(w, path)


def write_tiny_reranker(path: Path, *, seed: int = 3) -> Path:
    """A tiny BERT cross-encoder reranker (bge-reranker's form): rank pooling, one score."""
    return write_tiny_bert(path, pooling="rank", seed=seed)


def write_tiny_pooled_decoder(path: Path, *, pooling: str = "last", seed: int = 5) -> Path:
    """A tiny llama decoder for embeddings (Qwen3-Embedding's form): causal, ``pooling`` over
    its last hidden states, and EOS added after the text."""
    rng = np.random.default_rng(seed)
    tokens, scores, types = _vocab()
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name(f"tiny-test-llama-{pooling}")
    w.add_context_length(N_CTX_TRAIN)
    w.add_embedding_length(N_EMBD)
    w.add_block_count(2)
    w.add_feed_forward_length(N_FF)
    w.add_head_count(N_HEAD)
    w.add_head_count_kv(N_HEAD)
    w.add_rope_dimension_count(N_EMBD // N_HEAD)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_pooling_type(gguf.PoolingType(POOLING[pooling]))
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_unk_token_id(0)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_add_bos_token(True)
    w.add_add_eos_token(True)

    def tensor(name: str, *shape: int) -> None:
        w.add_tensor(name, (rng.standard_normal(shape) * 0.5).astype(np.float32))

    tensor("token_embd.weight", len(tokens), N_EMBD)
    w.add_tensor("output_norm.weight", np.ones(N_EMBD, dtype=np.float32))
    tensor("output.weight", len(tokens), N_EMBD)
    for i in range(2):
        w.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(N_EMBD, dtype=np.float32))
        w.add_tensor(f"blk.{i}.ffn_norm.weight", np.ones(N_EMBD, dtype=np.float32))
        for part in ("attn_q", "attn_k", "attn_v", "attn_output"):
            tensor(f"blk.{i}.{part}.weight", N_EMBD, N_EMBD)
        tensor(f"blk.{i}.ffn_gate.weight", N_FF, N_EMBD)
        tensor(f"blk.{i}.ffn_up.weight", N_FF, N_EMBD)
        tensor(f"blk.{i}.ffn_down.weight", N_EMBD, N_FF)
    return _write(w, path)


def _write(w: gguf.GGUFWriter, path: Path) -> Path:
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path
