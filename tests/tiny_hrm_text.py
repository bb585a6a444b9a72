"""A tiny random HRM-Text GGUF (``tinymodel.write_tiny_model(arch="hrm_text")`` writes it through here).

As llama.cpp's converter lays out HRM-Text (``conversion/hrm_text.py``): the low stack's layers in blocks 0-1, the high
stack's in blocks 2-3 (2 layers a stack), each with q/k/v apart, the attention gate as wide as the heads, ``attn_output``
and a SwiGLU FFN, no norm weights anywhere; ``hrm.z_l_init``, an output head of its own, ``embedding_scale``; 2 high
cycles of 2 low ones, so ``block_count`` is 2 x 2 x (2 + 1) = 12 cache slots over the 4 blocks.  The byte vocabulary
tinymodel writes (gpt2).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType, GGUFWriter

Q = GGMLQuantizationType

#: n_embd, n_head, n_head_kv, head_dim, n_ff
GEOMETRY = (64, 4, 2, 16, 96)
#: layers_per_stack, h_cycles, l_cycles
CYCLES = (2, 2, 2)
EMBEDDING_SCALE = 8.0


def write_tiny_hrm_text(path: Path, qtype: int = Q.F32, seed: int = 0) -> Path:
    """The model at ``path``, its matrices as ``qtype``."""
    from tinymodel import _add_byte_vocab, _file_type, _finish, _random_tensors, byte_vocab

    rng = np.random.default_rng(seed)
    n_embd, n_head, n_head_kv, hd, n_ff = GEOMETRY
    lps, h_cycles, l_cycles = CYCLES
    n_vocab = len(byte_vocab()[0])
    w = GGUFWriter(str(path), "hrm_text")
    w.add_name("tiny-hrm-text")
    w.add_context_length(1024)
    w.add_embedding_length(n_embd)
    w.add_block_count(lps * h_cycles * (l_cycles + 1))
    w.add_feed_forward_length(n_ff)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_head_kv)
    w.add_key_length(hd)
    w.add_value_length(hd)
    w.add_layer_norm_rms_eps(1e-6)
    w.add_rope_dimension_count(hd)
    w.add_rope_freq_base(10000.0)
    w.add_embedding_scale(EMBEDDING_SCALE)
    w.add_uint32("hrm_text.hrm.layers_per_stack", lps)  # (gguf-py's add_hrm_* are newer than kvrun's gguf)
    w.add_uint32("hrm_text.hrm.h_cycles", h_cycles)
    w.add_uint32("hrm_text.hrm.l_cycles", l_cycles)
    w.add_bool("hrm_text.hrm.prefix_lm", False)
    w.add_file_type(_file_type(qtype))
    _add_byte_vocab(w)

    mat, vec = _random_tensors(w, rng, qtype)
    mat("token_embd.weight", n_vocab, n_embd, 0.1)  # (times 8 at the input)
    mat("output.weight", n_vocab, n_embd, 0.5)
    vec("hrm.z_l_init", n_embd, 0.0, 1.0)
    for i in range(2 * lps):
        b = f"blk.{i}."
        mat(b + "attn_gate.weight", n_head * hd, n_embd, 0.5)
        mat(b + "attn_q.weight", n_head * hd, n_embd)
        mat(b + "attn_k.weight", n_head_kv * hd, n_embd)
        mat(b + "attn_v.weight", n_head_kv * hd, n_embd)
        mat(b + "attn_output.weight", n_embd, n_head * hd)
        mat(b + "ffn_gate.weight", n_ff, n_embd)
        mat(b + "ffn_up.weight", n_ff, n_embd)
        mat(b + "ffn_down.weight", n_embd, n_ff)
    return _finish(w, path)
