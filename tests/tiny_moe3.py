"""Tiny random GGUFs of four large mixtures of experts (``tinymodel.write_tiny_model(arch=...)`` writes them through
here): ``minimax-m2`` (MiniMax-M2), ``mimo2`` (MiMo-V2-Flash), ``step35`` (Step-3.5-Flash) and ``mistral4`` (Mistral
Small 4), each laid out as llama.cpp's converter writes the real one, float32 unless ``qtype`` says.

* minimax-m2: QK-norm weights as wide as all heads (q 64, k 32), rope over 8 of each head's 16 dimensions, every layer
  a mixture of 8 experts (2 a token) routed by sigmoid with ``exp_probs_b``, the experts ``feed_forward_length`` wide
  (as llama.cpp sizes them; expert_feed_forward_length, which it requires, the same); an output head of its own.
* mimo2: 4 layers, ``sliding_window_pattern`` [global, window, window, global] (window 8, the window layers' rope base
  ``rope.freq_base_swa``), per-layer ``head_count_kv`` (2 in the global layers, 4 in the window ones), keys 24 wide and
  values 16 (rope over 8), ``attn_sinks`` in the window layers only, ``attention.value_scale`` 0.707; layer 0 a dense
  FFN, layers 1-3 a mixture of 8 experts (sigmoid, ``exp_probs_b``).
* step35: 4 layers, [global, window, window, window] (window 8), per-layer ``head_count`` (4 global, 6 window, 2 KV
  heads everywhere), per-head QK-norm, a per-head ``attn_gate``, rope over half the head in the global layer (with
  Llama 3's ``rope_freqs``) and all of it in the window ones (their own base); layer 0 dense, layers 1-3 a mixture of
  8 experts (sigmoid, ``exp_probs_b``, renormalised, times 2.0) beside a shared expert; SwiGLU clamped at 0.5 in the
  experts of layers 2-3 (``swiglu_clamp_exp``) and the shared expert / dense FFN of layers 0 and 3 (``swiglu_clamp_shexp``).
* mistral4: DeepSeek-V3's latent attention (query LoRA, the split ``attn_k_b``/``attn_v_b``), YaRN with
  ``yarn_log_multiplier`` 0.1; every layer a mixture of 8 experts (softmax router, 2 a token, renormalised) beside
  a shared expert; a separate output head.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from gguf import ExpertGatingFuncType, GGMLQuantizationType, GGUFWriter, RopeScalingType
from gguf.quants import quantize

Q = GGMLQuantizationType

N_EMBD, N_EXPERT, N_USED, N_FF_EXP, N_FF = 64, 8, 2, 32, 96
WINDOW = 8


def write_tiny_moe3(path: Path, arch: str, qtype: int = Q.F32, seed: int = 0) -> Path:
    """The tiny ``arch`` model at ``path``, its matrices as ``qtype``."""
    from tinymodel import _add_byte_vocab, _file_type, _finish, _random_tensors, byte_vocab

    rng = np.random.default_rng(seed)
    n_vocab = len(byte_vocab()[0])
    w = GGUFWriter(str(path), arch)
    w.add_name(f"tiny-{arch}")
    w.add_context_length(1024)
    w.add_embedding_length(N_EMBD)
    w.add_feed_forward_length(N_FF_EXP if arch == "minimax-m2" else N_FF)  # (MiniMax-M2's experts are feed_forward_length wide)
    w.add_layer_norm_rms_eps(1e-6)
    w.add_vocab_size(n_vocab)
    w.add_expert_count(N_EXPERT)
    w.add_expert_used_count(N_USED)
    w.add_expert_feed_forward_length(N_FF_EXP)
    w.add_file_type(_file_type(qtype))
    _add_byte_vocab(w)
    mat, vec = _random_tensors(w, rng, qtype)

    def experts(b: str, n: int = N_EXPERT, scale: float = 0.1) -> None:
        w.add_tensor(b + "ffn_gate_inp.weight", (rng.standard_normal((n, N_EMBD)) * 0.5).astype(np.float32))
        for name, rows, cols in (("ffn_gate_exps", N_FF_EXP, N_EMBD), ("ffn_up_exps", N_FF_EXP, N_EMBD), ("ffn_down_exps", N_EMBD, N_FF_EXP)):
            a = (rng.standard_normal((n, rows, cols)) * scale).astype(np.float32)
            w.add_tensor(b + name + ".weight", a if qtype == Q.F32 else quantize(a, qtype), raw_dtype=None if qtype == Q.F32 else qtype)

    def probs_b(b: str) -> None:
        w.add_tensor(b + "exp_probs_b.bias", (rng.standard_normal(N_EXPERT) * 0.5).astype(np.float32))

    def dense(b: str, n_ff: int = N_FF, suffix: str = "") -> None:
        mat(f"{b}ffn_gate{suffix}.weight", n_ff, N_EMBD)
        mat(f"{b}ffn_up{suffix}.weight", n_ff, N_EMBD)
        mat(f"{b}ffn_down{suffix}.weight", N_EMBD, n_ff)

    mat("token_embd.weight", n_vocab, N_EMBD, 0.5)
    vec("output_norm.weight", N_EMBD)
    mat("output.weight", n_vocab, N_EMBD, 0.5)

    if arch == "minimax-m2":
        n_head, n_kv, hd, n_layer = 4, 2, 16, 2
        w.add_block_count(n_layer)
        w.add_head_count(n_head)
        w.add_head_count_kv(n_kv)
        w.add_key_length(hd)
        w.add_value_length(hd)
        w.add_rope_dimension_count(hd // 2)  # (MiniMax-M2: 64 of 128)
        w.add_rope_freq_base(10000.0)
        w.add_expert_gating_func(ExpertGatingFuncType.SIGMOID)
        for i in range(n_layer):
            b = f"blk.{i}."
            vec(b + "attn_norm.weight", N_EMBD)
            mat(b + "attn_q.weight", n_head * hd, N_EMBD)
            mat(b + "attn_k.weight", n_kv * hd, N_EMBD)
            mat(b + "attn_v.weight", n_kv * hd, N_EMBD)
            vec(b + "attn_q_norm.weight", n_head * hd, 0.5)  # (the whole projection's; 0.5 keeps the scores about 1)
            vec(b + "attn_k_norm.weight", n_kv * hd, 0.5)
            mat(b + "attn_output.weight", N_EMBD, n_head * hd)
            vec(b + "ffn_norm.weight", N_EMBD)
            experts(b)
            probs_b(b)
    elif arch == "mimo2":
        n_head, hd, hdv, n_layer = 4, 24, 16, 4
        swa = [False, True, True, False]
        kv = [4 if s else 2 for s in swa]
        w.add_block_count(n_layer)
        w.add_head_count(n_head)
        w.add_head_count_kv(kv)
        w.add_key_length(hd)
        w.add_value_length(hdv)
        w.add_rope_dimension_count(8)  # (MiMo-V2-Flash: 64 of 192)
        w.add_rope_freq_base(20000.0)
        w.add_rope_freq_base_swa(5000.0)
        w.add_sliding_window(WINDOW)
        w.add_sliding_window_pattern(swa)
        w.add_float32("mimo2.attention.value_scale", 0.707)
        for i in range(n_layer):
            b = f"blk.{i}."
            vec(b + "attn_norm.weight", N_EMBD)
            mat(b + "attn_q.weight", n_head * hd, N_EMBD)
            mat(b + "attn_k.weight", kv[i] * hd, N_EMBD)
            mat(b + "attn_v.weight", kv[i] * hdv, N_EMBD)
            mat(b + "attn_output.weight", N_EMBD, n_head * hdv)
            if swa[i]:  # (MiMo-V2-Flash: sinks in the window layers only)
                w.add_tensor(b + "attn_sinks.weight", (rng.standard_normal(n_head) * 1.0).astype(np.float32))
            vec(b + "ffn_norm.weight", N_EMBD)
            if i == 0:
                dense(b)
            else:
                experts(b)
                probs_b(b)
    elif arch == "step35":
        hd, n_kv, n_layer = 16, 2, 4
        swa = [False, True, True, True]
        heads = [6 if s else 4 for s in swa]
        w.add_block_count(n_layer)
        w.add_head_count(heads)
        w.add_head_count_kv(n_kv)
        w.add_key_length(hd)
        w.add_value_length(hd)
        w.add_rope_dimension_count(hd)  # (the global layers: half of it, llama.cpp's step35 rule)
        w.add_rope_freq_base(10000.0)
        w.add_rope_freq_base_swa(1000.0)
        w.add_sliding_window(WINDOW)
        w.add_sliding_window_pattern(swa)
        w.add_expert_shared_feed_forward_length(N_FF_EXP)
        w.add_expert_gating_func(ExpertGatingFuncType.SIGMOID)
        w.add_expert_weights_norm(True)
        w.add_expert_weights_scale(2.0)
        w.add_swiglu_clamp_exp([0.0, 0.0, 0.5, 0.5])  # (Step-3.5-Flash clamps its last layers' experts)
        w.add_swiglu_clamp_shexp([0.5, 0.0, 0.0, 0.5])  # (the shared expert's, and the dense FFN's)
        w.add_tensor("rope_freqs.weight", np.geomspace(1.0, 8.0, hd // 2).astype(np.float32))
        for i in range(n_layer):
            b = f"blk.{i}."
            vec(b + "attn_norm.weight", N_EMBD)
            mat(b + "attn_q.weight", heads[i] * hd, N_EMBD)
            mat(b + "attn_k.weight", n_kv * hd, N_EMBD)
            mat(b + "attn_v.weight", n_kv * hd, N_EMBD)
            vec(b + "attn_q_norm.weight", hd, 0.5)
            vec(b + "attn_k_norm.weight", hd, 0.5)
            mat(b + "attn_gate.weight", heads[i], N_EMBD, 0.5)
            mat(b + "attn_output.weight", N_EMBD, heads[i] * hd)
            vec(b + "ffn_norm.weight", N_EMBD)
            if i == 0:
                dense(b)
            else:
                experts(b)
                probs_b(b)
                dense(b, N_FF_EXP, "_shexp")
    elif arch == "mistral4":
        n_head, nope, n_rot, dv, rank, q_rank, n_layer = 4, 16, 8, 12, 32, 24, 2
        w.add_block_count(n_layer)
        w.add_head_count(n_head)
        w.add_head_count_kv(1)
        w.add_key_length(rank + n_rot)
        w.add_value_length(rank)
        w.add_key_length_mla(nope + n_rot)
        w.add_value_length_mla(dv)
        w.add_rope_dimension_count(n_rot)
        w.add_rope_freq_base(10000.0)
        w.add_q_lora_rank(q_rank)
        w.add_kv_lora_rank(rank)
        w.add_leading_dense_block_count(0)
        w.add_expert_shared_count(1)
        w.add_expert_weights_scale(1.0)
        w.add_expert_weights_norm(True)
        w.add_expert_gating_func(ExpertGatingFuncType.SOFTMAX)
        w.add_rope_scaling_type(RopeScalingType.YARN)
        w.add_rope_scaling_factor(4.0)
        w.add_rope_scaling_orig_ctx_len(16)
        w.add_rope_scaling_yarn_log_mul(0.1)
        for i in range(n_layer):
            b = f"blk.{i}."
            vec(b + "attn_norm.weight", N_EMBD)
            mat(b + "attn_q_a.weight", q_rank, N_EMBD, 0.15)
            vec(b + "attn_q_a_norm.weight", q_rank)
            mat(b + "attn_q_b.weight", n_head * (nope + n_rot), q_rank, 0.15)
            mat(b + "attn_kv_a_mqa.weight", rank + n_rot, N_EMBD, 0.15)
            vec(b + "attn_kv_a_norm.weight", rank)
            w.add_tensor(b + "attn_k_b.weight", (rng.standard_normal((n_head, rank, nope)) * 0.15).astype(np.float32))
            w.add_tensor(b + "attn_v_b.weight", (rng.standard_normal((n_head, dv, rank)) * 0.15).astype(np.float32))
            mat(b + "attn_output.weight", N_EMBD, n_head * dv)
            vec(b + "ffn_norm.weight", N_EMBD)
            experts(b)
            dense(b, N_FF_EXP, "_shexp")
    else:
        raise ValueError(f"no tiny {arch} here")
    return _finish(w, path)
