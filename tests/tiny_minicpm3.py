"""A tiny random MiniCPM3 GGUF (``tinymodel.write_tiny_model(arch="minicpm3")`` writes it through here).

As llama.cpp's converter lays out MiniCPM3 (``MiniCPM3Model``): head_count_kv = head_count, q_lora_rank and
kv_lora_rank, key_length qk_nope + qk_rope, rope.dimension_count qk_rope, no value_length (V n_embd / n_head wide), no
multipliers (llama.cpp fixes them), no rope.scaling.type; per layer ``attn_q_a`` -> ``attn_q_a_norm`` -> ``attn_q_b``,
``attn_kv_a_mqa``, ``attn_kv_a_norm``, ``attn_kv_b`` (per head: k_nope rows then V rows), a dense SwiGLU FFN;
LongRoPE's ``rope_factors_long``/``rope_factors_short`` (qk_rope / 2 each); an output head of its own.  ``variant``
"long": a training context of 32, below the 64 the fixture runs at, so the long factors turn the keys.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType, GGUFWriter

Q = GGMLQuantizationType

#: n_embd, n_head, qk_nope, qk_rope, q_lora_rank, kv_lora_rank, n_ff, n_layer (V: n_embd / n_head = 16)
GEOMETRY = (64, 4, 16, 8, 32, 24, 96, 4)
#: the attention weights' spread (scores about 1: rope and scale show, fp16 K/V rounding stays under 1e-3)
ATTN_SCALE = 0.15


def write_tiny_minicpm3(path: Path, qtype: int = Q.F32, seed: int = 0, variant: str = "") -> Path:
    """The model at ``path``, its matrices as ``qtype``."""
    from tinymodel import _add_byte_vocab, _file_type, _finish, _random_tensors, byte_vocab

    assert variant in ("", "long"), variant
    rng = np.random.default_rng(seed)
    n_embd, n_head, nope, n_rot, q_rank, rank, n_ff, n_layer = GEOMETRY
    dv = n_embd // n_head
    n_vocab = len(byte_vocab()[0])
    w = GGUFWriter(str(path), "minicpm3")
    w.add_name("tiny-minicpm3")
    w.add_context_length(32 if variant == "long" else 1024)
    w.add_embedding_length(n_embd)
    w.add_block_count(n_layer)
    w.add_feed_forward_length(n_ff)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_head)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(n_vocab)
    w.add_q_lora_rank(q_rank)
    w.add_kv_lora_rank(rank)
    w.add_key_length(nope + n_rot)
    w.add_rope_dimension_count(n_rot)
    w.add_file_type(_file_type(qtype))
    _add_byte_vocab(w)

    mat, vec = _random_tensors(w, rng, qtype)
    mat("token_embd.weight", n_vocab, n_embd, 0.5)
    vec("output_norm.weight", n_embd)
    mat("output.weight", n_vocab, n_embd, 0.5)
    # LongRoPE's factors (the real ones: 1 to ~60 from high to low frequencies; long > short)
    w.add_tensor("rope_factors_long.weight", np.geomspace(1.0, 40.0, n_rot // 2).astype(np.float32))
    w.add_tensor("rope_factors_short.weight", np.geomspace(1.0, 4.0, n_rot // 2).astype(np.float32))
    for i in range(n_layer):
        b = f"blk.{i}."
        vec(b + "attn_norm.weight", n_embd)
        mat(b + "attn_q_a.weight", q_rank, n_embd, ATTN_SCALE)
        vec(b + "attn_q_a_norm.weight", q_rank)
        mat(b + "attn_q_b.weight", n_head * (nope + n_rot), q_rank, ATTN_SCALE * 2)
        mat(b + "attn_kv_a_mqa.weight", rank + n_rot, n_embd, ATTN_SCALE)
        vec(b + "attn_kv_a_norm.weight", rank)
        mat(b + "attn_kv_b.weight", n_head * (nope + dv), rank, ATTN_SCALE * 2)
        mat(b + "attn_output.weight", n_embd, n_head * dv)
        vec(b + "ffn_norm.weight", n_embd)
        mat(b + "ffn_gate.weight", n_ff, n_embd)
        mat(b + "ffn_up.weight", n_ff, n_embd)
        mat(b + "ffn_down.weight", n_embd, n_ff)
    return _finish(w, path)
