"""Write tiny embedding models and rerankers (GGUF, random weights) for fast real runs.

As :mod:`tests.tinygguf` writes tiny decoders, this writes each form of embedding model that
docs/embeddings.md names, with the tensors and header keys llama.cpp's ``convert_hf_to_gguf.py``
writes for it (in the pinned source: ``conversion/bert.py``, ``conversion/qwen.py``) and its
``src/models/*.cpp`` loads:

- ``bert``: a BERT encoder with a WordPiece vocabulary in the phantom-space form the converter
  writes (``▁word`` starts a word, a bare piece continues one), pooled by mean, CLS or last
  token; the same BERT as a reranker (rank pooling, the ``cls`` and ``cls.output`` classifier
  tensors: RoBERTa's classification head).
- ``nomic-bert`` (nomic-embed-text's form): rotary positions, one fused QKV matrix, a SwiGLU
  feed-forward, no biases inside the layers.
- ``jina-bert-v2`` (jina-embeddings-v2's): ALiBi instead of positions, and the gated
  feed-forward's two halves in one ``ffn_up`` (GEGLU).
- XLM-RoBERTa as bge-m3 ships it (``bert``, CLS pooling, a sentencepiece unigram vocabulary:
  llama.cpp's ``t5``/UGM tokenizer), and bge-reranker-v2-m3's (the same, rank pooling).
- ``qwen3`` pooled by the last token (Qwen3-Embedding's form: EOS added after the text) or by
  rank (Qwen3-Reranker's: a byte-level BPE vocabulary, a ``cls.output`` of the LM head's "yes"
  and "no" rows, and the ``rerank`` chat template the converter writes).
- a llama decoder with a pooling type.

Each is a few hundred KB.
"""

from __future__ import annotations

from collections.abc import Callable
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
LETTERS = [chr(c) for c in range(ord("a"), ord("z") + 1)]

# Qwen3-Reranker's rerank template, as the pinned convert_hf_to_gguf.py writes it
# (conversion/qwen.py, Qwen3Model.set_gguf_parameters).
QWEN3_RERANK_TEMPLATE = (
    "<|im_start|>system\nJudge whether the Document meets the requirements based on the Query "
    'and the Instruct provided. Note that the answer can only be "yes" or "no".<|im_end|>\n'
    "<|im_start|>user\n<Instruct>: Given a web search query, retrieve relevant passages that "
    "answer the query\n<Query>: {query}\n<Document>: {document}<|im_end|>\n"
    "<|im_start|>assistant\n<think>\n\n</think>\n\n"
)

Tensor = Callable[..., None]


def _wordpiece() -> tuple[list[str], list[int]]:
    """[PAD] [UNK] [CLS] [SEP] [MASK], whole words as ``▁word``, letters as both."""
    control = int(gguf.TokenType.CONTROL)
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    types = [control, int(gguf.TokenType.UNKNOWN), control, control, control]
    for piece in [*("▁" + w for w in WORDS), *("▁" + c for c in LETTERS), *LETTERS, ".", "?"]:
        if piece not in tokens:
            tokens.append(piece)
            types.append(int(gguf.TokenType.NORMAL))
    return tokens, types


def _add_wordpiece(w: gguf.GGUFWriter, n_vocab: int = 0) -> int:
    """A BERT WordPiece tokenizer (llama.cpp's WPM): [CLS] text [SEP]. Its size."""
    tokens, types = _wordpiece()
    for i in range(len(tokens), n_vocab):
        tokens.append(f"[unused{i}]")
        types.append(int(gguf.TokenType.UNUSED))
    w.add_tokenizer_model("bert")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_pad_token_id(0)
    w.add_unk_token_id(1)
    w.add_bos_token_id(2)  # [CLS]
    w.add_sep_token_id(3)
    w.add_mask_token_id(4)
    w.add_add_bos_token(True)
    w.add_add_sep_token(True)
    return len(tokens)


def _add_unigram(w: gguf.GGUFWriter) -> int:
    """XLM-RoBERTa's sentencepiece unigram tokenizer (llama.cpp's ``t5``/UGM) in the order the
    converter realigns it to: <s> <pad> </s> <unk>, the pieces with their log-probabilities,
    <mask> last; <s> text </s>, and a pair as <s> A </s></s> B </s>. (bge-m3's GGUF also
    carries the normalizer's precompiled charsmap; without one the text is read as it is.)"""
    control, normal = int(gguf.TokenType.CONTROL), int(gguf.TokenType.NORMAL)
    tokens = ["<s>", "<pad>", "</s>", "<unk>"]
    types = [control, control, control, int(gguf.TokenType.UNKNOWN)]
    scores = [0.0] * 4
    # A whole word is likelier than its letters: the unigram model reads it whole.
    for i, piece in enumerate(["▁" + w for w in WORDS]):
        tokens.append(piece)
        types.append(normal)
        scores.append(-3.0 - 0.01 * i)
    for i, piece in enumerate(["▁", *LETTERS, ".", "?", ","]):
        tokens.append(piece)
        types.append(normal)
        scores.append(-6.0 - 0.01 * i)
    tokens.append("<mask>")
    types.append(control)
    scores.append(0.0)
    w.add_tokenizer_model("t5")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_add_space_prefix(True)
    w.add_remove_extra_whitespaces(True)
    w.add_bos_token_id(0)
    w.add_pad_token_id(1)
    w.add_eos_token_id(2)
    w.add_sep_token_id(2)
    w.add_unk_token_id(3)
    w.add_mask_token_id(len(tokens) - 1)
    w.add_add_bos_token(True)
    w.add_add_eos_token(True)
    w.add_add_sep_token(True)
    return len(tokens)


def _byte_alphabet() -> list[str]:
    """The byte-level BPE alphabet GPT-2 and Qwen use: a printable character for each byte.
    Printable ASCII and most of Latin-1 stand for themselves; the other bytes, in order, take
    the characters from U+0100 on (so a space is ``Ġ`` and a newline ``Ċ``)."""
    kept = {*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)}
    moved = iter(range(0x100, 0x200))
    return [chr(b) if b in kept else chr(next(moved)) for b in range(256)]


def _add_byte_bpe(w: gguf.GGUFWriter, *, eos: str, add_eos: bool) -> dict[str, int]:
    """A byte-level BPE tokenizer in Qwen's form (llama.cpp's ``gpt2`` with the ``qwen2``
    pre-tokenizer): every byte a token, merges that build each word of WORDS (and "yes",
    "no") with and without its leading space, and Qwen3's special tokens. No BOS is added.
    The token ids by text."""
    alphabet = _byte_alphabet()
    tokens = list(alphabet)
    merges: list[str] = []
    # The spaced forms' merges rank first, so that "Ġsky" is built from "Ġ" up, whole.
    for spaced in (True, False):
        for word in [*WORDS, "yes", "no"]:
            built = "Ġ" if spaced else word[0]
            for c in word if spaced else word[1:]:
                merges.append(f"{built} {c}")
                built += c
                if built not in tokens:
                    tokens.append(built)
    merges = list(dict.fromkeys(merges))
    n_normal = len(tokens)
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    added = ["<think>", "</think>"]  # Qwen3's: added tokens that show as text
    tokens += specials + added
    types = [int(gguf.TokenType.NORMAL)] * n_normal
    types += [int(gguf.TokenType.CONTROL)] * len(specials)
    types += [int(gguf.TokenType.USER_DEFINED)] * len(added)
    ids = {t: i for i, t in enumerate(tokens)}
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("qwen2")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_bos_token_id(ids["<|endoftext|>"])
    w.add_eos_token_id(ids[eos])
    w.add_pad_token_id(ids["<|endoftext|>"])
    w.add_add_bos_token(False)
    w.add_add_eos_token(add_eos)
    return ids


def _header(
    path: Path, arch: str, name: str, *, n_embd: int, n_layer: int, n_head: int, n_ff: int,
    pooling: str, n_ctx_train: int = N_CTX_TRAIN,
) -> gguf.GGUFWriter:  # fmt: skip
    w = gguf.GGUFWriter(str(path), arch)
    w.add_name(name)
    w.add_context_length(n_ctx_train)
    w.add_embedding_length(n_embd)
    w.add_block_count(n_layer)
    w.add_feed_forward_length(n_ff)
    w.add_head_count(n_head)
    w.add_pooling_type(gguf.PoolingType(POOLING[pooling]))
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    return w


def _tensors(w: gguf.GGUFWriter, seed: int) -> tuple[Tensor, Callable[[str, int], None]]:
    """Random tensors into ``w``: ``tensor(name, *shape, scale=)`` and ``norm(name, n)`` (a
    layer norm's weight near 1 and its bias)."""
    rng = np.random.default_rng(seed)

    def tensor(name: str, *shape: int, scale: float = 0.3) -> None:
        w.add_tensor(name, (rng.standard_normal(shape) * scale).astype(np.float32))

    def norm(name: str, n: int) -> None:
        w.add_tensor(f"{name}.weight", (1 + rng.standard_normal(n) * 0.1).astype(np.float32))
        tensor(f"{name}.bias", n, scale=0.1)

    return tensor, norm


def _classifier_head(tensor: Tensor, n_embd: int, labels: int) -> None:
    """RoBERTa's classification head (rank pooling): dense, tanh, out_proj."""
    tensor("cls.weight", n_embd, n_embd)
    tensor("cls.bias", n_embd, scale=0.1)
    tensor("cls.output.weight", labels, n_embd)
    tensor("cls.output.bias", labels, scale=0.1)


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
    tokenizer: str = "wordpiece",
) -> Path:
    """A tiny BERT for embeddings with ``pooling`` ("mean", "cls", "last" or "rank"); a rank
    model gets a classifier head of ``rank_labels`` outputs (1 when not given). The sizes can
    be raised (a benchmark's MiniLM-L6 shape: 384 wide, 6 layers, 12 heads, 30,522 tokens;
    ``n_vocab`` pads the vocabulary with unused pieces). ``tokenizer`` "unigram" gives
    XLM-RoBERTa's (:func:`write_tiny_xlm_roberta`)."""
    n_ff = 4 * n_embd
    label = "xlm-roberta" if tokenizer == "unigram" else "bert"
    w = _header(path, "bert", f"tiny-test-{label}-{pooling}", n_embd=n_embd, n_layer=n_layer,
                n_head=n_head, n_ff=n_ff, pooling=pooling)  # fmt: skip
    w.add_layer_norm_eps(1e-12 if tokenizer == "wordpiece" else 1e-5)
    w.add_causal_attention(False)
    # XLM-RoBERTa has one token type (type_vocab_size 1), BERT two.
    n_types = 1 if tokenizer == "unigram" else 2
    w.add_token_type_count(n_types)
    n_tokens = _add_unigram(w) if tokenizer == "unigram" else _add_wordpiece(w, n_vocab)
    if pooling == "rank" and rank_labels:
        w.add_classifier_output_labels([f"LABEL_{i}" for i in range(rank_labels)])
    tensor, norm = _tensors(w, seed)
    tensor("token_embd.weight", n_tokens, n_embd)
    tensor("token_types.weight", n_types, n_embd)
    tensor("position_embd.weight", N_CTX_TRAIN, n_embd)
    norm("token_embd_norm", n_embd)
    for i in range(n_layer):
        for part in ("attn_q", "attn_k", "attn_v", "attn_output"):
            tensor(f"blk.{i}.{part}.weight", n_embd, n_embd)
            tensor(f"blk.{i}.{part}.bias", n_embd, scale=0.1)
        norm(f"blk.{i}.attn_output_norm", n_embd)
        tensor(f"blk.{i}.ffn_up.weight", n_ff, n_embd)
        tensor(f"blk.{i}.ffn_up.bias", n_ff, scale=0.1)
        tensor(f"blk.{i}.ffn_down.weight", n_embd, n_ff)
        tensor(f"blk.{i}.ffn_down.bias", n_embd, scale=0.1)
        norm(f"blk.{i}.layer_output_norm", n_embd)
    if pooling == "rank":
        _classifier_head(tensor, n_embd, max(rank_labels, 1))
    return _write(w, path)


def write_tiny_reranker(path: Path, *, seed: int = 3) -> Path:
    """A tiny BERT cross-encoder reranker (bge-reranker's form): rank pooling, one score."""
    return write_tiny_bert(path, pooling="rank", seed=seed)


def write_tiny_xlm_roberta(path: Path, *, pooling: str = "cls", seed: int = 11) -> Path:
    """XLM-RoBERTa as bge-m3 ships it (arch ``bert``, CLS pooling, a unigram vocabulary); with
    ``pooling="rank"``, bge-reranker-v2-m3's form: the classification head and the one label
    its config names (which the converter keeps: only a pair of LABEL_0/LABEL_1 is dropped)."""
    labels = 1 if pooling == "rank" else 0
    return write_tiny_bert(path, pooling=pooling, seed=seed, rank_labels=labels,
                           tokenizer="unigram")  # fmt: skip


def _bert_kin(
    path: Path, arch: str, n_ff: int, seed: int, rope_base: float | None = None
) -> tuple[gguf.GGUFWriter, Tensor, Callable[[str, int], None]]:
    """The start of a BERT-like encoder of ``arch`` pooled by mean: its header, a WordPiece
    vocabulary, two token types, and the embeddings and their norm; ``rope_base`` for rotary
    positions. The writer and the tensor makers, for the layers."""
    w = _header(path, arch, f"tiny-test-{arch}", n_embd=N_EMBD, n_layer=N_LAYER,
                n_head=N_HEAD, n_ff=n_ff, pooling="mean")  # fmt: skip
    w.add_layer_norm_eps(1e-12)
    w.add_causal_attention(False)
    if rope_base is not None:
        w.add_rope_freq_base(rope_base)
    w.add_token_type_count(2)
    n_tokens = _add_wordpiece(w)
    tensor, norm = _tensors(w, seed)
    tensor("token_embd.weight", n_tokens, N_EMBD)
    tensor("token_types.weight", 2, N_EMBD)
    norm("token_embd_norm", N_EMBD)
    return w, tensor, norm


def write_tiny_nomic_bert(path: Path, *, seed: int = 7) -> Path:
    """nomic-embed-text's form (arch ``nomic-bert``): no position embeddings but rotary ones
    (base 1000), each layer's Q, K and V in one ``attn_qkv`` matrix, a SwiGLU feed-forward
    (``ffn_up``, ``ffn_gate``, ``ffn_down``), no biases inside the layers, mean pooling."""
    n_ff = 3 * N_EMBD
    w, tensor, norm = _bert_kin(path, "nomic-bert", n_ff, seed, rope_base=1000.0)
    for i in range(N_LAYER):
        tensor(f"blk.{i}.attn_qkv.weight", 3 * N_EMBD, N_EMBD)
        tensor(f"blk.{i}.attn_output.weight", N_EMBD, N_EMBD)
        norm(f"blk.{i}.attn_output_norm", N_EMBD)
        tensor(f"blk.{i}.ffn_up.weight", n_ff, N_EMBD)
        tensor(f"blk.{i}.ffn_gate.weight", n_ff, N_EMBD)
        tensor(f"blk.{i}.ffn_down.weight", N_EMBD, n_ff)
        norm(f"blk.{i}.layer_output_norm", N_EMBD)
    return _write(w, path)


def write_tiny_jina_bert_v2(path: Path, *, seed: int = 9) -> Path:
    """jina-embeddings-v2's form (arch ``jina-bert-v2``): ALiBi instead of position
    embeddings, two token types, the gated feed-forward's gate and up halves in one
    ``ffn_up`` twice the feed-forward length (llama.cpp runs it as GEGLU), mean pooling."""
    n_ff = 2 * N_EMBD
    w, tensor, norm = _bert_kin(path, "jina-bert-v2", n_ff, seed)
    for i in range(N_LAYER):
        for part in ("attn_q", "attn_k", "attn_v", "attn_output"):
            tensor(f"blk.{i}.{part}.weight", N_EMBD, N_EMBD)
            tensor(f"blk.{i}.{part}.bias", N_EMBD, scale=0.1)
        norm(f"blk.{i}.attn_output_norm", N_EMBD)
        tensor(f"blk.{i}.ffn_up.weight", 2 * n_ff, N_EMBD)
        tensor(f"blk.{i}.ffn_down.weight", N_EMBD, n_ff)
        tensor(f"blk.{i}.ffn_down.bias", N_EMBD, scale=0.1)
        norm(f"blk.{i}.layer_output_norm", N_EMBD)
    return _write(w, path)


def write_tiny_qwen3(
    path: Path, *, pooling: str = "last", seed: int = 13, n_ctx_train: int = N_CTX_TRAIN
) -> Path:
    """A tiny Qwen3 (arch ``qwen3``: grouped-query attention, Q and K normed per head, tied
    embeddings as the 0.6B models have) for embeddings. ``pooling="last"``: Qwen3-Embedding's
    form, ``<|endoftext|>`` added after the text. ``pooling="rank"``: Qwen3-Reranker's, as the
    converter writes it: the labels "yes" and "no", a ``cls.output`` made of the LM head's rows
    for those two tokens (llama.cpp answers their softmax: the first is the score), the
    ``rerank`` chat template, nothing added to a text."""
    n_head, n_head_kv, head = 4, 2, N_EMBD // 4
    rank = pooling == "rank"
    w = _header(path, "qwen3", f"tiny-test-qwen3-{pooling}", n_embd=N_EMBD, n_layer=2,
                n_head=n_head, n_ff=N_FF, pooling=pooling, n_ctx_train=n_ctx_train)  # fmt: skip
    w.add_head_count_kv(n_head_kv)
    w.add_key_length(head)
    w.add_value_length(head)
    w.add_rope_freq_base(1_000_000.0)
    w.add_layer_norm_rms_eps(1e-6)
    ids = _add_byte_bpe(w, eos="<|im_end|>" if rank else "<|endoftext|>", add_eos=not rank)
    if rank:
        w.add_classifier_output_labels(["yes", "no"])
        w.add_chat_template([{"name": "rerank", "template": QWEN3_RERANK_TEMPLATE}])
    rng = np.random.default_rng(seed)

    def tensor(name: str, *shape: int, scale: float = 0.5) -> None:
        w.add_tensor(name, (rng.standard_normal(shape) * scale).astype(np.float32))

    def ones(name: str, n: int) -> None:
        w.add_tensor(name, (1 + rng.standard_normal(n) * 0.1).astype(np.float32))

    embd = (rng.standard_normal((len(ids), N_EMBD)) * 0.5).astype(np.float32)
    w.add_tensor("token_embd.weight", embd)
    ones("output_norm.weight", N_EMBD)
    if rank:  # the tied LM head's "yes" and "no" rows, in that order
        w.add_tensor("cls.output.weight", np.stack([embd[ids["yes"]], embd[ids["no"]]]))
    for i in range(2):
        ones(f"blk.{i}.attn_norm.weight", N_EMBD)
        tensor(f"blk.{i}.attn_q.weight", n_head * head, N_EMBD)
        tensor(f"blk.{i}.attn_k.weight", n_head_kv * head, N_EMBD)
        tensor(f"blk.{i}.attn_v.weight", n_head_kv * head, N_EMBD)
        tensor(f"blk.{i}.attn_output.weight", N_EMBD, n_head * head)
        ones(f"blk.{i}.attn_q_norm.weight", head)
        ones(f"blk.{i}.attn_k_norm.weight", head)
        ones(f"blk.{i}.ffn_norm.weight", N_EMBD)
        tensor(f"blk.{i}.ffn_gate.weight", N_FF, N_EMBD)
        tensor(f"blk.{i}.ffn_up.weight", N_FF, N_EMBD)
        tensor(f"blk.{i}.ffn_down.weight", N_EMBD, N_FF)
    return _write(w, path)


def write_tiny_pooled_decoder(
    path: Path, *, pooling: str = "last", seed: int = 5, n_ctx_train: int = N_CTX_TRAIN
) -> Path:
    """A tiny llama decoder for embeddings (Qwen3-Embedding's pooling on llama's layers):
    causal, ``pooling`` over its last hidden states, and EOS added after the text."""
    rng = np.random.default_rng(seed)
    tokens, scores, types = _vocab()
    w = _header(path, "llama", f"tiny-test-llama-{pooling}", n_embd=N_EMBD, n_layer=2,
                n_head=N_HEAD, n_ff=N_FF, pooling=pooling, n_ctx_train=n_ctx_train)  # fmt: skip
    w.add_head_count_kv(N_HEAD)
    w.add_rope_dimension_count(N_EMBD // N_HEAD)
    w.add_layer_norm_rms_eps(1e-5)
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
