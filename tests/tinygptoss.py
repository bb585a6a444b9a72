"""A tiny random gpt-oss GGUF (``tinymodel.write_tiny_model(arch="gpt-oss")`` writes it through here).

As llama.cpp's converter lays out OpenAI's gpt-oss: attention with Q/K/V/O biases and a learned
sink logit per head, even layers a sliding window and odd ones global, YaRN rope, a
``post_attention_norm`` before the FFN, and a mixture of experts with biases everywhere (router,
gate, up, down) behind the clamped SwiGLU.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType, GGUFWriter, RopeScalingType
from gguf.quants import quantize

Q = GGMLQuantizationType

#: n_embd, n_head, n_head_kv, head_dim, n_ff_exp, n_layer, n_expert, window (the fixture's 40 tokens pass it)
GEOMETRY = (64, 4, 2, 16, 32, 2, 4, 8)


def write_tiny_gptoss(path: Path, qtype: int = Q.F32, seed: int = 0) -> Path:
    """The model at ``path``, its matrices as ``qtype``; MXFP4: the experts' only, the rest float32, as the
    published files hold the experts in MXFP4 and the rest wider."""
    from tinymodel import _add_byte_vocab, _file_type, _finish, byte_vocab

    rng = np.random.default_rng(seed)
    n_embd, n_head, n_head_kv, head_dim, n_ff, n_layer, n_expert, window = GEOMETRY
    n_vocab = len(byte_vocab()[0])
    eq = qtype
    if qtype == Q.MXFP4:
        qtype = Q.F32
    w = GGUFWriter(str(path), "gpt-oss")
    w.add_name("tiny-gpt-oss")
    w.add_context_length(1024)
    w.add_embedding_length(n_embd)
    w.add_block_count(n_layer)
    w.add_feed_forward_length(n_ff)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_head_kv)
    w.add_key_length(head_dim)
    w.add_value_length(head_dim)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_freq_base(10000.0)
    w.add_rope_scaling_type(RopeScalingType.YARN)  # (gpt-oss: factor 32 over 4096)
    w.add_rope_scaling_factor(4.0)
    w.add_rope_scaling_orig_ctx_len(256)
    w.add_sliding_window(window)
    w.add_expert_count(n_expert)
    w.add_expert_used_count(2)
    w.add_expert_feed_forward_length(n_ff)
    w.add_file_type(_file_type(qtype))
    _add_byte_vocab(w)

    def tensor(name: str, a: np.ndarray, qt: int) -> None:
        a = a.astype(np.float32)
        if qt == Q.F32:
            w.add_tensor(name, a)
        elif qt == Q.F16:
            w.add_tensor(name, a.astype(np.float16))
        else:
            w.add_tensor(name, quantize(a, qt), raw_dtype=qt)

    def mat(name: str, *shape: int, scale: float = 0.1, qt: int = qtype) -> None:
        tensor(name, rng.standard_normal(shape) * scale, qt)

    def vec(name: str, *shape: int, base: float = 0.0, scale: float = 0.1) -> None:
        w.add_tensor(name, (base + rng.standard_normal(shape) * scale).astype(np.float32))

    mat("token_embd.weight", n_vocab, n_embd, scale=0.5)
    vec("output_norm.weight", n_embd, base=1.0)
    mat("output.weight", n_vocab, n_embd, scale=0.5)
    for i in range(n_layer):
        b = f"blk.{i}."
        vec(b + "attn_norm.weight", n_embd, base=1.0)
        mat(b + "attn_q.weight", n_head * head_dim, n_embd)
        mat(b + "attn_k.weight", n_head_kv * head_dim, n_embd)
        mat(b + "attn_v.weight", n_head_kv * head_dim, n_embd)
        mat(b + "attn_output.weight", n_embd, n_head * head_dim)
        vec(b + "attn_q.bias", n_head * head_dim)
        vec(b + "attn_k.bias", n_head_kv * head_dim)
        vec(b + "attn_v.bias", n_head_kv * head_dim)
        vec(b + "attn_output.bias", n_embd)
        vec(b + "attn_sinks.weight", n_head, scale=1.5)  # large enough to take a visible share
        vec(b + "post_attention_norm.weight", n_embd, base=1.0)
        w.add_tensor(b + "ffn_gate_inp.weight", (rng.standard_normal((n_expert, n_embd)) * 0.5).astype(np.float32))
        vec(b + "ffn_gate_inp.bias", n_expert)
        # gate and up of ~N(0, 3) so the clamp at +-7 bites on some rows (scale 3 over 64 inputs of ~1)
        mat(b + "ffn_gate_exps.weight", n_expert, n_ff, n_embd, scale=0.4, qt=eq)
        mat(b + "ffn_up_exps.weight", n_expert, n_ff, n_embd, scale=0.4, qt=eq)
        mat(b + "ffn_down_exps.weight", n_expert, n_embd, n_ff, qt=eq)
        vec(b + "ffn_gate_exps.bias", n_expert, n_ff)
        vec(b + "ffn_up_exps.bias", n_expert, n_ff)
        vec(b + "ffn_down_exps.bias", n_expert, n_embd)
    return _finish(w, path)
