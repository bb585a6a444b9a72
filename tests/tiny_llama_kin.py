"""Tiny random Seed-OSS, Apertus and Command R GGUFs (``tinymodel.write_tiny_model(arch=...)`` writes them through
here): three of the Llama block's kin, each as llama.cpp's converter lays it out, with what sets it apart.

* ``seed_oss``: QKV biases, heads wider than n_embd / n_head (``key_length``), the pre-FFN norm named
  ``post_attention_norm``, a separate output head;
* ``apertus``: per-head QK-norm, an ungated FFN (no ``ffn_gate``) behind xIELU with each layer's parameters
  (APERTUS_XIELU) as ``xielu.*`` metadata arrays, Llama 3's ``rope_freqs.weight`` (with ``rope_freqs``), a
  separate output head;
* ``command-r``: one LayerNorm without a bias per layer for a parallel block, ``logit_scale`` 0.0625 (the
  converter's, as Command-R's), the output head tied; with ``qk_norm`` (Command R+) per-head LayerNorm weights
  ``[n_head, head_dim]`` and ``[n_head_kv, head_dim]`` for Q and K, which llama.cpp reads at 64 layers and more
  only (``n_layer``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType, GGUFWriter

Q = GGMLQuantizationType

#: arch: (n_embd, n_head, n_head_kv, head_dim, n_ff, n_layer)
GEOMETRY = {
    "seed_oss": (64, 4, 2, 32, 96, 2),  # heads of 32 at n_embd 64 / 4, as Seed-OSS-36B's 128 at 5120 / 80
    "apertus": (64, 4, 2, 16, 96, 2),
    "command-r": (64, 4, 2, 16, 96, 2),
}
#: the tiny Apertus's xIELU parameters per layer, as the converter stores them (before softplus): (alpha_n, alpha_p,
#: beta, eps); layer 0 HF's initial ones (softplus(alpha_p) = 0.8, beta + softplus(alpha_n) = 0.8), layer 1 far from them
APERTUS_XIELU = ((-1.0502, 0.1488, 0.5, -1e-6), (0.4, -0.7, 0.2, -1e-6))
#: Command R's logit scale (c4ai-command-r-v01's)
COMMAND_R_LOGIT_SCALE = 0.0625


def write_tiny_llama_kin(path: Path, arch: str, qtype: int = Q.F32, seed: int = 0, qk_norm: bool = False,
                         rope_freqs: bool = False, n_layer: int | None = None) -> Path:  # fmt: skip
    """The model at ``path``, its matrices as ``qtype``: see the module's docstring."""
    from tinymodel import _add_byte_vocab, _file_type, _finish, _random_tensors, byte_vocab

    rng = np.random.default_rng(seed)
    n_embd, n_head, n_head_kv, head_dim, n_ff, n_geom = GEOMETRY[arch]
    n_layer = n_layer or n_geom
    n_vocab = len(byte_vocab()[0])
    w = GGUFWriter(str(path), arch)
    w.add_name(f"tiny-{arch}")
    w.add_context_length(1024)
    w.add_embedding_length(n_embd)
    w.add_block_count(n_layer)
    w.add_feed_forward_length(n_ff)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_head_kv)
    w.add_rope_freq_base(10000.0)
    if arch == "command-r":
        w.add_layer_norm_eps(1e-5)
        w.add_logit_scale(COMMAND_R_LOGIT_SCALE)
    else:
        w.add_layer_norm_rms_eps(1e-5)
        w.add_key_length(head_dim)
        w.add_value_length(head_dim)
        w.add_rope_dimension_count(head_dim)
    if arch == "apertus":
        w.add_xielu_alpha_n([p[0] for p in APERTUS_XIELU[:n_layer]])
        w.add_xielu_alpha_p([p[1] for p in APERTUS_XIELU[:n_layer]])
        w.add_xielu_beta([p[2] for p in APERTUS_XIELU[:n_layer]])
        w.add_xielu_eps([p[3] for p in APERTUS_XIELU[:n_layer]])
    w.add_file_type(_file_type(qtype))
    _add_byte_vocab(w)

    mat, vec = _random_tensors(w, rng, qtype)

    mat("token_embd.weight", n_vocab, n_embd, 0.5)
    vec("output_norm.weight", n_embd)
    if arch != "command-r":
        mat("output.weight", n_vocab, n_embd, 0.5)
    for i in range(n_layer):
        b = f"blk.{i}."
        vec(b + "attn_norm.weight", n_embd)
        mat(b + "attn_q.weight", n_head * head_dim, n_embd)
        mat(b + "attn_k.weight", n_head_kv * head_dim, n_embd)
        mat(b + "attn_v.weight", n_head_kv * head_dim, n_embd)
        if arch == "seed_oss":  # (biases large enough to move the scores)
            vec(b + "attn_q.bias", n_head * head_dim, 0.0, 0.5)
            vec(b + "attn_k.bias", n_head_kv * head_dim, 0.0, 0.5)
            vec(b + "attn_v.bias", n_head_kv * head_dim, 0.0, 0.5)
        mat(b + "attn_output.weight", n_embd, n_head * head_dim)
        if arch == "apertus":  # (1 +- 0.5: heads normed with weights far from one another)
            vec(b + "attn_q_norm.weight", head_dim, 1.0, 0.5)
            vec(b + "attn_k_norm.weight", head_dim, 1.0, 0.5)
        if arch == "command-r" and qk_norm:  # one set of weights per head
            w.add_tensor(b + "attn_q_norm.weight", (1.0 + rng.standard_normal((n_head, head_dim)) * 0.5).astype(np.float32))
            w.add_tensor(b + "attn_k_norm.weight", (1.0 + rng.standard_normal((n_head_kv, head_dim)) * 0.5).astype(np.float32))
        if arch == "seed_oss":
            vec(b + "post_attention_norm.weight", n_embd)
        elif arch == "apertus":
            vec(b + "ffn_norm.weight", n_embd)
        if arch != "apertus":
            mat(b + "ffn_gate.weight", n_ff, n_embd)
        mat(b + "ffn_up.weight", n_ff, n_embd)
        mat(b + "ffn_down.weight", n_embd, n_ff)
    if rope_freqs:  # (Llama 3's factors, 1 to 8 from the fast frequencies to the slow)
        w.add_tensor("rope_freqs.weight", np.geomspace(1.0, 8.0, head_dim // 2).astype(np.float32))
    return _finish(w, path)
