"""A tiny random Kimi K3 GGUF (``tinymodel.write_tiny_model(arch="kimi-k3")`` writes it through here).

As llama.cpp 0.3.36 loads ``kimi-k3`` (src/models/kimi-k3.cpp): Kimi Linear's layout (``tiny_kimi_linear.py``: KDA
layers where the per-layer head_count_kv is 0, rope-less MLA elsewhere, a leading dense layer, sigmoid-routed experts
with ``exp_probs_b`` and a shared one) with K3's own parts:

* cross-layer residual attention: ``attn_res.block_size`` (2 here: layers 0 and 2 bank a checkpoint),
  ``attn_res_score``/``ffn_res_score`` a layer and ``output_res_score``;
* latent experts: ``expert_latent_length`` (24 < n_embd 64), ``ffn_routed_down`` [n_embd -> 24], the routed experts
  at 24, ``ffn_routed_norm``, ``ffn_routed_up`` [24 -> n_embd]; the router and the shared expert at n_embd;
* situ in place of SwiGLU (``activation.situ_beta`` 2, ``activation.situ_linear_beta`` 3: both branches bent);
* MLA's sigmoid output gate per channel, ``attn_gate`` [n_embd -> n_head * v_head_dim];
* the KDA output gate full rank, ``ssm_g`` [n_embd -> d_inner] (the decay's ``ssm_f_a``/``ssm_f_b`` stay low rank),
  the bounded decay ``gate_lower_bound * sigmoid(exp(A_log) * (f + dt_bias))`` (``kda.gate_lower_bound`` -5),
  ``ssm_a`` = -exp(A_log) a plain [n_head].
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from gguf import ExpertGatingFuncType, GGMLQuantizationType, GGUFWriter

Q = GGMLQuantizationType

#: n_embd, n_head, kda head_dim, d_conv, qk_nope, qk_rope, v_head_dim, kv_lora_rank, n_ff, n_layer
GEOMETRY = (64, 4, 16, 4, 16, 8, 16, 32, 96, 4)
#: which layers attend (MLA); the rest are KDA
MLA_LAYERS = (1, 3)
#: experts, used a token, their width, shared experts, leading dense layers, the chosen weights' scale, latent width
MOE = (8, 2, 32, 1, 1, 2.5, 24)
#: attn_res.block_size, situ_beta, situ_linear_beta, kda.gate_lower_bound
K3 = (2, 2.0, 3.0, -5.0)


def write_tiny_kimi_k3(path: Path, qtype: int = Q.F32, seed: int = 0) -> Path:
    """The model at ``path``, its matrices as ``qtype``."""
    from tinymodel import _add_byte_vocab, _file_type, _finish, _random_tensors, byte_vocab

    rng = np.random.default_rng(seed)
    n_embd, n_head, hd, d_conv, nope, n_rot, dv, rank, n_ff, n_layer = GEOMETRY
    n_expert, n_used, n_ff_exp, n_shared, n_dense, scale, latent = MOE
    block, beta, lin_beta, lower = K3
    d_inner = n_head * hd
    n_vocab = len(byte_vocab()[0])
    A = "kimi-k3."
    w = GGUFWriter(str(path), "kimi-k3")
    w.add_name("tiny-kimi-k3")
    w.add_context_length(1024)
    w.add_embedding_length(n_embd)
    w.add_block_count(n_layer)
    w.add_feed_forward_length(n_ff)
    w.add_head_count(n_head)
    w.add_head_count_kv([1 if i in MLA_LAYERS else 0 for i in range(n_layer)])
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(n_vocab)
    w.add_ssm_conv_kernel(d_conv)
    w.add_kda_head_dim(hd)
    w.add_float32(A + "kda.gate_lower_bound", lower)
    w.add_kv_lora_rank(rank)
    w.add_rope_dimension_count(n_rot)
    w.add_key_length(rank + n_rot)
    w.add_value_length(rank)
    w.add_key_length_mla(nope + n_rot)
    w.add_value_length_mla(dv)
    w.add_expert_count(n_expert)
    w.add_expert_used_count(n_used)
    w.add_expert_feed_forward_length(n_ff_exp)
    w.add_expert_shared_count(n_shared)
    w.add_leading_dense_block_count(n_dense)
    w.add_expert_weights_scale(scale)
    w.add_expert_weights_norm(True)
    w.add_expert_gating_func(ExpertGatingFuncType.SIGMOID)
    w.add_uint32(A + "expert_latent_length", latent)
    w.add_uint32(A + "attn_res.block_size", block)
    w.add_float32(A + "activation.situ_beta", beta)
    w.add_float32(A + "activation.situ_linear_beta", lin_beta)
    w.add_file_type(_file_type(qtype))
    _add_byte_vocab(w)

    mat, vec = _random_tensors(w, rng, qtype)

    def raw(name: str, a: np.ndarray) -> None:  # (float32 whatever qtype: experts stacked, the converter's shapes)
        w.add_tensor(name, a.astype(np.float32))

    mat("token_embd.weight", n_vocab, n_embd, 0.5)
    vec("output_norm.weight", n_embd)
    mat("output.weight", n_vocab, n_embd, 0.5)
    vec("output_res_score.weight", n_embd, 0.0, 1.0)  # (scores that matter: softmax weights far from even)
    for i in range(n_layer):
        b = f"blk.{i}."
        vec(b + "attn_norm.weight", n_embd)
        vec(b + "attn_res_score.weight", n_embd, 0.0, 1.0)
        vec(b + "ffn_res_score.weight", n_embd, 0.0, 1.0)
        if i in MLA_LAYERS:
            mat(b + "attn_q.weight", n_head * (nope + n_rot), n_embd, 0.15)
            mat(b + "attn_kv_a_mqa.weight", rank + n_rot, n_embd, 0.15)
            vec(b + "attn_kv_a_norm.weight", rank)
            raw(b + "attn_k_b.weight", rng.standard_normal((n_head, rank, nope)) * 0.3)  # (k_b transposed, as the converter)
            raw(b + "attn_v_b.weight", rng.standard_normal((n_head, dv, rank)) * 0.2)
            mat(b + "attn_gate.weight", n_head * dv, n_embd, 0.4)
            # (a small share of the stream, as tiny_kimi_linear.py's: llama.cpp's fp16 latent against kvrun's fp16 K and V)
            mat(b + "attn_output.weight", n_embd, n_head * dv, 0.04)
        else:
            for c in "qkv":
                mat(b + f"attn_{c}.weight", d_inner, n_embd, 0.2)
            for c in "qkv":
                raw(b + f"ssm_conv1d_{c}.weight", rng.standard_normal((1, d_inner, 1, d_conv)) * 0.5)
            mat(b + "ssm_f_a.weight", hd, n_embd, 0.3)
            mat(b + "ssm_f_b.weight", d_inner, hd, 0.3)
            raw(b + "ssm_dt.bias", rng.uniform(-1.0, 1.0, d_inner))
            raw(b + "ssm_a", -np.exp(rng.uniform(-1.0, 1.0, n_head)))  # (-exp(A_log), a plain [n_head])
            mat(b + "ssm_beta.weight", n_head, n_embd, 0.3)
            mat(b + "ssm_g.weight", d_inner, n_embd, 0.3)
            vec(b + "ssm_norm.weight", hd)
            mat(b + "attn_output.weight", n_embd, d_inner)
        vec(b + "ffn_norm.weight", n_embd)
        if i < n_dense:
            mat(b + "ffn_gate.weight", n_ff, n_embd, 0.3)
            mat(b + "ffn_up.weight", n_ff, n_embd, 0.3)
            mat(b + "ffn_down.weight", n_embd, n_ff)
            continue
        raw(b + "ffn_gate_inp.weight", rng.standard_normal((n_expert, n_embd)) * 0.8)
        raw(b + "exp_probs_b.bias", rng.standard_normal(n_expert) * 0.3)
        mat(b + "ffn_routed_down.weight", latent, n_embd, 0.3)
        raw(b + "ffn_gate_exps.weight", rng.standard_normal((n_expert, n_ff_exp, latent)) * 0.4)
        raw(b + "ffn_up_exps.weight", rng.standard_normal((n_expert, n_ff_exp, latent)) * 0.4)
        raw(b + "ffn_down_exps.weight", rng.standard_normal((n_expert, latent, n_ff_exp)) * 0.2)
        vec(b + "ffn_routed_norm.weight", latent)
        mat(b + "ffn_routed_up.weight", n_embd, latent, 0.1)
        mat(b + "ffn_gate_shexp.weight", n_shared * n_ff_exp, n_embd, 0.3)
        mat(b + "ffn_up_shexp.weight", n_shared * n_ff_exp, n_embd, 0.3)
        mat(b + "ffn_down_shexp.weight", n_embd, n_shared * n_ff_exp)
    return _finish(w, path)
