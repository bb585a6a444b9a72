"""Tiny random mixtures of experts (``tinymodel.write_tiny_model(arch=...)`` writes them through here), laid out as
llama.cpp's converter writes each:

* ``phimoe`` (Phi-3.5-MoE): norms with biases, Q/K/V and attn_output with biases, an output head with a bias, LongRoPE's
  two factor sets and attention factor, every FFN 8 experts (2 a token).  ``variant`` "long": a training context (32)
  short of the fixture's 64, so the long factors turn.
* ``bailingmoe`` (Ling-lite, Ling-plus): q/k/v apart, every FFN a softmax-routed mixture and 2 shared experts as wide
  as 2 x expert_feed_forward_length, the weights renormalised (Ling-lite's norm_topk_prob).  ``variant`` "scaled":
  one shared expert, expert_weights_norm unstated (llama.cpp's default: as the router gave them) and times 2.5.
* ``hunyuan-moe`` (Hunyuan-A13B): per-head QK norm, experts as wide as feed_forward_length, one shared expert as wide
  as expert_shared_feed_forward_length.
* ``dots1`` (dots.llm1): per-head QK norm, layer 0 dense (leading_dense_block_count 1), the others sigmoid-routed
  experts with exp_probs_b in 4 groups of 2 (the best 2 used), renormalised, times 2.5, a shared expert.
* ``rnd1`` (RND1-Base): Qwen3-MoE's layout (per-head QK norm, softmax-routed experts renormalised).
* ``grovemoe`` (GroveMoE): Qwen3-MoE's layout and 4 chunk experts (``ffn_*_chexps``, one per group of 2 experts,
  expert_chunk_feed_forward_length wide), their output times expert_group_scale 4 (large, so that they matter in the fixture).

The routers are float32, as converters keep them.  ``drop``: tensor names left out (the tests of a missing tensor's
error); their values are drawn all the same, so the other tensors' do not move.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from gguf import ExpertGatingFuncType, GGMLQuantizationType, GGUFWriter
from gguf.quants import quantize

Q = GGMLQuantizationType

#: (n_embd, n_head, n_head_kv, head_dim, n_ff, n_layer)
GEOMETRY = (64, 4, 2, 16, 96, 3)
#: (count, used a token, their FFN width)
EXPERTS = (8, 2, 16)
ARCHS = ("phimoe", "bailingmoe", "hunyuan-moe", "dots1", "rnd1", "grovemoe")


def write_tiny_moe2(path: Path, arch: str, qtype: int = Q.F32, seed: int = 0, variant: str = "", drop: tuple[str, ...] = ()) -> Path:
    """The ``arch`` model at ``path``, its matrices as ``qtype``; ``variant``, ``drop``: as the module says."""
    from tinymodel import _add_byte_vocab, _file_type, _finish, _random_tensors, byte_vocab

    rng = np.random.default_rng(seed)
    n_embd, n_head, n_head_kv, head_dim, n_ff, n_layer = GEOMETRY
    n_expert, n_used, n_ff_exp = EXPERTS
    if arch in ("phimoe", "hunyuan-moe"):  # (llama.cpp sizes their experts by feed_forward_length; the checkpoints state
        n_ff = n_ff_exp = 32  # one width for both)
    if arch == "dots1":  # (llama.cpp sizes dots1's K and V by the query heads: dots.llm1 has as many K/V heads as heads)
        n_head_kv = n_head
    n_vocab = len(byte_vocab()[0])
    w = GGUFWriter(str(path), arch)
    w.add_name(f"tiny-{arch}")
    w.add_context_length(32 if variant == "long" else 1024)
    w.add_embedding_length(n_embd)
    w.add_block_count(n_layer)
    w.add_feed_forward_length(n_ff)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_head_kv)
    w.add_key_length(head_dim)
    w.add_value_length(head_dim)
    w.add_layer_norm_rms_eps(1e-5 if arch == "phimoe" else 1e-6)
    w.add_rope_freq_base(10000.0)
    w.add_rope_dimension_count(head_dim)
    w.add_expert_count(n_expert)
    w.add_expert_used_count(n_used)
    w.add_expert_feed_forward_length(n_ff_exp)
    n_shared = {"bailingmoe": 1 if variant == "scaled" else 2, "dots1": 1}.get(arch, 0)
    if n_shared:
        w.add_expert_shared_count(n_shared)
    if arch == "phimoe":  # (Phi-3.5-MoE's 128k context: LongRoPE's attention factor)
        w.add_rope_scaling_attn_factors(1.19)
        w.add_rope_scaling_orig_ctx_len(32 if variant == "long" else 1024)
    if arch == "bailingmoe":
        if variant == "scaled":
            w.add_expert_weights_scale(2.5)
        else:
            w.add_expert_weights_norm(True)
    if arch == "hunyuan-moe":
        w.add_expert_shared_feed_forward_length(48)
    if arch == "dots1":
        w.add_leading_dense_block_count(1)
        w.add_expert_weights_scale(2.5)
        w.add_expert_weights_norm(True)
        w.add_expert_gating_func(ExpertGatingFuncType.SIGMOID)
        w.add_expert_group_count(4)
        w.add_expert_group_used_count(2)
    n_group_experts, n_ff_chexp = 2, 24  # (grovemoe's)
    if arch == "grovemoe":
        w.add_expert_chunk_feed_forward_length(n_ff_chexp)
        w.add_experts_per_group(n_group_experts)
        w.add_expert_group_scale(4.0)
    w.add_file_type(_file_type(qtype))
    _add_byte_vocab(w)

    mat_, vec_ = _random_tensors(w, rng, qtype)

    def mat(name: str, rows: int, cols: int, scale: float = 0.1, f32: bool = False) -> None:
        if name in drop:
            rng.standard_normal((rows, cols))
        else:
            mat_(name, rows, cols, scale, f32)

    def vec(name: str, n: int, base: float = 1.0, scale: float = 0.1) -> None:
        if name in drop:
            rng.standard_normal(n)
        else:
            vec_(name, n, base, scale)

    def experts(name: str, n: int, rows: int, cols: int) -> None:
        a = (rng.standard_normal((n, rows, cols)) * 0.1).astype(np.float32)
        if name not in drop:
            w.add_tensor(name, a if qtype == Q.F32 else quantize(a, qtype), raw_dtype=None if qtype == Q.F32 else qtype)

    biased = arch == "phimoe"
    mat("token_embd.weight", n_vocab, n_embd, 0.5)
    vec("output_norm.weight", n_embd)
    if biased:
        vec("output_norm.bias", n_embd, 0.0, 0.2)
    mat("output.weight", n_vocab, n_embd, 0.5)
    if biased:
        vec("output.bias", n_vocab, 0.0, 0.5)
        w.add_tensor("rope_factors_long.weight", np.geomspace(1.0, 16.0, head_dim // 2).astype(np.float32))
        w.add_tensor("rope_factors_short.weight", np.geomspace(1.0, 4.0, head_dim // 2).astype(np.float32))
    for i in range(n_layer):
        b = f"blk.{i}."
        vec(b + "attn_norm.weight", n_embd)
        if biased:
            vec(b + "attn_norm.bias", n_embd, 0.0, 0.2)
        for r, rows in (("q", n_head * head_dim), ("k", n_head_kv * head_dim), ("v", n_head_kv * head_dim)):
            mat(b + f"attn_{r}.weight", rows, n_embd)
            if biased:
                vec(b + f"attn_{r}.bias", rows, 0.0, 0.2)
        mat(b + "attn_output.weight", n_embd, n_head * head_dim)
        if biased:
            vec(b + "attn_output.bias", n_embd, 0.0, 0.2)
        if arch in ("hunyuan-moe", "dots1", "rnd1", "grovemoe"):
            vec(b + "attn_q_norm.weight", head_dim, 1.0, 0.5)
            vec(b + "attn_k_norm.weight", head_dim, 1.0, 0.5)
        vec(b + "ffn_norm.weight", n_embd)
        if biased:
            vec(b + "ffn_norm.bias", n_embd, 0.0, 0.2)
        if arch == "dots1" and i == 0:
            mat(b + "ffn_gate.weight", n_ff, n_embd)
            mat(b + "ffn_up.weight", n_ff, n_embd)
            mat(b + "ffn_down.weight", n_embd, n_ff)
            continue
        mat(b + "ffn_gate_inp.weight", n_expert, n_embd, 0.5, f32=True)
        if arch == "dots1":
            vec(b + "exp_probs_b.bias", n_expert, 0.0, 0.3)
        experts(b + "ffn_gate_exps.weight", n_expert, n_ff_exp, n_embd)
        experts(b + "ffn_up_exps.weight", n_expert, n_ff_exp, n_embd)
        experts(b + "ffn_down_exps.weight", n_expert, n_embd, n_ff_exp)
        n_ff_sh = {"bailingmoe": n_shared * n_ff_exp, "dots1": n_shared * n_ff_exp, "hunyuan-moe": 48}.get(arch, 0)
        if n_ff_sh:
            mat(b + "ffn_gate_shexp.weight", n_ff_sh, n_embd)
            mat(b + "ffn_up_shexp.weight", n_ff_sh, n_embd)
            mat(b + "ffn_down_shexp.weight", n_embd, n_ff_sh)
        if arch == "grovemoe":
            n_chunk = n_expert // n_group_experts
            experts(b + "ffn_gate_chexps.weight", n_chunk, n_ff_chexp, n_embd)
            experts(b + "ffn_up_chexps.weight", n_chunk, n_ff_chexp, n_embd)
            experts(b + "ffn_down_chexps.weight", n_chunk, n_embd, n_ff_chexp)
    return _finish(w, path)
