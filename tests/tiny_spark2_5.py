"""A tiny random Spark-X2.5 GGUF (``tinymodel.write_tiny_model(arch="spark2_5")`` writes it through here).

As llama.cpp's converter lays out Spark-X2.5 (``conversion/spark2_5.py``): Q/K/V fused (``attn_qkv``), the head-wise
``attn_gate`` ``[n_head, n_embd]``, a GELU-gated FFN, the output head tied to the embeddings (no ``output.weight``); the
per-layer ``sliding_window_pattern`` array the converter writes, here [window, window, global, window] with a window of
8, the window layers at their own ``rope.freq_base_swa`` over ``rope.dimension_count_swa`` 8 of a head's 16 (the global
ones over all 16).  Per-layer head counts (``head_count`` and ``head_count_kv`` lists, which llama.cpp's graph reads by
layer): the global layer has half the query and KV heads.  The byte vocabulary tinymodel writes (gpt2).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType, GGUFWriter

Q = GGMLQuantizationType

#: n_embd, head_dim, n_ff, n_layer
GEOMETRY = (64, 16, 96, 4)
HEADS = (4, 4, 2, 4)
KV_HEADS = (2, 2, 1, 2)
WINDOW = 8
PATTERN = (True, True, False, True)
N_ROT_SWA = 8


def write_tiny_spark2_5(path: Path, qtype: int = Q.F32, seed: int = 0) -> Path:
    """The model at ``path``, its matrices as ``qtype``."""
    from tinymodel import _add_byte_vocab, _file_type, _finish, _random_tensors, byte_vocab

    rng = np.random.default_rng(seed)
    n_embd, hd, n_ff, n_layer = GEOMETRY
    n_vocab = len(byte_vocab()[0])
    w = GGUFWriter(str(path), "spark2_5")
    w.add_name("tiny-spark2_5")
    w.add_context_length(1024)
    w.add_embedding_length(n_embd)
    w.add_block_count(n_layer)
    w.add_feed_forward_length(n_ff)
    w.add_head_count(list(HEADS))
    w.add_head_count_kv(list(KV_HEADS))
    w.add_key_length(hd)
    w.add_value_length(hd)
    w.add_layer_norm_rms_eps(1e-6)
    w.add_rope_dimension_count(hd)
    w.add_rope_dimension_count_swa(N_ROT_SWA)
    w.add_rope_freq_base(10000.0)
    w.add_rope_freq_base_swa(500.0)
    w.add_sliding_window(WINDOW)
    w.add_sliding_window_pattern(list(PATTERN))
    w.add_file_type(_file_type(qtype))
    _add_byte_vocab(w)

    mat, vec = _random_tensors(w, rng, qtype)
    mat("token_embd.weight", n_vocab, n_embd, 0.5)  # (tied: the output head too)
    vec("output_norm.weight", n_embd)
    for i, (H, n_kv) in enumerate(zip(HEADS, KV_HEADS)):
        b = f"blk.{i}."
        vec(b + "attn_norm.weight", n_embd)
        mat(b + "attn_qkv.weight", (H + 2 * n_kv) * hd, n_embd)
        mat(b + "attn_gate.weight", H, n_embd, 0.5)
        mat(b + "attn_output.weight", n_embd, H * hd)
        vec(b + "ffn_norm.weight", n_embd)
        mat(b + "ffn_gate.weight", n_ff, n_embd)
        mat(b + "ffn_up.weight", n_ff, n_embd)
        mat(b + "ffn_down.weight", n_embd, n_ff)
    return _finish(w, path)
