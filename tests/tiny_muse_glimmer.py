"""A tiny random Muse Glimmer GGUF (``tinymodel.write_tiny_model(arch="muse-glimmer")`` writes it through here).

As llama.cpp's converter lays out Muse Glimmer (``conversion/muse_glimmer.py``): q/k/v apart, ``attn_gate``
[n_head * head_dim, n_embd], per-head ``attn_q_norm``/``attn_k_norm``, ``post_attention_norm`` and ``post_ffw_norm``
beside the pre-norms, a dense SwiGLU FFN in every layer, an output head of its own; ``logit_scale`` (the
``output_multiplier``), ``final_logit_softcapping``, a window of 8 with the per-layer ``sliding_window_pattern`` array
the converter writes: here [window, global, window, window], unlike the fixed 3-then-1 a missing array means, so a
runtime that takes the fixed pattern (or rotates the global layer) is seen; the window layers rotate at their own
``rope.freq_base_swa``.  The byte vocabulary tinymodel writes (gpt2).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType, GGUFWriter

from tiny_afmoe import write_attention

Q = GGMLQuantizationType

#: n_embd, n_head, n_head_kv, head_dim, n_ff, n_layer
GEOMETRY = (64, 4, 2, 16, 96, 4)
WINDOW = 8
PATTERN = (True, False, True, True)
LOGIT_SCALE = 0.5
SOFTCAP = 8.0


def write_tiny_muse_glimmer(path: Path, qtype: int = Q.F32, seed: int = 0, extra_tokens: tuple[str, ...] = ()) -> Path:
    """The model at ``path``, its matrices as ``qtype``; ``extra_tokens`` control tokens after the byte vocabulary (the
    picture markers: tests/tiny_vision_muse_glimmer.py)."""
    from tinymodel import _add_byte_vocab, _file_type, _finish, _random_tensors, byte_vocab

    rng = np.random.default_rng(seed)
    n_embd, n_head, n_head_kv, hd, n_ff, n_layer = GEOMETRY
    n_vocab = len(byte_vocab()[0]) + len(extra_tokens)
    w = GGUFWriter(str(path), "muse-glimmer")
    w.add_name("tiny-muse-glimmer")
    w.add_context_length(1024)
    w.add_embedding_length(n_embd)
    w.add_block_count(n_layer)
    w.add_feed_forward_length(n_ff)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_head_kv)
    w.add_key_length(hd)
    w.add_value_length(hd)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_freq_base(10000.0)
    w.add_rope_freq_base_swa(1000.0)
    w.add_sliding_window(WINDOW)
    w.add_sliding_window_pattern(list(PATTERN))
    w.add_logit_scale(LOGIT_SCALE)
    w.add_final_logit_softcapping(SOFTCAP)
    w.add_file_type(_file_type(qtype))
    _add_byte_vocab(w, extra_tokens)

    mat, vec = _random_tensors(w, rng, qtype)
    mat("token_embd.weight", n_vocab, n_embd, 0.1)  # (RMS-normed without a weight at the input)
    vec("output_norm.weight", n_embd)
    mat("output.weight", n_vocab, n_embd, 0.5)
    for i in range(n_layer):
        # (AFMoE's norms and attention, tiny_afmoe.py: its QK norms of 0.5 keep the scores about 1, where the
        # converter's q norm is qk_scale_factor broadcast and its k norm ones.  Layer 1's attention output and layer
        # 2's FFN output small, their mean squares about 1e-5: the post-norms' epsilon of 1e-8 against the file's 1e-5
        # shows)
        b = f"blk.{i}."
        write_attention(mat, vec, b, (n_embd, n_head, n_head_kv, hd), 0.002 if i == 1 else 0.1)
        mat(b + "ffn_gate.weight", n_ff, n_embd)
        mat(b + "ffn_up.weight", n_ff, n_embd)
        mat(b + "ffn_down.weight", n_embd, n_ff, 0.002 if i == 2 else 0.1)
    return _finish(w, path)
