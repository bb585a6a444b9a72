"""Write tiny random T5 encoder-decoders (``t5``) with gguf.GGUFWriter, as llama.cpp's converter lays out Flan-T5
and T5 v1.1: ``enc.*`` (tests/tiny_embed2.py's t5encoder layout) and ``dec.*`` tensors, T5's Unigram vocabulary
(tests/tiny_ugm.py's pieces, ``</s>`` appended, no BOS), ``decoder_start_token_id`` (the pad, 0).

``VARIANTS``: ``t5`` (Flan-T5's gated GELU, its own ``output.weight``, relative position tables in layer 0 only, as
every checkpoint) and ``t5-relu`` (the original T5: ReLU FFNs, the output head tied to the token embeddings).  Heads
are narrower than n_embd / n_head (key_length: T5's d_kv); 16 buckets, so the decoder's exact buckets end at distance
8 and a 20-token decode reads the log-spaced ones, 16 among them (where llama.cpp's float rounding decides).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType, GGUFWriter
from gguf.quants import quantize

Q = GGMLQuantizationType
N_CTX = 64
N_REL_BUCKETS = 16
N_EMBD, N_HEAD, HEAD_DIM, N_FF, N_LAYER = 64, 4, 8, 96, 2
DEC_START = 0  # (T5's pad: the converter writes decoder_start_token_id from config.json)

VARIANTS: dict[str, dict] = {
    "t5": dict(gated=True, tied=False),
    "t5-relu": dict(gated=False, tied=True),
}


def write_tiny_t5(path: Path, name: str = "t5", qtype: int = Q.F32, seed: int = 0) -> Path:
    """The tiny model of ``VARIANTS[name]`` at ``path``, matrices stored as ``qtype``."""
    from tiny_embed2 import _ugm_t5

    v = VARIANTS[name]
    rng = np.random.default_rng(seed)
    w = GGUFWriter(str(path), "t5")
    w.add_name(f"tiny-{name}")
    w.add_context_length(N_CTX)
    w.add_embedding_length(N_EMBD)
    w.add_block_count(N_LAYER)
    w.add_feed_forward_length(N_FF)
    w.add_head_count(N_HEAD)
    w.add_head_count_kv(N_HEAD)
    w.add_key_length(HEAD_DIM)
    w.add_value_length(HEAD_DIM)
    w.add_layer_norm_rms_eps(1e-6)
    w.add_relative_attn_buckets_count(N_REL_BUCKETS)
    w.add_decoder_start_token_id(DEC_START)
    n_vocab = _ugm_t5(w)

    def mat(name: str, rows: int, cols: int, scale: float = 0.2) -> None:
        a = (rng.standard_normal((rows, cols)) * scale).astype(np.float32)
        w.add_tensor(name, a if qtype == Q.F32 else quantize(a, qtype), raw_dtype=None if qtype == Q.F32 else qtype)

    def norm(name: str, n: int) -> None:
        w.add_tensor(name, (1.0 + rng.standard_normal(n) * 0.1).astype(np.float32))

    def table(name: str) -> None:  # (the relative position tables: float32 always, as the converter keeps them)
        w.add_tensor(name, rng.standard_normal((N_REL_BUCKETS, N_HEAD)).astype(np.float32))

    def block(b: str, cross: bool, first: bool) -> None:
        d = N_HEAD * HEAD_DIM
        norm(b + "attn_norm.weight", N_EMBD)
        if first:
            table(b + "attn_rel_b.weight")
        mat(b + "attn_q.weight", d, N_EMBD, 0.1)  # (T5 does not scale scores by 1/sqrt(d): small Q)
        mat(b + "attn_k.weight", d, N_EMBD)
        mat(b + "attn_v.weight", d, N_EMBD)
        mat(b + "attn_o.weight", N_EMBD, d)
        if cross:
            norm(b + "cross_attn_norm.weight", N_EMBD)
            mat(b + "cross_attn_q.weight", d, N_EMBD, 0.1)
            mat(b + "cross_attn_k.weight", d, N_EMBD)
            mat(b + "cross_attn_v.weight", d, N_EMBD)
            mat(b + "cross_attn_o.weight", N_EMBD, d)
        norm(b + "ffn_norm.weight", N_EMBD)
        if v["gated"]:
            mat(b + "ffn_gate.weight", N_FF, N_EMBD)
        mat(b + "ffn_up.weight", N_FF, N_EMBD)
        mat(b + "ffn_down.weight", N_EMBD, N_FF)

    mat("token_embd.weight", n_vocab, N_EMBD, 0.5)
    if not v["tied"]:
        mat("output.weight", n_vocab, N_EMBD, 0.5)
    for i in range(N_LAYER):
        block(f"enc.blk.{i}.", cross=False, first=i == 0)
    norm("enc.output_norm.weight", N_EMBD)
    for i in range(N_LAYER):
        block(f"dec.blk.{i}.", cross=True, first=i == 0)
    norm("dec.output_norm.weight", N_EMBD)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path
