"""Write tiny random BERT-family encoders (``bert``, ``nomic-bert``) with gguf.GGUFWriter, with a
small WordPiece vocabulary stored as llama.cpp's converter stores one (word starts with ``▁``)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType, GGUFWriter, PoolingType
from gguf.quants import quantize

Q = GGMLQuantizationType
N_EMBD, N_HEAD, N_FF, N_LAYER, N_CTX = 64, 4, 96, 2, 128

#: the texts the fixtures tokenize and embed: words whole and cut, unknown words, punctuation, an
#: accent (NFD: e + a combining acute), a CJK ideograph, upper case, runs of whitespace
TEXTS = ["the cat sat on the mat.", "Hello, World! running cats", "café xyzzy  the\tmat?", "\u4e2d cat-mats 42"]


def wpm_vocab() -> tuple[list[str], list[int]]:
    """[PAD] [UNK] [CLS] [SEP] [MASK], whole words (``▁word``), pieces, characters."""
    toks = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    types = [3, 2, 3, 3, 3]
    words = ["the", "cat", "sat", "on", "mat", "hello", "world", "run", "cafe", "42"]
    pieces = ["s", "ning", "ing", "\u0301", "ts"]
    chars = list("abcdefghijklmnopqrstuvwxyz0123456789.,!?-\u4e2d")
    for t in [f"\u2581{w}" for w in words] + pieces + [f"\u2581{c}" for c in chars] + chars:
        if t not in toks:
            toks.append(t)
            types.append(1)
    return toks, types


def write_tiny_bert(path: Path, arch: str = "bert", qtype: int = Q.F32, seed: int = 0,
                    vocab: Callable[[GGUFWriter], int] | None = None) -> Path:
    """``vocab`` writes another vocabulary's keys instead and returns its size (tests/tiny_ugm.py's Unigram one)."""
    rng = np.random.default_rng(seed)
    toks, types = wpm_vocab()
    n_vocab = len(toks)
    w = GGUFWriter(str(path), arch)
    w.add_name(f"tiny-{arch}")
    w.add_context_length(N_CTX)
    w.add_embedding_length(N_EMBD)
    w.add_block_count(N_LAYER)
    w.add_feed_forward_length(N_FF)
    w.add_head_count(N_HEAD)
    w.add_layer_norm_eps(1e-12)
    w.add_causal_attention(False)
    w.add_pooling_type(PoolingType.MEAN if arch == "nomic-bert" else PoolingType.CLS)
    if arch == "nomic-bert":
        w.add_rope_freq_base(1000.0)
    if vocab is not None:
        n_vocab = vocab(w)
    else:
        w.add_tokenizer_model("bert")
        w.add_token_list(toks)
        w.add_token_types(types)
        w.add_token_type_count(2)
        w.add_bos_token_id(2)
        w.add_sep_token_id(3)
        w.add_unk_token_id(1)
        w.add_pad_token_id(0)
        w.add_mask_token_id(4)

    def mat(name: str, rows: int, cols: int, scale: float = 0.2) -> None:
        a = (rng.standard_normal((rows, cols)) * scale).astype(np.float32)
        w.add_tensor(name, a if qtype == Q.F32 else quantize(a, qtype), raw_dtype=None if qtype == Q.F32 else qtype)

    def vec(name: str, n: int, base: float = 0.0, scale: float = 0.1) -> None:
        w.add_tensor(name, (base + rng.standard_normal(n) * scale).astype(np.float32))

    mat("token_embd.weight", n_vocab, N_EMBD, 0.5)
    w.add_tensor("token_types.weight", (rng.standard_normal((2, N_EMBD)) * 0.2).astype(np.float32))
    if arch == "bert":
        w.add_tensor("position_embd.weight", (rng.standard_normal((N_CTX, N_EMBD)) * 0.2).astype(np.float32))
    vec("token_embd_norm.weight", N_EMBD, 1.0)
    vec("token_embd_norm.bias", N_EMBD)
    for i in range(N_LAYER):
        b = f"blk.{i}."
        if arch == "nomic-bert":  # fused QKV, no biases; SwiGLU FFN without biases
            mat(b + "attn_qkv.weight", 3 * N_EMBD, N_EMBD)
        else:
            for x in ("q", "k", "v"):
                mat(b + f"attn_{x}.weight", N_EMBD, N_EMBD)
                vec(b + f"attn_{x}.bias", N_EMBD)
        mat(b + "attn_output.weight", N_EMBD, N_EMBD)
        if arch == "bert":
            vec(b + "attn_output.bias", N_EMBD)
        vec(b + "attn_output_norm.weight", N_EMBD, 1.0)
        vec(b + "attn_output_norm.bias", N_EMBD)
        mat(b + "ffn_up.weight", N_FF, N_EMBD)
        mat(b + "ffn_down.weight", N_EMBD, N_FF)
        if arch == "nomic-bert":
            mat(b + "ffn_gate.weight", N_FF, N_EMBD)
        else:
            vec(b + "ffn_up.bias", N_FF)
            vec(b + "ffn_down.bias", N_EMBD)
        vec(b + "layer_output_norm.weight", N_EMBD, 1.0)
        vec(b + "layer_output_norm.bias", N_EMBD)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path
