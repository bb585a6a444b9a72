"""A tiny random HY V4 GGUF (``tinymodel.write_tiny_model(arch="hy_v4")`` writes it through here).

As llama.cpp's converter lays out Tencent's HY V4 (``conversion/hy_v4.py``'s ``HYV4Model``, deepseek2's MLA metadata):
latent attention with a query LoRA and the split ``attn_k_b``/``attn_v_b`` (one KV head, ``key_length`` the latent's,
``key_length_mla``/``value_length_mla`` the heads'), a sink logit a head (``attn_sinks``), a gate a value of the heads'
outputs (``attn_gate`` [n_head * v_head_dim, n_embd]); 4 hyper-connection streams (``hc_attn_*``/``hc_ffn_*`` a layer,
``output_hc_*``), their epsilon large (0.05, the checkpoints' is tiny) so that a runtime dropping it, or taking the
RMS norm's for it, is seen; layer 0 dense, layers 1-2 8 sigmoid-routed experts (2 a token) with ``exp_probs_b``,
renormalised and times 2.5, beside one shared expert, their SwiGLU clamped at one limit a layer (``swiglu_clamp_exp``:
small, so the clamp bites); the DSA indexer on layers 0 and 2 (``indexer.types``; layer 1 shares), a top_k past any
context the tests reach, so every key is chosen; an output head of its own.  The byte vocabulary tinymodel writes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType, GGUFWriter

Q = GGMLQuantizationType

N_EMBD, N_HEAD, Q_RANK, KV_RANK, N_ROT, QK_NOPE, V_HEAD, N_FF, N_LAYER = 64, 4, 24, 32, 8, 16, 12, 96, 3
#: hyper-connections: (streams, epsilon, magnitude)
HC = (4, 0.05, 2.0)
#: (count, used a token, their FFN width, shared experts)
EXPERTS = (8, 2, 32, 1)
#: the routed experts' SwiGLU limit a layer (layer 0 is dense: never clamped)
CLAMP = (0.0, 0.6, 0.4)
#: the lightning indexer: (heads, key length, top_k), and which layers own one
INDEXER = (2, 16, 2048)
INDEXER_TYPES = (True, False, True)


def write_tiny_hy_v4(path: Path, qtype: int = Q.F32, seed: int = 0) -> Path:
    """The model at ``path``, its matrices as ``qtype`` (the hyper-connections' float32, as the converter forces them)."""
    from tinymodel import _add_byte_vocab, _add_v3_expert_keys, _file_type, _finish, _random_tensors_dropping, _write_moe, _write_swiglu, byte_vocab

    rng = np.random.default_rng(seed)
    n_hc, hc_eps, hc_mag = HC
    n_expert, n_used, n_ff_exp, n_shared = EXPERTS
    n_ih, ih_dim, top_k = INDEXER
    w = GGUFWriter(str(path), "hy_v4")
    w.add_name("tiny-hy-v4")
    w.add_context_length(1024)
    w.add_embedding_length(N_EMBD)
    w.add_block_count(N_LAYER)
    w.add_feed_forward_length(N_FF)
    w.add_head_count(N_HEAD)
    w.add_head_count_kv(1)
    w.add_key_length(KV_RANK + N_ROT)
    w.add_value_length(KV_RANK)
    w.add_key_length_mla(QK_NOPE + N_ROT)
    w.add_value_length_mla(V_HEAD)
    w.add_q_lora_rank(Q_RANK)
    w.add_kv_lora_rank(KV_RANK)
    w.add_layer_norm_rms_eps(1e-6)
    w.add_rope_freq_base(10000.0)
    w.add_rope_dimension_count(N_ROT)
    _add_v3_expert_keys(w, n_expert, n_used, n_ff_exp, n_shared)
    w.add_swiglu_clamp_exp(list(CLAMP))
    w.add_uint32("hy_v4.hyper_connection.count", n_hc)  # (keys this gguf-py has no writer for)
    w.add_float32("hy_v4.hyper_connection.epsilon", hc_eps)
    w.add_float32("hy_v4.hyper_connection.magnitude", hc_mag)
    w.add_indexer_head_count(n_ih)
    w.add_indexer_key_length(ih_dim)
    w.add_indexer_top_k(top_k)
    w.add_array("hy_v4.attention.indexer.types", list(INDEXER_TYPES))
    w.add_file_type(_file_type(qtype))
    _add_byte_vocab(w)

    mat, vec, tensor3 = _random_tensors_dropping(w, rng, qtype, ())

    def hc(prefix: str, n_mix: int, n_scale: int) -> None:
        mat(prefix + "_fn.weight", n_mix, n_hc * N_EMBD, 0.1, f32=True)
        vec(prefix + "_base.weight", n_mix, 0.0, 0.5)
        vec(prefix + "_scale.weight", n_scale, 1.0, 0.2)

    n_vocab = len(byte_vocab()[0])
    mat("token_embd.weight", n_vocab, N_EMBD, 0.5)
    vec("output_norm.weight", N_EMBD)
    mat("output.weight", n_vocab, N_EMBD, 0.5)
    hc("output_hc", n_hc, 1)
    for i in range(N_LAYER):
        b = f"blk.{i}."
        vec(b + "attn_norm.weight", N_EMBD)
        vec(b + "attn_sinks.weight", N_HEAD, 0.5, 1.0)
        mat(b + "attn_q_a.weight", Q_RANK, N_EMBD, 0.15)
        vec(b + "attn_q_a_norm.weight", Q_RANK)
        mat(b + "attn_q_b.weight", N_HEAD * (QK_NOPE + N_ROT), Q_RANK, 0.15)
        mat(b + "attn_kv_a_mqa.weight", KV_RANK + N_ROT, N_EMBD, 0.15)
        vec(b + "attn_kv_a_norm.weight", KV_RANK)
        tensor3(b + "attn_k_b.weight", (N_HEAD, KV_RANK, QK_NOPE), 0.15)
        tensor3(b + "attn_v_b.weight", (N_HEAD, V_HEAD, KV_RANK), 0.15)
        mat(b + "attn_output.weight", N_EMBD, N_HEAD * V_HEAD)
        mat(b + "attn_gate.weight", N_HEAD * V_HEAD, N_EMBD, 0.5)
        if INDEXER_TYPES[i]:  # (read by llama.cpp's sparse path; up to top_k it chooses every key)
            mat(b + "indexer.attn_q_b.weight", n_ih * ih_dim, Q_RANK)
            mat(b + "indexer.attn_k.weight", ih_dim, N_EMBD)
            vec(b + "indexer.k_norm.weight", ih_dim)
            vec(b + "indexer.k_norm.bias", ih_dim, 0.0)
            mat(b + "indexer.proj.weight", n_ih, N_EMBD)
        hc(b + "hc_attn", 2 * n_hc, 2)
        hc(b + "hc_ffn", 2 * n_hc, 2)
        vec(b + "ffn_norm.weight", N_EMBD)
        if i == 0:
            _write_swiglu(mat, b, N_EMBD, N_FF)
            continue
        _write_moe(mat, vec, tensor3, b, N_EMBD, n_expert, n_ff_exp, probs_b="exp_probs_b.bias", probs_b_scale=0.3, n_ff_shexp=n_ff_exp * n_shared)
    return _finish(w, path)
