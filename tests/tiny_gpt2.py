"""Tiny random GPT-2, StarCoder2 and GPT-NeoX GGUFs (``tinymodel.write_tiny_model(arch="gpt2" | "starcoder2" |
"gptneox")`` writes them through here), as llama.cpp's converter lays each out.

All three: LayerNorms with biases (``attention.layer_norm_epsilon``), biased attention and FFN projections, an
ungated GELU FFN.  gpt2: learned positions (``position_embd.weight``, GPT2_CONTEXT rows), fused ``attn_qkv``,
multi-head, no head_count_kv stated (the converter states none).  starcoder2: neox rope over the whole head,
``attn_q``/``attn_k``/``attn_v`` apart, grouped-query.  gptneox: partial neox rope (GPTNEOX_ROPE_DIM of 16),
fused ``attn_qkv``, ``use_parallel_residual``, an output head of its own, no rope base stated (the converter
states none: 10000).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType, GGUFWriter

Q = GGMLQuantizationType

#: arch: (n_embd, n_head, n_head_kv, head_dim, n_ff, n_layer)
GEOMETRY = {
    "gpt2": (64, 4, 4, 16, 256, 2),  # n_ff 4 * n_embd, as the converter states for every GPT-2
    "starcoder2": (64, 4, 2, 16, 96, 2),  # grouped-query, as StarCoder2's 2 (3B) or 4 (7B, 15B) K/V heads
    "gptneox": (64, 4, 4, 16, 96, 2),
}
#: GPT-2's learned positions (the real ones 1024; the fixture's prompt is 40 tokens)
GPT2_CONTEXT = 128
#: Pythia's rotary_pct 0.25: a quarter of each head turns
GPTNEOX_ROPE_DIM = 4


def write_tiny_gpt2_family(path: Path, arch: str, qtype: int = Q.F32, seed: int = 0, sliding_window: int | None = None,
                           parallel_residual: bool | None = True, output_head: bool = False) -> Path:  # fmt: skip
    """The model at ``path``, its matrices as ``qtype``.  ``output_head``: gpt2 and starcoder2 with an
    ``output.weight`` of their own (else tied; gptneox always has one).  ``sliding_window``: starcoder2 stating
    one.  ``parallel_residual``: gptneox's ``use_parallel_residual`` (None: the key left out)."""
    from tinymodel import _add_byte_vocab, _file_type, _finish, _random_tensors, byte_vocab

    rng = np.random.default_rng(seed)
    n_embd, n_head, n_head_kv, head_dim, n_ff, n_layer = GEOMETRY[arch]
    n_vocab = len(byte_vocab()[0])
    w = GGUFWriter(str(path), arch)
    w.add_name(f"tiny-{arch}")
    w.add_context_length(GPT2_CONTEXT if arch == "gpt2" else 1024)
    w.add_embedding_length(n_embd)
    w.add_block_count(n_layer)
    w.add_feed_forward_length(n_ff)
    w.add_head_count(n_head)
    if arch == "starcoder2":
        w.add_head_count_kv(n_head_kv)
        w.add_rope_freq_base(100000.0)  # (StarCoder2-15B's)
        if sliding_window:
            w.add_sliding_window(sliding_window)
    if arch == "gptneox":
        w.add_rope_dimension_count(GPTNEOX_ROPE_DIM)
        if parallel_residual is not None:
            w.add_parallel_residual(parallel_residual)
    w.add_layer_norm_eps(1e-5)
    w.add_file_type(_file_type(qtype))
    _add_byte_vocab(w)

    mat, vec = _random_tensors(w, rng, qtype)

    q_dim, kv_dim = n_head * head_dim, n_head_kv * head_dim
    mat("token_embd.weight", n_vocab, n_embd, 0.5)
    if arch == "gpt2":  # (as large as the token embeddings: positions matter as much as tokens)
        mat("position_embd.weight", GPT2_CONTEXT, n_embd, 0.5)
    vec("output_norm.weight", n_embd)
    vec("output_norm.bias", n_embd, 0.0)
    if output_head or arch == "gptneox":
        mat("output.weight", n_vocab, n_embd, 0.5)
    for i in range(n_layer):
        b = f"blk.{i}."
        vec(b + "attn_norm.weight", n_embd)
        vec(b + "attn_norm.bias", n_embd, 0.0)
        if arch == "starcoder2":
            for x, rows in (("q", q_dim), ("k", kv_dim), ("v", kv_dim)):
                mat(b + f"attn_{x}.weight", rows, n_embd)
                vec(b + f"attn_{x}.bias", rows, 0.0)
        else:
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
