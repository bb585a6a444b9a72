"""A tiny random Laguna GGUF (``tinymodel.write_tiny_model(arch="laguna")`` writes it through here).

As llama.cpp's converter lays out Poolside's Laguna (``conversion/laguna.py``): q/k/v apart, per-head
``attn_q_norm``/``attn_k_norm``, ``attn_gate`` one row a head on layers 0-1 (XS.2's) and one a value on layers 2-3
(M.1's), so both of llama.cpp's gate widths are seen; ``head_count`` a list (4 heads on the global layer, 6 on the
window ones, as XS.2's 48 and 64), 2 KV heads; a window of 8 with no ``sliding_window_pattern`` (the converter writes
none: llama.cpp's fixed pattern, layer 0 global, 1-3 window); the global layer rotating 8 of 16 dims with YaRN
(factor 4 over 16 positions), the window layers all 16 at their own ``rope.freq_base_swa``; layer 0 dense, layers
1-3 a mixture of 8 experts (2 a token, sigmoid router with ``exp_probs_b``, renormalised, times 2.5) beside a shared
expert wider than a routed one; an output head of its own.  The byte vocabulary tinymodel writes (gpt2).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from gguf import ExpertGatingFuncType, GGMLQuantizationType, RopeScalingType

Q = GGMLQuantizationType

#: n_embd, n_head_kv, head_dim, n_ff, n_layer, n_expert, n_expert_used, n_ff_exp, n_ff_shexp
GEOMETRY = (64, 2, 16, 96, 4, 8, 2, 32, 48)
#: query heads a layer: the global layer's 4, the window layers' 6
HEADS = (4, 6, 6, 6)
#: attn_gate one row a head (True) or one a value
GATE_PER_HEAD = (True, True, False, False)
WINDOW = 8


def write_tiny_laguna(path: Path, qtype: int = Q.F32, seed: int = 0) -> Path:
    """The model at ``path``, its matrices as ``qtype``."""
    from tinymodel import _add_byte_vocab, _file_type, _finish, _random_tensors_dropping, _start_writer, _write_moe, _write_swiglu, byte_vocab

    rng = np.random.default_rng(seed)
    n_embd, n_kv, hd, n_ff, n_layer, n_expert, n_used, n_ff_exp, n_ff_shexp = GEOMETRY
    n_vocab = len(byte_vocab()[0])
    w = _start_writer(path, "laguna", n_embd, n_layer, n_ff, list(HEADS), n_kv, hd)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_dimension_count(hd // 2)  # (XS.2's global layers: 64 of 128)
    w.add_rope_dimension_count_swa(hd)
    w.add_rope_freq_base(10000.0)
    w.add_rope_freq_base_swa(1000.0)
    w.add_rope_scaling_type(RopeScalingType.YARN)
    w.add_rope_scaling_factor(4.0)
    w.add_rope_scaling_orig_ctx_len(16)
    w.add_sliding_window(WINDOW)
    w.add_vocab_size(n_vocab)
    w.add_leading_dense_block_count(1)
    w.add_expert_count(n_expert)
    w.add_expert_used_count(n_used)
    w.add_expert_feed_forward_length(n_ff_exp)
    w.add_expert_shared_feed_forward_length(n_ff_shexp)
    w.add_expert_weights_norm(True)
    w.add_expert_weights_scale(2.5)
    w.add_expert_gating_func(ExpertGatingFuncType.SIGMOID)
    w.add_file_type(_file_type(qtype))
    _add_byte_vocab(w)

    mat, vec, tensor3 = _random_tensors_dropping(w, rng, qtype, ())
    mat("token_embd.weight", n_vocab, n_embd, 0.5)
    vec("output_norm.weight", n_embd)
    mat("output.weight", n_vocab, n_embd, 0.5)
    for i in range(n_layer):
        b, H = f"blk.{i}.", HEADS[i]
        vec(b + "attn_norm.weight", n_embd)
        mat(b + "attn_q.weight", H * hd, n_embd)
        mat(b + "attn_k.weight", n_kv * hd, n_embd)
        mat(b + "attn_v.weight", n_kv * hd, n_embd)
        # (norms of 0.5 keep the QK-normed scores about 1, where both runtimes' fp16 K stays well under 1e-3: tiny_afmoe.py)
        vec(b + "attn_q_norm.weight", hd, 0.5)
        vec(b + "attn_k_norm.weight", hd, 0.5)
        mat(b + "attn_gate.weight", H if GATE_PER_HEAD[i] else H * hd, n_embd, 0.2)
        mat(b + "attn_output.weight", n_embd, H * hd)
        vec(b + "ffn_norm.weight", n_embd)
        if i < 1:
            _write_swiglu(mat, b, n_embd, n_ff)
            continue
        _write_moe(mat, vec, tensor3, b, n_embd, n_expert, n_ff_exp, probs_b="exp_probs_b.bias", n_ff_shexp=n_ff_shexp)
    return _finish(w, path)
