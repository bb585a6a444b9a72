"""A tiny random Ling 3 (``bailingmoe3``) GGUF (``tinymodel.write_tiny_model(arch="bailingmoe3")`` writes it through here).

As llama.cpp's converter lays out inclusionAI's Ling-3.0 (``BailingMoeV3Model``): Kimi Linear's shape
(``tiny_kimi_linear.py``), head_count_kv a per-layer list of ``block_count`` (0 for the KDA layers, 1 for MLA), with
Ling's own parts:

* the KDA decay and output gate full rank: ``ssm_f_a`` and ``ssm_g_a`` [n_embd -> n_head * head_dim], no ``_b``;
  ``ssm_a`` = exp(A_log) [n_head, 1] (positive: the safe gate ``gate_lower_bound * sigmoid(a * (f + dt_bias))``),
  ``kda.safe_gate`` and ``kda.gate_lower_bound`` stated;
* MLA with a head-wise output gate ``attn_gate`` [n_embd -> n_head] and rope on q_pe/k_pe (consecutive pairs; the VL
  files' ``rope.dimension_sections``: halves, ``variant="mrope"``); a query LoRA (``attn_q_a``, ``attn_q_a_norm``,
  ``attn_q_b``) unless ``variant="mrope"``, which has ``attn_q``;
* the shared expert as wide as ``expert_shared_feed_forward_length`` (48 here, the routed ones 32), clamped SwiGLUs
  one limit a layer (``swiglu_clamp_exp``/``_shexp``, 0 for none; the dense layer's FFN takes the shared limit);
* one multi-token-prediction layer counted in ``block_count`` (``nextn_predict_layers`` 1) whose tensors the file
  leaves out (llama.cpp then loads the trunk alone, as the converter's trunk-only export).

``variant="tied"``: no ``output.weight`` (llama.cpp's head is then ``token_embd``).  ``extra_tokens``: control tokens
after the byte vocabulary (tiny_vision_ling3vl.py's text model: the "mrope" variant with Ling 3 VL's picture markers).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from gguf import ExpertGatingFuncType, GGMLQuantizationType, GGUFWriter

Q = GGMLQuantizationType

#: n_embd, n_head, kda head_dim, d_conv, qk_nope, qk_rope, v_head_dim, kv_lora_rank, q_lora_rank, n_ff, trunk layers
GEOMETRY = (64, 4, 16, 4, 16, 8, 16, 32, 24, 96, 4)
#: which trunk layers attend (MLA; Ling's every layer_group_size-th); the rest are KDA
MLA_LAYERS = (1, 3)
#: experts, used a token, their width, the shared expert's width, shared experts, leading dense layers, scale
MOE = (8, 2, 32, 48, 1, 1, 2.5)
#: the clamps a layer (the trunk's 4 and the MTP layer's): routed experts', the shared expert's (and dense FFN's)
CLAMP_EXP = [0.0, 0.0, 0.3, 0.0, 0.0]
CLAMP_SHEXP = [0.25, 0.3, 0.0, 0.0, 0.0]
#: the VL files' rope sections (pairs: t, h, w, 0), qk_rope / 2 in all
SECTIONS = [2, 1, 1, 0]


def write_tiny_bailingmoe3(path: Path, qtype: int = Q.F32, seed: int = 0, variant: str = "",
                           extra_tokens: tuple[str, ...] = ()) -> Path:  # fmt: skip
    """The model at ``path``, its matrices as ``qtype`` (``variant``: "", "mrope" or "tied", as the module says;
    ``extra_tokens`` after the vocabulary)."""
    from tinymodel import _add_byte_vocab, _file_type, _finish, _random_tensors, byte_vocab

    rng = np.random.default_rng(seed)
    n_embd, n_head, hd, d_conv, nope, n_rot, dv, rank, q_rank, n_ff, n_layer = GEOMETRY
    n_expert, n_used, n_ff_exp, n_ff_sh, n_shared, n_dense, scale = MOE
    d_inner = n_head * hd
    q_lora = variant != "mrope"
    n_vocab = len(byte_vocab()[0]) + len(extra_tokens)
    w = GGUFWriter(str(path), "bailingmoe3")
    A = "bailingmoe3."
    w.add_name("tiny-bailingmoe3")
    w.add_context_length(1024)
    w.add_embedding_length(n_embd)
    w.add_block_count(n_layer + 1)  # (the MTP layer's place counted, as the converter's)
    w.add_nextn_predict_layers(1)
    w.add_feed_forward_length(n_ff)
    w.add_head_count(n_head)
    w.add_head_count_kv([1 if i in MLA_LAYERS or i >= n_layer else 0 for i in range(n_layer + 1)])
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(n_vocab)
    w.add_ssm_conv_kernel(d_conv)
    w.add_kda_head_dim(hd)
    w.add_bool(A + "kda.safe_gate", True)
    w.add_float32(A + "kda.gate_lower_bound", -5.0)
    if q_lora:
        w.add_q_lora_rank(q_rank)
    w.add_kv_lora_rank(rank)
    w.add_rope_dimension_count(n_rot)
    w.add_rope_freq_base(100.0)  # (a low base: the tiny prompt's positions turn the rope parts far)
    if variant == "mrope":
        w.add_rope_dimension_sections(SECTIONS)
    w.add_key_length(rank + n_rot)
    w.add_key_length_mla(nope + n_rot)
    w.add_value_length_mla(dv)
    w.add_expert_count(n_expert)
    w.add_expert_used_count(n_used)
    w.add_expert_feed_forward_length(n_ff_exp)
    w.add_expert_shared_feed_forward_length(n_ff_sh)
    w.add_expert_shared_count(n_shared)
    w.add_leading_dense_block_count(n_dense)
    w.add_expert_weights_scale(scale)
    w.add_expert_weights_norm(True)
    w.add_expert_gating_func(ExpertGatingFuncType.SIGMOID)
    w.add_swiglu_clamp_exp(CLAMP_EXP)
    w.add_swiglu_clamp_shexp(CLAMP_SHEXP)
    w.add_file_type(_file_type(qtype))
    _add_byte_vocab(w, extra_tokens)

    mat, vec = _random_tensors(w, rng, qtype)

    def raw(name: str, a: np.ndarray) -> None:  # (float32 whatever qtype: experts stacked, the converter's shapes)
        w.add_tensor(name, a.astype(np.float32))

    mat("token_embd.weight", n_vocab, n_embd, 0.5)
    vec("output_norm.weight", n_embd)
    if variant != "tied":
        mat("output.weight", n_vocab, n_embd, 0.5)
    for i in range(n_layer):
        b = f"blk.{i}."
        vec(b + "attn_norm.weight", n_embd)
        if i in MLA_LAYERS:
            if q_lora:
                mat(b + "attn_q_a.weight", q_rank, n_embd, 0.15)
                vec(b + "attn_q_a_norm.weight", q_rank)
                mat(b + "attn_q_b.weight", n_head * (nope + n_rot), q_rank, 0.2)
            else:
                mat(b + "attn_q.weight", n_head * (nope + n_rot), n_embd, 0.15)
            mat(b + "attn_kv_a_mqa.weight", rank + n_rot, n_embd, 0.15)
            vec(b + "attn_kv_a_norm.weight", rank)
            raw(b + "attn_k_b.weight", rng.standard_normal((n_head, rank, nope)) * 0.3)  # (k_b transposed, as the converter)
            raw(b + "attn_v_b.weight", rng.standard_normal((n_head, dv, rank)) * 0.2)
            mat(b + "attn_gate.weight", n_head, n_embd, 0.4)
            # (a small share of the stream, as tiny_kimi_linear.py's: llama.cpp's fp16 latent against kvrun's fp16 K and V)
            mat(b + "attn_output.weight", n_embd, n_head * dv, 0.04)
        else:
            for c in "qkv":
                mat(b + f"attn_{c}.weight", d_inner, n_embd, 0.2)
            for c in "qkv":
                raw(b + f"ssm_conv1d_{c}.weight", rng.standard_normal((1, d_inner, 1, d_conv)) * 0.5)
            mat(b + "ssm_f_a.weight", d_inner, n_embd, 0.3)
            raw(b + "ssm_dt.bias", rng.uniform(-1.0, 1.0, d_inner))
            raw(b + "ssm_a", np.exp(rng.uniform(-1.0, 1.0, (n_head, 1))))  # (exp(A_log), as the converter)
            mat(b + "ssm_beta.weight", n_head, n_embd, 0.3)
            mat(b + "ssm_g_a.weight", d_inner, n_embd, 0.3)
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
        raw(b + "ffn_gate_exps.weight", rng.standard_normal((n_expert, n_ff_exp, n_embd)) * 0.3)
        raw(b + "ffn_up_exps.weight", rng.standard_normal((n_expert, n_ff_exp, n_embd)) * 0.3)
        raw(b + "ffn_down_exps.weight", rng.standard_normal((n_expert, n_embd, n_ff_exp)) * 0.1)
        mat(b + "ffn_gate_shexp.weight", n_ff_sh, n_embd, 0.3)
        mat(b + "ffn_up_shexp.weight", n_ff_sh, n_embd, 0.3)
        mat(b + "ffn_down_shexp.weight", n_embd, n_ff_sh)
    return _finish(w, path)
