"""A tiny random RWKV-7 GGUF (``tinymodel.write_tiny_model(arch="rwkv7")`` writes it through here).

As llama.cpp's converter lays out RWKV-7 (``Rwkv7Model``): ``token_embd_norm`` (LN0), per layer two LayerNorms with
biases, the time mix's six token-shift mus fused (``time_mix_lerp_fused``), r/k/v/output matrices, the decay,
in-context learning rate, value residual and gate LoRAs (layer 0's value-residual LoRA a dummy of the iclr's rank, as
the converter writes one for llama.cpp's loader), ``k_k``, ``k_a``, ``r_k``, the group norm, and the channel mix's
mu, key and value; a separate output head; head_count 0 ("required by llama.cpp, unused").  The byte vocabulary
tinymodel writes (gpt2): RWKV's own World tokenizer is loaders/rwkv_vocab.py's, tested on its own.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType, GGUFWriter
from gguf.quants import quantize

Q = GGMLQuantizationType

#: n_embd, head_size (2 heads: ggml's SIMD loop over a head steps 64 floats on AVX-512, so heads of 64, as the real
#: models'), n_ff, n_layer (layer 0, then two with the value residual), and the LoRA ranks: decay, iclr, value, gate
GEOMETRY = (128, 64, 256, 3, (32, 16, 16, 32))


def write_tiny_rwkv7(path: Path, qtype: int = Q.F32, seed: int = 0) -> Path:
    """The model at ``path``, its matrices (r, k, v, output, the LoRAs, the channel mix, embeddings, output) as ``qtype``."""
    from tinymodel import _add_byte_vocab, _file_type, _finish, byte_vocab

    rng = np.random.default_rng(seed)
    n_embd, head_size, n_ff, n_layer, (r_w, r_a, r_v, r_g) = GEOMETRY
    n_vocab = len(byte_vocab()[0])
    w = GGUFWriter(str(path), "rwkv7")
    w.add_name("tiny-rwkv7")
    w.add_context_length(1048576)  # ("RWKV isn't context limited")
    w.add_embedding_length(n_embd)
    w.add_block_count(n_layer)
    w.add_layer_norm_eps(1e-5)
    w.add_wkv_head_size(head_size)
    w.add_decay_lora_rank(r_w)
    w.add_iclr_lora_rank(r_a)
    w.add_value_residual_mix_lora_rank(r_v)
    w.add_gate_lora_rank(r_g)
    w.add_feed_forward_length(n_ff)
    w.add_head_count(0)
    w.add_file_type(_file_type(qtype))
    _add_byte_vocab(w)

    def mat(name: str, rows: int, cols: int, scale: float = 0.1) -> None:
        a = (rng.standard_normal((rows, cols)) * scale).astype(np.float32)
        if qtype == Q.F32:
            w.add_tensor(name, a)
        elif qtype == Q.F16:
            w.add_tensor(name, a.astype(np.float16))
        else:
            w.add_tensor(name, quantize(a, qtype), raw_dtype=qtype)

    def vec(name: str, n: int, base: float = 1.0, scale: float = 0.1) -> None:
        w.add_tensor(name, (base + rng.standard_normal(n) * scale).astype(np.float32))

    mat("token_embd.weight", n_vocab, n_embd, scale=0.5)
    vec("token_embd_norm.weight", n_embd)
    vec("token_embd_norm.bias", n_embd, base=0.0)
    vec("output_norm.weight", n_embd)
    vec("output_norm.bias", n_embd, base=0.0)
    mat("output.weight", n_vocab, n_embd, scale=0.5)
    for i in range(n_layer):
        b = f"blk.{i}."
        vec(b + "attn_norm.weight", n_embd)
        vec(b + "attn_norm.bias", n_embd, base=0.0)
        vec(b + "attn_norm_2.weight", n_embd)
        vec(b + "attn_norm_2.bias", n_embd, base=0.0)
        # the six mus (r, w, k, v, a, g) in [0, 1], as ggml's {n_embd, 1, 1, 6}
        w.add_tensor(b + "time_mix_lerp_fused.weight", rng.uniform(0.0, 1.0, (6, 1, 1, n_embd)).astype(np.float32))
        vec(b + "time_mix_w0.weight", n_embd, base=0.0, scale=1.0)
        mat(b + "time_mix_w1.weight", r_w, n_embd)
        mat(b + "time_mix_w2.weight", n_embd, r_w)
        vec(b + "time_mix_a0.weight", n_embd, base=0.0, scale=1.0)
        mat(b + "time_mix_a1.weight", r_a, n_embd)
        mat(b + "time_mix_a2.weight", n_embd, r_a)
        r = r_a if i == 0 else r_v  # (layer 0's: the converter's dummy, the iclr LoRA's shape)
        vec(b + "time_mix_v0.weight", n_embd, base=0.0, scale=1.0)
        mat(b + "time_mix_v1.weight", r, n_embd)
        mat(b + "time_mix_v2.weight", n_embd, r)
        mat(b + "time_mix_g1.weight", r_g, n_embd)
        mat(b + "time_mix_g2.weight", n_embd, r_g)
        vec(b + "time_mix_k_k.weight", n_embd, scale=0.3)
        vec(b + "time_mix_k_a.weight", n_embd, scale=0.3)
        vec(b + "time_mix_r_k.weight", n_embd, base=0.0, scale=0.5)
        mat(b + "time_mix_key.weight", n_embd, n_embd)
        mat(b + "time_mix_value.weight", n_embd, n_embd)
        mat(b + "time_mix_receptance.weight", n_embd, n_embd)
        vec(b + "time_mix_ln.weight", n_embd)
        vec(b + "time_mix_ln.bias", n_embd, base=0.0)
        mat(b + "time_mix_output.weight", n_embd, n_embd)
        w.add_tensor(b + "channel_mix_lerp_k.weight", rng.uniform(0.0, 1.0, (1, 1, n_embd)).astype(np.float32))
        mat(b + "channel_mix_key.weight", n_ff, n_embd)
        mat(b + "channel_mix_value.weight", n_embd, n_ff)
    return _finish(w, path)


def world_vocab() -> tuple[list[str], list[int]]:
    """A small RWKV World vocabulary, its tokens escaped as the converter stores them (``repr(bytes)[2:-1]``): ``<s>``
    (control), every byte, then words, a space-led word, ``\\n\\n``, a character of several bytes and a part of one,
    tokens with quotes and a backslash, a prefix that is no token itself (``wor`` leads to ``world`` only), two texts of
    the same bytes (the later id wins), and a ``[PAD]`` (unused), as the converter fills the vocabulary up."""
    words = [b"th", b"he", b"the", b" the", b"\n\n", b"hello", b" world", b"world", b"ld", "é".encode(), "中文".encode(),
             "中".encode()[:2], b"it's", b"a'b\"", b"\\\\", b"\t\t", b"ab", b"abc", b"  ", b"<s"]  # fmt: skip
    # (llama.cpp wants every stored text unique; "\x61\x62" is another text for the bytes of "ab": its id wins)
    tokens = ["<s>"] + [repr(bytes([b]))[2:-1] for b in range(256)] + [repr(w)[2:-1] for w in words] + ["\\x61\\x62", "[PAD300]"]
    types = [3] + [1] * (256 + len(words) + 1) + [5]
    return tokens, types


def write_world_vocab(path: Path) -> Path:
    """A vocabulary-only RWKV-7 file with :func:`world_vocab` (the hyperparameters llama.cpp's loader reads, no tensors)."""
    from tinymodel import _finish

    n_embd, head_size, n_ff, n_layer, (r_w, r_a, r_v, r_g) = GEOMETRY
    tokens, types = world_vocab()
    w = GGUFWriter(str(path), "rwkv7")
    w.add_name("tiny-rwkv7-world")
    w.add_context_length(1048576)
    w.add_embedding_length(n_embd)
    w.add_block_count(n_layer)
    w.add_layer_norm_eps(1e-5)
    w.add_wkv_head_size(head_size)
    w.add_decay_lora_rank(r_w)
    w.add_iclr_lora_rank(r_a)
    w.add_value_residual_mix_lora_rank(r_v)
    w.add_gate_lora_rank(r_g)
    w.add_feed_forward_length(n_ff)
    w.add_head_count(0)
    w.add_tokenizer_model("rwkv")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_eot_token_id(tokens.index("\\n\\n"))  # (as the converter names "\n\n" the end of a turn)
    return _finish(w, path)
