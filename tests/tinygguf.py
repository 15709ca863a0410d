"""Write tiny llama-architecture GGUF models with random weights, for fast real runs.

The models are real to llama.cpp (a sentencepiece-style vocabulary with byte fallback,
two transformer blocks) and about 300 KB, so loading and generating take milliseconds.
What they say is noise, which is all the tests need.
"""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np

N_EMBD = 64
N_FF = 128
N_HEAD = 4
N_LAYER = 2

CHATML_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def _vocab() -> tuple[list[str], list[float], list[int]]:
    normal, control, byte = (
        gguf.TokenType.NORMAL,
        gguf.TokenType.CONTROL,
        gguf.TokenType.BYTE,
    )
    tokens = ["<unk>", "<s>", "</s>", "<|im_start|>", "<|im_end|>"]
    types = [gguf.TokenType.UNKNOWN, control, control, control, control]
    scores = [0.0] * len(tokens)
    for b in range(256):
        tokens.append(f"<0x{b:02X}>")
        types.append(byte)
        scores.append(0.0)
    words = [chr(c) for c in range(ord("a"), ord("z") + 1)]
    words += ["▁" + w for w in words]
    words += ["▁the", "▁sky", "▁is", "▁blue", "▁why", "▁hello", "▁world", "é", "日", "本"]
    for i, w in enumerate(words):
        tokens.append(w)
        types.append(normal)
        scores.append(-float(i))
    return tokens, scores, [int(t) for t in types]


def write_tiny_model(
    path: Path,
    *,
    chat_template: str | None = None,
    seed: int = 0,
    n_ctx_train: int = 2048,
    split_max_tensors: int = 0,
    renamed: dict[str, str] | None = None,
    n_embd: int = N_EMBD,
    n_ff: int = N_FF,
) -> Path:
    """Write a tiny random llama model to ``path`` and return it.

    With ``split_max_tensors``, the model is split into shards named
    ``<stem>-0000N-of-0000M.gguf`` beside ``path`` (the form llama.cpp loads as one).
    ``renamed`` gives some tokens another text (a vocabulary of the same size, not the same).
    """
    rng = np.random.default_rng(seed)
    tokens, scores, types = _vocab()
    tokens = [(renamed or {}).get(t, t) for t in tokens]
    n_vocab = len(tokens)

    w = gguf.GGUFWriter(str(path), "llama", split_max_tensors=split_max_tensors)
    w.add_name("tiny-test-model")
    w.add_context_length(n_ctx_train)
    w.add_embedding_length(n_embd)
    w.add_block_count(N_LAYER)
    w.add_feed_forward_length(n_ff)
    w.add_head_count(N_HEAD)
    w.add_head_count_kv(N_HEAD)
    w.add_rope_dimension_count(n_embd // N_HEAD)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_unk_token_id(0)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_add_bos_token(True)
    if chat_template is not None:
        w.add_chat_template(chat_template)

    def tensor(name: str, *shape: int) -> None:
        w.add_tensor(name, (rng.standard_normal(shape) * 0.5).astype(np.float32))

    tensor("token_embd.weight", n_vocab, n_embd)
    w.add_tensor("output_norm.weight", np.ones(n_embd, dtype=np.float32))
    tensor("output.weight", n_vocab, n_embd)
    for i in range(N_LAYER):
        w.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(n_embd, dtype=np.float32))
        w.add_tensor(f"blk.{i}.ffn_norm.weight", np.ones(n_embd, dtype=np.float32))
        for part in ("attn_q", "attn_k", "attn_v", "attn_output"):
            tensor(f"blk.{i}.{part}.weight", n_embd, n_embd)
        tensor(f"blk.{i}.ffn_gate.weight", n_ff, n_embd)
        tensor(f"blk.{i}.ffn_up.weight", n_ff, n_embd)
        tensor(f"blk.{i}.ffn_down.weight", n_embd, n_ff)

    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def write_tiny_lora(path: Path, *, rank: int = 4, seed: int = 1) -> Path:
    """A LoRA adapter (GGUF) for the tiny model's attention queries."""
    rng = np.random.default_rng(seed)
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_string("general.type", "adapter")
    w.add_string("adapter.type", "lora")
    w.add_float32("adapter.lora.alpha", float(rank * 2))
    for i in range(N_LAYER):
        a = rng.standard_normal((rank, N_EMBD)).astype(np.float32)
        b = rng.standard_normal((N_EMBD, rank)).astype(np.float32)
        w.add_tensor(f"blk.{i}.attn_q.weight.lora_a", a)
        w.add_tensor(f"blk.{i}.attn_q.weight.lora_b", b)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def write_tiny_projector(
    path: Path,
    *,
    n_embd_text: int = N_EMBD,
    seed: int = 2,
    image_size: int = 32,
    patch_size: int = 8,
    n_embd: int = 32,
    n_head: int = 4,
    n_ff: int = 64,
    n_layer: int = 2,
) -> Path:
    """Write a tiny random multimodal projector ("mmproj") GGUF to ``path`` and return it.

    It is a LLaVA-style projector (``clip.projector_type`` "mlp"): a two-block CLIP ViT
    over a 32x32 image in 8x8 patches, then a two-layer MLP into the text model's
    embedding width, so every image (resized to 32x32) becomes 16 image embeddings and
    no special text tokens are needed around them. libmtmd loads it beside a text model
    whose ``n_embd`` equals ``n_embd_text``; another width makes ``mtmd_init_from_file``
    fail, which is how a test gets a mismatched projector. The encoder's sizes can be raised
    (a benchmark's ViT-S/14 at 224 pixels: 256 image tokens).
    """
    n_pos = (image_size // patch_size) ** 2
    rng = np.random.default_rng(seed)

    w = gguf.GGUFWriter(str(path), "clip")
    w.add_name("tiny-test-projector")
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    w.add_clip_has_vision_encoder(True)
    w.add_clip_projector_type("mlp")
    w.add_vision_image_size(image_size)
    w.add_vision_patch_size(patch_size)
    w.add_vision_embedding_length(n_embd)
    w.add_vision_feed_forward_length(n_ff)
    w.add_vision_block_count(n_layer)
    w.add_vision_head_count(n_head)
    w.add_vision_attention_layernorm_eps(1e-5)
    w.add_vision_projection_dim(n_embd_text)
    w.add_vision_image_mean([0.5, 0.5, 0.5])
    w.add_vision_image_std([0.5, 0.5, 0.5])

    def tensor(name: str, *shape: int) -> None:
        w.add_tensor(name, (rng.standard_normal(shape) * 0.1).astype(np.float32))

    def norm(name: str, n: int) -> None:
        w.add_tensor(f"{name}.weight", np.ones(n, dtype=np.float32))
        w.add_tensor(f"{name}.bias", np.zeros(n, dtype=np.float32))

    tensor("v.patch_embd.weight", n_embd, 3, patch_size, patch_size)
    tensor("v.position_embd.weight", n_pos, n_embd)
    norm("v.pre_ln", n_embd)
    for i in range(n_layer):
        norm(f"v.blk.{i}.ln1", n_embd)
        norm(f"v.blk.{i}.ln2", n_embd)
        for part in ("attn_q", "attn_k", "attn_v", "attn_out"):
            tensor(f"v.blk.{i}.{part}.weight", n_embd, n_embd)
            tensor(f"v.blk.{i}.{part}.bias", n_embd)
        tensor(f"v.blk.{i}.ffn_up.weight", n_ff, n_embd)
        tensor(f"v.blk.{i}.ffn_up.bias", n_ff)
        tensor(f"v.blk.{i}.ffn_down.weight", n_embd, n_ff)
        tensor(f"v.blk.{i}.ffn_down.bias", n_embd)
    tensor("mm.0.weight", n_embd_text, n_embd)
    tensor("mm.0.bias", n_embd_text)
    tensor("mm.2.weight", n_embd_text, n_embd_text)
    tensor("mm.2.bias", n_embd_text)

    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path
