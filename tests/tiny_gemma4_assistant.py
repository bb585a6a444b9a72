"""A tiny random Gemma 4 assistant (llama.cpp's ``gemma4-assistant``, Google's MTP draft head) beside the tiny Gemma 4
of tests/tiny_gemma4.py.

As llama.cpp's converter (``Gemma4AssistantModel``) writes it: Gemma 4's keys, plus ``embedding_length_out`` (the
target's width, 64, unlike the head's own 48) and ``nextn_predict_layers`` (every block); ``nextn.pre_projection``
(the target's token embedding beside its hidden state, 128 wide, to 48), ``nextn.post_projection`` (48
back to 64); each block Q-only attention (K/V are read from the target's cache), the sandwich norms, a GELU-gated
FFN and ``layer_output_scale``; the token embedding doubles as the output head.  Two blocks: a window layer (heads
16 wide, as the target's window layers) and a global one (32, with ``rope_freqs``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType, GGUFWriter

from tiny_gemma4 import GEOMETRY, PARTIAL_ROTARY, WINDOW

Q = GGMLQuantizationType

N_EMBD = 48  #: the head's own width (the target's is GEOMETRY[0])
N_HEAD = 4
N_FF = 64
SWA = (True, False)


def write_tiny_gemma4_assistant(path: Path, qtype: int = Q.F32, seed: int = 1, n_embd_out: int | None = None) -> Path:
    """The head at ``path``; ``n_embd_out`` the target width it says it fits (the tiny Gemma 4's unless told)."""
    from tinymodel import _add_byte_vocab, _file_type, _finish, _random_tensors, byte_vocab

    rng = np.random.default_rng(seed)
    n_embd_tgt, _, hd_swa, hd, kv_swa, kv_full, _ = GEOMETRY
    n_embd_out = n_embd_tgt if n_embd_out is None else n_embd_out
    n_vocab = len(byte_vocab()[0])
    w = GGUFWriter(str(path), "gemma4-assistant")
    w.add_name("tiny-gemma4-assistant")
    w.add_context_length(1024)
    w.add_embedding_length(N_EMBD)
    w.add_embedding_length_out(n_embd_out)
    w.add_block_count(len(SWA))
    w.add_nextn_predict_layers(len(SWA))
    w.add_feed_forward_length(N_FF)
    w.add_head_count(N_HEAD)
    w.add_head_count_kv([kv_swa if s else kv_full for s in SWA])
    w.add_key_length(hd)
    w.add_value_length(hd)
    w.add_key_length_swa(hd_swa)
    w.add_value_length_swa(hd_swa)
    w.add_rope_dimension_count(hd)
    w.add_rope_dimension_count_swa(hd_swa)
    w.add_rope_freq_base(1_000_000.0)
    w.add_rope_freq_base_swa(10_000.0)
    w.add_layer_norm_rms_eps(1e-6)
    w.add_sliding_window(WINDOW)
    w.add_sliding_window_pattern(list(SWA))
    w.add_vocab_size(n_vocab)
    w.add_file_type(_file_type(qtype))
    _add_byte_vocab(w)

    mat, vec = _random_tensors(w, rng, qtype)
    mat("token_embd.weight", n_vocab, N_EMBD, 0.5)
    vec("output_norm.weight", N_EMBD)
    n_rot = int(hd * PARTIAL_ROTARY / 2)
    w.add_tensor("rope_freqs.weight", np.array([1.0] * n_rot + [1e30] * (hd // 2 - n_rot), np.float32))
    mat("nextn.pre_projection.weight", N_EMBD, 2 * n_embd_out, 0.1)
    mat("nextn.post_projection.weight", n_embd_out, N_EMBD, 0.3)
    for il, swa in enumerate(SWA):
        b = f"blk.{il}."
        d = hd_swa if swa else hd
        vec(b + "attn_norm.weight", N_EMBD)
        mat(b + "attn_q.weight", N_HEAD * d, N_EMBD)
        vec(b + "attn_q_norm.weight", d, 0.3, 0.05)
        mat(b + "attn_output.weight", N_EMBD, N_HEAD * d)
        vec(b + "post_attention_norm.weight", N_EMBD)
        vec(b + "ffn_norm.weight", N_EMBD)
        mat(b + "ffn_gate.weight", N_FF, N_EMBD, 0.3)
        mat(b + "ffn_up.weight", N_FF, N_EMBD)
        mat(b + "ffn_down.weight", N_EMBD, N_FF)
        vec(b + "post_ffw_norm.weight", N_EMBD)
        vec(b + "layer_output_scale.weight", 1, 0.8, 0.2)
    return _finish(w, path)
