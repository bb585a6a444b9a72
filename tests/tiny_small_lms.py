"""Tiny random InternLM2 (``internlm2``), OLMo v1 (``olmo``), Nemotron (``nemotron``) and OpenELM (``openelm``) GGUFs
(``tinymodel.write_tiny_model(arch=...)`` writes them through here), laid out as llama.cpp's converters write them:

* internlm2: the Llama layout (RMSNorms, SwiGLU, rope over consecutive pairs, a separate output head); the converter
  splits InternLM2's fused ``wqkv`` into ``attn_q``/``attn_k``/``attn_v`` (``fused_qkv``: one ``attn_qkv`` instead,
  Q's rows then K's then V's, which llama.cpp's loader takes too).
* olmo: no norm weights at all (OLMo's LayerNorms are non-parametric), ``attention.layer_norm_epsilon``, rope over
  consecutive pairs, multi-head; ``clamp_kqv``: Q, K and V clipped to +-clamp_kqv (OLMo 1.7's ``clip_qkv``; the tiny
  one's Q, K and V are ~N(0, 1), LayerNormed input times weights of scale 1/8, so a clamp of 1 clips about a third);
  ``output_head``: a separate output head (OLMo-7B), else tied (OLMo-1B).
* nemotron: LayerNorms with biases (the converter has added Nemotron's layernorm1p's +1 into the weights), rope over
  the first 8 of 16 dimensions (neox), an ungated squared-ReLU FFN, a separate output head; ``biases``: the optional
  ``attn_output.bias``, ``ffn_up.bias`` and ``ffn_down.bias``.  (Heads n_embd / n_head wide: llama.cpp 0.3.36's loader
  refuses wider ones for nemotron, which newer llama.cpp takes.)
* openelm: per-layer head counts, K/V head counts and FFN widths (arrays in the metadata, as Apple's layer-wise
  scaling), one fused ``attn_qkv`` per layer, per-head Q and K RMSNorms, neox rope, the output head tied (llama.cpp
  always takes ``token_embd``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType, GGUFWriter

Q = GGMLQuantizationType

#: (n_embd, n_head, n_head_kv, head_dim, rope_dim, n_ff, n_layer); openelm's n_head, n_head_kv and n_ff per layer
GEOMETRY = {
    "internlm2": (64, 4, 2, 16, 16, 96, 2),
    "olmo": (64, 4, 4, 16, 16, 96, 2),
    "nemotron": (64, 4, 2, 16, 8, 96, 2),  # rope over half of each head, as Nemotron's partial_rotary_factor 0.5
    "openelm": (64, (2, 4, 6), (1, 2, 2), 16, 16, (64, 96, 128), 3),
}


def write_tiny_small_lm(path: Path, arch: str, qtype: int = Q.F32, seed: int = 0, fused_qkv: bool = False, clamp_kqv: float = 0.0,
                        output_head: bool = False, biases: bool = False, drop: tuple[str, ...] = ()) -> Path:  # fmt: skip
    """The model at ``path``, its matrices as ``qtype``; ``fused_qkv``, ``clamp_kqv``, ``output_head``, ``biases``: the
    variants above; ``drop``: tensor names left out (the tests of a missing tensor's error)."""
    from tinymodel import _add_byte_vocab, _file_type, _finish, _random_tensors, byte_vocab

    rng = np.random.default_rng(seed)
    n_embd, n_head, n_head_kv, head_dim, rope_dim, n_ff, n_layer = GEOMETRY[arch]
    per_layer = arch == "openelm"
    heads = n_head if per_layer else (n_head,) * n_layer
    kv_heads = n_head_kv if per_layer else (n_head_kv,) * n_layer
    ffs = n_ff if per_layer else (n_ff,) * n_layer
    n_vocab = len(byte_vocab()[0])
    w = GGUFWriter(str(path), arch)
    w.add_name(f"tiny-{arch}")
    w.add_context_length(1024)
    w.add_embedding_length(n_embd)
    w.add_block_count(n_layer)
    w.add_feed_forward_length(list(ffs) if per_layer else n_ff)
    w.add_head_count(list(heads) if per_layer else n_head)
    w.add_head_count_kv(list(kv_heads) if per_layer else n_head_kv)
    if arch in ("olmo", "nemotron"):
        w.add_layer_norm_eps(1e-5)
    else:
        w.add_layer_norm_rms_eps(1e-6 if per_layer else 1e-5)
    if clamp_kqv:
        w.add_clamp_kqv(clamp_kqv)
    w.add_rope_freq_base(10000.0)
    w.add_rope_dimension_count(rope_dim)
    if per_layer or head_dim * n_head != n_embd:
        w.add_key_length(head_dim)
        w.add_value_length(head_dim)
    w.add_file_type(_file_type(qtype))
    _add_byte_vocab(w)

    mat_, vec_ = _random_tensors(w, rng, qtype)

    def mat(name: str, rows: int, cols: int, scale: float = 0.1) -> None:
        if name in drop:  # (drawn all the same: the other tensors' values do not move)
            rng.standard_normal((rows, cols))
        else:
            mat_(name, rows, cols, scale)

    def vec(name: str, n: int, base: float = 1.0, scale: float = 0.1) -> None:
        if name in drop:
            rng.standard_normal(n)
        else:
            vec_(name, n, base, scale)

    norms = arch != "olmo"  # (OLMo v1's LayerNorms have no weights)
    mat("token_embd.weight", n_vocab, n_embd, 0.5)
    if norms:
        vec("output_norm.weight", n_embd)
    if arch == "nemotron":
        vec("output_norm.bias", n_embd, 0.0, 0.2)
    if arch in ("internlm2", "nemotron") or output_head:
        mat("output.weight", n_vocab, n_embd, 0.5)
    for i in range(n_layer):
        b = f"blk.{i}."
        nq, nkv = heads[i] * head_dim, kv_heads[i] * head_dim
        if norms:
            vec(b + "attn_norm.weight", n_embd)
        if arch == "nemotron":
            vec(b + "attn_norm.bias", n_embd, 0.0, 0.2)
        qscale = 0.125 if arch == "olmo" else 0.1
        if fused_qkv or per_layer:
            mat(b + "attn_qkv.weight", nq + 2 * nkv, n_embd, qscale)
        else:
            mat(b + "attn_q.weight", nq, n_embd, qscale)
            mat(b + "attn_k.weight", nkv, n_embd, qscale)
            mat(b + "attn_v.weight", nkv, n_embd, qscale)
        if per_layer:  # (per-head QK RMSNorms, drawn away from one so that leaving them out shows)
            vec(b + "attn_q_norm.weight", head_dim, 1.0, 0.5)
            vec(b + "attn_k_norm.weight", head_dim, 1.0, 0.5)
        mat(b + "attn_output.weight", n_embd, nq)
        if biases:
            vec(b + "attn_output.bias", n_embd, 0.0, 0.2)
        if norms:
            vec(b + "ffn_norm.weight", n_embd)
        if arch == "nemotron":
            vec(b + "ffn_norm.bias", n_embd, 0.0, 0.2)
        else:
            mat(b + "ffn_gate.weight", ffs[i], n_embd)
        mat(b + "ffn_up.weight", ffs[i], n_embd)
        if biases:
            vec(b + "ffn_up.bias", ffs[i], 0.0, 0.2)
        mat(b + "ffn_down.weight", n_embd, ffs[i])
        if biases:
            vec(b + "ffn_down.bias", n_embd, 0.0, 0.2)
    return _finish(w, path)
