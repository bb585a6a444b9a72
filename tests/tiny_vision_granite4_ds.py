"""A tiny random Granite 4.1 Vision pair with DeepStack, for tests held to llama.cpp's libmtmd: the Granite 4 Vision
projector of tests/tiny_vision_granite4.py with its four blocks 32 wide (rows 4 x 32 = 128), and a granite text model
32 wide whose ``granite.deepstack_mapping`` names blocks 1, 2 and 3 at layers 1, 3 and 4 (as llama.cpp's converter
writes it: -1 at layer 0, whose input is block 0, and at layers no projector targets; a gap at layer 2, so a block is
not its layer's number), so its ``n_embd_inp`` is 32 x (1 + 3), the projector's width.  The text model has
tinymodel's granite multipliers (the embedding scale 3 shows whether image rows are scaled) and byte vocabulary.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType, GGUFWriter

from tiny_vision_granite4 import write_tiny_granite4v_mmproj
from tinymodel import _add_byte_vocab, _file_type, _finish, _random_tensors, byte_vocab

Q = GGMLQuantizationType

#: the text model: (n_embd, n_head, n_head_kv, head_dim, n_ff), and each layer's block (-1: none)
N_EMBD, N_HEAD, N_HEAD_KV, HEAD_DIM, N_FF = 32, 4, 2, 8, 64
MAPPING = [-1, 1, -1, 2, 3]
#: the projector's row: the embedding and three DeepStack levels
N_ROW = N_EMBD * 4


def write_tiny_granite4v_ds_text(path: Path, qtype: int = Q.F32, seed: int = 1, mapping: list[int] | None = None) -> Path:
    """A random granite text model of len(:data:`MAPPING`) layers with ``granite.deepstack_mapping`` ``mapping``."""
    mapping = MAPPING if mapping is None else mapping
    rng = np.random.default_rng(seed)
    n_vocab = len(byte_vocab()[0])
    w = GGUFWriter(str(path), "granite")
    w.add_name("tiny-granite4v-ds")
    w.add_context_length(1024)
    w.add_embedding_length(N_EMBD)
    w.add_block_count(len(mapping))
    w.add_feed_forward_length(N_FF)
    w.add_head_count(N_HEAD)
    w.add_head_count_kv(N_HEAD_KV)
    w.add_layer_norm_rms_eps(1e-6)
    w.add_rope_freq_base(10000.0)
    w.add_file_type(_file_type(qtype))
    w.add_embedding_scale(3.0)  # (tinymodel's granite multipliers)
    w.add_residual_scale(0.5)
    w.add_attention_scale(0.2)
    w.add_logit_scale(4.0)
    w.add_array("granite.deepstack_mapping", mapping)  # (int32: llama.cpp reads -1 as "none")
    _add_byte_vocab(w)
    mat, vec = _random_tensors(w, rng, qtype)
    mat("token_embd.weight", n_vocab, N_EMBD, 0.5)
    vec("output_norm.weight", N_EMBD)
    for i in range(len(mapping)):
        b = f"blk.{i}."
        vec(b + "attn_norm.weight", N_EMBD)
        mat(b + "attn_q.weight", N_HEAD * HEAD_DIM, N_EMBD)
        mat(b + "attn_k.weight", N_HEAD_KV * HEAD_DIM, N_EMBD)
        mat(b + "attn_v.weight", N_HEAD_KV * HEAD_DIM, N_EMBD)
        mat(b + "attn_output.weight", N_EMBD, N_HEAD * HEAD_DIM)
        vec(b + "ffn_norm.weight", N_EMBD)
        mat(b + "ffn_gate.weight", N_FF, N_EMBD)
        mat(b + "ffn_up.weight", N_FF, N_EMBD)
        mat(b + "ffn_down.weight", N_EMBD, N_FF)
    return _finish(w, path)


def write_tiny_granite4v_ds_mmproj(path: Path, qtype: int = Q.F32, seed: int = 0) -> Path:
    """tests/tiny_vision_granite4.py's projector, its four blocks :data:`N_EMBD` wide each."""
    return write_tiny_granite4v_mmproj(path, qtype, seed, n_text_embd=N_ROW)
