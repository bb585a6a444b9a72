"""Tiny random Ling 2.0 (``bailingmoe2``) GGUFs (``tinymodel.write_tiny_model(arch="bailingmoe2")`` writes them through
here), laid out as llama.cpp's converter writes Ling-mini-2.0 and Ling-flash-2.0:

* Q, K and V fused in ``attn_qkv`` (4 heads of 16, as wide as n_embd: llama.cpp sizes Q so), per-head QK norm drawn
  away from one, rope over half of each head (``rope.dimension_count`` 8: partial_rotary_factor 0.5), an
  ``output.weight`` of its own.
* layer 0 dense (leading_dense_block_count 1), the others 8 experts (2 a token) with a sigmoid router, its selection
  bias ``exp_probs_b``, the chosen weights times 2.5 (routed_scaling_factor), and shared experts.
* default: 4 groups of 2 experts, the best 2 used (Ling's n_group, topk_group), the weights renormalised, one shared
  expert of ``expert_shared_feed_forward_length``.  ``nextn``: a last NextN layer counted in block_count (as the 2.0
  checkpoints' num_nextn_predict_layers), no groups, the weights not renormalised (expert_weights_norm unstated:
  llama.cpp's default), 2 shared experts whose width llama.cpp takes as 2 x expert_feed_forward_length.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from gguf import ExpertGatingFuncType, GGMLQuantizationType, GGUFWriter
from gguf.quants import quantize

Q = GGMLQuantizationType

#: (n_embd, n_head, n_head_kv, head_dim, rope_dim, n_ff, n_layer)
GEOMETRY = (64, 4, 2, 16, 8, 96, 3)
#: (count, used a token, their FFN width, expert_weights_scale)
EXPERTS = (8, 2, 16, 2.5)


def write_tiny_bailingmoe2(path: Path, qtype: int = Q.F32, seed: int = 0, nextn: bool = False, drop: tuple[str, ...] = ()) -> Path:
    """The model at ``path``, its matrices as ``qtype``; ``nextn``: the variant above; ``drop``: tensor names left
    out (the tests of a missing tensor's error)."""
    from tinymodel import _add_byte_vocab, _file_type, _finish, _random_tensors, byte_vocab

    rng = np.random.default_rng(seed)
    n_embd, n_head, n_head_kv, head_dim, rope_dim, n_ff, n_layer = GEOMETRY
    n_expert, n_used, n_ff_exp, weights_scale = EXPERTS
    n_shared = 2 if nextn else 1
    n_blocks = n_layer + int(nextn)
    n_vocab = len(byte_vocab()[0])
    w = GGUFWriter(str(path), "bailingmoe2")
    w.add_name("tiny-bailingmoe2")
    w.add_context_length(1024)
    w.add_embedding_length(n_embd)
    w.add_block_count(n_blocks)
    w.add_feed_forward_length(n_ff)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_head_kv)
    w.add_key_length(head_dim)
    w.add_value_length(head_dim)
    w.add_layer_norm_rms_eps(1e-6)
    w.add_rope_freq_base(10000.0)
    w.add_rope_dimension_count(rope_dim)
    w.add_leading_dense_block_count(1)
    w.add_expert_count(n_expert)
    w.add_expert_used_count(n_used)
    w.add_expert_feed_forward_length(n_ff_exp)
    w.add_expert_shared_count(n_shared)
    w.add_expert_weights_scale(weights_scale)
    w.add_expert_gating_func(ExpertGatingFuncType.SIGMOID)
    if nextn:
        w.add_nextn_predict_layers(1)
    else:
        w.add_expert_shared_feed_forward_length(n_ff_exp)
        w.add_expert_weights_norm(True)
        w.add_expert_group_count(4)
        w.add_expert_group_used_count(2)
    w.add_file_type(_file_type(qtype))
    _add_byte_vocab(w)

    mat_, vec_ = _random_tensors(w, rng, qtype)

    def mat(name: str, rows: int, cols: int, scale: float = 0.1, f32: bool = False) -> None:
        if name in drop:  # (drawn all the same: the other tensors' values do not move)
            rng.standard_normal((rows, cols))
        else:
            mat_(name, rows, cols, scale, f32)

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
    mat("output.weight", n_vocab, n_embd, 0.5)
    for i in range(n_blocks):
        b = f"blk.{i}."
        vec(b + "attn_norm.weight", n_embd)
        mat(b + "attn_qkv.weight", (n_head + 2 * n_head_kv) * head_dim, n_embd)
        mat(b + "attn_output.weight", n_embd, n_head * head_dim)
        vec(b + "attn_q_norm.weight", head_dim, 1.0, 0.5)
        vec(b + "attn_k_norm.weight", head_dim, 1.0, 0.5)
        vec(b + "ffn_norm.weight", n_embd)
        if i == 0:
            mat(b + "ffn_gate.weight", n_ff, n_embd)
            mat(b + "ffn_up.weight", n_ff, n_embd)
            mat(b + "ffn_down.weight", n_embd, n_ff)
        else:
            mat(b + "ffn_gate_inp.weight", n_expert, n_embd, 0.5, f32=True)  # (float32, as the converter keeps routers)
            vec(b + "exp_probs_b.bias", n_expert, 0.0, 0.3)
            experts(b + "ffn_gate_exps.weight", n_ff_exp, n_embd)
            experts(b + "ffn_up_exps.weight", n_ff_exp, n_embd)
            experts(b + "ffn_down_exps.weight", n_embd, n_ff_exp)
            mat(b + "ffn_gate_shexp.weight", n_shared * n_ff_exp, n_embd)
            mat(b + "ffn_up_shexp.weight", n_shared * n_ff_exp, n_embd)
            mat(b + "ffn_down_shexp.weight", n_embd, n_shared * n_ff_exp)
        if i >= n_layer:  # the NextN layer's own: its projection of [embedding, hidden state], their norms, its output norms
            mat(b + "nextn.eh_proj.weight", n_embd, 2 * n_embd)
            vec(b + "nextn.enorm.weight", n_embd)
            vec(b + "nextn.hnorm.weight", n_embd)
            vec(b + "nextn.shared_head_norm.weight", n_embd)
            vec(b + "layer_output_norm.weight", n_embd)
    return _finish(w, path)
