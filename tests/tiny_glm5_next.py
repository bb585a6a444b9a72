"""A tiny random GLM-5.3-Flash GGUF (``tinymodel.write_tiny_model(arch="glm5-next")`` writes it through here).

As llama.cpp 0.3.36 loads ``glm5-next`` (src/models/glm5-next.cpp; no converter writes it yet): Kimi Linear's layer
kinds (``tiny_kimi_linear.py``'s writers: Kimi Delta Attention where the per-layer head_count_kv is 0, latent attention
where it is 1) with GLM's own parts:

* the MLA rope-less ("nope"): rope.dimension_count 0, ``attn_kv_a_mqa`` the latent alone, a query LoRA (llama.cpp
  requires q_lora_rank), ``key_length``/``value_length`` the latent's, ``key_length_mla``/``value_length_mla`` the heads';
* the k-pool DSA indexer on the MLA layers ``indexer.types`` flags (layer 3 shares layer 1's: no tensors of its own):
  ``indexer.attn_q_b``/``attn_k``/``k_norm`` (weight, bias)/``proj`` and the pool's ``indexer_compressor_gate``/``_ape``;
  pools of ``kpool`` 4, ``top_k`` 64: llama.cpp's selection is every earlier key up to 67 tokens, past any test's;
* mHC: 4 streams, ``hc_attn_*``/``hc_ffn_*`` a layer (``fn`` [4 n_embd -> 24], ``base`` [24], ``scale`` [3]), 3 Sinkhorn
  iterations, an epsilon large (0.05, the checkpoints' is tiny) so that a runtime dropping it is seen;
* the KDA decay bounded (``kda.gate_lower_bound`` -5), ``ssm_a`` = -exp(A_log) a plain [n_head];
* DeepSeek's experts after a leading dense layer: 8 (2 a token) with ``exp_probs_b``, times 2.5, beside a shared one;
  ``expert_gating_func`` and ``expert_weights_norm`` unstated (llama.cpp's defaults: sigmoid, not renormalised); the
  SwiGLUs clamped gate first, the experts' by ``swiglu_clamp_exp``, the shared expert's and the dense layer's by
  ``swiglu_clamp_shexp`` (a limit a layer each, 0 where none: small, so they bite).

An output head of its own; the byte vocabulary tinymodel writes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType, GGUFWriter
from tiny_kimi_linear import adders, ffn, kda_layer, mla_layer

Q = GGMLQuantizationType

#: n_embd, n_head, kda head_dim, d_conv, qk_nope, v_head_dim, q_lora_rank, kv_lora_rank, n_ff, n_layer
GEOMETRY = (64, 4, 16, 4, 16, 12, 24, 32, 96, 4)
#: which layers attend (MLA); the rest are KDA
MLA_LAYERS = (1, 3)
#: experts, used a token, their width, shared experts, leading dense layers, the chosen weights' scale
MOE = (8, 2, 32, 1, 1, 2.5)
#: the SwiGLU limits a layer: the routed experts' (layer 0 is dense), the shared expert's and the dense layer's
CLAMP_EXP = (0.0, 0.5, 0.4, 0.6)
CLAMP_SHEXP = (0.4, 0.0, 0.5, 0.3)
#: mHC: streams, Sinkhorn iterations, epsilon
HC = (4, 3, 0.05)
#: the indexer: heads, key length, top_k, kpool; which layers own one
INDEXER = (2, 16, 64, 4)
INDEXER_TYPES = (True, True, True, False)
LOWER_BOUND = -5.0


def write_tiny_glm5_next(path: Path, qtype: int = Q.F32, seed: int = 0) -> Path:
    """The model at ``path``, its matrices as ``qtype`` (the mHC mixes float32)."""
    from tinymodel import _add_byte_vocab, _file_type, _finish, byte_vocab

    rng = np.random.default_rng(seed)
    n_embd, n_head, hd, d_conv, nope, dv, q_rank, rank, n_ff, n_layer = GEOMETRY
    n_expert, n_used, n_ff_exp, n_shared, n_dense, scale = MOE
    n_hc, n_iter, hc_eps = HC
    n_ih, ih_dim, top_k, kpool = INDEXER
    n_vocab = len(byte_vocab()[0])
    A = "glm5-next."
    w = GGUFWriter(str(path), "glm5-next")
    w.add_name("tiny-glm5-next")
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
    w.add_float32(A + "kda.gate_lower_bound", LOWER_BOUND)
    w.add_q_lora_rank(q_rank)
    w.add_kv_lora_rank(rank)
    w.add_rope_dimension_count(0)
    w.add_key_length(rank)
    w.add_value_length(rank)
    w.add_key_length_mla(nope)
    w.add_value_length_mla(dv)
    w.add_expert_count(n_expert)
    w.add_expert_used_count(n_used)
    w.add_expert_feed_forward_length(n_ff_exp)
    w.add_expert_shared_count(n_shared)
    w.add_leading_dense_block_count(n_dense)
    w.add_expert_weights_scale(scale)
    w.add_swiglu_clamp_exp(list(CLAMP_EXP))
    w.add_swiglu_clamp_shexp(list(CLAMP_SHEXP))
    w.add_indexer_head_count(n_ih)
    w.add_indexer_key_length(ih_dim)
    w.add_indexer_top_k(top_k)
    w.add_uint32(A + "attention.indexer.kpool", kpool)  # (keys this gguf-py has no writer for)
    w.add_array(A + "attention.indexer.types", list(INDEXER_TYPES))
    w.add_uint32(A + "hyper_connection.count", n_hc)
    w.add_uint32(A + "hyper_connection.sinkhorn_iterations", n_iter)
    w.add_float32(A + "hyper_connection.epsilon", hc_eps)
    w.add_file_type(_file_type(qtype))
    _add_byte_vocab(w)

    t = adders(w, rng, qtype)
    n_mix = (2 + n_hc) * n_hc

    def hc(prefix: str) -> None:  # (the mixes of 4 n_embd normed values ~ N(0, 1.6²): sigmoids and softmaxes far from even)
        t.mat(prefix + "_fn.weight", n_mix, n_hc * n_embd, 0.1, f32=True)
        t.vec(prefix + "_base.weight", n_mix, 0.0, 0.5)
        t.vec(prefix + "_scale.weight", 3, 1.0, 0.2)

    t.mat("token_embd.weight", n_vocab, n_embd, 0.5)
    t.vec("output_norm.weight", n_embd)
    t.mat("output.weight", n_vocab, n_embd, 0.5)
    for i in range(n_layer):
        b = f"blk.{i}."
        t.vec(b + "attn_norm.weight", n_embd)
        if i in MLA_LAYERS:
            mla_layer(t, b, n_embd, n_head, nope, 0, dv, rank, q_rank=q_rank)
            if INDEXER_TYPES[i]:  # (read by llama.cpp's selection; up to top_k + kpool - 1 tokens it chooses every key)
                t.mat(b + "indexer.attn_q_b.weight", n_ih * ih_dim, q_rank)
                t.mat(b + "indexer.attn_k.weight", ih_dim, n_embd)
                t.vec(b + "indexer.k_norm.weight", ih_dim)
                t.vec(b + "indexer.k_norm.bias", ih_dim, 0.0)
                t.mat(b + "indexer.proj.weight", n_ih, n_embd)
                t.mat(b + "indexer_compressor_gate.weight", ih_dim, n_embd)
                t.mat(b + "indexer_compressor_ape.weight", kpool, ih_dim)
        else:  # (decays from ~1 to ~e^-5 a token, channel by channel: some remember the prompt, some a token or two)
            kda_layer(t, b, n_embd, n_head, hd, d_conv, decay_rank=hd, dt=(-4.0, 0.0))
        hc(b + "hc_attn")
        hc(b + "hc_ffn")
        ffn(t, b, n_embd, n_ff, i < n_dense, n_expert, n_ff_exp, n_shared * n_ff_exp)
    return _finish(w, path)
