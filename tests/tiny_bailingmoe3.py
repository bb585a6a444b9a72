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
from gguf import GGMLQuantizationType, GGUFWriter
from tiny_kimi_linear import add_kda_metadata, adders, ffn, kda_layer, mla_layer

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
    from tinymodel import _add_byte_vocab, _file_type, _finish, byte_vocab

    rng = np.random.default_rng(seed)
    n_embd, n_head, hd, d_conv, nope, n_rot, dv, rank, q_rank, n_ff, n_layer = GEOMETRY
    n_expert, n_used, n_ff_exp, n_ff_sh, n_shared, n_dense, scale = MOE
    q_lora = variant != "mrope"
    n_vocab = len(byte_vocab()[0]) + len(extra_tokens)
    w = GGUFWriter(str(path), "bailingmoe3")
    w.add_name("tiny-bailingmoe3")
    add_kda_metadata(
        w, n_vocab, (n_embd, n_head, hd, d_conv, nope, n_rot, dv, rank, n_ff, n_layer),
        (n_expert, n_used, n_ff_exp, n_shared, n_dense, scale), MLA_LAYERS,
        n_mtp=1,  # (the MTP layer's place counted, as the converter's)
        safe_gate=True, lower_bound=-5.0, q_rank=q_rank if q_lora else 0,
        rope_base=100.0,  # (a low base: the tiny prompt's positions turn the rope parts far)
        sections=SECTIONS if variant == "mrope" else None, latent_value_length=False, n_ff_shexp=n_ff_sh,
        weights_norm=True,
    )  # fmt: skip
    w.add_swiglu_clamp_exp(CLAMP_EXP)
    w.add_swiglu_clamp_shexp(CLAMP_SHEXP)
    w.add_file_type(_file_type(qtype))
    _add_byte_vocab(w, extra_tokens)

    t = adders(w, rng, qtype)
    t.mat("token_embd.weight", n_vocab, n_embd, 0.5)
    t.vec("output_norm.weight", n_embd)
    if variant != "tied":
        t.mat("output.weight", n_vocab, n_embd, 0.5)
    for i in range(n_layer):
        b = f"blk.{i}."
        t.vec(b + "attn_norm.weight", n_embd)
        if i in MLA_LAYERS:  # (the head-wise output gate)
            mla_layer(t, b, n_embd, n_head, nope, n_rot, dv, rank, q_rank=q_rank if q_lora else 0, gate_rows=n_head)
        else:  # (full-rank decay and output gate; exp(A_log) [n_head, 1], as the converter)
            kda_layer(t, b, n_embd, n_head, hd, d_conv, gate=("ssm_g_a",), a_shape=(n_head, 1), a_sign=1.0)
        ffn(t, b, n_embd, n_ff, i < n_dense, n_expert, n_ff_exp, n_ff_sh)
    return _finish(w, path)
