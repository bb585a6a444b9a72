"""A tiny random EXAONE 4.5 pair, for tests held to llama.cpp's libmtmd: a projector file (mmproj, ``general.architecture``
"clip", projector type "exaone4_5") and an ``exaone4`` text model (EXAONE 4.5's language side, as llama.cpp's converter
writes it) whose width is the projector's output and whose vocabulary knows ``<vision>`` and ``</vision>``.

The projector is laid out as llama.cpp's converter writes EXAONE 4.5's (a Qwen2.5-VL ViT with grouped-query attention):
the conv3d's two temporal kernels ``v.patch_embd.weight`` and ``v.patch_embd.weight.1`` (no bias), ``v.blk.N.*`` with
RMSNorms (weights only), ONE fused ``attn_qkv`` with its bias (Q's rows, then K's and V's, each ``n_head_kv`` heads:
``clip.vision.attention.head_count_kv``), a gated SiLU MLP with biases (``clip.use_silu``), ``v.post_ln`` and the
merger's ``mm.0`` / ``mm.2`` with biases; ``clip.vision.n_wa_pattern`` 2 (layer 0 in 112-pixel windows, layer 1 over the
whole picture) and the pixel limits ``clip.vision.image_min_pixels`` / ``image_max_pixels``, which clip.cpp requires
of this projector.  Sizes are toys but the patch is the real 14 pixels, so clip.cpp's fixed 112-pixel window spans 4x4
merged rows as in the real model: a 64-wide encoder of 2 layers, 4 query heads of 16 over 2 key/value heads.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType, GGUFWriter

from tiny_vision import tensor_writer
from tinymodel import ARCH_GEOMETRY, _add_byte_vocab, _file_type, _finish, _random_tensors, byte_vocab

Q = GGMLQuantizationType

PATCH, V_EMBD, V_FF, V_LAYER, V_HEAD, V_HEAD_KV, N_WA_PATTERN, MM_FF = 14, 64, 96, 2, 4, 2, 2, 128
#: the pixels a picture is scaled within: 8 to 48 merged rows' worth (EXAONE 4.5's preprocessor states its own)
MIN_PIXELS, MAX_PIXELS = 8 * 28 * 28, 48 * 28 * 28
MEAN, STD = (0.48, 0.46, 0.41), (0.27, 0.26, 0.28)  # (CLIP's statistics, rounded: distinct per channel)
IMAGE_TOKENS = ("<vision>", "</vision>")
TEXT_GEOMETRY = ARCH_GEOMETRY["exaone4"]  # (n_embd, n_head, n_head_kv, head_dim, n_ff, n_layer)


def write_tiny_exaone45_mmproj(path: Path, qtype: int = Q.F32, seed: int = 0, n_text_embd: int = TEXT_GEOMETRY[0]) -> Path:
    """A random EXAONE 4.5 projector; its matrices (patch kernels included) stored as ``qtype`` (F32 or F16)."""
    rng = np.random.default_rng(seed)
    w = GGUFWriter(str(path), "clip")
    w.add_name("tiny-exaone4.5-mmproj")
    w.add_bool("clip.has_vision_encoder", True)
    w.add_bool("clip.has_audio_encoder", False)
    w.add_string("clip.projector_type", "exaone4_5")
    w.add_bool("clip.use_silu", True)
    w.add_uint32("clip.vision.image_min_pixels", MIN_PIXELS)
    w.add_uint32("clip.vision.image_max_pixels", MAX_PIXELS)
    w.add_uint32("clip.vision.image_size", 560)  # (nominal: the dynamic-size preprocessing does not use it)
    w.add_uint32("clip.vision.patch_size", PATCH)
    w.add_uint32("clip.vision.embedding_length", V_EMBD)
    w.add_uint32("clip.vision.feed_forward_length", V_FF)
    w.add_uint32("clip.vision.projection_dim", n_text_embd)
    w.add_uint32("clip.vision.block_count", V_LAYER)
    w.add_uint32("clip.vision.attention.head_count", V_HEAD)
    w.add_uint32("clip.vision.attention.head_count_kv", V_HEAD_KV)
    w.add_float32("clip.vision.attention.layer_norm_epsilon", 1e-6)
    w.add_uint32("clip.vision.n_wa_pattern", N_WA_PATTERN)
    w.add_array("clip.vision.image_mean", list(MEAN))
    w.add_array("clip.vision.image_std", list(STD))
    mat, vec = _random_tensors(w, rng, qtype)
    tensor = tensor_writer(w, rng, qtype)
    tensor("v.patch_embd.weight", (V_EMBD, 3, PATCH, PATCH), 0.05)
    tensor("v.patch_embd.weight.1", (V_EMBD, 3, PATCH, PATCH), 0.05)
    kv = V_EMBD // V_HEAD * V_HEAD_KV
    for i in range(V_LAYER):
        b = f"v.blk.{i}."
        vec(b + "ln1.weight", V_EMBD)
        mat(b + "attn_qkv.weight", V_EMBD + 2 * kv, V_EMBD, 0.3)
        vec(b + "attn_qkv.bias", V_EMBD + 2 * kv, 0.0)
        mat(b + "attn_out.weight", V_EMBD, V_EMBD, 0.3)
        vec(b + "attn_out.bias", V_EMBD, 0.0)
        vec(b + "ln2.weight", V_EMBD)
        for t, rows, cols in (("ffn_gate", V_FF, V_EMBD), ("ffn_up", V_FF, V_EMBD), ("ffn_down", V_EMBD, V_FF)):
            mat(b + t + ".weight", rows, cols, 0.3)
            vec(b + t + ".bias", rows, 0.0)
    vec("v.post_ln.weight", V_EMBD)
    mat("mm.0.weight", MM_FF, 4 * V_EMBD, 0.2)
    vec("mm.0.bias", MM_FF, 0.0)
    mat("mm.2.weight", n_text_embd, MM_FF, 0.3)
    vec("mm.2.bias", n_text_embd, 0.0)
    return _finish(w, path)


def write_tiny_exaone45_text(path: Path, qtype: int = Q.F32, seed: int = 1) -> Path:
    """tinymodel's exaone4 (EXAONE 4.0's block: post-norms, per-head QK-norm, the output head tied) with EXAONE 4.5's
    vision markers as control tokens after the bytes."""
    rng = np.random.default_rng(seed)
    n_embd, n_head, n_head_kv, head_dim, n_ff, n_layer = TEXT_GEOMETRY
    n_vocab = len(byte_vocab()[0]) + len(IMAGE_TOKENS)
    w = GGUFWriter(str(path), "exaone4")
    w.add_name("tiny-exaone4.5")
    w.add_context_length(1024)
    w.add_embedding_length(n_embd)
    w.add_block_count(n_layer)
    w.add_feed_forward_length(n_ff)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_head_kv)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-6)
    w.add_file_type(_file_type(qtype))
    _add_byte_vocab(w, IMAGE_TOKENS)
    mat, vec = _random_tensors(w, rng, qtype)
    mat("token_embd.weight", n_vocab, n_embd, 0.5)
    vec("output_norm.weight", n_embd)
    for i in range(n_layer):
        b = f"blk.{i}."
        mat(b + "attn_q.weight", n_head * head_dim, n_embd)
        mat(b + "attn_k.weight", n_head_kv * head_dim, n_embd)
        mat(b + "attn_v.weight", n_head_kv * head_dim, n_embd)
        mat(b + "attn_output.weight", n_embd, n_head * head_dim)
        vec(b + "attn_q_norm.weight", head_dim)
        vec(b + "attn_k_norm.weight", head_dim)
        vec(b + "post_attention_norm.weight", n_embd)
        vec(b + "post_ffw_norm.weight", n_embd)
        mat(b + "ffn_gate.weight", n_ff, n_embd)
        mat(b + "ffn_up.weight", n_ff, n_embd)
        mat(b + "ffn_down.weight", n_embd, n_ff)
    return _finish(w, path)
