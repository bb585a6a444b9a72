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
from gguf import ExpertGatingFuncType, GGMLQuantizationType, GGUFWriter
from gguf.quants import quantize

Q = GGMLQuantizationType

#: n_embd, n_head, n_head_kv, head_dim, n_ff, n_layer (the trunk), n_expert, n_expert_used, n_ff_exp, n_shared
GEOMETRY = (64, 4, 2, 16, 96, 3, 8, 2, 32, 2)
N_NEXTN = 1


def write_tiny_hy_v3(path: Path, qtype: int = Q.F32, seed: int = 0) -> Path:
    """The model at ``path``, its matrices as ``qtype``."""
    from tinymodel import _add_byte_vocab, _file_type, _finish, _random_tensors, byte_vocab

    rng = np.random.default_rng(seed)
    n_embd, n_head, n_kv, hd, n_ff, n_layer, n_expert, n_used, n_ff_exp, n_shared = GEOMETRY
    n_vocab = len(byte_vocab()[0])
    w = GGUFWriter(str(path), "hy_v3")
    w.add_name("tiny-hy-v3")
    w.add_context_length(1024)
    w.add_embedding_length(n_embd)
    w.add_block_count(n_layer + N_NEXTN)
    w.add_feed_forward_length(n_ff)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_kv)
    w.add_key_length(hd)
    w.add_value_length(hd)
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

    mat, vec = _random_tensors(w, rng, qtype)
    mat("token_embd.weight", n_vocab, n_embd, 0.5)
    vec("output_norm.weight", n_embd)
    mat("output.weight", n_vocab, n_embd, 0.5)
    for i in range(n_layer + N_NEXTN):
        b = f"blk.{i}."
        vec(b + "attn_norm.weight", n_embd)
        mat(b + "attn_q.weight", n_head * hd, n_embd)
        mat(b + "attn_k.weight", n_kv * hd, n_embd)
        mat(b + "attn_v.weight", n_kv * hd, n_embd)
        # (norms of 0.5 keep the QK-normed scores about 1, where both runtimes' fp16 K stays well under 1e-3: tiny_afmoe.py)
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
        w.add_tensor(b + "exp_probs_b", (rng.standard_normal(n_expert) * 0.5).astype(np.float32))
        for name, rows, cols in (("ffn_gate_exps", n_ff_exp, n_embd), ("ffn_up_exps", n_ff_exp, n_embd), ("ffn_down_exps", n_embd, n_ff_exp)):
            a = (rng.standard_normal((n_expert, rows, cols)) * 0.1).astype(np.float32)
            w.add_tensor(b + name + ".weight", a if qtype == Q.F32 else quantize(a, qtype), raw_dtype=None if qtype == Q.F32 else qtype)
        mat(b + "ffn_gate_shexp.weight", n_ff_exp * n_shared, n_embd)
        mat(b + "ffn_up_shexp.weight", n_ff_exp * n_shared, n_embd)
        mat(b + "ffn_down_shexp.weight", n_embd, n_ff_exp * n_shared)
        if i >= n_layer:  # (the MTP block's NextN projections)
            mat(b + "nextn.eh_proj.weight", n_embd, 2 * n_embd)
            vec(b + "nextn.enorm.weight", n_embd)
            vec(b + "nextn.hnorm.weight", n_embd)
            vec(b + "nextn.shared_head_norm.weight", n_embd)
    return _finish(w, path)
