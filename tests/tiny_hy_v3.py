"""A tiny random Hy3 GGUF (``tinymodel.write_tiny_model(arch="hy_v3")`` writes it through here).

As llama.cpp's converter lays out Tencent's HY V3 (``conversion/hunyuan.py``'s ``HYV3Model``): q/k/v apart, per-head
``attn_q_norm``/``attn_k_norm``; layer 0 dense (no router), layers 1-2 a mixture of 8 experts (2 a token, sigmoid
router with the selection bias ``exp_probs_b`` without a suffix, renormalised, times 2.5) beside a shared expert two
routed experts wide (num_shared_experts 2); then one multi-token-prediction block (``nextn_predict_layers`` 1:
a whole decoder block and the NextN projections, which llama.cpp loads but does not run); an output head of its
own.  The byte vocabulary tinymodel writes (gpt2).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from gguf import ExpertGatingFuncType, GGMLQuantizationType

Q = GGMLQuantizationType

#: n_embd, n_head, n_head_kv, head_dim, n_ff, n_layer (the trunk), n_expert, n_expert_used, n_ff_exp, n_shared
GEOMETRY = (64, 4, 2, 16, 96, 3, 8, 2, 32, 2)
N_NEXTN = 1


def write_tiny_hy_v3(path: Path, qtype: int = Q.F32, seed: int = 0) -> Path:
    """The model at ``path``, its matrices as ``qtype``."""
    from tinymodel import (_add_byte_vocab, _file_type, _finish, _random_tensors_dropping, _start_writer, _write_moe, _write_nextn,
                           _write_qk_norm_attention, _write_swiglu, byte_vocab)  # fmt: skip

    rng = np.random.default_rng(seed)
    n_embd, n_head, n_kv, hd, n_ff, n_layer, n_expert, n_used, n_ff_exp, n_shared = GEOMETRY
    n_vocab = len(byte_vocab()[0])
    w = _start_writer(path, "hy_v3", n_embd, n_layer + N_NEXTN, n_ff, n_head, n_kv, hd)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_freq_base(10000.0)
    w.add_expert_count(n_expert)
    w.add_expert_used_count(n_used)
    w.add_expert_feed_forward_length(n_ff_exp)
    w.add_expert_shared_feed_forward_length(n_ff_exp * n_shared)
    w.add_expert_weights_norm(True)
    w.add_expert_weights_scale(2.5)
    w.add_expert_gating_func(ExpertGatingFuncType.SIGMOID)
    w.add_nextn_predict_layers(N_NEXTN)
    w.add_file_type(_file_type(qtype))
    _add_byte_vocab(w)

    mat, vec, tensor3 = _random_tensors_dropping(w, rng, qtype, ())
    mat("token_embd.weight", n_vocab, n_embd, 0.5)
    vec("output_norm.weight", n_embd)
    mat("output.weight", n_vocab, n_embd, 0.5)
    for i in range(n_layer + N_NEXTN):
        b = f"blk.{i}."
        _write_qk_norm_attention(mat, vec, b, n_embd, n_head, n_kv, hd)
        if i < 1:
            _write_swiglu(mat, b, n_embd, n_ff)
            continue
        _write_moe(mat, vec, tensor3, b, n_embd, n_expert, n_ff_exp, probs_b="exp_probs_b", n_ff_shexp=n_ff_exp * n_shared)
        if i >= n_layer:  # (the MTP block's NextN projections)
            _write_nextn(mat, vec, b, n_embd)
    return _finish(w, path)
