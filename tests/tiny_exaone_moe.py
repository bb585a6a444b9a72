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
from gguf import ExpertGatingFuncType, GGMLQuantizationType, RopeScalingType

Q = GGMLQuantizationType

#: n_embd, n_head, n_head_kv, head_dim, n_ff, n_layer, n_expert, n_expert_used, n_ff_exp, n_shared
GEOMETRY = (64, 4, 2, 16, 96, 4, 8, 2, 32, 1)
WINDOW = 8


def write_tiny_exaone_moe(path: Path, qtype: int = Q.F32, seed: int = 0) -> Path:
    """The model at ``path``, its matrices as ``qtype``."""
    from tinymodel import (_add_byte_vocab, _file_type, _finish, _random_tensors_dropping, _start_writer, _write_moe,
                           _write_qk_norm_attention, _write_swiglu, byte_vocab)  # fmt: skip

    rng = np.random.default_rng(seed)
    n_embd, n_head, n_head_kv, hd, n_ff, n_layer, n_expert, n_used, n_ff_exp, n_shared = GEOMETRY
    n_vocab = len(byte_vocab()[0])
    w = _start_writer(path, "exaone-moe", n_embd, n_layer, n_ff, n_head, n_head_kv, hd)
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

    mat, vec, tensor3 = _random_tensors_dropping(w, rng, qtype, ())
    mat("token_embd.weight", n_vocab, n_embd, 0.5)
    vec("output_norm.weight", n_embd)
    mat("output.weight", n_vocab, n_embd, 0.5)
    w.add_tensor("rope_freqs.weight", np.geomspace(1.0, 8.0, hd // 2).astype(np.float32))  # (Llama 3's: 1 to 8, high to low)
    for i in range(n_layer):
        b = f"blk.{i}."
        _write_qk_norm_attention(mat, vec, b, n_embd, n_head, n_head_kv, hd)
        if i < 1:
            _write_swiglu(mat, b, n_embd, n_ff)
            continue
        _write_moe(mat, vec, tensor3, b, n_embd, n_expert, n_ff_exp, probs_b="exp_probs_b.bias", n_ff_shexp=n_ff_exp * n_shared)
    return _finish(w, path)
