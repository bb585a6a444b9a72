"""A tiny random MiniMax-01 GGUF (``tinymodel.write_tiny_model(arch="minimax-01")`` writes it through here).

As llama.cpp's converter lays out MiniMax-Text-01 (``MiniMaxText01Model``): ``residual_scale`` (the checkpoint's
layernorm alphas), a partial rope (``rope.dimension_count`` 8 of each head's 16), 4 experts (2 a token) each
``feed_forward_length`` wide in every layer.  The lightning layers: ``attn_qkv`` [3 * n_head * head_dim, n_embd] (each
head's q, k, v side by side), ``attn_gate``, ``attn_norm_2`` over all heads, ``attn_output``; the softmax layers:
``attn_q``/``attn_k``/``attn_v`` apart.  Two variants:

* ``""``: ``full_attention_interval`` 2 (layers 0 and 2 lightning, at the layer scales 1 and 1/3; 1 and 3 softmax);
  an output head of its own;
* ``"array"``: the ``attention.recurrent_layers`` array [lightning, lightning, softmax, lightning] and no interval;
  the head tied to the embeddings.

The 40-token prompt of the fixtures runs the slowest decays (a rate of 1/256 a token) over a state of all of it.
The byte vocabulary tinymodel writes (gpt2).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType, GGUFWriter
from gguf.quants import quantize

Q = GGMLQuantizationType

#: n_embd, n_head, n_head_kv, head_dim, n_ff (an expert's), n_layer, n_expert, n_expert_used
GEOMETRY = (64, 4, 2, 16, 32, 4, 4, 2)
ROPE_DIM = 8
RESIDUAL_SCALE = 1.8
RECURRENT = {"": (True, False, True, False), "array": (True, True, False, True)}


def write_tiny_minimax_01(path: Path, qtype: int = Q.F32, seed: int = 0, variant: str = "") -> Path:
    """The model at ``path``, its matrices as ``qtype``; ``variant`` "" or "array" (above)."""
    from tinymodel import _add_byte_vocab, _file_type, _finish, _random_tensors, byte_vocab

    if variant not in RECURRENT:
        raise ValueError(f"minimax-01 variant {variant!r}: '' or 'array'")
    rng = np.random.default_rng(seed)
    n_embd, n_head, n_head_kv, hd, n_ff, n_layer, n_expert, n_used = GEOMETRY
    d = n_head * hd
    n_vocab = len(byte_vocab()[0])
    w = GGUFWriter(str(path), "minimax-01")
    w.add_name("tiny-minimax-01")
    w.add_context_length(1024)
    w.add_embedding_length(n_embd)
    w.add_block_count(n_layer)
    w.add_feed_forward_length(n_ff)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_head_kv)
    w.add_key_length(hd)
    w.add_value_length(hd)
    w.add_rope_dimension_count(ROPE_DIM)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_residual_scale(RESIDUAL_SCALE)
    w.add_expert_count(n_expert)
    w.add_expert_used_count(n_used)
    if variant == "":
        w.add_full_attention_interval(2)
    else:
        w.add_array("minimax-01.attention.recurrent_layers", list(RECURRENT[variant]))
    w.add_file_type(_file_type(qtype))
    _add_byte_vocab(w)

    mat, vec = _random_tensors(w, rng, qtype)
    mat("token_embd.weight", n_vocab, n_embd, 0.5)  # (RMS-normed at once: its scale is the tied head's)
    vec("output_norm.weight", n_embd)
    if variant == "":
        mat("output.weight", n_vocab, n_embd, 0.5)
    for i, lightning in enumerate(RECURRENT[variant]):
        b = f"blk.{i}."
        vec(b + "attn_norm.weight", n_embd)
        if lightning:
            mat(b + "attn_qkv.weight", 3 * d, n_embd)
            mat(b + "attn_gate.weight", d, n_embd, 0.5)
            vec(b + "attn_norm_2.weight", d)
        else:
            mat(b + "attn_q.weight", d, n_embd)
            mat(b + "attn_k.weight", n_head_kv * hd, n_embd)
            mat(b + "attn_v.weight", n_head_kv * hd, n_embd)
        mat(b + "attn_output.weight", n_embd, d)
        vec(b + "ffn_norm.weight", n_embd)
        w.add_tensor(b + "ffn_gate_inp.weight", (rng.standard_normal((n_expert, n_embd)) * 0.5).astype(np.float32))
        for name, rows, cols in (("ffn_gate_exps", n_ff, n_embd), ("ffn_up_exps", n_ff, n_embd), ("ffn_down_exps", n_embd, n_ff)):
            a = (rng.standard_normal((n_expert, rows, cols)) * 0.1).astype(np.float32)
            w.add_tensor(b + name + ".weight", a if qtype == Q.F32 else quantize(a, qtype), raw_dtype=None if qtype == Q.F32 else qtype)
    return _finish(w, path)

