"""A tiny random DeepSeek-V3.2 (llama.cpp's ``deepseek32``), laid out as llama.cpp's converter writes it
(conversion/deepseek.py ``DeepseekV32Model``), for tests held to llama.cpp's logits (``tinymodel.write_tiny_model(path,
"deepseek32")`` writes it through here).

DeepSeek-V3's trunk: latent attention with the query LoRA (``attn_q_a`` -> ``attn_q_a_norm`` -> ``attn_q_b``) and the
split ``attn_k_b`` (transposed) / ``attn_v_b``, head_count_kv 1, key_length/value_length the latent's and
key_length_mla/value_length_mla the heads'; YaRN (factor 4 over an original context of 8, so the fixtures' 40 positions
are interpolated) with ``yarn_log_multiplier`` 0.1 * mscale_all_dim (V3.2's 1.0); a leading dense layer, then 8
experts (3 a token) 32 wide, sigmoid-routed (stated: llama.cpp's deepseek32 has no default) with ``exp_probs_b``, from
the best 2 of 4 groups, renormalised and times 2.5, and 2 shared ones; an output head of its own.  Every layer carries
the DSA lightning indexer (``indexer.*``, all required; its top_k past any context the tests reach, so every key is
chosen), and an MTP layer at the end (``nextn_predict_layers`` 1) that llama.cpp loads and never runs in its trunk.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType, GGUFWriter, RopeScalingType

Q = GGMLQuantizationType

#: (n_embd, n_head, qk_nope, n_rot, v_head_dim, kv_lora_rank, q_lora_rank, n_ff, n_layer): n_layer the trunk's
GEOMETRY = (64, 4, 16, 8, 12, 32, 24, 96, 3)
#: YaRN (factor, original context, yarn_log_multiplier)
YARN = (4.0, 8, 0.1)
#: the lightning indexer: (heads, key length, top_k); its key length a power of two (llama.cpp's Hadamard rotation)
INDEXER = (2, 64, 2048)
#: (count, used a token, their FFN width, shared experts, groups, groups used)
EXPERTS = (8, 3, 32, 2, 4, 2)
#: the spread of the attention's weights (scores about 1, where rope, its magnitude and the scale show) and the routers'
ATTN_SCALE, ROUTER_SCALE = 0.15, 0.5


def write_tiny_deepseek32(path: Path, qtype: int = Q.F32, seed: int = 0, drop: tuple[str, ...] = (),
                          top_k: int = INDEXER[2]) -> Path:  # fmt: skip
    """The model at ``path``, its matrices as ``qtype``; ``drop``: tensor names left out (drawn all the same, so the
    others do not move: the tests of a missing tensor's error); ``top_k``: the indexer's."""
    from tinymodel import (_add_byte_vocab, _add_v3_expert_keys, _file_type, _finish, _random_tensors_dropping, _write_experts,
                           _write_indexer, _write_nextn, _write_swiglu, byte_vocab)  # fmt: skip

    rng = np.random.default_rng(seed)
    n_embd, n_head, nope, n_rot, dv, rank, q_rank, n_ff, n_layer = GEOMETRY
    n_expert, n_used, n_ff_exp, n_shared, n_group, n_group_used = EXPERTS
    n_ih, ih_dim, _ = INDEXER
    n_blocks = n_layer + 1  # (the MTP layer)
    w = GGUFWriter(str(path), "deepseek32")
    w.add_name("tiny-deepseek32")
    w.add_context_length(1024)
    w.add_embedding_length(n_embd)
    w.add_block_count(n_blocks)
    w.add_feed_forward_length(n_ff)
    w.add_head_count(n_head)
    w.add_head_count_kv(1)
    w.add_layer_norm_rms_eps(1e-6)
    w.add_rope_freq_base(10000.0)
    w.add_rope_dimension_count(n_rot)
    w.add_key_length(rank + n_rot)
    w.add_value_length(rank)
    w.add_key_length_mla(nope + n_rot)
    w.add_value_length_mla(dv)
    w.add_q_lora_rank(q_rank)
    w.add_kv_lora_rank(rank)
    _add_v3_expert_keys(w, n_expert, n_used, n_ff_exp, n_shared)
    w.add_expert_group_count(n_group)
    w.add_expert_group_used_count(n_group_used)
    w.add_rope_scaling_type(RopeScalingType.YARN)
    w.add_rope_scaling_factor(YARN[0])
    w.add_rope_scaling_orig_ctx_len(YARN[1])
    w.add_rope_scaling_yarn_log_mul(YARN[2])
    w.add_nextn_predict_layers(1)
    w.add_indexer_head_count(n_ih)
    w.add_indexer_key_length(ih_dim)
    w.add_indexer_top_k(top_k)
    w.add_file_type(_file_type(qtype))
    _add_byte_vocab(w)

    mat, vec, tensor3 = _random_tensors_dropping(w, rng, qtype, drop)

    n_vocab = len(byte_vocab()[0])
    mat("token_embd.weight", n_vocab, n_embd, 0.5)
    vec("output_norm.weight", n_embd)
    mat("output.weight", n_vocab, n_embd, 0.5)
    for i in range(n_blocks):
        b = f"blk.{i}."
        vec(b + "attn_norm.weight", n_embd)
        mat(b + "attn_q_a.weight", q_rank, n_embd, ATTN_SCALE)
        vec(b + "attn_q_a_norm.weight", q_rank)
        mat(b + "attn_q_b.weight", n_head * (nope + n_rot), q_rank, ATTN_SCALE)
        mat(b + "attn_kv_a_mqa.weight", rank + n_rot, n_embd, ATTN_SCALE)
        vec(b + "attn_kv_a_norm.weight", rank)
        tensor3(b + "attn_k_b.weight", (n_head, rank, nope), ATTN_SCALE)
        tensor3(b + "attn_v_b.weight", (n_head, dv, rank), ATTN_SCALE)
        mat(b + "attn_output.weight", n_embd, n_head * dv)
        _write_indexer(mat, vec, b, n_embd, q_rank, n_ih, ih_dim)
        vec(b + "ffn_norm.weight", n_embd)
        if i == 0:  # the leading dense layer
            _write_swiglu(mat, b, n_embd, n_ff)
        else:
            if b + "ffn_gate_inp.weight" not in drop:
                w.add_tensor(b + "ffn_gate_inp.weight", (rng.standard_normal((n_expert, n_embd)) * ROUTER_SCALE).astype(np.float32))
            vec(b + "exp_probs_b.bias", n_expert, 0.0, 0.3)
            _write_experts(tensor3, b, n_embd, n_expert, n_ff_exp)
            _write_swiglu(mat, b, n_embd, n_shared * n_ff_exp, "_shexp")
        if i >= n_layer:  # the MTP layer: loaded by llama.cpp, never run by its trunk
            _write_nextn(mat, vec, b, n_embd)
    return _finish(w, path)
