"""A tiny random MiniMax-M3 GGUF (llama.cpp's ``minimax-m3``; ``tinymodel.write_tiny_model(arch="minimax-m3")``
writes it through here), laid out as llama.cpp's loader reads the real one, float32 unless ``qtype`` says.

3 layers, 4 query heads over 2 KV heads 16 wide, per-head QK-norm (``[head_dim]``), neox rope over 8 of the 16;
layer 0 a dense FFN (``leading_dense_block_count`` 1, ``feed_forward_length`` 96), layers 1-2 a mixture of 8 experts
32 wide (2 a token; sigmoid router with ``exp_probs_b``, renormalised, times 2.5) beside a shared expert 32 wide, every
GLU swigluoai (gpt-oss's clamped one, which the 0.5-wide gate and up weights push past its clamp of 7); the sparse
layers carry MSA's indexer (``indexer.q_proj`` / ``k_proj`` / ``q_norm`` / ``k_norm``, one head per KV head, 16 wide)
with ``block_size`` 8 and ``top_k`` 8: every visible key is chosen up to 64 positions, the dense path kvrun runs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from gguf import ExpertGatingFuncType, GGMLQuantizationType, GGUFWriter
from gguf.quants import quantize

Q = GGMLQuantizationType

ARCH = "minimax-m3"
N_EMBD, N_HEAD, N_KV, HEAD_DIM, N_LAYER, N_DENSE = 64, 4, 2, 16, 3, 1
N_EXPERT, N_USED, N_FF_EXP, N_FF = 8, 2, 32, 96
BLOCK, TOP_K, LOCAL = 8, 8, 1  # MSA: dense up to BLOCK * TOP_K = 64 positions


def write_tiny_minimax_m3(path: Path, qtype: int = Q.F32, seed: int = 0, block: int = BLOCK, top_k: int = TOP_K) -> Path:
    """The tiny minimax-m3 model at ``path``, its matrices as ``qtype``; MSA's ``block_size`` and ``top_k`` as given."""
    from tinymodel import _add_byte_vocab, _file_type, _finish, _random_tensors, byte_vocab

    rng = np.random.default_rng(seed)
    n_vocab = len(byte_vocab()[0])
    w = GGUFWriter(str(path), ARCH)
    w.add_name("tiny-minimax-m3")
    w.add_context_length(1024)
    w.add_embedding_length(N_EMBD)
    w.add_feed_forward_length(N_FF)
    w.add_block_count(N_LAYER)
    w.add_leading_dense_block_count(N_DENSE)
    w.add_head_count(N_HEAD)
    w.add_head_count_kv(N_KV)
    w.add_key_length(HEAD_DIM)
    w.add_value_length(HEAD_DIM)
    w.add_rope_dimension_count(HEAD_DIM // 2)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-6)
    w.add_vocab_size(n_vocab)
    w.add_expert_count(N_EXPERT)
    w.add_expert_used_count(N_USED)
    w.add_expert_feed_forward_length(N_FF_EXP)
    w.add_expert_shared_count(1)
    w.add_expert_weights_scale(2.5)
    w.add_expert_weights_norm(True)
    w.add_expert_gating_func(ExpertGatingFuncType.SIGMOID)
    for key, value in (("head_count", N_KV), ("key_length", HEAD_DIM), ("top_k", top_k), ("block_size", block), ("local_blocks", LOCAL)):
        w.add_uint32(f"{ARCH}.attention.indexer.{key}", value)
    w.add_file_type(_file_type(qtype))
    _add_byte_vocab(w)
    mat, vec = _random_tensors(w, rng, qtype)

    mat("token_embd.weight", n_vocab, N_EMBD, 0.5)
    vec("output_norm.weight", N_EMBD)
    mat("output.weight", n_vocab, N_EMBD, 0.5)
    for i in range(N_LAYER):
        b = f"blk.{i}."
        vec(b + "attn_norm.weight", N_EMBD)
        mat(b + "attn_q.weight", N_HEAD * HEAD_DIM, N_EMBD)
        mat(b + "attn_k.weight", N_KV * HEAD_DIM, N_EMBD)
        mat(b + "attn_v.weight", N_KV * HEAD_DIM, N_EMBD)
        vec(b + "attn_q_norm.weight", HEAD_DIM, 0.5)  # (one head's; 0.5 keeps the scores about 1)
        vec(b + "attn_k_norm.weight", HEAD_DIM, 0.5)
        mat(b + "attn_output.weight", N_EMBD, N_HEAD * HEAD_DIM)
        vec(b + "ffn_norm.weight", N_EMBD)
        if i < N_DENSE:
            mat(b + "ffn_gate.weight", N_FF, N_EMBD, 0.5)  # (0.5: gates past swigluoai's clamp of 7)
            mat(b + "ffn_up.weight", N_FF, N_EMBD, 0.5)
            mat(b + "ffn_down.weight", N_EMBD, N_FF)
            continue
        w.add_tensor(b + "ffn_gate_inp.weight", (rng.standard_normal((N_EXPERT, N_EMBD)) * 0.5).astype(np.float32))
        w.add_tensor(b + "exp_probs_b.bias", (rng.standard_normal(N_EXPERT) * 0.5).astype(np.float32))
        for name, rows, cols, scale in (("ffn_gate_exps", N_FF_EXP, N_EMBD, 0.5), ("ffn_up_exps", N_FF_EXP, N_EMBD, 0.5),
                                        ("ffn_down_exps", N_EMBD, N_FF_EXP, 0.1)):  # fmt: skip
            a = (rng.standard_normal((N_EXPERT, rows, cols)) * scale).astype(np.float32)
            w.add_tensor(b + name + ".weight", a if qtype == Q.F32 else quantize(a, qtype), raw_dtype=None if qtype == Q.F32 else qtype)
        mat(b + "ffn_gate_shexp.weight", N_FF_EXP, N_EMBD, 0.5)
        mat(b + "ffn_up_shexp.weight", N_FF_EXP, N_EMBD, 0.5)
        mat(b + "ffn_down_shexp.weight", N_EMBD, N_FF_EXP)
        mat(b + "indexer.q_proj.weight", N_KV * HEAD_DIM, N_EMBD)
        mat(b + "indexer.k_proj.weight", HEAD_DIM, N_EMBD)
        vec(b + "indexer.q_norm.weight", HEAD_DIM)
        vec(b + "indexer.k_norm.weight", HEAD_DIM)
    return _finish(w, path)
