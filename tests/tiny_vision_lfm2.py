"""A tiny random LFM2-VL pair, for tests held to llama.cpp's libmtmd: a projector file (mmproj, ``general.architecture``
"clip", projector type "lfm2") and an LFM2 text model whose width is the projector's output and whose vocabulary
knows LFM2-VL's image tokens.

The projector is laid out as llama.cpp's converter writes LFM2-VL's (``v.patch_embd``, ``v.position_embd``,
``v.blk.N.*``, ``v.post_ln``, ``mm.input_norm``, ``mm.1``, ``mm.2``), at toy sizes: 8-pixel patches merged 2x2
(16-pixel blocks, so libmtmd's image-token limits of 64 to 256 rows make pictures of 128x128 to 256x256 pixels'
worth), a 4x4 grid of learned position embeddings (resized to each picture's grid, as SigLIP2 NaFlex), a 32-wide
encoder of 2 layers, and the projector's LayerNorm and 2-layer MLP into the text model's 64.  The text model is
tinymodel's LFM2 geometry (convolution and attention layers) with ``<|image_start|>``, ``<|image_end|>``,
``<|img_thumbnail|>`` and ``<|img_row_R_col_C|>`` (R, C up to 10, libmtmd's most tiles) added as control tokens.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType, GGUFWriter

from tiny_vision import add_geometry, add_vocab, mmproj_writer, write_vit
from tinymodel import ARCH_GEOMETRY, LFM2_CONV, _finish, _random_tensors, byte_vocab

Q = GGMLQuantizationType

IMAGE_SIZE, PATCH, SCALE, V_EMBD, V_FF, V_LAYER, V_HEAD, MM_FF = 32, 8, 2, 32, 48, 2, 2, 96
MEAN, STD = (0.5, 0.45, 0.4), (0.5, 0.55, 0.6)  # (LFM2-VL's are 0.5 each: distinct ones catch a channel mix-up)
IMAGE_TOKENS = ["<|image_start|>", "<|image_end|>", "<|img_thumbnail|>"] + [f"<|img_row_{r}_col_{c}|>" for r in range(1, 11) for c in range(1, 11)]


def write_tiny_lfm2_mmproj(path: Path, qtype: int = Q.F32, seed: int = 0, n_text_embd: int = ARCH_GEOMETRY["lfm2"][0]) -> Path:
    """A random LFM2-VL projector; its matrices (patch kernel and MLP included) stored as ``qtype``."""
    rng = np.random.default_rng(seed)
    geometry = (V_EMBD, V_FF, V_LAYER, V_HEAD)
    w = mmproj_writer(path, "tiny-lfm2-mmproj", "lfm2", {"clip.use_gelu": True}, IMAGE_SIZE, PATCH, geometry, n_text_embd, MEAN, STD,
                      scale=SCALE)  # fmt: skip
    mat, vec, _ = write_vit(w, rng, qtype, geometry, PATCH, IMAGE_SIZE)
    k = V_EMBD * SCALE * SCALE  # the pixel unshuffle's width
    vec("mm.input_norm.weight", k)
    vec("mm.input_norm.bias", k, 0.0)
    mat("mm.1.weight", MM_FF, k, 0.2)
    vec("mm.1.bias", MM_FF, 0.0)
    mat("mm.2.weight", n_text_embd, MM_FF, 0.2)
    vec("mm.2.bias", n_text_embd, 0.0)
    return _finish(w, path)


def write_tiny_lfm2vl(path: Path, qtype: int = Q.F32, seed: int = 1, chat_template: str | None = None) -> Path:
    """A random LFM2 text model (tinymodel's geometry, dense) whose vocabulary knows LFM2-VL's image tokens."""
    rng = np.random.default_rng(seed)
    n_embd, n_head, n_head_kv, head_dim, n_ff, n_layer = ARCH_GEOMETRY["lfm2"]
    toks, merges, types = byte_vocab()
    toks, types = toks + IMAGE_TOKENS, types + [3] * len(IMAGE_TOKENS)
    l_cache = 3
    w = GGUFWriter(str(path), "lfm2")
    w.add_name("tiny-lfm2vl")
    add_geometry(w, 4096, n_embd, n_layer, n_ff, n_head, [0 if conv else n_head_kv for conv in LFM2_CONV])
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_freq_base(10000.0)
    w.add_uint32("lfm2.shortconv.l_cache", l_cache)
    w.add_vocab_size(len(toks))
    add_vocab(w, toks, merges, types, chat_template)
    mat, vec = _random_tensors(w, rng, qtype)
    mat("token_embd.weight", len(toks), n_embd, 0.5)
    vec("token_embd_norm.weight", n_embd)
    for i, conv in enumerate(LFM2_CONV):
        b = f"blk.{i}."
        vec(b + "attn_norm.weight", n_embd)
        if conv:
            w.add_tensor(b + "shortconv.conv.weight", (rng.standard_normal((n_embd, l_cache)) * 0.5).astype(np.float32))
            mat(b + "shortconv.in_proj.weight", 3 * n_embd, n_embd, 0.3)
            mat(b + "shortconv.out_proj.weight", n_embd, n_embd)
        else:
            mat(b + "attn_q.weight", n_head * head_dim, n_embd)
            mat(b + "attn_k.weight", n_head_kv * head_dim, n_embd)
            mat(b + "attn_v.weight", n_head_kv * head_dim, n_embd)
            mat(b + "attn_output.weight", n_embd, n_head * head_dim)
            vec(b + "attn_q_norm.weight", head_dim)
            vec(b + "attn_k_norm.weight", head_dim)
        vec(b + "ffn_norm.weight", n_embd)
        mat(b + "ffn_gate.weight", n_ff, n_embd)
        mat(b + "ffn_up.weight", n_ff, n_embd)
        mat(b + "ffn_down.weight", n_embd, n_ff)
    return _finish(w, path)
