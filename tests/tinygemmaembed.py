"""Write a tiny random ``gemma-embedding`` model (EmbeddingGemma's layout) with gguf.GGUFWriter.

Gemma 3's block (QK-norm, sandwich norms, GELU-gated FFN, embeddings times sqrt(n_embd)), attending
both ways; five layers in a symmetric window then one global (llama.cpp's pattern for the arch), the
window's rope base llama.cpp's default (10k) beside the file's global one; mean pooling; after the
pooled state two bias-free projections, ``dense_2`` (n_embd -> 4 n_embd) and ``dense_3`` (back), as
the real model's 768 -> 3072 -> 768.  The vocabulary is tests/tinymodel.py's byte-level one, BOS and
EOS added as EmbeddingGemma's tokenizer adds them.  The texts are longer than the window (8: a token
sees 4 either side) so that the window shapes the result.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType, GGUFWriter, PoolingType
from gguf.quants import quantize
from tinymodel import byte_vocab

Q = GGMLQuantizationType
N_EMBD, N_HEAD, N_HEAD_KV, HEAD_DIM, N_FF, N_LAYER, N_CTX = 64, 2, 1, 32, 96, 6, 128
N_DENSE = 4 * N_EMBD
SLIDING_WINDOW = 8
ROPE_BASE = 1000.0  # the global layers' (the window layers': llama.cpp's 10k for the arch)

#: the texts the fixture embeds: 22 to 60 byte-level tokens each (BOS and EOS included), all past the window
TEXTS = [
    "the cat sat on the mat, and then the cat sat again.",
    "Hello, World! A longer line of text, past the window of eight tokens.",
    "in the beginning the a an at to",
    "0123456789 abcdefghij KLMNOPQRST",
]


def write_tiny_gemma_embedding(path: Path, qtype: int = Q.F32, seed: int = 0, dense: bool = True) -> Path:
    """The tiny model at ``path``; matrices stored as ``qtype``; ``dense``: with dense_2 and dense_3."""
    rng = np.random.default_rng(seed)
    toks, merges, types = byte_vocab()
    n_vocab = len(toks)
    arch = "gemma-embedding"
    w = GGUFWriter(str(path), arch)
    w.add_name("tiny-gemma-embedding")
    w.add_context_length(N_CTX)
    w.add_embedding_length(N_EMBD)
    w.add_block_count(N_LAYER)
    w.add_feed_forward_length(N_FF)
    w.add_head_count(N_HEAD)
    w.add_head_count_kv(N_HEAD_KV)
    w.add_key_length(HEAD_DIM)
    w.add_value_length(HEAD_DIM)
    w.add_layer_norm_rms_eps(1e-6)
    w.add_rope_freq_base(ROPE_BASE)
    w.add_sliding_window(SLIDING_WINDOW)
    w.add_causal_attention(False)
    w.add_pooling_type(PoolingType.MEAN)
    if dense:
        w.add_dense_features_dims("dense_2", N_EMBD, N_DENSE)
        w.add_dense_features_dims("dense_3", N_DENSE, N_EMBD)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(toks)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_bos_token_id(len(toks) - 1)
    w.add_eos_token_id(len(toks) - 1)
    w.add_add_bos_token(True)
    w.add_add_eos_token(True)

    def mat(name: str, rows: int, cols: int, scale: float = 0.1) -> None:
        a = (rng.standard_normal((rows, cols)) * scale).astype(np.float32)
        w.add_tensor(name, a if qtype == Q.F32 else quantize(a, qtype), raw_dtype=None if qtype == Q.F32 else qtype)

    def vec(name: str, n: int, base: float = 1.0, scale: float = 0.1) -> None:
        w.add_tensor(name, (base + rng.standard_normal(n) * scale).astype(np.float32))

    mat("token_embd.weight", n_vocab, N_EMBD, 0.5)
    vec("output_norm.weight", N_EMBD)
    if dense:
        mat("dense_2.weight", N_DENSE, N_EMBD, 0.2)
        mat("dense_3.weight", N_EMBD, N_DENSE, 0.1)
    for i in range(N_LAYER):
        b = f"blk.{i}."
        vec(b + "attn_norm.weight", N_EMBD)
        mat(b + "attn_q.weight", N_HEAD * HEAD_DIM, N_EMBD)
        mat(b + "attn_k.weight", N_HEAD_KV * HEAD_DIM, N_EMBD)
        mat(b + "attn_v.weight", N_HEAD_KV * HEAD_DIM, N_EMBD)
        mat(b + "attn_output.weight", N_EMBD, N_HEAD * HEAD_DIM)
        vec(b + "attn_q_norm.weight", HEAD_DIM)
        vec(b + "attn_k_norm.weight", HEAD_DIM)
        vec(b + "post_attention_norm.weight", N_EMBD)
        vec(b + "ffn_norm.weight", N_EMBD)
        mat(b + "ffn_gate.weight", N_FF, N_EMBD)
        mat(b + "ffn_up.weight", N_FF, N_EMBD)
        mat(b + "ffn_down.weight", N_EMBD, N_FF)
        vec(b + "post_ffw_norm.weight", N_EMBD)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path
