"""A tiny random AFMoE GGUF (``tinymodel.write_tiny_model(arch="afmoe")`` writes it through here).

As llama.cpp's converter lays out Arcee's Trinity (``AfmoeModel``): q/k/v apart, ``attn_gate`` [n_head * head_dim,
n_embd], per-head ``attn_q_norm``/``attn_k_norm``, ``post_attention_norm`` and ``post_ffw_norm`` beside the pre-norms;
layer 0 dense (leading_dense_block_count 1), layers 1-3 a mixture of 8 experts (2 a token, sigmoid router with
``exp_probs_b``, weights renormalised, times expert_weights_scale 2.5) and 1 shared expert; a window of 8 (layers 0-2;
layer 3 global, without rope: llama.cpp 0.3.36 crashes on a file that states no window); an output head of its own.  The byte vocabulary tinymodel writes (gpt2).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
from gguf import ExpertGatingFuncType, GGMLQuantizationType

Q = GGMLQuantizationType

#: n_embd, n_head, n_head_kv, head_dim, n_ff, n_layer, n_expert, n_expert_used, n_ff_exp, n_shared
GEOMETRY = (64, 4, 2, 16, 96, 4, 8, 2, 32, 1)
WINDOW = 8


def write_attention(mat: Callable[..., None], vec: Callable[..., None], b: str, geometry: tuple[int, int, int, int],
                    out_scale: float = 0.1) -> None:  # fmt: skip
    """Layer ``b``'s norms and gated attention through ``mat`` / ``vec`` (tinymodel's ``_random_tensors``), in order:
    ``attn_norm``, q/k/v apart, ``attn_gate``, the per-head QK norms, ``attn_output`` (~ N(0, ``out_scale``²)),
    ``post_attention_norm``, ``ffn_norm`` and ``post_ffw_norm``; ``geometry``: (n_embd, n_head, n_head_kv,
    head_dim).  Muse Glimmer's layers have them too (tiny_muse_glimmer.py)."""
    n_embd, n_head, n_head_kv, hd = geometry
    vec(b + "attn_norm.weight", n_embd)
    mat(b + "attn_q.weight", n_head * hd, n_embd)
    mat(b + "attn_k.weight", n_head_kv * hd, n_embd)
    mat(b + "attn_v.weight", n_head_kv * hd, n_embd)
    mat(b + "attn_gate.weight", n_head * hd, n_embd, 0.5)
    # (QK-normed heads of 16: norms of 0.5 keep the scores about 1, where both runtimes' fp16 K and llama.cpp's fp16
    # Q, rounded, stay well under 1e-3 of the logits; norms of 1 reach 9e-4)
    vec(b + "attn_q_norm.weight", hd, 0.5)
    vec(b + "attn_k_norm.weight", hd, 0.5)
    mat(b + "attn_output.weight", n_embd, n_head * hd, out_scale)
    vec(b + "post_attention_norm.weight", n_embd)
    vec(b + "ffn_norm.weight", n_embd)
    vec(b + "post_ffw_norm.weight", n_embd)


def write_tiny_afmoe(path: Path, qtype: int = Q.F32, seed: int = 0) -> Path:
    """The model at ``path``, its matrices as ``qtype``."""
    from tinymodel import _add_byte_vocab, _file_type, _finish, _random_tensors_dropping, _start_writer, _write_moe, _write_swiglu, byte_vocab

    rng = np.random.default_rng(seed)
    n_embd, n_head, n_head_kv, hd, n_ff, n_layer, n_expert, n_used, n_ff_exp, n_shared = GEOMETRY
    n_vocab = len(byte_vocab()[0])
    w = _start_writer(path, "afmoe", n_embd, n_layer, n_ff, n_head, n_head_kv, hd)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_freq_base(10000.0)
    w.add_leading_dense_block_count(1)
    w.add_expert_count(n_expert)
    w.add_expert_used_count(n_used)
    w.add_expert_feed_forward_length(n_ff_exp)
    w.add_expert_shared_count(n_shared)
    w.add_expert_gating_func(ExpertGatingFuncType.SIGMOID)
    w.add_expert_weights_scale(2.5)
    w.add_expert_weights_norm(True)
    w.add_sliding_window(WINDOW)
    w.add_file_type(_file_type(qtype))
    _add_byte_vocab(w)

    mat, vec, tensor3 = _random_tensors_dropping(w, rng, qtype, ())
    mat("token_embd.weight", n_vocab, n_embd, 0.1)  # (times sqrt(64) = 8 at the input)
    vec("output_norm.weight", n_embd)
    mat("output.weight", n_vocab, n_embd, 0.5)
    for i in range(n_layer):
        b = f"blk.{i}."
        write_attention(mat, vec, b, (n_embd, n_head, n_head_kv, hd))
        if i < 1:
            _write_swiglu(mat, b, n_embd, n_ff)
            continue
        _write_moe(mat, vec, tensor3, b, n_embd, n_expert, n_ff_exp, probs_b="exp_probs_b.bias", n_ff_shexp=n_ff_exp * n_shared)
    return _finish(w, path)
