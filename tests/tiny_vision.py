"""A tiny random Gemma 3 vision pair, for tests held to llama.cpp's libmtmd: a projector file (mmproj,
``general.architecture`` "clip", projector type "gemma3") and a Gemma 3 text model whose width is the
projector's output.

The projector is laid out as llama.cpp's converter writes Gemma 3's (``v.patch_embd``, ``v.position_embd``,
``v.blk.N.*``, ``v.post_ln``, ``mm.soft_emb_norm``, ``mm.input_projection``), at toy sizes: 224-pixel images
in 14-pixel patches (16x16 patches, pooled 4x4 into 16 rows), a 32-wide encoder of 2 layers.  The text
model is tinymodel's gemma3 (6 layers, a window of 8, so the image rows straddle the sliding window)
with ``<start_of_image>`` and ``<end_of_image>`` added to the byte vocabulary as control tokens.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType, GGUFWriter

from tinymodel import ARCH_GEOMETRY, _finish, _random_tensors, byte_vocab

Q = GGMLQuantizationType

IMAGE_SIZE, PATCH, V_EMBD, V_FF, V_LAYER, V_HEAD = 224, 14, 32, 48, 2, 2
MEAN, STD = (0.5, 0.45, 0.4), (0.5, 0.55, 0.6)  # (Gemma 3's are 0.5 each: distinct ones catch a channel mix-up)
IMAGE_TOKENS = ("<start_of_image>", "<end_of_image>")


def write_tiny_mmproj(path: Path, qtype: int = Q.F32, seed: int = 0, n_text_embd: int = ARCH_GEOMETRY["gemma3"][0]) -> Path:
    """A random Gemma 3 projector; its matrices (patch kernel and projection included) stored as ``qtype``."""
    rng = np.random.default_rng(seed)
    w = GGUFWriter(str(path), "clip")
    w.add_name("tiny-gemma3-mmproj")
    w.add_bool("clip.has_vision_encoder", True)
    w.add_bool("clip.has_audio_encoder", False)
    w.add_string("clip.projector_type", "gemma3")
    w.add_bool("clip.use_gelu", True)
    w.add_uint32("clip.vision.image_size", IMAGE_SIZE)
    w.add_uint32("clip.vision.patch_size", PATCH)
    w.add_uint32("clip.vision.embedding_length", V_EMBD)
    w.add_uint32("clip.vision.feed_forward_length", V_FF)
    w.add_uint32("clip.vision.projection_dim", n_text_embd)
    w.add_uint32("clip.vision.block_count", V_LAYER)
    w.add_uint32("clip.vision.attention.head_count", V_HEAD)
    w.add_float32("clip.vision.attention.layer_norm_epsilon", 1e-6)
    w.add_array("clip.vision.image_mean", list(MEAN))
    w.add_array("clip.vision.image_std", list(STD))
    mat, vec = _random_tensors(w, rng, qtype)

    def tensor(name: str, shape: tuple[int, ...], scale: float) -> None:  # (a 4-D kernel, or a matrix stored untransposed)
        a = (rng.standard_normal(shape) * scale).astype(np.float32)
        w.add_tensor(name, a.astype(np.float16) if qtype == Q.F16 else a)

    n_pos = (IMAGE_SIZE // PATCH) ** 2
    tensor("v.patch_embd.weight", (V_EMBD, 3, PATCH, PATCH), 0.05)
    vec("v.patch_embd.bias", V_EMBD, 0.0)
    w.add_tensor("v.position_embd.weight", (rng.standard_normal((n_pos, V_EMBD)) * 0.5).astype(np.float32))
    for i in range(V_LAYER):
        b = f"v.blk.{i}."
        vec(b + "ln1.weight", V_EMBD)
        vec(b + "ln1.bias", V_EMBD, 0.0)
        for t in ("attn_q", "attn_k", "attn_v", "attn_out"):
            mat(b + t + ".weight", V_EMBD, V_EMBD, 0.3)
            vec(b + t + ".bias", V_EMBD, 0.0)
        vec(b + "ln2.weight", V_EMBD)
        vec(b + "ln2.bias", V_EMBD, 0.0)
        mat(b + "ffn_up.weight", V_FF, V_EMBD, 0.3)
        vec(b + "ffn_up.bias", V_FF, 0.0)
        mat(b + "ffn_down.weight", V_EMBD, V_FF, 0.3)
        vec(b + "ffn_down.bias", V_EMBD, 0.0)
    vec("v.post_ln.weight", V_EMBD)
    vec("v.post_ln.bias", V_EMBD, 0.0)
    vec("mm.soft_emb_norm.weight", V_EMBD)
    tensor("mm.input_projection.weight", (V_EMBD, n_text_embd), 0.3)  # [n_embd, n_text_embd], as the converter stores it
    return _finish(w, path)


def write_tiny_gemma3_vl(path: Path, qtype: int = Q.F32, seed: int = 1) -> Path:
    """A random Gemma 3 text model (tinymodel's geometry, a window of 8) whose vocabulary knows the image markers."""
    rng = np.random.default_rng(seed)
    n_embd, n_head, n_head_kv, head_dim, n_ff, n_layer = ARCH_GEOMETRY["gemma3"]
    toks, merges, types = byte_vocab()
    toks, types = toks + list(IMAGE_TOKENS), types + [3, 3]
    w = GGUFWriter(str(path), "gemma3")
    w.add_name("tiny-gemma3-vl")
    w.add_context_length(1024)
    w.add_embedding_length(n_embd)
    w.add_block_count(n_layer)
    w.add_feed_forward_length(n_ff)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_head_kv)
    w.add_layer_norm_rms_eps(1e-6)
    w.add_rope_freq_base(10000.0)
    w.add_key_length(head_dim)
    w.add_value_length(head_dim)
    w.add_sliding_window(8)
    w.add_file_type(0)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(toks)
    w.add_token_types(types)
    w.add_token_merges(merges)
    eot = toks.index("<|endoftext|>")
    w.add_eos_token_id(eot)
    w.add_bos_token_id(eot)
    w.add_add_bos_token(False)
    mat, vec = _random_tensors(w, rng, qtype)
    mat("token_embd.weight", len(toks), n_embd, 0.5)
    vec("output_norm.weight", n_embd)
    for i in range(n_layer):
        b = f"blk.{i}."
        vec(b + "attn_norm.weight", n_embd)
        mat(b + "attn_q.weight", n_head * head_dim, n_embd)
        mat(b + "attn_k.weight", n_head_kv * head_dim, n_embd)
        mat(b + "attn_v.weight", n_head_kv * head_dim, n_embd)
        mat(b + "attn_output.weight", n_embd, n_head * head_dim)
        vec(b + "ffn_norm.weight", n_embd)
        mat(b + "ffn_gate.weight", n_ff, n_embd)
        mat(b + "ffn_up.weight", n_ff, n_embd)
        mat(b + "ffn_down.weight", n_embd, n_ff)
        vec(b + "attn_q_norm.weight", head_dim)
        vec(b + "attn_k_norm.weight", head_dim)
        vec(b + "post_attention_norm.weight", n_embd)
        vec(b + "post_ffw_norm.weight", n_embd)
    return _finish(w, path)


def sample_image(width: int = IMAGE_SIZE, height: int = IMAGE_SIZE, seed: int = 0) -> np.ndarray:
    """An RGB test picture ``[height, width, 3]`` uint8: smooth gradients with noise (resampling shows in it)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    img = np.stack([255 * x / max(width - 1, 1), 255 * y / max(height - 1, 1), 128 + 100 * np.sin((x + y) / 9.0)], -1)
    img += rng.normal(0, 20, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)
