"""Tiny random GGUFs of four big mixtures of experts (``tinymodel.write_tiny_model(arch=...)`` writes them through here):
``dbrx`` (DBRX), ``arctic`` (Snowflake Arctic), ``grok`` (Grok-1, Grok-2) and ``nemotron_h_moe`` (Nemotron 3 Nano), each
laid out as llama.cpp's converter writes the real one, float32 unless ``qtype`` says.

* dbrx: 2 layers, LayerNorms without biases (``attn_norm``, ``attn_output_norm``, ``output_norm``), fused QKV clipped at
  0.6 (``attention.clamp_kqv``), 4 heads over 2 K/V heads, 16 experts 4 a token as wide as ``feed_forward_length``.
* arctic: 2 layers, RMSNorms, a dense SwiGLU FFN as wide as the embedding beside a mixture of 8 experts (2 a token) that
  reads the layer's input through its own norm (``ffn_norm_exps``), consecutive-pair rope.
* grok: 2 layers, sandwich norms (``attn_output_norm`` after the attention, ``layer_output_norm`` after the FFN), GELU
  experts (8, 2 a token); ``variant`` "" states Grok-2's multipliers (embedding, attention output, logits, soft caps of the
  scores and the logits) and a dense GELU FFN beside the experts; "grok1": none stated (llama.cpp's Grok-1 defaults), no
  dense FFN, ``post_ffw_norm`` (an older converter's name) for the FFN's after-norm.
* nemotron_h_moe: 5 layers [Mamba-2, MoE, attention, MoE, Mamba-2], head_count_kv and feed_forward_length per layer
  (both 0: Mamba-2; head_count_kv: attention; feed_forward_length: the MoE layers), 8 ungated squared-ReLU experts
  (2 a token) routed by sigmoid with ``exp_probs_b``, renormalised and scaled by 2.5, beside a squared-ReLU shared expert;
  ``variant`` "latent": the experts work in a 32-wide latent space (``moe_latent_size``, ``ffn_latent_down``/``_up``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from gguf import ExpertGatingFuncType, GGMLQuantizationType, GGUFWriter
from gguf.quants import quantize

Q = GGMLQuantizationType

N_EMBD, N_HEAD, N_KV, HEAD_DIM = 64, 4, 2, 16


def write_tiny_moe4(path: Path, arch: str, qtype: int = Q.F32, seed: int = 0, variant: str = "") -> Path:
    """The tiny ``arch`` model at ``path``, its matrices as ``qtype``."""
    from tinymodel import SSM_GEOMETRY, _add_byte_vocab, _file_type, _finish, _random_tensors, byte_vocab

    rng = np.random.default_rng(seed)
    n_vocab = len(byte_vocab()[0])
    w = GGUFWriter(str(path), arch)
    w.add_name(f"tiny-{arch}")
    w.add_context_length(1024)
    w.add_embedding_length(N_EMBD)
    w.add_vocab_size(n_vocab)
    w.add_file_type(_file_type(qtype))
    _add_byte_vocab(w)
    mat, vec = _random_tensors(w, rng, qtype)

    def experts(b: str, n: int, n_ff: int, gate: bool = True, width: int = N_EMBD, scale: float = 0.1) -> None:
        w.add_tensor(b + "ffn_gate_inp.weight", (rng.standard_normal((n, N_EMBD)) * 0.5).astype(np.float32))
        names = (("ffn_gate_exps", n_ff, width),) if gate else ()
        for name, rows, cols in (*names, ("ffn_up_exps", n_ff, width), ("ffn_down_exps", width, n_ff)):
            a = (rng.standard_normal((n, rows, cols)) * scale).astype(np.float32)
            w.add_tensor(b + name + ".weight", a if qtype == Q.F32 else quantize(a, qtype), raw_dtype=None if qtype == Q.F32 else qtype)

    def attention(b: str, fused: bool = False) -> None:
        if fused:
            mat(b + "attn_qkv.weight", (N_HEAD + 2 * N_KV) * HEAD_DIM, N_EMBD)
        else:
            mat(b + "attn_q.weight", N_HEAD * HEAD_DIM, N_EMBD)
            mat(b + "attn_k.weight", N_KV * HEAD_DIM, N_EMBD)
            mat(b + "attn_v.weight", N_KV * HEAD_DIM, N_EMBD)
        mat(b + "attn_output.weight", N_EMBD, N_HEAD * HEAD_DIM)

    def heads(n_layer: int, kv: int | list[int] = N_KV) -> None:
        w.add_block_count(n_layer)
        w.add_head_count(N_HEAD)
        w.add_head_count_kv(kv)
        w.add_key_length(HEAD_DIM)
        w.add_value_length(HEAD_DIM)
        w.add_rope_dimension_count(HEAD_DIM)
        w.add_rope_freq_base(10000.0)

    if arch == "dbrx":
        n_layer, n_expert, n_ff = 2, 16, 32
        heads(n_layer)
        w.add_feed_forward_length(n_ff)
        w.add_layer_norm_eps(1e-5)
        w.add_clamp_kqv(0.6)
        w.add_expert_count(n_expert)
        w.add_expert_used_count(4)
        mat("token_embd.weight", n_vocab, N_EMBD, 0.5)
        for i in range(n_layer):
            b = f"blk.{i}."
            vec(b + "attn_norm.weight", N_EMBD)
            attention(b, fused=True)
            vec(b + "attn_output_norm.weight", N_EMBD)
            experts(b, n_expert, n_ff)
        vec("output_norm.weight", N_EMBD)
        mat("output.weight", n_vocab, N_EMBD, 0.5)
    elif arch == "arctic":
        n_layer, n_expert, n_ff = 2, 8, 32
        heads(n_layer)
        w.add_feed_forward_length(n_ff)
        w.add_layer_norm_rms_eps(1e-6)
        w.add_expert_count(n_expert)
        w.add_expert_used_count(2)
        mat("token_embd.weight", n_vocab, N_EMBD, 0.5)
        for i in range(n_layer):
            b = f"blk.{i}."
            vec(b + "attn_norm.weight", N_EMBD)
            attention(b)
            vec(b + "ffn_norm.weight", N_EMBD)
            for name in ("ffn_gate", "ffn_up", "ffn_down"):  # (as wide as the embedding: Arctic's dense residual)
                mat(f"{b}{name}.weight", N_EMBD, N_EMBD)
            vec(b + "ffn_norm_exps.weight", N_EMBD)
            experts(b, n_expert, n_ff, scale=0.2)
        vec("output_norm.weight", N_EMBD)
        mat("output.weight", n_vocab, N_EMBD, 0.5)
    elif arch == "grok":
        n_layer, n_expert, n_ff_exp, n_ff = 2, 8, 32, 48
        grok1 = variant == "grok1"
        heads(n_layer)
        w.add_feed_forward_length(n_ff_exp if grok1 else n_ff)  # (Grok-1's experts: feed_forward_length wide)
        w.add_layer_norm_rms_eps(1e-5)
        w.add_expert_count(n_expert)
        w.add_expert_used_count(2)
        if not grok1:  # (Grok-2's converter states them all; far from Grok-1's defaults, the caps where they bite)
            w.add_expert_feed_forward_length(n_ff_exp)
            w.add_embedding_scale(2.0)
            w.add_logit_scale(0.5)
            w.add_attn_output_scale(0.3)
            w.add_attn_logit_softcapping(4.0)
            w.add_router_logit_softcapping(30.0)
            w.add_final_logit_softcapping(3.0)
        mat("token_embd.weight", n_vocab, N_EMBD, 0.01 if grok1 else 0.5)  # (Grok-1's: times 78.4)
        for i in range(n_layer):
            b = f"blk.{i}."
            vec(b + "attn_norm.weight", N_EMBD)
            attention(b)
            vec(b + "attn_output_norm.weight", N_EMBD)
            vec(b + "ffn_norm.weight", N_EMBD)
            experts(b, n_expert, n_ff_exp, scale=0.2)
            if not grok1:
                for name, rows, cols in (("ffn_gate", n_ff, N_EMBD), ("ffn_up", n_ff, N_EMBD), ("ffn_down", N_EMBD, n_ff)):
                    mat(f"{b}{name}.weight", rows, cols, 0.2)
            vec(b + ("post_ffw_norm.weight" if grok1 else "layer_output_norm.weight"), N_EMBD)
        vec("output_norm.weight", N_EMBD)
        mat("output.weight", n_vocab, N_EMBD, 0.5)
    elif arch == "nemotron_h_moe":
        kinds, n_expert, n_ff_exp, n_ff_shexp, n_ff = "ME*EM", 8, 32, 48, 64
        latent = 32 if variant == "latent" else 0
        d_conv, d_inner, d_state, n_ssm_head, n_group = SSM_GEOMETRY
        channels = d_inner + 2 * n_group * d_state
        heads(len(kinds), [N_KV if kind == "*" else 0 for kind in kinds])
        w.add_feed_forward_length([n_ff if kind == "E" else 0 for kind in kinds])
        w.add_layer_norm_rms_eps(1e-5)
        w.add_layer_norm_eps(1e-5)
        w.add_ssm_conv_kernel(d_conv)
        w.add_ssm_inner_size(d_inner)
        w.add_ssm_state_size(d_state)
        w.add_ssm_time_step_rank(n_ssm_head)
        w.add_ssm_group_count(n_group)
        w.add_expert_count(n_expert)
        w.add_expert_used_count(2)
        w.add_expert_feed_forward_length(n_ff_exp)
        w.add_expert_shared_feed_forward_length(n_ff_shexp)
        w.add_expert_weights_norm(True)
        w.add_expert_weights_scale(2.5)
        w.add_expert_gating_func(ExpertGatingFuncType.SIGMOID)
        if latent:
            w.add_moe_latent_size(latent)
        mat("token_embd.weight", n_vocab, N_EMBD, 0.5)
        for i, kind in enumerate(kinds):
            b = f"blk.{i}."
            vec(b + "attn_norm.weight", N_EMBD)
            if kind == "M":  # (as tinymodel's Nemotron-H mixers)
                mat(b + "ssm_in.weight", 2 * d_inner + 2 * n_group * d_state + n_ssm_head, N_EMBD, 0.2)
                w.add_tensor(b + "ssm_conv1d.weight", (rng.standard_normal((channels, d_conv)) * 0.5).astype(np.float32))
                vec(b + "ssm_conv1d.bias", channels, 0.0)
                w.add_tensor(b + "ssm_dt.bias", rng.uniform(-4.0, 0.0, n_ssm_head).astype(np.float32))
                w.add_tensor(b + "ssm_a", -np.exp(rng.uniform(-2.0, 1.0, (n_ssm_head, 1))).astype(np.float32))
                w.add_tensor(b + "ssm_d", (1.0 + rng.standard_normal((n_ssm_head, 1)) * 0.3).astype(np.float32))
                w.add_tensor(b + "ssm_norm.weight", (1.0 + rng.standard_normal((n_group, d_inner // n_group)) * 0.1).astype(np.float32))
                mat(b + "ssm_out.weight", N_EMBD, d_inner)
            elif kind == "*":
                attention(b)
            else:
                width = latent or N_EMBD
                experts(b, n_expert, n_ff_exp, gate=False, width=width, scale=0.2)
                w.add_tensor(b + "exp_probs_b.bias", (rng.standard_normal(n_expert) * 0.5).astype(np.float32))
                if latent:
                    mat(b + "ffn_latent_down.weight", latent, N_EMBD, 0.2)
                    mat(b + "ffn_latent_up.weight", N_EMBD, latent, 0.2)
                mat(b + "ffn_up_shexp.weight", n_ff_shexp, N_EMBD, 0.2)
                mat(b + "ffn_down_shexp.weight", N_EMBD, n_ff_shexp, 0.2)
        vec("output_norm.weight", N_EMBD)
        mat("output.weight", n_vocab, N_EMBD, 0.5)
    else:
        raise ValueError(f"no tiny {arch} here")
    return _finish(w, path)
