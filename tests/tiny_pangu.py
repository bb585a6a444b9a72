"""A tiny random openPangu-Embedded GGUF (``tinymodel.write_tiny_model(arch="pangu-embedded")`` writes it through here).

As llama.cpp's converter lays out openPangu-Embedded (``PanguEmbeddedModel``): the Llama layout with ``attn_q``,
``attn_k``, ``attn_v`` and ``attn_output`` biases, GQA (4 heads over 2), a SwiGLU FFN without biases, an output head
of its own.  The byte vocabulary tinymodel writes (gpt2).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType, GGUFWriter

Q = GGMLQuantizationType

#: n_embd, n_head, n_head_kv, head_dim, n_ff, n_layer
GEOMETRY = (64, 4, 2, 16, 96, 3)


def write_tiny_pangu(path: Path, qtype: int = Q.F32, seed: int = 0) -> Path:
    """The model at ``path``, its matrices as ``qtype``."""
    from tinymodel import _add_byte_vocab, _file_type, _finish, _random_tensors, byte_vocab

    rng = np.random.default_rng(seed)
    n_embd, n_head, n_head_kv, hd, n_ff, n_layer = GEOMETRY
    n_vocab = len(byte_vocab()[0])
    w = GGUFWriter(str(path), "pangu-embedded")
    w.add_name("tiny-pangu-embedded")
    w.add_context_length(1024)
    w.add_embedding_length(n_embd)
    w.add_block_count(n_layer)
    w.add_feed_forward_length(n_ff)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_head_kv)
    w.add_rope_dimension_count(hd)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_freq_base(10000.0)
    w.add_file_type(_file_type(qtype))
    _add_byte_vocab(w)

    mat, vec = _random_tensors(w, rng, qtype)
    mat("token_embd.weight", n_vocab, n_embd, 0.5)
    vec("output_norm.weight", n_embd)
    mat("output.weight", n_vocab, n_embd, 0.5)
    for i in range(n_layer):
        b = f"blk.{i}."
        vec(b + "attn_norm.weight", n_embd)
        for name, rows in (("attn_q", n_head * hd), ("attn_k", n_head_kv * hd), ("attn_v", n_head_kv * hd)):
            mat(b + name + ".weight", rows, n_embd, 0.2)
            vec(b + name + ".bias", rows, 0.0, 0.5)
        mat(b + "attn_output.weight", n_embd, n_head * hd)
        vec(b + "attn_output.bias", n_embd, 0.0, 0.5)
        vec(b + "ffn_norm.weight", n_embd)
        mat(b + "ffn_gate.weight", n_ff, n_embd)
        mat(b + "ffn_up.weight", n_ff, n_embd)
        mat(b + "ffn_down.weight", n_embd, n_ff)
    return _finish(w, path)
