"""A tiny random Maple GGUF (``tinymodel.write_tiny_model(arch="maple")`` writes it through here).

As llama.cpp's converter lays out Maple (``conversion/maple.py``): q/k/v apart, per-head ``attn_q_norm``/``attn_k_norm``,
a mixture of experts in every layer (``ffn_gate_inp`` and the stacked ``ffn_{gate,up,down}_exps``, no shared expert),
an output head of its own; the per-layer ``sliding_window_pattern`` array the converter writes, here [window, global,
window, window] (not the 3-then-1 a fixed pattern would give) with a window of 8; partial rotary (8 of a head's 16),
the window layers at their own ``rope.freq_base_swa``; ``swiglu_clamp_exp`` one limit a layer, small enough that the
experts' gates and ups pass it (the converter's 7.0 in the last layer).  The byte vocabulary tinymodel writes (gpt2).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType

Q = GGMLQuantizationType

#: n_embd, n_head, n_head_kv, head_dim, n_ff, n_layer, n_expert, n_expert_used, n_ff_exp
GEOMETRY = (64, 4, 2, 16, 96, 4, 4, 2, 32)
WINDOW = 8
PATTERN = (True, False, True, True)
N_ROT = 8
#: the experts' SwiGLU limit, one a layer (gates and ups ~ N(0, 0.8²) here: the small ones clamp a good share)
CLAMP = (0.5, 0.75, 0.5, 7.0)


def write_tiny_maple(path: Path, qtype: int = Q.F32, seed: int = 0) -> Path:
    """The model at ``path``, its matrices as ``qtype``."""
    from tinymodel import _add_byte_vocab, _file_type, _finish, _random_tensors_dropping, _start_writer, _write_experts, byte_vocab

    rng = np.random.default_rng(seed)
    n_embd, n_head, n_head_kv, hd, n_ff, n_layer, n_expert, n_used, n_ff_exp = GEOMETRY
    n_vocab = len(byte_vocab()[0])
    w = _start_writer(path, "maple", n_embd, n_layer, n_ff, n_head, n_head_kv, hd)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_dimension_count(N_ROT)
    w.add_rope_freq_base(10000.0)
    w.add_rope_freq_base_swa(500.0)
    w.add_sliding_window(WINDOW)
    w.add_sliding_window_pattern(list(PATTERN))
    w.add_expert_count(n_expert)
    w.add_expert_used_count(n_used)
    w.add_expert_feed_forward_length(n_ff_exp)
    w.add_swiglu_clamp_exp(list(CLAMP))
    w.add_file_type(_file_type(qtype))
    _add_byte_vocab(w)

    mat, vec, tensor3 = _random_tensors_dropping(w, rng, qtype, ())
    mat("token_embd.weight", n_vocab, n_embd, 0.1)
    vec("output_norm.weight", n_embd)
    mat("output.weight", n_vocab, n_embd, 0.5)
    for i in range(n_layer):
        b = f"blk.{i}."
        vec(b + "attn_norm.weight", n_embd)
        mat(b + "attn_q.weight", n_head * hd, n_embd)
        mat(b + "attn_k.weight", n_head_kv * hd, n_embd)
        mat(b + "attn_v.weight", n_head_kv * hd, n_embd)
        mat(b + "attn_output.weight", n_embd, n_head * hd)
        # (norms of 0.5 keep the QK-normed scores about 1, where both runtimes' fp16 K stays well under 1e-3: tiny_afmoe.py)
        vec(b + "attn_q_norm.weight", hd, 0.5)
        vec(b + "attn_k_norm.weight", hd, 0.5)
        vec(b + "ffn_norm.weight", n_embd)
        mat(b + "ffn_gate_inp.weight", n_expert, n_embd, 0.5)
        _write_experts(tensor3, b, n_embd, n_expert, n_ff_exp)
    return _finish(w, path)
