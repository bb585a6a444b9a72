"""A tiny random Talkie GGUF (``tinymodel.write_tiny_model(arch="talkie")`` writes it through here).

As llama.cpp's converter lays out Talkie (``conversion/talkie.py``): q/k/v apart, no norm weights at all, each layer's
``attn_q_norm`` the heads' gains ``[n_head, 1]`` (``head_g``, broadcast), ``attn_output.scale`` and ``ffn_down.scale``
(``attn_gain``/``mlp_gain``, one value each), ``layer_output_scale`` (the embedding skip's), an output head of its own,
``logit_scale`` (``lm_head_gain``) and float32's machine epsilon for the RMSNorms.  Every gain away from 1 and unlike
the others, so that each one left out is seen.  The byte vocabulary tinymodel writes (gpt2).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType, GGUFWriter

Q = GGMLQuantizationType

#: n_embd, n_head, n_head_kv, head_dim, n_ff, n_layer
GEOMETRY = (64, 4, 2, 16, 96, 4)
LOGIT_SCALE = 1.5
EPS = float(np.finfo(np.float32).eps)  # (the converter's: torch.finfo(torch.float32).eps)


def write_tiny_talkie(path: Path, qtype: int = Q.F32, seed: int = 0) -> Path:
    """The model at ``path``, its matrices as ``qtype``."""
    from tinymodel import _add_byte_vocab, _file_type, _finish, _random_tensors, byte_vocab

    rng = np.random.default_rng(seed)
    n_embd, n_head, n_head_kv, hd, n_ff, n_layer = GEOMETRY
    n_vocab = len(byte_vocab()[0])
    w = GGUFWriter(str(path), "talkie")
    w.add_name("tiny-talkie")
    w.add_context_length(1024)
    w.add_embedding_length(n_embd)
    w.add_block_count(n_layer)
    w.add_feed_forward_length(n_ff)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_head_kv)
    w.add_key_length(hd)
    w.add_value_length(hd)
    w.add_layer_norm_rms_eps(EPS)
    w.add_rope_freq_base(10000.0)
    w.add_logit_scale(LOGIT_SCALE)
    w.add_file_type(_file_type(qtype))
    _add_byte_vocab(w)

    mat, _ = _random_tensors(w, rng, qtype)

    def scalar(name: str, lo: float, hi: float) -> None:  # (a one-value gain, as the converter writes them)
        w.add_tensor(name, np.array([rng.uniform(lo, hi)], np.float32))

    mat("token_embd.weight", n_vocab, n_embd, 0.5)
    mat("output.weight", n_vocab, n_embd, 0.3)
    for i in range(n_layer):
        b = f"blk.{i}."
        mat(b + "attn_q.weight", n_head * hd, n_embd)
        mat(b + "attn_k.weight", n_head_kv * hd, n_embd)
        mat(b + "attn_v.weight", n_head_kv * hd, n_embd)
        # (the heads' gains about 0.5: normed heads of 16 keep the scores about 1, where llama.cpp's fp16 K stays well under
        # 1e-3 of the logits; spread, so that one gain for all heads is seen)
        w.add_tensor(b + "attn_q_norm.weight", (0.5 + rng.standard_normal((n_head, 1)) * 0.2).astype(np.float32))
        mat(b + "attn_output.weight", n_embd, n_head * hd, 0.2)
        scalar(b + "attn_output.scale", 0.5, 0.8)
        mat(b + "ffn_gate.weight", n_ff, n_embd)
        mat(b + "ffn_up.weight", n_ff, n_embd)
        mat(b + "ffn_down.weight", n_embd, n_ff, 0.2)
        scalar(b + "ffn_down.scale", 1.3, 1.8)
        scalar(b + "layer_output_scale.weight", 0.2, 0.5)
    return _finish(w, path)
