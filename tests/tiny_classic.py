"""Tiny random StarCoder (v1, GPT-BigCode), BLOOM and MPT GGUFs (``tinymodel.write_tiny_model(arch="starcoder" |
"bloom" | "mpt")`` writes them through here), as llama.cpp's converter lays them out.

starcoder: learned positions (``position_embd.weight``, STARCODER_CONTEXT rows), multi-query (``head_count_kv``
1, as the converter states for a ``multi_query`` checkpoint), fused ``attn_qkv`` with its bias, LayerNorms and
projections with biases, an ungated GELU FFN, the output head tied unless ``output_head``.
bloom: the same block without positions (ALiBi, in the attention), multi-head, a ``token_embd_norm`` with its bias.
mpt: ALiBi (``attention.max_alibi_bias`` 8), no biases at all, ``attention.clamp_kqv`` where ``clamp_kqv`` is given.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType, GGUFWriter

Q = GGMLQuantizationType

#: arch: (n_embd, n_head, n_head_kv, head_dim, n_ff, n_layer)
GEOMETRY = {
    "starcoder": (64, 4, 1, 16, 256, 2),  # multi-query; n_ff 4 * n_embd, as GPT-BigCode's
    "bloom": (64, 4, 4, 16, 256, 2),  # (4 heads: ALiBi slopes 1/4, 1/16, 1/64, 1/256)
    "mpt": (64, 4, 4, 16, 256, 2),
}
#: StarCoder's learned positions (the real ones 8192; the fixture's prompt is 40 tokens)
STARCODER_CONTEXT = 128


def write_tiny_classic(path: Path, arch: str, qtype: int = Q.F32, seed: int = 0, output_head: bool = False,
                       clamp_kqv: float = 0.0) -> Path:  # fmt: skip
    """The model at ``path``, its matrices as ``qtype``.  ``output_head``: an ``output.weight`` of its own (else
    tied).  ``clamp_kqv``: mpt's ``clip_qkv`` (0: none stated)."""
    from tinymodel import _add_byte_vocab, _file_type, _finish, _random_tensors, byte_vocab

    rng = np.random.default_rng(seed)
    n_embd, n_head, n_head_kv, head_dim, n_ff, n_layer = GEOMETRY[arch]
    n_vocab = len(byte_vocab()[0])
    w = GGUFWriter(str(path), arch)
    w.add_name(f"tiny-{arch}")
    w.add_context_length(STARCODER_CONTEXT if arch == "starcoder" else 2048)
    w.add_embedding_length(n_embd)
    w.add_block_count(n_layer)
    w.add_feed_forward_length(n_ff)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_head_kv)
    if arch == "mpt":
        w.add_max_alibi_bias(8.0)
        if clamp_kqv:
            w.add_clamp_kqv(clamp_kqv)
    w.add_layer_norm_eps(1e-5)
    w.add_file_type(_file_type(qtype))
    _add_byte_vocab(w)

    mat, vec0 = _random_tensors(w, rng, qtype)

    def vec(name: str, n: int, base: float = 1.0) -> None:  # (MPT's no_bias: no bias vectors at all)
        if not (arch == "mpt" and name.endswith(".bias")):
            vec0(name, n, base)

    q_dim, kv_dim = n_head * head_dim, n_head_kv * head_dim
    mat("token_embd.weight", n_vocab, n_embd, 0.5)
    if arch == "bloom":
        vec("token_embd_norm.weight", n_embd)
        vec("token_embd_norm.bias", n_embd, 0.0)
    if arch == "starcoder":  # (as large as the token embeddings: positions matter as much as tokens)
        mat("position_embd.weight", STARCODER_CONTEXT, n_embd, 0.5)
    vec("output_norm.weight", n_embd)
    vec("output_norm.bias", n_embd, 0.0)
    if output_head:
        mat("output.weight", n_vocab, n_embd, 0.5)
    for i in range(n_layer):
        b = f"blk.{i}."
        vec(b + "attn_norm.weight", n_embd)
        vec(b + "attn_norm.bias", n_embd, 0.0)
        mat(b + "attn_qkv.weight", q_dim + 2 * kv_dim, n_embd)
        vec(b + "attn_qkv.bias", q_dim + 2 * kv_dim, 0.0)
        mat(b + "attn_output.weight", n_embd, q_dim)
        vec(b + "attn_output.bias", n_embd, 0.0)
        vec(b + "ffn_norm.weight", n_embd)
        vec(b + "ffn_norm.bias", n_embd, 0.0)
        mat(b + "ffn_up.weight", n_ff, n_embd)
        vec(b + "ffn_up.bias", n_ff, 0.0)
        mat(b + "ffn_down.weight", n_embd, n_ff)
        vec(b + "ffn_down.bias", n_embd, 0.0)
    return _finish(w, path)
