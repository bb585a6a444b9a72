"""A tiny random Kimi Linear GGUF (``tinymodel.write_tiny_model(arch="kimi-linear")`` writes it through here).

As llama.cpp's converter lays out Kimi-Linear-48B-A3B (``KimiLinearModel``): head_count_kv a per-layer list, 0 for the
Kimi Delta Attention layers and 1 for the MLA ones (the converter's MQA form of the latent attention), kda.head_dim,
ssm.conv_kernel, kv_lora_rank (q_lora_rank none, as Kimi's: ``attn_q``; llama.cpp 0.3.36 reads no q_lora_rank for
kimi-linear and refuses ``attn_q_a_norm``), key_length/value_length the latent's, key_length_mla/value_length_mla the heads', rope.dimension_count
qk_rope (which Kimi's MLA never turns); a leading dense layer, then sigmoid-routed experts with ``exp_probs_b``,
renormalised and scaled (expert_weights_scale, Kimi's 2.446), a shared expert.

A KDA layer: ``attn_q``/``attn_k``/``attn_v`` each with its short convolution (``ssm_conv1d_q/k/v``, the converter's
4-D [1, d_inner, 1, d_conv]), the decay's low-rank ``ssm_f_a`` -> ``ssm_f_b`` with ``ssm_dt.bias`` per channel and
``ssm_a`` = -exp(A_log) per head, ``ssm_beta``, the output gate's ``ssm_g_a`` -> ``ssm_g_b``, ``ssm_norm`` [head_dim],
``attn_output``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from gguf import ExpertGatingFuncType, GGMLQuantizationType, GGUFWriter

Q = GGMLQuantizationType

#: n_embd, n_head, kda head_dim, d_conv, qk_nope, qk_rope, v_head_dim, kv_lora_rank, n_ff, n_layer
GEOMETRY = (64, 4, 16, 4, 16, 8, 16, 32, 96, 4)
#: which layers attend (MLA); the rest are KDA (Kimi's: every 4th from the 4th; here layers 1 and 3)
MLA_LAYERS = (1, 3)
#: experts, used a token, their width, shared experts, leading dense layers, the chosen weights' scale
MOE = (8, 2, 32, 1, 1, 2.446)


def write_tiny_kimi_linear(path: Path, qtype: int = Q.F32, seed: int = 0) -> Path:
    """The model at ``path``, its matrices as ``qtype``."""
    from tinymodel import _add_byte_vocab, _file_type, _finish, _random_tensors, byte_vocab

    rng = np.random.default_rng(seed)
    n_embd, n_head, hd, d_conv, nope, n_rot, dv, rank, n_ff, n_layer = GEOMETRY
    n_expert, n_used, n_ff_exp, n_shared, n_dense, scale = MOE
    d_inner = n_head * hd
    n_vocab = len(byte_vocab()[0])
    w = GGUFWriter(str(path), "kimi-linear")
    w.add_name("tiny-kimi-linear")
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
    w.add_expert_gating_func(ExpertGatingFuncType.SIGMOID)
    w.add_file_type(_file_type(qtype))
    _add_byte_vocab(w)

    mat, vec = _random_tensors(w, rng, qtype)

    def raw(name: str, a: np.ndarray) -> None:  # (float32 whatever qtype: experts stacked, the converter's shapes)
        w.add_tensor(name, a.astype(np.float32))

    mat("token_embd.weight", n_vocab, n_embd, 0.5)
    vec("output_norm.weight", n_embd)
    mat("output.weight", n_vocab, n_embd, 0.5)
    for i in range(n_layer):
        b = f"blk.{i}."
        vec(b + "attn_norm.weight", n_embd)
        if i in MLA_LAYERS:
            mat(b + "attn_q.weight", n_head * (nope + n_rot), n_embd, 0.15)
            mat(b + "attn_kv_a_mqa.weight", rank + n_rot, n_embd, 0.15)
            vec(b + "attn_kv_a_norm.weight", rank)
            raw(b + "attn_k_b.weight", rng.standard_normal((n_head, rank, nope)) * 0.3)  # (k_b transposed, as the converter)
            raw(b + "attn_v_b.weight", rng.standard_normal((n_head, dv, rank)) * 0.2)
            # (a small share of the stream: llama.cpp caches the latent in fp16 and kvrun the heads' K and V, and the two
            # roundings, 5e-4 of the attention's output, would otherwise reach the logits undiminished)
            mat(b + "attn_output.weight", n_embd, n_head * dv, 0.04)
        else:
            mat(b + "attn_q.weight", d_inner, n_embd, 0.2)
            mat(b + "attn_k.weight", d_inner, n_embd, 0.2)
            mat(b + "attn_v.weight", d_inner, n_embd, 0.2)
            for c in "qkv":
                raw(b + f"ssm_conv1d_{c}.weight", rng.standard_normal((1, d_inner, 1, d_conv)) * 0.5)
            mat(b + "ssm_f_a.weight", hd, n_embd, 0.3)
            mat(b + "ssm_f_b.weight", d_inner, hd, 0.3)
            # decays from ~0.99 to ~0.1 a token, channel by channel: some remember the prompt, some a few tokens
            raw(b + "ssm_dt.bias", rng.uniform(-4.0, 0.0, d_inner))
            raw(b + "ssm_a", -np.exp(rng.uniform(-2.0, 1.0, (1, 1, n_head, 1))))
            mat(b + "ssm_beta.weight", n_head, n_embd, 0.3)
            mat(b + "ssm_g_a.weight", hd, n_embd, 0.3)
            mat(b + "ssm_g_b.weight", d_inner, hd, 0.3)
            vec(b + "ssm_norm.weight", hd)
            mat(b + "attn_output.weight", n_embd, d_inner)
        vec(b + "ffn_norm.weight", n_embd)
        if i < n_dense:
            mat(b + "ffn_gate.weight", n_ff, n_embd)
            mat(b + "ffn_up.weight", n_ff, n_embd)
            mat(b + "ffn_down.weight", n_embd, n_ff)
            continue
        raw(b + "ffn_gate_inp.weight", rng.standard_normal((n_expert, n_embd)) * 0.5)
        raw(b + "exp_probs_b.bias", rng.standard_normal(n_expert) * 0.3)
        raw(b + "ffn_gate_exps.weight", rng.standard_normal((n_expert, n_ff_exp, n_embd)) * 0.1)
        raw(b + "ffn_up_exps.weight", rng.standard_normal((n_expert, n_ff_exp, n_embd)) * 0.1)
        raw(b + "ffn_down_exps.weight", rng.standard_normal((n_expert, n_embd, n_ff_exp)) * 0.1)
        mat(b + "ffn_gate_shexp.weight", n_shared * n_ff_exp, n_embd)
        mat(b + "ffn_up_shexp.weight", n_shared * n_ff_exp, n_embd)
        mat(b + "ffn_down_shexp.weight", n_embd, n_shared * n_ff_exp)
    return _finish(w, path)
