"""A tiny random EXAONE MoE GGUF (``tinymodel.write_tiny_model(arch="exaone-moe")`` writes it through here).

As llama.cpp's converter lays out K-EXAONE (``ExaoneMoEModel``, over ``Exaone4Model``): q/k/v apart, per-head
``attn_q_norm``/``attn_k_norm``, ``attn_norm`` and ``ffn_norm`` before the sublayers; a window of 8 and
``sliding_window_pattern`` one flag a layer (3 window layers, then a global one); layer 0 dense
(leading_dense_block_count 1), layers 1-3 a mixture of 8 experts (2 a token, ``exp_probs_b``, weights renormalised,
times expert_weights_scale 2.5) beside 1 shared expert (expert_shared_feed_forward_length); rope.scaling.type none,
expert_gating_func sigmoid (llama.cpp requires it); Llama 3's ``rope_freqs``; an output head of its own.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from gguf import ExpertGatingFuncType, GGMLQuantizationType, GGUFWriter, RopeScalingType
from gguf.quants import quantize

Q = GGMLQuantizationType

#: n_embd, n_head, n_head_kv, head_dim, n_ff, n_layer, n_expert, n_expert_used, n_ff_exp, n_shared
GEOMETRY = (64, 4, 2, 16, 96, 4, 8, 2, 32, 1)
WINDOW = 8


def write_tiny_exaone_moe(path: Path, qtype: int = Q.F32, seed: int = 0) -> Path:
    """The model at ``path``, its matrices as ``qtype``."""
    from tinymodel import _add_byte_vocab, _file_type, _finish, _random_tensors, byte_vocab

    rng = np.random.default_rng(seed)
    n_embd, n_head, n_head_kv, hd, n_ff, n_layer, n_expert, n_used, n_ff_exp, n_shared = GEOMETRY
    n_vocab = len(byte_vocab()[0])
    w = GGUFWriter(str(path), "exaone-moe")
    w.add_name("tiny-exaone-moe")
    w.add_context_length(1024)
    w.add_embedding_length(n_embd)
    w.add_block_count(n_layer)
    w.add_feed_forward_length(n_ff)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_head_kv)
    w.add_key_length(hd)
    w.add_value_length(hd)
    w.add_rope_dimension_count(hd)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_freq_base(10000.0)
    w.add_vocab_size(n_vocab)
    w.add_sliding_window(WINDOW)
    w.add_sliding_window_pattern([(i + 1) % 4 != 0 for i in range(n_layer)])
    w.add_expert_count(n_expert)
    w.add_expert_used_count(n_used)
    w.add_expert_feed_forward_length(n_ff_exp)
    w.add_expert_shared_count(n_shared)
    w.add_expert_shared_feed_forward_length(n_ff_exp * n_shared)
    w.add_expert_weights_scale(2.5)
    w.add_expert_gating_func(ExpertGatingFuncType.SIGMOID)  # (llama.cpp requires it)
    w.add_expert_weights_norm(True)
    w.add_leading_dense_block_count(1)
    w.add_nextn_predict_layers(0)
    w.add_rope_scaling_type(RopeScalingType.NONE)
    w.add_file_type(_file_type(qtype))
    _add_byte_vocab(w)

    mat, vec = _random_tensors(w, rng, qtype)
    mat("token_embd.weight", n_vocab, n_embd, 0.5)
    vec("output_norm.weight", n_embd)
    mat("output.weight", n_vocab, n_embd, 0.5)
    w.add_tensor("rope_freqs.weight", np.geomspace(1.0, 8.0, hd // 2).astype(np.float32))  # (Llama 3's: 1 to 8, high to low)
    for i in range(n_layer):
        b = f"blk.{i}."
        vec(b + "attn_norm.weight", n_embd)
        mat(b + "attn_q.weight", n_head * hd, n_embd)
        mat(b + "attn_k.weight", n_head_kv * hd, n_embd)
        mat(b + "attn_v.weight", n_head_kv * hd, n_embd)
        # (QK-normed heads of 16: norms of 0.5 keep the scores about 1, where the fp16 rounding of K (and llama.cpp's of Q)
        # stays well under 1e-3 of the logits)
        vec(b + "attn_q_norm.weight", hd, 0.5)
        vec(b + "attn_k_norm.weight", hd, 0.5)
        mat(b + "attn_output.weight", n_embd, n_head * hd)
        vec(b + "ffn_norm.weight", n_embd)
        if i < 1:
            mat(b + "ffn_gate.weight", n_ff, n_embd)
            mat(b + "ffn_up.weight", n_ff, n_embd)
            mat(b + "ffn_down.weight", n_embd, n_ff)
            continue
        w.add_tensor(b + "ffn_gate_inp.weight", (rng.standard_normal((n_expert, n_embd)) * 0.5).astype(np.float32))
        w.add_tensor(b + "exp_probs_b.bias", (rng.standard_normal(n_expert) * 0.5).astype(np.float32))
        for name, rows, cols in (("ffn_gate_exps", n_ff_exp, n_embd), ("ffn_up_exps", n_ff_exp, n_embd), ("ffn_down_exps", n_embd, n_ff_exp)):
            a = (rng.standard_normal((n_expert, rows, cols)) * 0.1).astype(np.float32)
            w.add_tensor(b + name + ".weight", a if qtype == Q.F32 else quantize(a, qtype), raw_dtype=None if qtype == Q.F32 else qtype)
        mat(b + "ffn_gate_shexp.weight", n_ff_exp * n_shared, n_embd)
        mat(b + "ffn_up_shexp.weight", n_ff_exp * n_shared, n_embd)
        mat(b + "ffn_down_shexp.weight", n_embd, n_ff_exp * n_shared)
    return _finish(w, path)
