"""Tiny random GLM-4 (``glm4``) and GLM-4.5 (``glm4moe``) GGUFs (``tinymodel.write_tiny_model(arch=...)`` writes
them through here), laid out as llama.cpp's converter writes GLM-4-0414 and GLM-4.5:

* both: biases on Q, K and V (drawn large, so that dropping one shows), rope over half of each head
  (``rope.dimension_count``: partial_rotary_factor 0.5).
* glm4: ``post_attention_norm`` and ``post_ffw_norm`` after the attention and the FFN (drawn away from one, so that
  a norm left out or put on the wrong side of the residual shows), the FFN's gate and up fused in ``ffn_up``
  (``2 * n_ff`` rows, gate first), the output head tied (no ``output.weight``: llama.cpp takes ``token_embd``).
* glm4moe: heads wider than n_embd / n_head (key_length, as GLM-4.5's 128 at 5120 / 96), per-head QK norm
  (GLM-4.5, 4.6; ``qk_norm=False``: GLM-4.5-Air's none), layer 0 dense (leading_dense_block_count 1), the others 4
  experts (2 a token) with a sigmoid router, its selection bias ``exp_probs_b``, the chosen weights renormalised
  and scaled (expert_weights_scale 2.5, GLM-4.5's), and one shared expert; ``nextn``: a last layer of
  multi-token-prediction (NextN) tensors, counted in block_count, that llama.cpp loads but never runs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from gguf import ExpertGatingFuncType, GGMLQuantizationType, GGUFWriter
from gguf.quants import quantize

Q = GGMLQuantizationType

#: (n_embd, n_head, n_head_kv, head_dim, rope_dim, n_ff, n_layer): glm4's heads n_embd / n_head wide, glm4moe's wider
GEOMETRY = {"glm4": (64, 4, 2, 16, 8, 96, 2), "glm4moe": (64, 4, 2, 32, 16, 96, 3)}
#: glm4moe's experts: (count, used a token, their FFN width, shared experts, expert_weights_scale)
GLM4MOE_EXPERTS = (4, 2, 32, 1, 2.5)


def write_tiny_glm4(path: Path, arch: str, qtype: int = Q.F32, seed: int = 0, qk_norm: bool = False, nextn: bool = False,
                    drop: tuple[str, ...] = (), sections: list[int] | None = None, extra_tokens: tuple[str, ...] = (),
                    rope_base: float = 10000.0) -> Path:  # fmt: skip
    """The model at ``path``, its matrices as ``qtype``; ``qk_norm``, ``nextn``: glm4moe's variants (above);
    ``drop``: tensor names left out (the tests of a missing tensor's error); ``sections``, ``extra_tokens``,
    ``rope_base``: multimodal rope sections, control tokens after the byte vocabulary and the rope base, for the
    GLM-4.5V text model (tiny_vision_glm45v.py)."""
    from tinymodel import _add_byte_vocab, _file_type, _finish, _random_tensors, byte_vocab

    rng = np.random.default_rng(seed)
    n_embd, n_head, n_head_kv, head_dim, rope_dim, n_ff, n_layer = GEOMETRY[arch]
    n_expert, n_used, n_ff_exp, n_shared, weights_scale = GLM4MOE_EXPERTS
    moe = arch == "glm4moe"
    n_blocks = n_layer + int(nextn)
    n_vocab = len(byte_vocab()[0]) + len(extra_tokens)
    w = GGUFWriter(str(path), arch)
    w.add_name(f"tiny-{arch}")
    w.add_context_length(1024)
    w.add_embedding_length(n_embd)
    w.add_block_count(n_blocks)
    w.add_feed_forward_length(n_ff)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_head_kv)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_freq_base(rope_base)
    w.add_rope_dimension_count(rope_dim)
    if sections is not None:
        w.add_rope_dimension_sections(sections)
    if moe:
        w.add_key_length(head_dim)
        w.add_value_length(head_dim)
        w.add_expert_count(n_expert)
        w.add_expert_used_count(n_used)
        w.add_expert_feed_forward_length(n_ff_exp)
        w.add_expert_shared_count(n_shared)
        w.add_leading_dense_block_count(1)
        w.add_expert_weights_scale(weights_scale)
        w.add_expert_weights_norm(True)
        if not nextn:  # (the NextN file leaves the gating unstated: llama.cpp's default for glm4moe is the sigmoid too)
            w.add_expert_gating_func(ExpertGatingFuncType.SIGMOID)
        if nextn:
            w.add_nextn_predict_layers(1)
    w.add_file_type(_file_type(qtype))
    _add_byte_vocab(w, extra_tokens)

    mat_, vec_ = _random_tensors(w, rng, qtype)

    def mat(name: str, rows: int, cols: int, scale: float = 0.1) -> None:
        if name in drop:  # (drawn all the same: the other tensors' values do not move)
            rng.standard_normal((rows, cols))
        else:
            mat_(name, rows, cols, scale)

    def vec(name: str, n: int, base: float = 1.0, scale: float = 0.1) -> None:
        if name in drop:
            rng.standard_normal(n)
        else:
            vec_(name, n, base, scale)

    def experts(name: str, rows: int, cols: int) -> None:
        a = (rng.standard_normal((n_expert, rows, cols)) * 0.1).astype(np.float32)
        if name not in drop:
            w.add_tensor(name, a if qtype == Q.F32 else quantize(a, qtype), raw_dtype=None if qtype == Q.F32 else qtype)

    mat("token_embd.weight", n_vocab, n_embd, 0.5)
    vec("output_norm.weight", n_embd)
    if moe:
        mat("output.weight", n_vocab, n_embd, 0.5)
    for i in range(n_blocks):
        b = f"blk.{i}."
        vec(b + "attn_norm.weight", n_embd)
        mat(b + "attn_q.weight", n_head * head_dim, n_embd)
        mat(b + "attn_k.weight", n_head_kv * head_dim, n_embd)
        mat(b + "attn_v.weight", n_head_kv * head_dim, n_embd)
        vec(b + "attn_q.bias", n_head * head_dim, 0.0, 0.5)
        vec(b + "attn_k.bias", n_head_kv * head_dim, 0.0, 0.5)
        vec(b + "attn_v.bias", n_head_kv * head_dim, 0.0, 0.5)
        mat(b + "attn_output.weight", n_embd, n_head * head_dim)
        if moe and qk_norm:
            vec(b + "attn_q_norm.weight", head_dim, 1.0, 0.5)
            vec(b + "attn_k_norm.weight", head_dim, 1.0, 0.5)
        if not moe:  # the sandwich norms, and the fused gate and up
            vec(b + "post_attention_norm.weight", n_embd, 1.5, 0.5)
            vec(b + "ffn_norm.weight", n_embd)
            mat(b + "ffn_up.weight", 2 * n_ff, n_embd)
            mat(b + "ffn_down.weight", n_embd, n_ff)
            vec(b + "post_ffw_norm.weight", n_embd, 1.5, 0.5)
            continue
        vec(b + "post_attention_norm.weight", n_embd)  # (glm4moe's pre-FFN norm)
        if i == 0:
            mat(b + "ffn_gate.weight", n_ff, n_embd)
            mat(b + "ffn_up.weight", n_ff, n_embd)
            mat(b + "ffn_down.weight", n_embd, n_ff)
        else:
            if b + "ffn_gate_inp.weight" not in drop:
                w.add_tensor(b + "ffn_gate_inp.weight", (rng.standard_normal((n_expert, n_embd)) * 0.5).astype(np.float32))
            vec(b + "exp_probs_b.bias", n_expert, 0.0, 0.3)
            experts(b + "ffn_gate_exps.weight", n_ff_exp, n_embd)
            experts(b + "ffn_up_exps.weight", n_ff_exp, n_embd)
            experts(b + "ffn_down_exps.weight", n_embd, n_ff_exp)
            mat(b + "ffn_gate_shexp.weight", n_shared * n_ff_exp, n_embd)
            mat(b + "ffn_up_shexp.weight", n_shared * n_ff_exp, n_embd)
            mat(b + "ffn_down_shexp.weight", n_embd, n_shared * n_ff_exp)
        if i >= n_layer:  # the NextN layer's own: its projection of [embedding, hidden state], their norms, its head's norm
            mat(b + "nextn.eh_proj.weight", n_embd, 2 * n_embd)
            vec(b + "nextn.enorm.weight", n_embd)
            vec(b + "nextn.hnorm.weight", n_embd)
            vec(b + "nextn.shared_head_norm.weight", n_embd)
    return _finish(w, path)
