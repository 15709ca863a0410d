"""Write tiny llama-architecture GGUF models with random weights, for fast real runs.

The models are real to llama.cpp (a sentencepiece-style vocabulary with byte fallback,
two transformer blocks) and about 300 KB, so loading and generating take milliseconds.
What they say is noise, which is all the tests need.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

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
    arch: str = "llama",
    specials: tuple[str, ...] = (),
    rope_sections: list[int] | None = None,
    added: tuple[str, ...] = (),
    experts: int = 0,
) -> Path:
    """Write a tiny random llama model to ``path`` and return it.

    With ``split_max_tensors``, the model is split into shards named
    ``<stem>-0000N-of-0000M.gguf`` beside ``path`` (the form llama.cpp loads as one).
    ``renamed`` gives some tokens another text (a vocabulary of the same size, not the same).
    ``arch`` "qwen2vl" gives Qwen2's attention biases and M-RoPE over ``rope_sections``;
    ``specials`` are more control tokens, at the vocabulary's end; ``added`` more tokens
    after them that show as text (user-defined, as Qwen3's ``<think>`` is). ``experts``
    makes it a mixture of experts (as Mixtral, llama's architecture too): each layer's
    feed-forward is that many experts, two used a token.
    """
    rng = np.random.default_rng(seed)
    tokens, scores, types = _vocab()
    tokens = [(renamed or {}).get(t, t) for t in tokens] + list(specials) + list(added)
    scores += [0.0] * (len(specials) + len(added))
    types += [int(gguf.TokenType.CONTROL)] * len(specials)
    types += [int(gguf.TokenType.USER_DEFINED)] * len(added)
    n_vocab = len(tokens)

    w = gguf.GGUFWriter(str(path), arch, split_max_tensors=split_max_tensors)
    w.add_name("tiny-test-model" if arch == "llama" else f"tiny-test-{arch}")
    w.add_context_length(n_ctx_train)
    w.add_embedding_length(n_embd)
    w.add_block_count(N_LAYER)
    w.add_feed_forward_length(n_ff)
    w.add_head_count(N_HEAD)
    w.add_head_count_kv(N_HEAD)
    w.add_rope_dimension_count(n_embd // N_HEAD)
    if rope_sections is not None:
        w.add_rope_dimension_sections(rope_sections)
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
    if experts:
        w.add_expert_count(experts)
        w.add_expert_used_count(2)
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
            if arch == "qwen2vl" and part != "attn_output":
                tensor(f"blk.{i}.{part}.bias", n_embd)
        if experts:
            tensor(f"blk.{i}.ffn_gate_inp.weight", experts, n_embd)
            tensor(f"blk.{i}.ffn_gate_exps.weight", experts, n_ff, n_embd)
            tensor(f"blk.{i}.ffn_up_exps.weight", experts, n_ff, n_embd)
            tensor(f"blk.{i}.ffn_down_exps.weight", experts, n_embd, n_ff)
            continue
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


class _Encoder:
    """What the projector kinds share: a CLIP GGUF writer with its vision keys, random
    tensors, and a ViT's blocks."""

    def __init__(self, path: Path, kind: str, seed: int, **keys: Any) -> None:
        self.rng = np.random.default_rng(seed)
        self.w = w = gguf.GGUFWriter(str(path), "clip")
        w.add_name(f"tiny-test-{kind}")
        w.add_file_type(gguf.LlamaFileType.ALL_F32)
        w.add_clip_has_vision_encoder(True)
        w.add_clip_projector_type(kind)
        for key, value in keys.items():  # add_vision_<key>
            getattr(w, f"add_vision_{key}")(value)

    def tensor(self, name: str, *shape: int) -> None:
        self.w.add_tensor(name, (self.rng.standard_normal(shape) * 0.1).astype(np.float32))

    def norm(self, name: str, n: int) -> None:
        self.w.add_tensor(f"{name}.weight", np.ones(n, dtype=np.float32))
        self.w.add_tensor(f"{name}.bias", np.zeros(n, dtype=np.float32))

    def blocks(self, n_layer: int, n_embd: int, n_ff: int) -> None:
        for i in range(n_layer):
            self.norm(f"v.blk.{i}.ln1", n_embd)
            self.norm(f"v.blk.{i}.ln2", n_embd)
            for part in ("attn_q", "attn_k", "attn_v", "attn_out"):
                self.tensor(f"v.blk.{i}.{part}.weight", n_embd, n_embd)
                self.tensor(f"v.blk.{i}.{part}.bias", n_embd)
            self.tensor(f"v.blk.{i}.ffn_up.weight", n_ff, n_embd)
            self.tensor(f"v.blk.{i}.ffn_up.bias", n_ff)
            self.tensor(f"v.blk.{i}.ffn_down.weight", n_embd, n_ff)
            self.tensor(f"v.blk.{i}.ffn_down.bias", n_embd)

    def write(self, path: Path) -> Path:
        self.w.write_header_to_file()
        self.w.write_kv_data_to_file()
        self.w.write_tensors_to_file()
        self.w.close()
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
    e = _Encoder(
        path, "mlp", seed, image_size=image_size, patch_size=patch_size,
        embedding_length=n_embd, feed_forward_length=n_ff, block_count=n_layer,
        head_count=n_head, attention_layernorm_eps=1e-5, projection_dim=n_embd_text,
        image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5],
    )  # fmt: skip
    e.tensor("v.patch_embd.weight", n_embd, 3, patch_size, patch_size)
    e.tensor("v.position_embd.weight", (image_size // patch_size) ** 2, n_embd)
    e.norm("v.pre_ln", n_embd)
    e.blocks(n_layer, n_embd, n_ff)
    e.tensor("mm.0.weight", n_embd_text, n_embd)
    e.tensor("mm.0.bias", n_embd_text)
    e.tensor("mm.2.weight", n_embd_text, n_embd_text)
    e.tensor("mm.2.bias", n_embd_text)
    return e.write(path)


QWEN2VL_ROPE_SECTIONS = [2, 3, 3, 0]  # M-RoPE: t, h, w (and unused) pairs of a 16-wide head


def write_tiny_qwen2vl_model(path: Path, *, seed: int = 0) -> Path:
    """Write a tiny random Qwen2-VL text model (llama.cpp arch "qwen2vl") to ``path``.

    It is the llama model's vocabulary and sizes with Qwen2's attention biases and M-RoPE:
    each head's rotary pairs are split among an image's time, height and width positions
    (``rope.dimension_sections``), so an image takes fewer positions than it has embeddings.
    ``<|vision_start|>`` and ``<|vision_end|>`` (which libmtmd puts around an image) are
    control tokens, and the chat template is ChatML.
    """
    return write_tiny_model(
        path, chat_template=CHATML_TEMPLATE, seed=seed, arch="qwen2vl",
        specials=("<|vision_start|>", "<|vision_end|>"), rope_sections=QWEN2VL_ROPE_SECTIONS,
    )  # fmt: skip


def write_tiny_qwen2vl_projector(
    path: Path,
    *,
    n_embd_text: int = N_EMBD,
    seed: int = 2,
    patch_size: int = 14,
    n_embd: int = 32,
    n_head: int = 4,
    n_ff: int = 64,
    n_layer: int = 2,
) -> Path:
    """Write a tiny random Qwen2-VL projector (``clip.projector_type`` "qwen2vl_merger").

    A two-block ViT with M-RoPE over 14x14 patches (two patch convolutions, one per frame of
    a video's pair; a still image goes through both) and a merger that joins each 2x2 of
    patches into one embedding of the text model's width (``n_embd_text``). libmtmd resizes a
    picture to a multiple of 28 pixels a side within its own bounds (at least 8 merged
    tokens), and the image's chunk takes max(height, width) of its merged patches in
    positions, not one per token: a 56x56 picture is read at 84x84, 9 tokens in 3 positions.
    """
    merge = 2
    e = _Encoder(
        path, "qwen2vl_merger", seed, image_size=patch_size * merge * 4,  # only nominal here
        patch_size=patch_size, embedding_length=n_embd, feed_forward_length=n_ff,
        block_count=n_layer, head_count=n_head, attention_layernorm_eps=1e-6,
        projection_dim=n_embd_text, spatial_merge_size=merge,
        image_mean=[0.48145466, 0.4578275, 0.40821073],
        image_std=[0.26862954, 0.26130258, 0.27577711],
    )  # fmt: skip
    e.tensor("v.patch_embd.weight", n_embd, 3, patch_size, patch_size)
    e.tensor("v.patch_embd.weight.1", n_embd, 3, patch_size, patch_size)
    e.blocks(n_layer, n_embd, n_ff)
    n_merged = n_embd * merge * merge  # the merger's input: a 2x2 of patches side by side
    e.norm("v.post_ln", n_embd)
    e.tensor("mm.0.weight", n_merged, n_merged)
    e.tensor("mm.0.bias", n_merged)
    e.tensor("mm.2.weight", n_embd_text, n_merged)
    e.tensor("mm.2.bias", n_embd_text)
    return e.write(path)
