"""A tiny random BitNet b1.58 GGUF (``tinymodel.write_tiny_model(arch="bitnet")`` writes it through here).

As llama.cpp's converter writes microsoft/bitnet-b1.58-2B-4T: the Llama layout plus ``attn_sub_norm``
(``[n_embd]``, before the output projection) and ``ffn_sub_norm`` (``[n_ff]``, before ``ffn_down``), the output
head tied to ``token_embd``, and every projection ternary: the converter's ``weight_quant`` makes each matrix
``scale * {-1, 0, 1}`` with one absmean scale a tensor.  Stored as float32 those values are exact; stored as
TQ1_0/TQ2_0 too (a block's ``d`` is its largest magnitude, the tensor's scale), so the F32 and the TQ files of
one seed hold the same weights and differ only in how llama.cpp meets them (int8 activations for the TQ types).

Widths of 256 (n_embd, n_head * head_dim, n_ff 512): the TQ types' blocks are 256 weights.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType, GGUFWriter
from gguf.quants import quantize

Q = GGMLQuantizationType

#: n_embd, n_head, n_head_kv, head_dim, n_ff, n_layer
GEOMETRY = (256, 4, 2, 64, 512, 2)


def ternary(rng: np.random.Generator, rows: int, cols: int) -> np.ndarray:
    """``scale * t`` with ``t`` in {-1, 0, 1} (about a third each) as the converter's weight_quant leaves a matrix:
    its absmean scale, here 0.02 to 0.05, rounded to f16 so that a TQ block's f16 ``d`` holds it exactly."""
    t = rng.integers(-1, 2, (rows, cols)).astype(np.float32)
    scale = np.float32(np.float16(rng.uniform(0.02, 0.05)))
    return t * scale


def write_tiny_bitnet(path: Path, qtype: int = Q.F32, seed: int = 0, scales: bool = False, act: str | None = None) -> Path:
    """The model at ``path``, its projections stored as ``qtype`` (F32, TQ1_0, TQ2_0; embeddings and norms
    float32).  ``scales``: with a ``[1]`` ``<matrix>.scale`` tensor beside every projection (llama.cpp multiplies
    the product by it where present); ``act``: the ``bitnet.hidden_activation`` to state (none: the key absent)."""
    from tinymodel import _add_byte_vocab, _file_type, _finish, byte_vocab

    rng = np.random.default_rng(seed)
    n_embd, n_head, n_head_kv, head_dim, n_ff, n_layer = GEOMETRY
    n_vocab = len(byte_vocab()[0])
    w = GGUFWriter(str(path), "bitnet")
    w.add_name("tiny-bitnet")
    w.add_context_length(1024)
    w.add_embedding_length(n_embd)
    w.add_block_count(n_layer)
    w.add_feed_forward_length(n_ff)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_head_kv)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_freq_base(500000.0)  # (BitNet 2B's)
    w.add_rope_dimension_count(head_dim)
    if act is not None:
        w.add_string("bitnet.hidden_activation", act)
    w.add_file_type(_file_type(qtype))
    _add_byte_vocab(w)

    def mat(name: str, rows: int, cols: int) -> None:
        a = ternary(rng, rows, cols)
        if qtype == Q.F32:
            w.add_tensor(name + ".weight", a)
        else:
            w.add_tensor(name + ".weight", quantize(a, qtype), raw_dtype=qtype)
        if scales:
            w.add_tensor(name + ".scale", np.array([rng.uniform(0.5, 2.0)], np.float32))

    def vec(name: str, n: int, base: float = 1.0, scale: float = 0.1) -> None:
        w.add_tensor(name, (base + rng.standard_normal(n) * scale).astype(np.float32))

    w.add_tensor("token_embd.weight", (rng.standard_normal((n_vocab, n_embd)) * 1.0).astype(np.float32))  # (logits far apart: no near-ties)
    vec("output_norm.weight", n_embd)
    for i in range(n_layer):
        b = f"blk.{i}."
        vec(b + "attn_norm.weight", n_embd)
        mat(b + "attn_q", n_head * head_dim, n_embd)
        mat(b + "attn_k", n_head_kv * head_dim, n_embd)
        mat(b + "attn_v", n_head_kv * head_dim, n_embd)
        vec(b + "attn_sub_norm.weight", n_embd, 1.0, 0.5)  # (wide, so that dropping it shows)
        mat(b + "attn_output", n_embd, n_head * head_dim)
        vec(b + "ffn_norm.weight", n_embd)
        mat(b + "ffn_gate", n_ff, n_embd)
        mat(b + "ffn_up", n_ff, n_embd)
        vec(b + "ffn_sub_norm.weight", n_ff, 1.0, 0.5)
        mat(b + "ffn_down", n_embd, n_ff)
    return _finish(w, path)
