"""A tiny random Kimi-K2.5 pair, for tests held to llama.cpp's libmtmd: a projector file (mmproj, ``general.architecture``
"clip", projector type "kimik25") and tinymodel's deepseek2 text model (DeepSeek-V3's layout: Kimi-K2.5's text is
DeepSeek-V3's) whose vocabulary also knows Kimi-K2.5's media markers.

The projector is laid out as llama.cpp's converter writes Kimi-K2.5's MoonViT3d (``KimiK25Model``): ``v.patch_embd``
with a bias, ``v.position_embd`` a 3-D grid [H, W, C] (ggml's ne [C, W, H]) interpolated to each picture, ``v.blk.N.*``
with LayerNorms, ONE fused ``attn_qkv`` with its bias, a GELU MLP, ``v.post_ln``, ``mm.input_norm`` and the MLP
``mm.1``/``mm.2`` with biases; ``clip.vision.projector.scale_factor`` 2, ``clip.use_gelu``, the projector's LayerNorm
epsilon as the file's one epsilon, the pixel limits ``image_min_pixels`` (8 patches) / ``image_max_pixels``
(``in_patch_limit`` patches), at toy sizes: 8-pixel patches merged 2x2 (16 pixels a row's block), a position grid
6 high and 8 wide (not square: a swapped height and width shows), ``image_size`` the grid's height in pixels (48), a
32-wide encoder of 2 layers (heads of 16).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType

from tiny_vision import mmproj_writer, tensor_writer
from tinymodel import DEEPSEEK2_GEOMETRY, _finish, _random_tensors, _write_tiny_deepseek2

Q = GGMLQuantizationType

PATCH, MERGE, V_EMBD, V_FF, V_LAYER, V_HEAD, MM_FF = 8, 2, 32, 48, 2, 2, 96
POS_H, POS_W = 6, 8  # the position grid (init_pos_emb_height / width), patches
IMAGE_SIZE = POS_H * PATCH  # (the converter's: init_pos_emb_height * patch_size)
IN_PATCH_LIMIT = 1024  # the preprocessor's in_patch_limit: the most patches (256 merged rows)
EPS = 1e-3  # (projector_ln_eps; Kimi-VL's projector LayerNorm is 1e-5 whatever its file says: a distinct one shows)
MEAN, STD = (0.5, 0.45, 0.4), (0.5, 0.55, 0.6)  # (Kimi's are 0.5 each: distinct ones catch a channel mix-up)
IMAGE_TOKENS = ("<|media_begin|>", "<|media_content|>", "<|media_end|>", "<|media_pad|>")


def write_tiny_kimik25_mmproj(path: Path, qtype: int = Q.F32, seed: int = 0, n_text_embd: int = DEEPSEEK2_GEOMETRY[0]) -> Path:
    """A random Kimi-K2.5 projector; its matrices (the patch kernel included) stored as ``qtype`` (F32 or F16)."""
    rng = np.random.default_rng(seed)
    geometry = (V_EMBD, V_FF, V_LAYER, V_HEAD)
    flags = {"clip.use_gelu": True}
    w = mmproj_writer(path, "tiny-kimik25-mmproj", "kimik25", {}, IMAGE_SIZE, PATCH, geometry, n_text_embd, MEAN, STD,
                      scale=MERGE, eps=EPS)  # fmt: skip
    for k, v in (("vision.pos_emb_height", POS_H), ("vision.pos_emb_width", POS_W), ("vision.pos_emb_time", 4)):
        w.add_uint32(k, v)
    for k, v in flags.items():
        w.add_bool(k, v)
    w.add_uint32("clip.vision.image_min_pixels", 8 * PATCH * PATCH)
    w.add_uint32("clip.vision.image_max_pixels", IN_PATCH_LIMIT * PATCH * PATCH)
    mat, vec = _random_tensors(w, rng, qtype)
    tensor = tensor_writer(w, rng, qtype)
    tensor("v.patch_embd.weight", (V_EMBD, 3, PATCH, PATCH), 0.05)
    vec("v.patch_embd.bias", V_EMBD, 0.0)
    w.add_tensor("v.position_embd.weight", (rng.standard_normal((POS_H, POS_W, V_EMBD)) * 0.5).astype(np.float32))
    for i in range(V_LAYER):
        b = f"v.blk.{i}."
        vec(b + "ln1.weight", V_EMBD)
        vec(b + "ln1.bias", V_EMBD, 0.0)
        mat(b + "attn_qkv.weight", 3 * V_EMBD, V_EMBD, 0.3)
        vec(b + "attn_qkv.bias", 3 * V_EMBD, 0.0)
        mat(b + "attn_out.weight", V_EMBD, V_EMBD, 0.3)
        vec(b + "attn_out.bias", V_EMBD, 0.0)
        vec(b + "ln2.weight", V_EMBD)
        vec(b + "ln2.bias", V_EMBD, 0.0)
        mat(b + "ffn_up.weight", V_FF, V_EMBD, 0.3)
        vec(b + "ffn_up.bias", V_FF, 0.0)
        mat(b + "ffn_down.weight", V_EMBD, V_FF, 0.3)
        vec(b + "ffn_down.bias", V_EMBD, 0.0)
    vec("v.post_ln.weight", V_EMBD)
    vec("v.post_ln.bias", V_EMBD, 0.0)
    vec("mm.input_norm.weight", V_EMBD)
    vec("mm.input_norm.bias", V_EMBD, 0.0)
    mat("mm.1.weight", MM_FF, V_EMBD * MERGE * MERGE, 0.2)
    vec("mm.1.bias", MM_FF, 0.0)
    mat("mm.2.weight", n_text_embd, MM_FF, 0.3)
    vec("mm.2.bias", n_text_embd, 0.0)
    return _finish(w, path)


def write_tiny_kimik25_text(path: Path, qtype: int = Q.F32, seed: int = 1) -> Path:
    """tinymodel's deepseek2 (V3's layout) with Kimi-K2.5's media markers."""
    return _write_tiny_deepseek2(path, qtype, seed, "v3", extra_tokens=IMAGE_TOKENS)
