"""Write tiny GGUF models that write an exact text: a tool call, for the agents' tests.

A real llama.cpp model (the tiny model's sizes and vocabulary, :mod:`tests.tinygguf`) whose
weights are set by hand, not drawn. Its next token depends on its current token alone (a
bigram model), with one exception that a single attention head makes:

- its one block's FFN and all but one attention head write nothing (``ffn_down`` and
  ``attn_output`` zero), so the residual stream at a position is its token's embedding, and
  the logits are ``RMSNorm(embedding) @ output.weight^T``;
- the script's tokens have orthonormal embeddings (basis vectors; every other token's is
  zero), and ``output.weight``'s row for a token holds ``SCALE`` times the basis vector of
  each script token it follows: its logit is 40 above every other token's, so it is chosen
  at any temperature, top_k or top_p (an unscripted token's logits are all 0: noise);
- the script starts at the prompt's last token (``start``: ``<0x0A>``, the newline that ends
  ChatML's and Qwen3's generation prompt ``<|im_start|>assistant\\n``) and ends with
  ``end``, an end-of-generation token;
- with ``then``, one head of the block looks back from ``start`` for the ``after``
  token anywhere in the context (a tool's result: Qwen3's template renders one as
  ``<tool_response>``). Its query and key sit in the last rotary pair, which turns so
  slowly at ``ROPE_BASE`` that the match does not fade with distance (0.0002 radians at
  131072 tokens), and score 40: the head's output is ``after``'s value, or nothing. That
  value turns the answer from the first script to ``then``'s, so an agent's loop (call,
  result, answer) ends after one call.

Tokens of a script that the vocabulary lacks are added as user-defined tokens (as Qwen3's
``<tool_call>`` is): their text shows whole in the output, so one token can hold a whole
call's JSON. The model is about 300 KB and loads in milliseconds.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import gguf
import numpy as np

from tests.tinygguf import N_EMBD, N_FF, N_HEAD, _vocab

SCALE = 5.0  # RMSNorm makes a basis vector 8 long (64 wide): a logit of 40 over the rest
ROPE_BASE = 1e10  # the last rotary pair barely turns: a look back works at any distance
QK = 1.6  # query and key weights: a score of 16 * QK**2 (the scale is 1/sqrt(16)) = 41
N_LAYER = 1  # one block: its head looks back; an agent's 80,000-token prompt reads faster
HEAD_DIM = N_EMBD // N_HEAD
LOOK = HEAD_DIM - 1  # the query's and key's dimension in head 0: its last rotary pair
QWEN3_TEMPLATE = "Qwen-Qwen3-0.6B.jinja"  # in tests/templates.py's real_templates


class _Space:
    """The script tokens' basis vectors, one dimension each, in order of asking."""

    def __init__(self) -> None:
        self.dims: dict[int, int] = {}

    def __call__(self, token: int) -> int:
        if token not in self.dims:
            if len(self.dims) == N_EMBD - 1:  # the last dimension is the look-back's
                raise ValueError(f"a script may hold at most {N_EMBD - 1} distinct tokens")
            self.dims[token] = len(self.dims)
        return self.dims[token]


def _ids(tokens: list[str], words: Sequence[str]) -> list[int]:
    """The ids of ``words``, adding those the vocabulary lacks at its end."""
    ids = []
    for word in words:
        if word not in tokens:
            tokens.append(word)
        ids.append(tokens.index(word))
    return ids


def _chain(ids: list[int], what: str) -> None:
    if len(set(ids)) != len(ids):
        raise ValueError(f"{what} repeats a token: a bigram model cannot, give each token once")


def write_scripted_model(
    path: Path,
    script: Sequence[str],
    *,
    then: Sequence[str] = (),
    after: str = "<tool_response>",
    start: str = "<0x0A>",
    end: str = "<|im_end|>",
    chat_template: str | None = None,
    n_ctx_train: int = 131072,
) -> Path:
    """Write a model to ``path`` that answers every prompt ending in ``start`` with the
    tokens of ``script`` (texts; the vocabulary's own, or added), then ``end``; and, where
    ``then`` is given and ``after`` is in the prompt, with ``then``'s tokens instead."""
    tokens, scores, types = _vocab()
    base = len(tokens)
    first = _ids(tokens, [start, *script])
    second = _ids(tokens, [start, *then])
    look = _ids(tokens, [after])[0] if then else None
    stop = _ids(tokens, [end])[0]
    _chain([*first, stop], "the script")
    _chain([*second, stop], "'then'")
    if then and (set(first[1:]) & set(second[1:]) or look in first + second):
        raise ValueError("'script', 'then' and 'after' must not share tokens")
    scores += [0.0] * (len(tokens) - base)
    types += [int(gguf.TokenType.USER_DEFINED)] * (len(tokens) - base)

    space = _Space()
    embd = np.zeros((len(tokens), N_EMBD), np.float32)
    out = np.zeros((len(tokens), N_EMBD), np.float32)
    for chain in (first, second) if then else (first,):
        for token, successor in zip(chain, [*chain[1:], stop], strict=True):
            if chain is second and token == second[0]:
                continue  # the look-back's: below
            embd[token, space(token)] = 1.0
            out[successor, space(token)] += SCALE
    flag = N_EMBD - 1  # where the look-back writes
    if then:
        assert look is not None
        embd[look, space(look)] = 1.0
        out[second[1], flag] = 2 * SCALE  # after a result: the second script's first token
        out[first[1], flag] = -2 * SCALE  # and not the first's

    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("tiny-scripted-model")
    w.add_context_length(n_ctx_train)
    w.add_embedding_length(N_EMBD)
    w.add_block_count(N_LAYER)
    w.add_feed_forward_length(N_FF)
    w.add_head_count(N_HEAD)
    w.add_head_count_kv(N_HEAD)
    w.add_rope_dimension_count(HEAD_DIM)
    w.add_rope_freq_base(ROPE_BASE)
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

    w.add_tensor("token_embd.weight", embd)
    w.add_tensor("output_norm.weight", np.ones(N_EMBD, np.float32))
    w.add_tensor("output.weight", out)
    for i in range(N_LAYER):
        square = {p: np.zeros((N_EMBD, N_EMBD), np.float32) for p in ("q", "k", "v", "output")}
        if i == 0 and then:
            assert look is not None
            square["q"][LOOK, space(first[0])] = QK  # the start token asks,
            square["k"][LOOK, space(look)] = QK  # ``after`` answers,
            square["v"][0, space(look)] = 1 / 8  # (its normed embedding is 8 long)
            square["output"][flag, 0] = 1.0  # and the answer lands on the flag
        w.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(N_EMBD, np.float32))
        w.add_tensor(f"blk.{i}.ffn_norm.weight", np.ones(N_EMBD, np.float32))
        for part, weights in square.items():
            w.add_tensor(f"blk.{i}.attn_{part}.weight", weights)
        w.add_tensor(f"blk.{i}.ffn_gate.weight", np.zeros((N_FF, N_EMBD), np.float32))
        w.add_tensor(f"blk.{i}.ffn_up.weight", np.zeros((N_FF, N_EMBD), np.float32))
        w.add_tensor(f"blk.{i}.ffn_down.weight", np.zeros((N_EMBD, N_FF), np.float32))

    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def call_text(name: str, arguments: dict[str, Any]) -> str:
    """A call as Qwen3 writes it between ``<tool_call>`` and ``</tool_call>``."""
    return "\n" + json.dumps({"name": name, "arguments": arguments}) + "\n"


def write_tool_caller(
    path: Path,
    name: str,
    arguments: dict[str, Any],
    *,
    chat_template: str,
    answer: str = "The tool ran.",
    n_ctx_train: int = 131072,
) -> Path:
    """A model with Qwen3's call form: it calls ``name`` with ``arguments`` (one
    ``<tool_call>`` block), and after the tool's result (a ``<tool_response>`` in the
    prompt) answers ``answer``. ``chat_template`` is Qwen3's, or one in its form."""
    script = ["<tool_call>", call_text(name, arguments), "</tool_call>"]
    return write_scripted_model(
        path, script, then=[answer], chat_template=chat_template, n_ctx_train=n_ctx_train
    )
