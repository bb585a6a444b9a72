"""A tiny random Nanbeige GGUF (``tinymodel.write_tiny_model(arch="nanbeige")`` writes it through here).

As llama.cpp's converter lays out Nanbeige (``conversion/nanbeige.py``, Llama's converter with ``num_loops`` and
``skip_loop_final_norm``): q/k/v apart, Llama 3's ``rope_freqs.weight`` (factors 1 to 8), no ``output.weight`` (the
head tied to the token embeddings), 3 physical layers run ``num_loops`` 2 times (6 KV caches); between the loops the
stream normed by ``output_norm`` (``variant`` "skip": ``skip_loop_final_norm`` true, not normed); an
``attention.scale`` of 0.5 stated, which llama.cpp reads none of for Nanbeige (its scores by 1/sqrt(head_dim)).  The byte
vocabulary tinymodel writes (gpt2).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType, GGUFWriter

Q = GGMLQuantizationType

#: n_embd, n_head, n_head_kv, head_dim, n_ff, n_layer (physical)
GEOMETRY = (64, 4, 2, 16, 96, 3)
N_LOOPS = 2


def write_tiny_nanbeige(path: Path, qtype: int = Q.F32, seed: int = 0, variant: str = "") -> Path:
    """The model at ``path``, its matrices as ``qtype``; ``variant`` "skip": the loops without the norm between them."""
    from tinymodel import _add_byte_vocab, _file_type, _finish, _random_tensors, byte_vocab

    rng = np.random.default_rng(seed)
    n_embd, n_head, n_head_kv, hd, n_ff, n_layer = GEOMETRY
    n_vocab = len(byte_vocab()[0])
    w = GGUFWriter(str(path), "nanbeige")
    w.add_name("tiny-nanbeige")
    w.add_context_length(1024)
    w.add_embedding_length(n_embd)
    w.add_block_count(n_layer)
    w.add_feed_forward_length(n_ff)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_head_kv)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_freq_base(10000.0)
    w.add_rope_dimension_count(hd)
    w.add_attention_scale(0.5)  # (unread by llama.cpp's nanbeige)
    w.add_uint32("nanbeige.num_loops", N_LOOPS)  # (gguf-py's add_num_loops, newer than kvrun's gguf)
    w.add_bool("nanbeige.skip_loop_final_norm", variant == "skip")
    w.add_file_type(_file_type(qtype))
    _add_byte_vocab(w)

    mat, vec = _random_tensors(w, rng, qtype)
    mat("token_embd.weight", n_vocab, n_embd, 0.5)  # (the output head too)
    vec("output_norm.weight", n_embd, 1.0, 0.5)  # (far from ones: the norm between the loops shows)
    w.add_tensor("rope_freqs.weight", np.geomspace(1.0, 8.0, hd // 2).astype(np.float32))
    for i in range(n_layer):
        b = f"blk.{i}."
        vec(b + "attn_norm.weight", n_embd)
        mat(b + "attn_q.weight", n_head * hd, n_embd)
        mat(b + "attn_k.weight", n_head_kv * hd, n_embd)
        mat(b + "attn_v.weight", n_head_kv * hd, n_embd)
        mat(b + "attn_output.weight", n_embd, n_head * hd)
        vec(b + "ffn_norm.weight", n_embd)
        mat(b + "ffn_gate.weight", n_ff, n_embd)
        mat(b + "ffn_up.weight", n_ff, n_embd)
        mat(b + "ffn_down.weight", n_embd, n_ff)
    return _finish(w, path)
