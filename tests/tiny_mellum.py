"""A tiny random Mellum GGUF (``tinymodel.write_tiny_model(arch="mellum")`` writes it through here).

As llama.cpp's converter lays out Mellum 2 (``conversion/mellum.py``): q/k/v apart, per-head ``attn_q_norm``/
``attn_k_norm``, a mixture of 4 experts (2 a token) in every layer, stacked ``ffn_*_exps`` and a softmax router, an
output head of its own; a window of 8 with the per-layer ``sliding_window_pattern`` array the converter writes from
``layer_types``: here [window, global, window, window], unlike the fixed 3-then-1 a missing array means.  The keys
llama.cpp reads and its graph then overrides, stated so that a runtime which honours them is seen: YaRN scaling
(factor 4 of 16 positions, the 40-position prompt past it), which the window layers leave out; a
``rope.freq_base_swa`` of 1000, where llama.cpp's graph rotates the window layers at ``rope.freq_base`` too;
``expert_weights_norm`` false and ``expert_weights_scale`` 2.5, where its graph always renormalises and never scales.
The byte vocabulary tinymodel writes (gpt2).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType, RopeScalingType

Q = GGMLQuantizationType

#: n_embd, n_head, n_head_kv, head_dim, n_ff, n_layer, n_expert, n_expert_used, n_ff_exp
GEOMETRY = (64, 4, 2, 16, 96, 4, 4, 2, 32)
WINDOW = 8
PATTERN = (True, False, True, True)
YARN = (4.0, 16)  # (factor, original context)


def write_tiny_mellum(path: Path, qtype: int = Q.F32, seed: int = 0) -> Path:
    """The model at ``path``, its matrices as ``qtype``."""
    from tinymodel import _add_byte_vocab, _file_type, _finish, _random_tensors_dropping, _start_writer, _write_moe, _write_qk_norm_attention, byte_vocab

    rng = np.random.default_rng(seed)
    n_embd, n_head, n_head_kv, hd, n_ff, n_layer, n_expert, n_used, n_ff_exp = GEOMETRY
    n_vocab = len(byte_vocab()[0])
    w = _start_writer(path, "mellum", n_embd, n_layer, n_ff, n_head, n_head_kv, hd)
    w.add_layer_norm_rms_eps(1e-6)
    w.add_rope_freq_base(10000.0)
    w.add_rope_freq_base_swa(1000.0)  # (read, unused by llama.cpp's graph)
    w.add_rope_scaling_type(RopeScalingType.YARN)
    w.add_rope_scaling_factor(YARN[0])
    w.add_rope_scaling_orig_ctx_len(YARN[1])
    w.add_expert_count(n_expert)
    w.add_expert_used_count(n_used)
    w.add_expert_feed_forward_length(n_ff_exp)
    w.add_expert_weights_norm(False)  # (unread: llama.cpp's graph renormalises)
    w.add_expert_weights_scale(2.5)  # (unread: llama.cpp's graph scales nothing)
    w.add_sliding_window(WINDOW)
    w.add_sliding_window_pattern(list(PATTERN))
    w.add_file_type(_file_type(qtype))
    _add_byte_vocab(w)

    mat, vec, tensor3 = _random_tensors_dropping(w, rng, qtype, ())
    mat("token_embd.weight", n_vocab, n_embd, 0.5)
    vec("output_norm.weight", n_embd)
    mat("output.weight", n_vocab, n_embd, 0.5)
    for i in range(n_layer):
        b = f"blk.{i}."
        _write_qk_norm_attention(mat, vec, b, n_embd, n_head, n_head_kv, hd)
        _write_moe(mat, vec, tensor3, b, n_embd, n_expert, n_ff_exp)
    return _finish(w, path)
