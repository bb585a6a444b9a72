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
from gguf import GGMLQuantizationType, GGUFWriter
from tiny_kimi_linear import add_kda_metadata, adders, ffn, kda_layer, mla_layer

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
    from tinymodel import _add_byte_vocab, _file_type, _finish, byte_vocab

    rng = np.random.default_rng(seed)
    n_embd, n_head, hd, d_conv, nope, n_rot, dv, rank, n_ff, n_layer = GEOMETRY
    n_expert, n_used, n_ff_exp, n_shared, n_dense, scale, latent = MOE
    block, beta, lin_beta, lower = K3
    n_vocab = len(byte_vocab()[0])
    A = "kimi-k3."
    w = GGUFWriter(str(path), "kimi-k3")
    w.add_name("tiny-kimi-k3")
    add_kda_metadata(w, n_vocab, GEOMETRY, MOE[:6], MLA_LAYERS, lower_bound=lower, weights_norm=True)
    w.add_uint32(A + "expert_latent_length", latent)
    w.add_uint32(A + "attn_res.block_size", block)
    w.add_float32(A + "activation.situ_beta", beta)
    w.add_float32(A + "activation.situ_linear_beta", lin_beta)
    w.add_file_type(_file_type(qtype))
    _add_byte_vocab(w)

    t = adders(w, rng, qtype)
    t.mat("token_embd.weight", n_vocab, n_embd, 0.5)
    t.vec("output_norm.weight", n_embd)
    t.mat("output.weight", n_vocab, n_embd, 0.5)
    t.vec("output_res_score.weight", n_embd, 0.0, 1.0)  # (scores that matter: softmax weights far from even)
    for i in range(n_layer):
        b = f"blk.{i}."
        t.vec(b + "attn_norm.weight", n_embd)
        t.vec(b + "attn_res_score.weight", n_embd, 0.0, 1.0)
        t.vec(b + "ffn_res_score.weight", n_embd, 0.0, 1.0)
        if i in MLA_LAYERS:  # (the output gate per channel)
            mla_layer(t, b, n_embd, n_head, nope, n_rot, dv, rank, gate_rows=n_head * dv)
        else:  # (the decay low rank, the output gate full rank: ssm_g)
            kda_layer(t, b, n_embd, n_head, hd, d_conv, decay_rank=hd, gate=("ssm_g",))
        ffn(t, b, n_embd, n_ff, i < n_dense, n_expert, n_ff_exp, n_shared * n_ff_exp, experts=(0.4, 0.2), latent=latent)
    return _finish(w, path)
